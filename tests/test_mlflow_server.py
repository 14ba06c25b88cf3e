"""A real MLflow server: PostgreSQL backend store, local artifact root, the pipeline over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.project import project_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
PG = os.environ.get("BEDKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def pg_database() -> Iterator[str]:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(f"{PG}/test", isolation_level="AUTOCOMMIT")
    name = f"bedkd_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as e:  # no server: not this test's business
        pytest.skip(f"PostgreSQL not reachable at {PG}: {e.__class__.__name__}")
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture()
def mlflow_server(pg_database: str, tmp_path: Path) -> Iterator[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    # Create the schema once, before any concurrent writer (the server's workers, our stages).
    subprocess.run([mlflow_bin, "db", "upgrade", pg_database], env=env, check=True, capture_output=True, timeout=300)
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", pg_database, "--artifacts-destination", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_pipeline_against_server(project: Path, data_dir: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    env = {**project_env(project, data_dir), "MLFLOW_TRACKING_URI": mlflow_server}
    params = project / "params_server.yaml"
    params.write_text((project / "params.yaml").read_text() + "promote: {max_asr: 1.0, max_cacc_drop: 1.0}\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", *args, "--params", str(params)], cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{args}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
        return p

    # Stages whose models already exist in the project: quick, and they all log over HTTP.
    run("pipelines.poison")
    run("pipelines.detect", "--out", "server/detect", "--out-model", "server/dmm")
    run("pipelines.evaluate", "--detect", "server/detect", "--metrics", "server/metrics.json", "--plots", "server/plots")
    run("pipelines.register", "--metrics", "server/metrics.json")
    run("pipelines.promote")

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    exp = client.get_experiment_by_name("bedkd/sst-2/badnets")
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"poison", "detect", "evaluate", "register"} <= set(by_name)
    parent = [r for r in runs if r.data.tags.get("bedkd.role") == "pipeline"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert by_name["detect"].data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    assert len(client.get_metric_history(by_name["detect"].info.run_id, "detect/train/loss")) == 2
    assert "student/asr" in by_name["evaluate"].data.metrics
    assert {a.path for a in client.list_artifacts(by_name["evaluate"].info.run_id, "plots")} >= {"plots/cycles.png"}
    versions = client.search_model_versions("name = 'bedkd-sst-2-badnets'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("bedkd-sst-2-badnets", "champion").version == versions[0].version
