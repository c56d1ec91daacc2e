"""Starting a team's own repository: ``lockgate init`` writes a pipeline that the CLI runs outside this checkout."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Annotated

import typer

from lockgate.cli.common import BACKEND_CAUSES, USAGE, CommandError, JsonOption, exits_on_error, show

commands = typer.Typer()

MODEL_NAME = "churn"
DATA_ROWS, DATA_SEED = 1_000, 7

PIPELINE_YAML = f"""\
# {MODEL_NAME}: a starter pipeline written by `lockgate init`. Validate: `lockgate validate`; every field:
# `lockgate schema`. Replace data/churn.csv with your data and trainers/model.py with your model.
name: {MODEL_NAME}
task: binary                       # binary, multiclass or regression: decides metrics, gates and answers
data:
  uri: data/churn.csv              # a path relative to this file, or a URI (s3://… with s3fs installed)
  name: churn
schema:
  label: churned
  columns:
    tenure_months:  {{type: integer, min: 0, max: 120}}
    monthly_spend:  {{type: float, min: 0, max: 1000}}
    support_calls:  {{type: integer, min: 0, max: 50}}
    plan:           {{type: category, categories: [basic, plus, pro]}}
    churned:        {{type: integer, min: 0, max: 1}}
training:
  trainer: trainers.model:train    # trainers/model.py, shipped with the job (its directory is the working dir)
  params: {{C: 1.0}}
  scaling: {{num_workers: 1, cpus_per_worker: 1}}   # a scikit-learn fit does not shard: one worker
gates:
  thresholds:
    rules:
      - {{metric: auc, min: 0.6}}
  regression: {{metric: auc, tolerance: 0.02, bootstrap_samples: 500}}
registry:
  model_name: {MODEL_NAME}
rollout:                           # a candidate that passes its gates rolls out on live traffic
  steps: [50, 100]
  interval_s: 10
  max_step_wait_s: 180
  analysis:
    min_requests: 50
  serving_file: serving.yaml
events:
  log_file: .lockgate/events.jsonl
"""

SERVING_YAML = f"""\
# How {MODEL_NAME} is served (`lockgate apply`, and each pipeline run's rollout): its own Serve application and route.
model_name: {MODEL_NAME}
serving:
  app_name: {MODEL_NAME}
  route_prefix: /{MODEL_NAME}
  http_port: 8000
  num_replicas: 1
  replica_num_cpus: 0.25
traffic:
  mode: weighted
capture:
  sample_percent: 50
  batch_rows: 200
  flush_interval_s: 5
"""

TRAINER_PY = '''\
"""The team's model: Lockgate calls ``train`` in a Ray Train worker, then logs, evaluates, gates and registers it.

The contract (pipeline/trainer.py): ``train(data: TrainerInput) -> model``, where the model has scikit-learn's
``fit``/``predict`` API (any estimator, LightGBM's or XGBoost's scikit-learn classes) or is an
``mlflow.pyfunc.PythonModel``. ``data.x``/``data.y`` are the prepared training rows, ``data.params`` the pipeline
file's ``training.params``, ``data.seed`` the run's seed.
"""

from __future__ import annotations

from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipeline.trainer import TrainerInput

CATEGORICAL = ["plan"]


def train(data: TrainerInput) -> Pipeline:
    """Scale the numbers, one-hot the plan, fit a logistic regression."""
    numeric = [name for name in data.features if name not in CATEGORICAL]
    columns = make_column_transformer(
        (StandardScaler(), numeric), (OneHotEncoder(handle_unknown="ignore"), CATEGORICAL)
    )
    model = make_pipeline(columns, LogisticRegression(random_state=data.seed, max_iter=500, **data.params))
    return model.fit(data.x, data.y)
'''

README_MD = f"""\
# {MODEL_NAME}: a Lockgate pipeline

Written by `lockgate init`. With Lockgate installed (`pip install lockgate`, torch's CPU build first; see
Lockgate's README, "Install"):

```bash
lockgate validate              # the pipeline file, every problem with its field path
lockgate up                    # a local Ray head and MLflow server on 127.0.0.1
lockgate run                   # train, evaluate, gate, register (and roll out) one version
lockgate summary               # the registry: versions, aliases, gate decisions
lockgate down
```

- `pipeline.yaml`: the pipeline (data, schema, trainer, gates, rollout); `lockgate schema` lists every field.
- `serving.yaml`: how the model is served and captured.
- `trainers/model.py`: the model; `train(data) -> model` (the contract is in its docstring).
- `data/churn.csv`: {DATA_ROWS} synthetic rows to start with: replace them with yours and update `schema:`.
"""


def starter_rows(rows: int = DATA_ROWS, seed: int = DATA_SEED) -> str:
    """A small synthetic churn table as CSV: churn grows with support calls and falls with tenure."""
    rng = random.Random(seed)
    lines = ["tenure_months,monthly_spend,support_calls,plan,churned"]
    for _ in range(rows):
        tenure = rng.randint(0, 120)
        plan = rng.choice(["basic", "plus", "pro"])
        spend = round(rng.uniform(10, 60) * {"basic": 1.0, "plus": 1.8, "pro": 3.0}[plan], 2)
        calls = min(50, int(rng.expovariate(0.5)))
        logit = -0.5 - 0.03 * tenure + 0.45 * calls + (0.4 if plan == "basic" else 0.0)
        churned = int(rng.random() < 1 / (1 + math.exp(-logit)))
        lines.append(f"{tenure},{spend},{calls},{plan},{churned}")
    return "\n".join(lines) + "\n"


def starter_files() -> dict[str, str]:
    """Every file ``init`` writes, by path relative to the project directory."""
    return {
        "pipeline.yaml": PIPELINE_YAML,
        "serving.yaml": SERVING_YAML,
        "trainers/__init__.py": '"""The team\'s training code, shipped with each run as its working directory."""\n',
        "trainers/model.py": TRAINER_PY,
        "data/churn.csv": starter_rows(),
        "README.md": README_MD,
        ".gitignore": ".lockgate/\nlockgate-report.html\n",
    }


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def init(
    directory: Annotated[Path, typer.Argument(help="where to start the project (created if missing)")] = Path(
        "."
    ),
    force: Annotated[bool, typer.Option("--force", help="overwrite files that already exist")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a team's own repository: a pipeline file, a serving file, a trainer stub and a small data set."""
    files = starter_files()
    existing = sorted(name for name in files if (directory / name).exists())
    if existing and not force:
        raise CommandError(
            f"{directory}: {', '.join(existing)} already exist; --force overwrites them", USAGE
        )
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    written = sorted(files)
    show(
        {"directory": str(directory.resolve()), "files": written},
        f"wrote {', '.join(written)} in {directory.resolve()}\n"
        f"next: cd {directory} && lockgate validate && lockgate up && lockgate run",
        as_json,
    )
