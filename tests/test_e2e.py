"""Every stage, through ``dvc repro``, on a small slice of the real sst-2 corpus with a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bedkd.config import load_params
from tests.project import CYCLES, ROOT, project_env, sh

pytestmark = pytest.mark.slow


def test_outputs_and_metrics_are_sane(project: Path) -> None:
    metrics_text = (project / "reports/metrics.json").read_text()
    metrics = json.loads(metrics_text)
    assert list(metrics) == sorted(metrics)
    for key in ("victim/cacc", "victim/asr", "student/cacc", "student/asr", "detect/auroc", "detect/precision", "detect/recall"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["detect/n_kept"] <= 32  # tests/project.py: released selection, keep 32
    cycles = json.loads((project / "reports/distill/cycles.json").read_text())
    # Per AKD round (1 + distill.redetect): cycle 0 = the victim on the defender's validation rows,
    # then one row per cycle.
    rounds = 1 + load_params(project / "params.yaml").distill.redetect
    assert [c["cycle"] for c in cycles] == list(range(0, CYCLES + 1)) * rounds
    if rounds > 1:
        assert [c["round"] for c in cycles] == [float(r) for r in range(1, rounds + 1) for _ in range(CYCLES + 1)]
    assert "val/acc" in cycles[0] and "val/proxy_asr" in cycles[0]
    assert all("dev/cacc" in c and "val/acc" in c for c in cycles if c["cycle"] > 0)
    assert all("distill/punish/complement" in c for c in cycles[1 : CYCLES + 1])  # DMM's rows, round 1
    for png in ("cycles.png", "detection.png", "confusion_victim.png", "confusion_student.png"):
        assert (project / "reports/plots" / png).stat().st_size > 1000
    for model in ("victim", "dmm", "student"):
        files = {p.name for p in (project / "models" / model).iterdir()}
        assert "model.safetensors" in files and "config.json" in files
        assert not files & {"pytorch_model.bin", "model.pt"}
    scores = pd.read_csv(project / "data/detect/scores.csv", keep_default_na=False)
    assert len(scores) == 300 and scores["selected"].sum() == metrics["detect/n_kept"]
    # The rows the student was punished on in its last round, graded by evaluate.
    final = pd.read_csv(project / "data/distill/selection.csv", keep_default_na=False)
    assert (final["text"] == scores["text"]).all() and set(final["round"]) == {rounds}
    assert final["selected"].sum() == metrics["distill/selection/n_kept"]
    assert not (final["selected"] & final["holdout"]).any()
    assert metrics["distill/selection/round"] == rounds and 0.0 <= metrics["distill/selection/auroc"] <= 1.0
    if rounds == 1:  # no redetection: distill punished DMM's rows
        assert (final["selected"] == scores["selected"]).all() and (final["score"] == scores["score"]).all()
    else:
        assert (project / "reports/plots/redetection.png").stat().st_size > 1000
    assert (project / "dvc.lock").is_file()


def test_repro_is_cached(project: Path, data_dir: Path) -> None:
    out = sh(["dvc", "status"], project, project_env(project, data_dir)).stdout
    assert "up to date" in out.lower(), out


def test_detect_and_distill_run_without_ground_truth(project: Path, data_dir: Path) -> None:
    """Drop ``is_poisoned`` from the poisoned train and rerun detect + distill: same outputs."""
    env = {**project_env(project, data_dir), "BEDKD_TRACKING": "false"}
    blind = project / "blind"
    (blind / "poisoned").mkdir(parents=True)
    for f in ("dev.parquet", "test.parquet"):
        shutil.copy(project / "data/poisoned" / f, blind / "poisoned" / f)
    train = pd.read_parquet(project / "data/poisoned/train.parquet").drop(columns=["is_poisoned"])
    train.to_parquet(blind / "poisoned/train.parquet")
    py = [sys.executable, "-m"]
    sh(py + ["pipelines.detect", "--poisoned", str(blind / "poisoned"), "--out", str(blind / "detect"), "--out-model", str(blind / "dmm")], project, env)
    a = pd.read_csv(project / "data/detect/scores.csv", keep_default_na=False)
    b = pd.read_csv(blind / "detect/scores.csv", keep_default_na=False)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)
    assert (a["selected"] == b["selected"]).all()
    sh(py + ["pipelines.distill", "--poisoned", str(blind / "poisoned"), "--detect", str(blind / "detect"), "--out", str(blind / "student"), "--cycles", str(blind / "cycles.json"), "--selection", str(blind / "selection.csv")], project, env)
    assert (blind / "student/model.safetensors").is_file()
    a = pd.read_csv(project / "data/distill/selection.csv", keep_default_na=False)
    b = pd.read_csv(blind / "selection.csv", keep_default_na=False)
    assert (a["selected"] == b["selected"]).all() and (a["holdout"] == b["holdout"]).all()


def test_evaluate_refuses_a_tampered_selection(project: Path, data_dir: Path) -> None:
    """A hostile data/distill/selection.csv: one-line error naming file and column, nothing written."""
    env = {**project_env(project, data_dir), "BEDKD_TRACKING": "false"}
    bad = project / "tampered"
    bad.mkdir()
    sel = pd.read_csv(project / "data/distill/selection.csv", keep_default_na=False)
    sel.assign(selected="yes").to_csv(bad / "selection.csv", index=False)
    cmd = [sys.executable, "-m", "pipelines.evaluate", "--selection", str(bad / "selection.csv"),
           "--metrics", str(bad / "metrics.json"), "--plots", str(bad / "plots")]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("error: ") and "selection.csv: column 'selected'" in err[-1], proc.stderr[-2000:]
    assert not (bad / "metrics.json").exists() and not (bad / "plots").exists()


def test_notebook_executes_headless(project: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "bedkd_story.ipynb", as_version=4)
    os.environ["BEDKD_PROJECT"] = str(project)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(project)}}).execute()
    finally:
        os.environ.pop("BEDKD_PROJECT", None)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3


def test_mlflow_runs_nested_with_metrics_and_artifacts(project: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bedkd/sst-2/badnets")
    assert exp is not None
    # Artifacts live in the project, not in the cwd of whoever created the experiment.
    assert exp.artifact_location == (project / "mlartifacts" / "bedkd-sst-2-badnets").as_uri()
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("bedkd.role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"prepare", "poison", "train_victim", "detect", "distill", "evaluate"}
    for stage, run in children.items():
        for tag in ("git_commit", "params_hash", "dataset", "attack", "backbone", "stage"):
            assert run.data.tags.get(tag), (stage, tag)
        assert run.data.tags["stage"] == stage and run.info.status == "FINISHED"
    # Stage params = the stage's params.yaml section, flattened.
    assert children["distill"].data.params["distill.cycles"] == str(CYCLES)
    assert children["detect"].data.params["detect.loss.temperature"] == "1.5"
    # Per-cycle / per-epoch metrics, trust and punish apart; system metrics on training stages.
    dist = children["distill"].info.run_id
    rounds = 1 + load_params(project / "params.yaml").distill.redetect  # AKD rounds: one monotonic step axis
    for key in ("dev/cacc", "dev/asr", "distill/trust/loss"):
        assert sorted(m.step for m in client.get_metric_history(dist, key)) == list(range(1, rounds * CYCLES + 1)), key
    assert sorted(m.step for m in client.get_metric_history(dist, "distill/punish/complement"))[:CYCLES] == list(range(1, CYCLES + 1))
    assert len(client.get_metric_history(children["detect"].info.run_id, "detect/train/loss")) == 2
    assert any(k.startswith("system/") for k in children["train_victim"].data.metrics)
    # Final metrics: same names as the DVC metrics file, on evaluate and on the parent.
    dvc_metrics = json.loads((project / "reports/metrics.json").read_text())
    for run in (children["evaluate"], parent):
        assert run.data.metrics["student/asr"] == pytest.approx(dvc_metrics["student/asr"])

    def artifacts(run_id: str, path: str | None = None) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert "detect/selected.csv" in artifacts(children["detect"].info.run_id, "detect")
    assert {"plots/cycles.png", "plots/detection.png", "plots/confusion_student.png"} <= artifacts(children["evaluate"].info.run_id, "plots")
    assert "config/params.yaml" in artifacts(dist, "config") and "config/dvc.lock" in artifacts(dist, "config")
    # The logged student loads as pyfunc and predicts labels.
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    uri = children["distill"].data.tags["bedkd.model_uri.student"]
    pred = mlflow.pyfunc.load_model(uri).predict(["a gorgeous, witty, seductive movie ."])
    labels = list(pred["label"]) if hasattr(pred, "columns") else list(pred)
    assert len(labels) == 1 and labels[0] in {"negative", "positive"}
