"""The shipped data set: a seeded, realistic loan-default table, with knobs for a shifted and a bad batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REGIONS = ("north", "south", "east", "west")
PRODUCTS = ("personal", "auto", "mortgage", "student")


def make_loans(
    rows: int = 20_000, seed: int = 0, shift: float = 0.0, bad_fraction: float = 0.0, risk_shift: float = 0.0
) -> pd.DataFrame:
    """Generate a loan-default table.

    ``shift`` in [0, 1] moves the population (lower incomes and credit scores, more borrowing, a
    different regional mix) the way an economic downturn would: the label still follows the same
    rule, so a model trained before the shift is stale, not wrong. ``bad_fraction`` corrupts that
    share of rows the ways real feeds break: missing values, impossible ages, unknown categories.
    ``risk_shift`` adds to every applicant's log-odds of default (concept drift: the same applicant is now
    riskier), so a model retrained on such a batch ranks as well as before but predicts higher.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be within [0, 1], got {shift}")
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError(f"bad_fraction must be within [0, 1], got {bad_fraction}")
    rng = np.random.default_rng(seed)
    region_p = np.array([0.3, 0.25, 0.25, 0.2]) * (1 - shift) + np.array([0.1, 0.5, 0.2, 0.2]) * shift
    region = rng.choice(REGIONS, size=rows, p=region_p / region_p.sum())
    product = rng.choice(PRODUCTS, size=rows, p=[0.4, 0.25, 0.2, 0.15])
    age = np.clip(rng.normal(41, 12, rows), 18, 85).round().astype("int64")
    age = np.where(product == "student", np.clip(age - 15, 18, 40), age)
    employment_years = np.clip(rng.gamma(2.0, 4.0, rows), 0, np.maximum(age - 16, 0)).round(1)
    income = np.clip(rng.lognormal(10.9 - 0.25 * shift + 0.012 * employment_years, 0.45), 8_000, 500_000)
    credit_score = np.clip(rng.normal(680 - 45 * shift + 1.5 * employment_years, 60), 300, 850).round()
    credit_score = credit_score.astype("int64")
    base_amount = {"personal": 12_000, "auto": 25_000, "mortgage": 90_000, "student": 20_000}
    loan_amount = np.array([base_amount[p] for p in product]) * rng.lognormal(0.15 * shift, 0.35, rows)
    loan_amount = np.clip(loan_amount, 1_000, 400_000).round(2)
    debt_to_income = np.clip(rng.beta(2, 5, rows) * 1.2 + 0.2 * shift, 0, 1.5).round(3)
    open_accounts = rng.poisson(6 + 4 * shift, rows).astype("int64")

    # The true risk: nonlinear in credit score and debt-to-income, with regional and product effects.
    region_effect = {"north": -0.2, "south": 0.35, "east": 0.0, "west": -0.1}
    product_effect = {"personal": 0.3, "auto": -0.1, "mortgage": -0.5, "student": 0.2}
    logit = (
        -1.6
        - 0.012 * (credit_score - 680)
        + 3.0 * (debt_to_income - 0.35) ** 2 * np.sign(debt_to_income - 0.35)
        + 1.8 * debt_to_income
        + 0.9 * np.log(loan_amount / income + 0.05)
        - 0.04 * employment_years
        + 0.03 * np.maximum(open_accounts - 8, 0)
        + np.array([region_effect[r] for r in region])
        + np.array([product_effect[p] for p in product])
        + 0.015 * np.abs(age - 45) * (age < 25)
        + risk_shift
    )
    default = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")

    frame = pd.DataFrame(
        {
            "age": age,
            "income": income.round(2),
            "loan_amount": loan_amount,
            "credit_score": credit_score,
            "employment_years": employment_years,
            "debt_to_income": debt_to_income,
            "open_accounts": open_accounts,
            "region": region,
            "product": product,
            "default": default,
        }
    )
    if bad_fraction > 0:
        frame = _corrupt(frame, rng, bad_fraction)
    return frame


def _corrupt(frame: pd.DataFrame, rng: np.random.Generator, fraction: float) -> pd.DataFrame:
    """Break a share of rows in three ways a real feed breaks."""
    frame = frame.copy()
    count = max(3, int(len(frame) * fraction))
    picked = rng.choice(len(frame), size=min(count, len(frame)), replace=False)
    thirds = np.array_split(picked, 3)
    frame["credit_score"] = frame["credit_score"].astype("Int64")
    frame.loc[thirds[0], "credit_score"] = pd.NA
    frame.loc[thirds[1], "age"] = -1
    frame.loc[thirds[2], "region"] = "atlantis"
    return frame


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as Parquet or CSV, chosen by the file suffix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".csv":
        frame.to_csv(target, index=False)
    elif target.suffix == ".parquet":
        frame.to_parquet(target, index=False)
    else:
        raise ValueError(f"{target}: unsupported suffix '{target.suffix}', use .csv or .parquet")
    return target
