"""distill: AKD, trust passes on clean rows and punish passes on the detected rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bedkd import cli
from bedkd.config import load_params
from bedkd.defender import pools_for
from bedkd.distill import Redetection, purify
from bedkd.errors import DataError
from bedkd.evaluate import cycle_evaluator, encode_eval_splits
from bedkd.io import atomic_dir, read_json, read_records, read_scores, write_json, write_text_atomic
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
    p.add_argument(
        "--selection", type=Path, default=Path("data/distill/selection.csv"),
        help="per training row: the score, punished and held-out flags of the last AKD round (evaluate grades it)",
    )
    args = p.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime()
    with stage_run(params, "distill", args.params) as tracker:
        clean_train = read_records(args.prepared / "clean" / "train.parquet")
        pools = pools_for(params, clean_train)
        clean = clean_train.iloc[pools.akd][["text", "label"]].reset_index(drop=True)
        # Every training row as detect saw it (text, file label, victim prediction) and its
        # selection; the punished label detect chose (-1: any).
        scores = read_scores(args.detect / "scores.csv", required=("victim_pred", "holdout"))
        train = scores[["text", "label"]]
        selected = read_scores(args.detect / "selected.csv")["index"].to_numpy()  # detect's rank order
        holdout = np.flatnonzero(scores["holdout"].to_numpy().astype(bool))
        if not pd.api.types.is_integer_dtype(scores["victim_pred"]):
            raise DataError(f"{args.detect / 'scores.csv'}: column 'victim_pred' must be integer")
        if len(selected) and (selected.min() < 0 or selected.max() >= len(scores)):
            raise DataError(f"{args.detect / 'selected.csv'}: column 'index' is not a row of scores.csv")
        target = int(read_json(args.detect / "summary.json").get("detect/target_label", -1))
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
        pur = purify(
            victim, clean, train, scores["victim_pred"].to_numpy(), selected, holdout, None if target < 0 else target, params.distill, params.detect, runtime,
            params.seed, params.model.max_length,
            # The defender's own validation rows: the DMM pool with its true labels (AKD never trains on it).
            validation_clean=clean_train.iloc[pools.dmm][["text", "label"]].reset_index(drop=True),
            evaluate=evaluate, callbacks=[tracker.callback], eval_batch_size=params.evaluate.batch_size,
            score=scores["score"].to_numpy(),
        )
        res = pur.result
        for red in pur.redetections:
            extra = {} if red.estimate is None else {"distill/redetect/estimate": float(red.estimate)}
            tracker.log_metrics({"distill/redetect/n_selected": float(len(red.selected)), "distill/redetect/round": float(red.round), **extra})
        tracker.log_metrics({"distill/chosen_cycle": float(res.chosen_cycle), "distill/chosen_round": float(res.chosen_round)})
        for g in pur.round_grades:  # distill.redetect_pick all: the shared validation's grade per round (0 = victim)
            tracker.log_metrics({f"distill/round_pick/{k}": v for k, v in g.items() if k != "round"}, step=int(g["round"]))
        if pur.calibration is not None:
            cal = pur.calibration
            tracker.log_metrics({
                "distill/calibrate/shift": cal.shift, "distill/calibrate/victim_count": float(cal.victim_count),
                "distill/calibrate/student_count": float(cal.student_count), "distill/calibrate/calibrated_count": float(cal.calibrated_count),
            })
        # The rows the returned student was punished on: its round's redetection, or DMM's own selection.
        last = (
            pur.redetections[res.chosen_round - 2] if res.chosen_round > 1
            else Redetection(round=1, score=scores["score"].to_numpy(), selected=selected, holdout=holdout)
        )
        with atomic_dir(args.out) as tmp:
            save_classifier(res.student, tmp)
        write_json(args.cycles, res.history)
        write_text_atomic(args.selection, last.frame(train).to_csv(index_label="index"))
        tracker.log_artifact(args.selection, "distill")
        tracker.log_artifact(args.cycles, "distill")
        tracker.log_model(res.student, "student", input_example=clean["text"].head(2).tolist())
    last = res.history[-1]
    log.info("distill final cycle dev CACC %.4f ASR %.4f", last.get("dev/cacc", float("nan")), last.get("dev/asr", float("nan")))


if __name__ == "__main__":
    cli.run(main)
