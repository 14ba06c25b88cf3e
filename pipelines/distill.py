"""distill: AKD, trust passes on clean rows and punish passes on the detected rows."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.defender import pools_for
from bedkd.distill import Validation, akd
from bedkd.evaluate import cycle_evaluator, encode_eval_splits
from bedkd.io import atomic_dir, read_records, read_scores, write_json
from bedkd.modeling import load_classifier, save_classifier
from bedkd.runtime import resolve_runtime
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.distill")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("distill", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    p.add_argument("--victim", type=Path, default=Path("models/victim"))
    p.add_argument("--detect", type=Path, default=Path("data/detect"))
    p.add_argument("--out", type=Path, default=Path("models/student"))
    p.add_argument("--cycles", type=Path, default=Path("reports/distill/cycles.json"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime()
    with stage_run(params, "distill", args.params) as tracker:
        clean_train = read_records(args.prepared / "clean" / "train.parquet")
        pools = pools_for(params, clean_train)
        clean = clean_train.iloc[pools.akd][["text", "label"]].reset_index(drop=True)
        punish = read_scores(args.detect / "selected.csv")[["text", "label"]]
        scores = read_scores(args.detect / "scores.csv")
        held = scores["holdout"].to_numpy().astype(bool) if "holdout" in scores.columns else None
        # The defender's own validation rows: the DMM pool with its true labels (AKD never trains
        # on it) and the flagged rows DMM set aside.
        validation = Validation(
            clean=clean_train.iloc[pools.dmm][["text", "label"]].reset_index(drop=True),
            flagged=scores.loc[held, ["text", "label"]].reset_index(drop=True) if held is not None else scores.iloc[:0][["text", "label"]],
        )
        victim = load_classifier(str(args.victim), local=True)
        # Per-cycle curves on dev (clean dev + triggered dev): for plots only, never for selection.
        dev = encode_eval_splits(
            victim,
            read_records(args.prepared / "clean" / "dev.parquet"),
            read_records(args.poisoned / "dev.parquet"),
            params.target_label,
            params.model.max_length,
        )
        evaluate = cycle_evaluator(dev, runtime, params.evaluate.batch_size)
        res = akd(
            victim, clean, punish, params.distill, runtime, params.seed, params.model.max_length,
            evaluate, callbacks=[tracker.callback], validation=validation,
        )
        tracker.log_metrics({"distill/chosen_cycle": float(res.chosen_cycle)})
        with atomic_dir(args.out) as tmp:
            save_classifier(res.student, tmp)
        write_json(args.cycles, res.history)
        tracker.log_artifact(args.cycles, "distill")
        tracker.log_model(res.student, "student", input_example=clean["text"].head(2).tolist())
    last = res.history[-1]
    log.info("distill final cycle dev CACC %.4f ASR %.4f", last.get("dev/cacc", float("nan")), last.get("dev/asr", float("nan")))


if __name__ == "__main__":
    cli.run(main)
