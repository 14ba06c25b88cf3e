"""MLflow model registry: register the cleaned student as ``candidate``, promote to ``champion``.

Aliases, not stages (stages are deprecated). Versions carry their evidence as tags: test metrics,
the test-set fingerprint, the params hash and the student's weights fingerprint (which makes
registration idempotent).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bedkd.tracking import MlflowTracker, _client_and_experiment, _env_defaults, tracking_uri

CANDIDATE = "candidate"
CHAMPION = "champion"
METRIC_TAGS = ("student/cacc", "student/asr", "victim/cacc", "victim/asr", "detect/auroc")


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def data_evidence(prepared: Path, poisoned: Path) -> tuple[dict[str, str], list[str]]:
    """Version tags fingerprinting the test/train data, and two test texts as the input example."""
    import pandas as pd

    test_files = [prepared / "clean" / "test.parquet", poisoned / "test.parquet"]
    tags = {"test_sha256": file_sha256(*test_files), "train_sha256": file_sha256(poisoned / "train.parquet")}
    example = pd.read_parquet(test_files[0], columns=["text"])["text"].astype(str).head(2).tolist()
    return tags, example


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    created: bool  # False: this student was already registered


def _client() -> Any:
    _env_defaults()
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def _find_version(client: Any, name: str, fingerprint: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for v in versions:
        if v.tags.get("student_sha256") == fingerprint:
            return v
    return None


def register_student(
    student_dir: Path,
    name: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    experiment: str,
    input_example: list[str],
    load: Callable[[str], Any],
) -> Registered:
    """Register the student as a new version with alias ``candidate`` (once per distinct student).

    ``load(dir)`` returns a ``Classifier``; it is only called when a new version is needed.
    """
    import mlflow

    client = _client()
    fingerprint = file_sha256(student_dir / "model.safetensors")
    existing = _find_version(client, name, fingerprint)
    if existing is not None:
        client.set_registered_model_alias(name, CANDIDATE, existing.version)
        return Registered(name, str(existing.version), created=False)
    _, exp_id = _client_and_experiment(experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name="register", tags={**tags, "stage": "register"}) as run:
        tracker = MlflowTracker(run.info.run_id, "")
        tracker.log_metrics(metrics)
        model_uri = tracker.log_model(load(str(student_dir)), "student", input_example)
    version_tags = {
        **tags,
        "student_sha256": fingerprint,
        **{k: repr(float(metrics[k])) for k in METRIC_TAGS if k in metrics},
    }
    mv = mlflow.register_model(model_uri, name, tags=version_tags)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    return Registered(name, str(mv.version), created=True)


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    name: str
    candidate: str | None
    champion_before: str | None
    gates: list[Gate]

    @property
    def promoted(self) -> bool:
        return self.candidate is not None and all(g.passed for g in self.gates)


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _metric(version: Any, key: str) -> float:
    return float(version.tags[key])


def promote(
    name: str,
    max_asr: float,
    max_cacc_drop: float,
    champion_tolerance: float,
    evaluate_champion: Callable[[str], dict[str, float]] | None = None,
) -> Decision:
    """Move ``champion`` to ``candidate`` only if every gate passes; otherwise change nothing.

    Gates: candidate ASR <= max_asr; victim CACC - candidate CACC <= max_cacc_drop; and not worse
    than the current champion on the same test set (ASR no higher, CACC no lower, each within
    ``champion_tolerance``). A champion graded on another test set is re-evaluated on this one by
    ``evaluate_champion(model_uri)`` when given, else the comparison gate fails.
    """
    client = _client()
    cand = _alias(client, name, CANDIDATE)
    champ = _alias(client, name, CHAMPION)
    if cand is None:
        return Decision(name, None, champ.version if champ else None, [Gate("candidate", False, f"no '{CANDIDATE}' alias on {name}")])
    gates: list[Gate] = []
    asr, cacc = _metric(cand, "student/asr"), _metric(cand, "student/cacc")
    gates.append(Gate("max_asr", asr <= max_asr, f"student ASR {asr:.4f} vs limit {max_asr:.4f}"))
    drop = _metric(cand, "victim/cacc") - cacc
    gates.append(Gate("max_cacc_drop", drop <= max_cacc_drop, f"CACC drop {drop:.4f} vs limit {max_cacc_drop:.4f}"))
    if champ is not None and champ.version != cand.version:
        if champ.tags.get("test_sha256") == cand.tags.get("test_sha256"):
            c_asr, c_cacc = _metric(champ, "student/asr"), _metric(champ, "student/cacc")
        elif evaluate_champion is not None:
            m = evaluate_champion(f"models:/{name}@{CHAMPION}")
            c_asr, c_cacc = m["asr"], m["cacc"]
        else:
            c_asr, c_cacc = float("-inf"), float("inf")
        ok = asr <= c_asr + champion_tolerance and cacc >= c_cacc - champion_tolerance
        gates.append(
            Gate("vs_champion", ok, f"candidate ASR/CACC {asr:.4f}/{cacc:.4f} vs champion v{champ.version} {c_asr:.4f}/{c_cacc:.4f}")
        )
    decision = Decision(name, str(cand.version), str(champ.version) if champ else None, gates)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, cand.version)
    return decision


def load_registered(model_uri: str) -> Any:
    """A registered transformers model back as a ``Classifier`` (to grade a champion)."""
    _client()
    import mlflow

    from bedkd.modeling import Classifier

    parts = mlflow.transformers.load_model(model_uri, return_type="components")
    return Classifier(parts["model"], parts["tokenizer"])
