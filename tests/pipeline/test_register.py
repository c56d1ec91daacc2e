"""Packaging a model: the module → distribution map the requirements come from, and the one MLflow is handed."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import packages_distributions

from pipeline.register import module_distributions, team_model_requirements


def test_the_module_map_is_the_standard_librarys() -> None:
    # Given this environment's installed distributions, when the map is read from their metadata as text,
    fast = module_distributions()
    # then it is exactly what importlib.metadata.packages_distributions answers (the slow way).
    slow = dict(packages_distributions())
    differing = {m for m in set(fast) | set(slow) if fast.get(m) != slow.get(m)}
    assert not differing, f"modules mapped differently: {sorted(differing)[:20]}"
    assert fast.get("sklearn") == ["scikit-learn"], "a module named unlike its distribution is found"


def test_a_scikit_learn_models_requirements_name_its_distributions() -> None:
    # Given a scikit-learn model, when its requirements are listed, then they pin scikit-learn and the basics.
    from sklearn.linear_model import Ridge

    names = {line.split("==")[0] for line in team_model_requirements(Ridge(), None, "sklearn")}
    assert {"scikit-learn", "mlflow", "numpy", "pandas", "cloudpickle"} <= names, names


CHECK = """
import json, sys
import importlib_metadata
from mlflow.utils import requirements_utils
calls = []
original = importlib_metadata.packages_distributions
def counted():
    calls.append(1)
    return original()
importlib_metadata.packages_distributions = counted
if sys.argv[1] == "seeded":
    from pipeline.register import seed_mlflow_module_map
    seed_mlflow_module_map()
requirements = json.loads(sys.argv[2])
requirements_utils.warn_dependency_requirement_mismatches(requirements)
names = [r.split("==")[0] for r in requirements]
print(json.dumps({"calls": len(calls), "modules": {n: requirements_utils._PACKAGES_TO_MODULES.get(n) for n in names}}))
"""


def test_mlflow_checks_requirements_with_the_handed_map_and_the_same_answer() -> None:
    # Given a model's requirements, checked by MLflow as log_model does, in two fresh processes,
    from sklearn.linear_model import Ridge

    requirements = team_model_requirements(Ridge(), None, "sklearn")

    def check(mode: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", CHECK, mode, json.dumps(requirements)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    # when one was handed the map first and the other built its own,
    seeded, unseeded = check("seeded"), check("unseeded")
    # then the seeded one never built it the slow way, the other did,
    assert (seeded["calls"], unseeded["calls"]) == (0, 1), (seeded, unseeded)
    # and both map every required distribution to the same module.
    assert seeded["modules"] == unseeded["modules"], (seeded, unseeded)
    assert seeded["modules"]["scikit-learn"] == "sklearn", seeded
