"""Research (not a pipeline stage): what ``distill.calibrate: label_bias`` does to a ``bedkd`` student.

On one cell of the comparison harness (same victim, defender pools and runs as
``python -m pipelines.compare``), trains the ``bedkd`` student of each seed once with
``distill.calibrate: none``, grades it on test, then applies the label-bias calibration that the
option would apply (fitted on the defender's clean validation rows, no test data, no trigger) and
grades it again. Per seed it records CACC / ASR before and after, per-label test recall before and
after (is the CACC drop a pull away from the punished label?), the victim's per-label recall and
the fitted shift. ``is_poisoned`` is read for grading only. Records in
reports/compare/research-calibration.json.

    python scripts/calibration_check.py --cell sst-2/syntactic --seeds 1,0,2 --out /tmp/cal.json
"""

from __future__ import annotations

import json

import numpy as np

from bedkd.compare import cell_parser, defend, defense_params, load_cell, open_cell, seed_list
from bedkd.config import with_overrides
from bedkd.defender import defender_pools
from bedkd.distill import calibrate_label_bias
from bedkd.evaluate import EvalResult, evaluate_classifier


def recall_per_label(r: EvalResult, labels: np.ndarray, k: int) -> list[float]:
    return [round(float((r.clean_pred[labels == c] == c).mean()), 4) for c in range(k)]


def main() -> None:
    ap = cell_parser(__doc__, "sst-2/syntactic")
    args = ap.parse_args()
    oc = open_cell(args.params, args.cell)
    # The student is calibrated here, after grading it as is: train it without the option.
    cp = with_overrides(oc.params, {"distill.calibrate": "none"}, str(args.params))
    cell = load_cell(cp, oc.folder, oc.victim, oc.runtime)
    bs, k = cp.evaluate.batch_size, cp.num_classes
    test_labels = cell.test.clean.labels.numpy()
    victim_eval = evaluate_classifier(cell.victim, cell.test, oc.runtime, bs)
    records: list[dict[str, object]] = []
    for seed in seed_list(args.seeds):
        p = defense_params(cp, "bedkd", seed)
        d = defend(cell, "bedkd", seed, oc.runtime)
        if d.punished_label is None:
            raise SystemExit(f"{args.cell} seed {seed}: detect punished no single label (detect.label_filter none)")
        before = evaluate_classifier(d.student, cell.test, oc.runtime, bs)
        pools = defender_pools(cell.clean_train["label"].to_numpy(), k, p.detect.flip_per_class, p.distill.clean_per_class, seed)
        val = cell.clean_train.iloc[pools.dmm][["text", "label"]].reset_index(drop=True)
        cal = calibrate_label_bias(d.student, cell.victim, val, d.punished_label, oc.runtime, cp.model.max_length, bs)
        after = evaluate_classifier(d.student, cell.test, oc.runtime, bs)
        rec: dict[str, object] = {
            "cell": args.cell, "seed": seed, "punished_label": d.punished_label, "chosen_cycle": d.chosen_cycle,
            "victim": {"cacc": round(cell.victim_cacc, 4), "asr": round(cell.victim_asr, 4), "recall": recall_per_label(victim_eval, test_labels, k)},
            "before": {"cacc": round(before.cacc, 4), "asr": round(before.asr, 4), "recall": recall_per_label(before, test_labels, k)},
            "after": {"cacc": round(after.cacc, 4), "asr": round(after.asr, 4), "recall": recall_per_label(after, test_labels, k)},
            "shift": round(cal.shift, 4), "val_rows": len(val), "victim_count": cal.victim_count,
            "student_count": cal.student_count, "calibrated_count": cal.calibrated_count,
            "val_acc": None if d.validation is None else round(d.validation.acc, 4),
            "victim_val_acc": None if d.validation is None else round(d.validation.victim_acc, 4),
            "wall_s": round(d.wall_s, 1),
        }
        print(json.dumps(rec), flush=True)
        records.append(rec)
        args.out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
