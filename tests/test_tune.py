"""Optuna tuning: search-space validation, a tiny study end to end, caching, pruning, two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from bedkd.config import check_space, load_params
from bedkd.errors import ConfigError
from tests.project import ROOT, project_env

SPACE = {
    "distill.cycles": {"low": 1, "high": 2, "integer": True},
    "distill.punish_weight": {"low": 0.1, "high": 1.0, "log": True},
    "distill.loss.temperature": {"low": 1.0, "high": 3.0},
}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"distill.cyles": {"low": 1, "high": 2}}, "'distill.cyles' is not tunable"),
        ({"distill.cycles": {"low": 5, "high": 5, "integer": True}}, "must be < high"),
        ({"distill.punish_weight": {"low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
        ({"detect.flip_ratio": {"low": 0.5, "high": 1.5}}, "tune.space.detect.flip_ratio: 1.5 is not a valid value"),
        ({"distill.cycles": {"low": 1, "high": 10}}, "integer knob needs 'integer: true'"),
        ({"distill.cycles": {"low": 1.5, "high": 10, "integer": True}}, "integer bounds"),
        ({}, "empty search space"),
        ({"distill.schedule": {"choices": ["passes", "jont"]}}, "tune.space.distill.schedule: jont is not a valid value"),
        ({"distill.schedule": {"choices": ["joint"]}}, "at least 2 items"),
        ({"distill.schedule": {"choices": ["joint", "joint"]}}, "choices repeat a value"),
        ({"distill.schedule": {"choices": ["passes", "joint"], "low": 0}}, "either choices or a range"),
        ({"distill.cycles": {"low": 1, "integer": True}}, "a range needs low and high"),
    ],
)
def test_bad_search_space_is_rejected(tmp_path: Path, space: dict, message: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tune"]["space"] = space
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as e:
        check_space(load_params(f), f)
    assert message in str(e.value) and str(f) in str(e.value)


def test_switches_are_tuned_as_choices() -> None:
    import optuna

    from bedkd.config import with_overrides
    from pipelines.tune import suggest

    params = load_params(ROOT / "params.yaml")
    space = {"distill.schedule": {"choices": ["passes", "joint"]}, "distill.redetect_keep_max": {"choices": [1024, 2048]}}
    params = with_overrides(params, {"tune.space": space})
    check_space(params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        out = suggest(trial, params)
        tp = with_overrides(params, out)
        assert tp.distill.schedule == out["distill.schedule"] and type(tp.distill.redetect_keep_max) is int
        seen.add((out["distill.schedule"], out["distill.redetect_keep_max"]))
        study.tell(trial, 0.0)
    assert seen == {(s, k) for s in ("passes", "joint") for k in (1024, 2048)}


def tune_params(project: Path, name: str, **tune: object) -> Path:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"].update({"space": SPACE, "population_size": 2, **tune})
    path = project / name
    path.write_text(yaml.safe_dump(params))
    return path


def run_tune(project: Path, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.tune", *args], cwd=project, env=env or project_env(project, data_dir),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_tiny_study_caches_and_registers(project: Path, data_dir: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    params = tune_params(project, "params_tune.yaml")
    out = project / "reports" / "tune_a"
    run_tune(project, data_dir, "--params", str(params), "--n-trials", "3", "--study-name", "tiny", "--out", str(out))
    stats = json.loads((out / "study.json").read_text())
    assert stats["trials_total"] == 3 and stats["trials_this_worker"] == 3 and stats["trials_per_hour"] > 0
    # The victim is trained once for the study, then only reused; DMM results are keyed by detect params.
    assert stats["cache"]["victim_trained"] == 1
    assert stats["cache"]["detect_computed"] == 1 and stats["cache"]["detect_reused"] == 2
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert set(best["params"]) == set(SPACE) and 1 <= best["params"]["distill.cycles"] <= 2
    assert (out / "pareto.png").stat().st_size > 1000
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{project / 'optuna.db'}")
    assert len(study.directions) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)

    # A second worker process resumes the study, reuses the cached victim, rebuilds and registers the best.
    r = run_tune(project, data_dir, "--params", str(params), "--n-trials", "1", "--study-name", "tiny", "--out", str(out), "--register")
    stats = json.loads((out / "study.json").read_text())
    assert stats["trials_total"] == 4 and stats["cache"]["victim_trained"] == 0 and stats["cache"]["victim_reused"] >= 1
    test_metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0 <= test_metrics["student/asr"] <= 1
    assert "as candidate" in r.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bedkd/sst-2/badnets")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`optuna.study` = 'tiny'", max_results=200)
    studies = [r for r in runs if r.data.tags.get("bedkd.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("bedkd.role") == "trial"]
    assert len(studies) == 2 and len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} <= {s.info.run_id for s in studies}
    assert all("final/dev_asr" in t.data.metrics and "distill.cycles" in t.data.params for t in trials)
    assert client.get_model_version_by_alias("bedkd-sst-2-badnets", "candidate") is not None


@pytest.mark.slow
def test_pruned_trial_is_recorded(project: Path, data_dir: Path) -> None:
    import optuna

    params = tune_params(project, "params_prune.yaml", objective="single", pruner="threshold", prune_threshold=0.0, pruner_warmup_cycles=0)
    env = {**project_env(project, data_dir), "BEDKD_TRACKING": "true"}
    run_tune(project, data_dir, "--params", str(params), "--n-trials", "2", "--study-name", "prune", "--out", str(project / "reports/tune_p"), env=env)
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{project / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    # The tiny victim keeps ASR > 0, so the threshold pruner stops every trial at its first cycle.
    assert states == ["PRUNED", "PRUNED"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bedkd/sst-2/badnets")
    trials = client.search_runs([exp.experiment_id], filter_string="tags.`optuna.study` = 'prune' and tags.`bedkd.role` = 'trial'")
    assert len(trials) == 2 and all(t.data.tags["state"] == "PRUNED" and t.info.status == "KILLED" for t in trials)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_a_postgres_study(project: Path, data_dir: Path) -> None:
    import optuna
    import sqlalchemy

    pg = os.environ.get("BEDKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
    admin = sqlalchemy.create_engine(f"{pg}/test", isolation_level="AUTOCOMMIT")
    db = f"bedkd_optuna_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{db}"')
    except Exception as e:
        pytest.skip(f"PostgreSQL not reachable: {e.__class__.__name__}")
    url = f"{pg}/{db}"
    try:
        params = tune_params(project, "params_pg.yaml")
        # MLflow's sqlite file is not for concurrent writers; this test is about Optuna.
        env = {**project_env(project, data_dir), "BEDKD_TRACKING": "false"}
        common = ["--params", str(params), "--storage", url, "--study-name", "shared"]
        # Create schema and study once, before the workers race.
        run_tune(project, data_dir, *common, "--n-trials", "0", "--out", str(project / "reports/pg0"), env=env)
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "pipelines.tune", *common, "--n-trials", "2", "--out", str(project / f"reports/pg{i}")],
                cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for i in (1, 2)
        ]
        for w in workers:
            _, err = w.communicate(timeout=900)
            assert w.returncode == 0, err[-3000:]
        study = optuna.load_study(study_name="shared", storage=url)
        assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
        per_worker = [json.loads((project / f"reports/pg{i}/study.json").read_text())["trials_this_worker"] for i in (1, 2)]
        assert per_worker == [2, 2]
        optuna.delete_study(study_name="shared", storage=url)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.slow
def test_blind_mode_optimises_the_proxy(project: Path, data_dir: Path) -> None:
    import pandas as pd

    params = tune_params(project, "params_blind.yaml", mode="blind")
    out = project / "reports" / "tune_blind"
    run_tune(project, data_dir, "--params", str(params), "--n-trials", "2", "--study-name", "blind", "--out", str(out))
    rows = pd.read_csv(out / "trials.csv")
    assert len(rows) == 2
    # The objective is the proxy on held-out flagged rows; the oracle ASR is only reported beside it.
    assert (rows["asr"] == rows["proxy_asr"]).all()
    assert rows["oracle_asr"].between(0, 1).all()
