"""MLflow tracking: the only place (with ``bedkd.tracking.registry``) that imports mlflow.

Layout in MLflow: one experiment per dataset x attack (``bedkd/sst-2/badnets``); one parent run
per pipeline execution (every stage of one ``dvc repro`` lands under the same parent); one nested
child run per stage.

With tracking off (``BEDKD_TRACKING=false``) every call is a no-op and the pipeline still runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bedkd.config import Params, flatten, section_hash
from bedkd.events import Event
from bedkd.settings import get_settings

# params.yaml sections logged on each stage's child run.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "data"),
    "poison": ("seed", "data", "poison"),
    "train_victim": ("seed", "model", "train_victim"),
    "detect": ("seed", "model", "detect"),
    "distill": ("seed", "model", "distill"),
    "evaluate": ("evaluate",),
}
TRAINING_STAGES = ("train_victim", "detect", "distill")
PIP_REQUIREMENTS_FOR_MODELS = ("torch==2.13.0", "transformers==5.24.0", "tokenizers==0.23.3", "safetensors==0.8.0", "numpy==2.4.6", "pandas==3.1.1")


def _env_defaults() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def project_root(start: Path | None = None) -> Path:
    """The project folder, also from inside a ``dvc exp run --temp`` copy (.dvc/tmp/exps/...)."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for p in (here, *here.parents):
        if (p / "dvc.yaml").is_file():
            return p
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite file in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def experiment_name(params: Params) -> str:
    return f"bedkd/{params.data.dataset}/{params.poison.attack}"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def params_hash(params: Params) -> str:
    return section_hash(params)


def base_tags(params: Params, commit: str) -> dict[str, str]:
    return {
        "git_commit": commit,
        "params_hash": params_hash(params),
        "dataset": params.data.dataset,
        "attack": params.poison.attack,
        "backbone": params.model.backbone,
    }


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    full = params.model_dump(mode="json")
    return flatten({k: full[k] for k in STAGE_SECTIONS.get(stage, tuple(full))})


class NullTracker:
    """Tracking switched off: same interface, does nothing."""

    run_id: str | None = None
    parent_run_id: str | None = None

    def callback(self, event: Event) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, on_parent: bool = False) -> None:
        return None

    def log_params(self, values: Mapping[str, Any]) -> None:
        return None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        return None

    def log_dict(self, data: Any, name: str) -> None:
        return None

    def set_tags(self, tags: Mapping[str, str]) -> None:
        return None

    def log_model(self, clf: Any, name: str, input_example: list[str]) -> str | None:
        return None


class MlflowTracker(NullTracker):
    def __init__(self, run_id: str, parent_run_id: str) -> None:
        self.run_id = run_id
        self.parent_run_id = parent_run_id

    def callback(self, event: Event) -> None:
        self.log_metrics(event.metrics, step=event.step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, on_parent: bool = False) -> None:
        """Log on the stage run (and, for final results, on the pipeline's parent run too)."""
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v == v}  # drop NaN
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)
            if on_parent and self.parent_run_id:
                mlflow.log_metrics(clean, step=step, run_id=self.parent_run_id)

    def log_params(self, values: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: ("null" if v is None else v) for k, v in values.items()}, run_id=self.run_id)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        if Path(path).exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=self.run_id)

    def log_dict(self, data: Any, name: str) -> None:
        import mlflow

        mlflow.log_dict(data, name, run_id=self.run_id)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for k, v in tags.items():
            client.set_tag(self.run_id, k, v)

    def log_model(self, clf: Any, name: str, input_example: list[str]) -> str | None:
        """Log a classifier as an MLflow ``transformers`` model (safetensors, text-classification)."""
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(
            inputs=Schema([ColSpec("string")]),
            outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
        )
        info = mlflow.transformers.log_model(
            transformers_model={"model": clf.model, "tokenizer": clf.tokenizer},
            name=name,
            task="text-classification",
            signature=signature,
            input_example=input_example,
            pip_requirements=list(PIP_REQUIREMENTS_FOR_MODELS),
            save_pretrained=True,
        )
        # Where to find it again from the run (register, tests, the UI's run page).
        mlflow.MlflowClient().set_tag(self.run_id, f"bedkd.model_uri.{name}", info.model_uri)
        return str(info.model_uri)


def _client_and_experiment(name: str) -> tuple[Any, str]:
    """An MlflowClient on the configured store and the id of experiment ``name`` (created if new)."""
    _env_defaults()
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return client, exp.experiment_id
    # With a local store MLflow would put artifacts under ./mlruns of the current folder, which
    # for `dvc exp run --temp` is a throw-away copy: pin them to the project. Servers decide alone.
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (project_root() / "mlartifacts" / name.replace("/", "-")).as_uri()
    # MLflow 3's UI opens GenAI views unless told this experiment is model training.
    tags = {"mlflow.experimentKind": "custom_model_development"}
    return client, client.create_experiment(name, artifact_location=location, tags=tags)


def _parent_run(client: Any, experiment_id: str, params: Params, commit: str) -> str:
    """The pipeline execution's parent run.

    Stages run as separate processes (DVC), so they find their parent in the store: the newest
    RUNNING parent with the same params hash. The last stage (evaluate) finishes it, so the next
    execution, even with the same params, opens a new parent.
    """
    from mlflow.entities import Param

    phash = params_hash(params)
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`bedkd.role` = 'pipeline' and tags.params_hash = '{phash}' and attributes.status = 'RUNNING'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return str(found[0].info.run_id)
    tags = {**base_tags(params, commit), "bedkd.role": "pipeline", "stage": "pipeline"}
    run = client.create_run(experiment_id, tags=tags, run_name=f"pipeline-{phash[:8]}")
    client.log_batch(
        run.info.run_id,
        params=[Param(k, "null" if v is None else str(v)) for k, v in flatten(params.model_dump(mode="json")).items()],
    )
    return str(run.info.run_id)


@contextlib.contextmanager
def stage_run(params: Params, stage: str, params_path: Path | None = None, last_stage: bool = False) -> Iterator[NullTracker]:
    """Open the stage's nested child run under the pipeline's parent run.

    Logs the stage's params, tags and ``params.yaml`` / ``dvc.lock``; system metrics are on for
    training stages. ``last_stage`` marks the parent run finished when the stage succeeds.
    """
    if not get_settings().tracking:
        yield NullTracker()
        return
    import mlflow

    client, exp_id = _client_and_experiment(experiment_name(params))
    commit = git_commit()
    parent = _parent_run(client, exp_id, params, commit)
    tags = {**base_tags(params, commit), "stage": stage, "bedkd.role": "stage"}
    if stage in TRAINING_STAGES and not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(5)  # MLflow's default of 10 s misses short stages
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name=stage,
        parent_run_id=parent,
        tags=tags,
        log_system_metrics=stage in TRAINING_STAGES,
    ) as run:
        tracker = MlflowTracker(run.info.run_id, parent)
        tracker.log_params(stage_params(params, stage))
        root = project_root()
        for f in (params_path or root / "params.yaml", root / "dvc.lock"):
            tracker.log_artifact(f, "config")
        try:
            yield tracker
        except BaseException:
            client.set_terminated(parent, status="FAILED")
            raise
    if last_stage:
        client.set_terminated(parent, status="FINISHED")



@contextlib.contextmanager
def nested_run(
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[NullTracker]:
    """A run (optionally nested under ``parent_run_id``), e.g. a tuning study and its trials.

    An exception marks the run FAILED, or KILLED with tag ``state=PRUNED`` when it is a pruning
    signal (any exception class named ``TrialPruned``), then propagates.
    """
    if not get_settings().tracking:
        yield NullTracker()
        return
    client, exp_id = _client_and_experiment(experiment)
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    run_id = run.info.run_id
    tracker = MlflowTracker(run_id, parent_run_id or "")
    if params:
        tracker.log_params(params)
    try:
        yield tracker
    except BaseException as e:
        pruned = type(e).__name__ == "TrialPruned"
        client.set_tag(run_id, "state", "PRUNED" if pruned else "FAILED")
        client.set_terminated(run_id, status="KILLED" if pruned else "FAILED")
        raise
    client.set_tag(run_id, "state", "COMPLETE")
    client.set_terminated(run_id, status="FINISHED")
