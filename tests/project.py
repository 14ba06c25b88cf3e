"""Helpers shared by the slow tests: a tiny copy of the project, built with ``dvc repro``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CYCLES = 3
# Overrides on top of the repository's params.yaml (DVC needs every listed key present).
TINY = {
    "data": {"dataset": "sst-2", "max_rows": 300},
    "model": {"max_length": 48},
    "poison": {"attack": "badnets"},
    "train_victim": {"epochs": 1, "batch_size": 16, "lr": 1.0e-4},
    # The 1-epoch tiny victim maps everything to the target and its copy does not flip in 2
    # epochs, so the agreement/rank detector flags nothing; the released detector still flags rows,
    # which keeps the improved AKD (complement punish, holdout validation, best cycle) exercised.
    "detect": {
        "flip_per_class": 10, "epochs": 2, "batch_size": 8, "stop_flip_acc": None, "score": "released",
        "selection": "released", "threshold": 0.1, "keep": 32, "holdout": 8,
    },
    "distill": {"clean_per_class": 20, "cycles": CYCLES, "batch_size": 8},
    "evaluate": {"batch_size": 128},
}


def tiny_params(backbone: Path) -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["model"]["backbone"] = str(backbone)
    return yaml.safe_dump(params, sort_keys=False)


def project_env(proj: Path, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEDKD_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        BEDKD_DATA_DIR=str(data_dir),
        BEDKD_PROGRESS="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{proj / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        # tiny stages last seconds: sample system metrics every second so they show up
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@localhost",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@localhost",
    )
    return env


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_project(proj: Path, tiny_model: Path, data_dir: Path) -> Path:
    """A fresh copy of the project (code + dvc.yaml + .dvc/config), then ``dvc repro``."""
    for name in ("bedkd", "pipelines", "notebooks"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, proj / name)
    (proj / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    (proj / "params.yaml").write_text(tiny_params(tiny_model))
    env = project_env(proj, data_dir)
    sh(["git", "init", "-q"], proj, env)
    sh(["git", "add", "-A"], proj, env)
    sh(["git", "commit", "-qm", "init"], proj, env)
    sh(["dvc", "repro"], proj, env)
    return proj
