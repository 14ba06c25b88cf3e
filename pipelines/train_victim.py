"""train_victim: fine-tune the backbone on the poisoned training set (the suspect model)."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.evaluate import encode_eval_splits, evaluate_classifier
from bedkd.io import atomic_dir, drop_ground_truth, read_records, write_json
from bedkd.modeling import save_classifier
from bedkd.runtime import resolve_runtime
from bedkd.tracking import stage_run
from bedkd.train_victim import fit_classifier

log = logging.getLogger("bedkd.train_victim")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("train_victim", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    p.add_argument("--out", type=Path, default=Path("models/victim"))
    p.add_argument("--report", type=Path, default=Path("reports/train_victim.json"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime()
    with stage_run(params, "train_victim", args.params) as tracker:
        train = drop_ground_truth(read_records(args.poisoned / "train.parquet"))
        clf, history = fit_classifier(params, train, runtime, callbacks=[tracker.callback])
        dev = encode_eval_splits(
            clf,
            read_records(args.prepared / "clean" / "dev.parquet"),
            read_records(args.poisoned / "dev.parquet"),
            params.target_label,
            params.model.max_length,
        )
        res = evaluate_classifier(clf, dev, runtime, params.evaluate.batch_size, desc="victim dev")
        with atomic_dir(args.out) as tmp:
            save_classifier(clf, tmp)
        write_json(args.report, {"epochs": history.epochs, "dev/cacc": res.cacc, "dev/asr": res.asr})
        tracker.log_metrics({"victim/dev/cacc": res.cacc, "victim/dev/asr": res.asr})
        tracker.log_model(clf, "victim", input_example=train["text"].head(2).tolist())
    log.info("victim dev CACC %.4f ASR %.4f", res.cacc, res.asr)


if __name__ == "__main__":
    cli.run(main)
