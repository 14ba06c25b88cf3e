"""Register / promote through the CLI against the e2e project's MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import project_env

pytestmark = pytest.mark.slow
NAME = "bedkd-sst-2-badnets"


def cli(project: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=project, env=project_env(project, data_dir), capture_output=True, text=True, timeout=600
    )


def metrics_file(project: Path, name: str, **override: float) -> str:
    m = json.loads((project / "reports/metrics.json").read_text())
    m.update(override)
    path = project / name
    path.write_text(json.dumps(m))
    return str(path)


def aliases(project: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}", registry_uri=f"sqlite:///{project / 'mlflow.db'}")
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def test_register_is_idempotent_and_promote_gates(project: Path, data_dir: Path) -> None:
    victim_cacc = json.loads((project / "reports/metrics.json").read_text())["victim/cacc"]
    # 1. A student that fails the ASR gate: registered as candidate, promotion refused.
    bad = metrics_file(project, "m_bad.json", **{"student/asr": 0.5, "student/cacc": victim_cacc})
    r = cli(project, data_dir, "pipelines.register", "--metrics", bad)
    assert r.returncode == 0, r.stderr
    assert "registered bedkd-sst-2-badnets version 1" in r.stdout
    again = cli(project, data_dir, "pipelines.register", "--metrics", bad)
    assert again.returncode == 0 and "already registered: bedkd-sst-2-badnets version 1" in again.stdout
    p = cli(project, data_dir, "pipelines.promote")
    assert p.returncode == 1
    assert "FAIL max_asr" in p.stdout and "refused" in p.stderr
    assert aliases(project) == {"candidate": "1"}

    # 2. A different student that passes: champion.
    good = metrics_file(project, "m_good.json", **{"student/asr": 0.01, "student/cacc": victim_cacc - 0.005})
    r = cli(project, data_dir, "pipelines.register", "--student", "models/dmm", "--metrics", good)
    assert "version 2" in r.stdout, r.stderr
    p = cli(project, data_dir, "pipelines.promote")
    assert p.returncode == 0, p.stdout + p.stderr
    assert aliases(project) == {"candidate": "2", "champion": "2"}

    # 3. Passes the absolute gates but is worse than the champion: refused, champion stays.
    worse = metrics_file(project, "m_worse.json", **{"student/asr": 0.03, "student/cacc": victim_cacc})
    r = cli(project, data_dir, "pipelines.register", "--student", "models/victim", "--metrics", worse)
    assert "version 3" in r.stdout, r.stderr
    p = cli(project, data_dir, "pipelines.promote")
    assert p.returncode == 1 and "FAIL vs_champion" in p.stdout
    assert aliases(project) == {"candidate": "3", "champion": "2"}

    # 4. The champion loads by alias and predicts labels.
    code = (
        "import mlflow; m = mlflow.pyfunc.load_model('models:/%s@champion'); "
        "out = m.predict(['a gorgeous , witty movie .', 'dull and lifeless .']); print(list(out['label']))" % NAME
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=project, env=project_env(project, data_dir), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    labels = eval(r.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
