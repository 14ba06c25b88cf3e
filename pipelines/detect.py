"""detect: DMM flip distillation, score every training row, select rows to punish."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.defender import flipped_set, pools_for
from bedkd.detect import detect
from bedkd.io import atomic_dir, drop_ground_truth, read_records, write_json
from bedkd.modeling import load_classifier, save_classifier
from bedkd.runtime import resolve_runtime
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.detect")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("detect", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    p.add_argument("--victim", type=Path, default=Path("models/victim"))
    p.add_argument("--out", type=Path, default=Path("data/detect"))
    p.add_argument("--out-model", type=Path, default=Path("models/dmm"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime()
    with stage_run(params, "detect", args.params) as tracker:
        # What a defender has: the training set without ground truth, and a few clean rows.
        train = drop_ground_truth(read_records(args.poisoned / "train.parquet"))
        clean_train = read_records(args.prepared / "clean" / "train.parquet")
        pools = pools_for(params, clean_train)
        flip = flipped_set(clean_train, pools.dmm, params.num_classes, params.detect.flip_ratio, params.seed)
        victim = load_classifier(str(args.victim), local=True)
        res = detect(
            victim, train, flip, params.detect, runtime, params.seed, params.model.max_length,
            params.evaluate.batch_size, callbacks=[tracker.callback],
            reference=clean_train.iloc[pools.akd][["text", "label"]].reset_index(drop=True),
        )
        with atomic_dir(args.out_model) as tmp:
            save_classifier(res.student, tmp)
        with atomic_dir(args.out) as tmp:
            res.scores.to_csv(tmp / "scores.csv", index_label="index")
            res.scores.iloc[res.selected].to_csv(tmp / "selected.csv", index_label="index")
            write_json(tmp / "summary.json", res.summary)
            write_json(tmp / "history.json", res.history)
        tracker.log_metrics(res.summary)
        tracker.log_artifact(args.out / "selected.csv", "detect")
        tracker.log_artifact(args.out / "scores.csv", "detect")
    log.info("detect %s", res.summary)


if __name__ == "__main__":
    cli.run(main)
