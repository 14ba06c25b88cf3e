"""evaluate: victim and student CACC/ASR on test, detection quality, DVC metrics and plots."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bedkd import cli
from bedkd.config import load_params
from bedkd.errors import BedkdError, DataError
from bedkd.evaluate import confusion_matrix, encode_eval_splits, evaluate_classifier
from bedkd.evaluate.plots import plot_confusion, plot_cycles, plot_detection
from bedkd.io import atomic_dir, read_json, read_records, read_scores, write_json, write_metrics
from bedkd.metrics import detection_metrics
from bedkd.modeling import load_classifier
from bedkd.runtime import resolve_runtime
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.evaluate")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("evaluate", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    p.add_argument("--victim", type=Path, default=Path("models/victim"))
    p.add_argument("--student", type=Path, default=Path("models/student"))
    p.add_argument("--detect", type=Path, default=Path("data/detect"))
    p.add_argument("--cycles", type=Path, default=Path("reports/distill/cycles.json"))
    p.add_argument("--selection", type=Path, default=Path("data/distill/selection.csv"))
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    p.add_argument("--plots", type=Path, default=Path("reports/plots"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime()
    bs = params.evaluate.batch_size
    with stage_run(params, "evaluate", args.params, last_stage=True) as tracker:
        # Inputs first (a bad file fails before any model runs). Ground truth is read here, and
        # only here, to grade the detector.
        train = read_records(args.poisoned / "train.parquet", required=("text", "label", "is_poisoned"))
        scores = read_scores(args.detect / "scores.csv")
        # distill's last round (redetection: the purified student's scores and the rows it punished).
        final = read_scores(args.selection, required=("selected", "round"))
        for col, ok in (("selected", pd.api.types.is_bool_dtype), ("round", pd.api.types.is_integer_dtype)):
            if not ok(final[col]):
                raise DataError(f"{args.selection}: column {col!r} must be {'True/False' if col == 'selected' else 'integer'}")
        for path, df in ((args.detect / "scores.csv", scores), (args.selection, final)):
            if len(df) != len(train) or not (df["text"].to_numpy() == train["text"].to_numpy()).all():
                raise BedkdError(f"{path}: rows do not match {args.poisoned / 'train.parquet'}")
        victim = load_classifier(str(args.victim), local=True)
        student = load_classifier(str(args.student), local=True)
        test = encode_eval_splits(
            victim, read_records(args.prepared / "clean" / "test.parquet"), read_records(args.poisoned / "test.parquet"),
            params.target_label, params.model.max_length,
        )
        v = evaluate_classifier(victim, test, runtime, bs, desc="evaluate victim")
        s = evaluate_classifier(student, test, runtime, bs, desc="evaluate student")
        poisoned = train["is_poisoned"].to_numpy()
        det = detection_metrics(scores["score"].to_numpy(), poisoned, scores["selected"].to_numpy())
        fin = detection_metrics(final["score"].to_numpy(), poisoned, final["selected"].to_numpy())
        rounds = int(final["round"].max()) if len(final) else 1
        detect_summary = read_json(args.detect / "summary.json")
        metrics = {
            "victim/cacc": v.cacc,
            "victim/asr": v.asr,
            "student/cacc": s.cacc,
            "student/asr": s.asr,
            "detect/auroc": det.auroc,
            "detect/precision": det.precision,
            "detect/recall": det.recall,
            "detect/n_kept": det.n_kept,
            "detect/n_poisoned": det.n_poisoned,
            "detect/agreement": detect_summary["detect/agreement"],
            "detect/flip_acc": detect_summary["detect/flip_acc"],
            "detect/n_flagged": detect_summary["detect/n_flagged"],
            # What the returned student was punished on (= detect/* when distill.redetect is 0).
            "distill/selection/auroc": fin.auroc,
            "distill/selection/precision": fin.precision,
            "distill/selection/recall": fin.recall,
            "distill/selection/n_kept": fin.n_kept,
            "distill/selection/round": float(rounds),
        }
        write_metrics(args.metrics, metrics)
        k = params.num_classes
        clean_labels = test.clean.labels.numpy()
        with atomic_dir(args.plots) as tmp:
            plot_cycles(read_json(args.cycles), tmp / "cycles.png", {"cacc": v.cacc, "asr": v.asr})
            plot_detection(scores["score"].to_numpy(), poisoned, tmp / "detection.png", params.detect.threshold)
            if rounds > 1:
                plot_detection(final["score"].to_numpy(), poisoned, tmp / "redetection.png", params.detect.threshold)
            confusion = {
                "victim": confusion_matrix(v.clean_pred, clean_labels, k),
                "student": confusion_matrix(s.clean_pred, clean_labels, k),
            }
            for name, m in confusion.items():
                plot_confusion(m, tmp / f"confusion_{name}.png", f"{name}: clean test")
            write_json(tmp / "confusion.json", confusion)
        tracker.log_metrics(metrics, on_parent=True)
        tracker.log_artifact(args.metrics)
        for f in sorted(args.plots.iterdir()):
            tracker.log_artifact(f, "plots")
    log.info("metrics %s", metrics)


if __name__ == "__main__":
    cli.run(main)
