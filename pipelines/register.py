"""register: register the cleaned student in the MLflow model registry with alias ``candidate``."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.errors import BedkdError
from bedkd.io import read_json
from bedkd.modeling import load_classifier
from bedkd.settings import get_settings
from bedkd.tracking import base_tags, experiment_name, git_commit
from bedkd.tracking.registry import data_evidence, register_student

log = logging.getLogger("bedkd.register")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("register", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    p.add_argument("--student", type=Path, default=Path("models/student"))
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    if not get_settings().tracking:
        raise BedkdError("register needs MLflow: tracking is off (BEDKD_TRACKING=false)")
    if not (args.student / "model.safetensors").is_file():
        raise BedkdError(f"{args.student / 'model.safetensors'}: file not found (run dvc repro first)")
    metrics = read_json(args.metrics)
    evidence, example = data_evidence(args.prepared, args.poisoned)
    tags = {**base_tags(params, git_commit()), **evidence}
    res = register_student(
        args.student, params.model_name, metrics, tags, experiment_name(params), example, load=load_classifier
    )
    verb = "registered" if res.created else "already registered:"
    print(f"{verb} {res.name} version {res.version}; alias candidate -> {res.version}")


if __name__ == "__main__":
    cli.run(main)
