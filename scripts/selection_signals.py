"""Research (not a pipeline stage): would a larger defender-side signal pick a better AKD cycle?

`select: best` keeps the cycle with the lowest proxy ASR among cycles whose accuracy on the
defender's 160 validation rows is within ``max_val_drop`` of the victim's. Those rows are training
rows the victim memorised, and 160 of them cannot resolve a 1-point CACC difference. A defender
also holds the whole (poisoned) training set: its least suspicious rows by the DMM score are almost
all clean, and there are thousands of them. This script traces, for every AKD cycle of the
``bedkd`` defense of one cell, what the student predicts on a seeded sample of training rows
(signal candidates) next to its test CACC / ASR / per-label recall (read here only to grade the
candidates, never to pick). The run itself is the harness's (``bedkd.compare.defend``, same
victim, pools and params), so its chosen model is the table's.

Writes a JSON summary (one record per seed and cycle) and an ``.npz`` beside it with the raw
per-cycle predictions on the sample, the DMM score, file labels, the victim's predictions and
``is_poisoned`` (grading only), so other selection rules can be replayed offline.

    python scripts/selection_signals.py --cell sst-2/syntactic --seeds 1,0,2 --out /tmp/sig.json
"""

from __future__ import annotations

import json

import numpy as np

from bedkd.compare import cell_parser, defend, load_cell, open_cell, seed_list
from bedkd.evaluate import evaluate_classifier
from bedkd.modeling import Classifier, encode, predict_proba

SAMPLE_ROWS = 3000


def share(hits: np.ndarray) -> float | None:
    """Mean of a boolean array; None when it is empty (no row of that label in the sample)."""
    return float(hits.mean()) if len(hits) else None


def main() -> None:
    ap = cell_parser(__doc__, "sst-2/syntactic")
    args = ap.parse_args()
    oc = open_cell(args.params, args.cell)
    cell = load_cell(oc.params, oc.folder, oc.victim, oc.runtime)
    bs, k, rt = oc.params.evaluate.batch_size, oc.params.num_classes, oc.runtime
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(cell.train), size=min(SAMPLE_ROWS, len(cell.train)), replace=False))
    rows = cell.train.iloc[sample]
    sample_enc = encode(oc.victim.tokenizer, rows["text"].tolist(), rows["label"].to_numpy(), oc.params.model.max_length)
    file_label = rows["label"].to_numpy()
    victim_pred = cell.victim_train_probs[sample].argmax(1)
    test_labels = cell.test.clean.labels.numpy()
    victim_test = evaluate_classifier(cell.victim, cell.test, rt, bs)
    records: list[dict[str, object]] = []
    raw: dict[str, np.ndarray] = {
        "sample": sample, "file_label": file_label, "victim_pred": victim_pred,
        "is_poisoned": cell.is_poisoned[sample], "test_labels": test_labels, "victim_test_pred": victim_test.clean_pred,
    }
    for seed in seed_list(args.seeds):
        calls: list[dict[str, np.ndarray | float]] = []

        def trace(student: Classifier) -> dict[str, float]:
            t = evaluate_classifier(student, cell.test, rt, bs)
            calls.append({"test_pred": t.clean_pred, "train_pred": predict_proba(student, sample_enc, rt, bs).argmax(1), "cacc": t.cacc, "asr": t.asr})
            return {"dev/cacc": t.cacc, "dev/asr": t.asr}

        d = defend(cell, "bedkd", seed, rt, evaluate=trace)
        assert d.validation is not None and d.dmm_score is not None
        raw[f"s{seed}_dmm_score"] = d.dmm_score[sample]
        raw[f"s{seed}_train_pred"] = np.stack([np.asarray(c["train_pred"]) for c in calls])
        raw[f"s{seed}_test_pred"] = np.stack([np.asarray(c["test_pred"]) for c in calls])
        cycles = [h for h in d.validation.history if h["cycle"] >= 1]
        assert len(cycles) == len(calls), (len(cycles), len(calls))
        for h, c in zip(cycles, calls, strict=True):
            tp, trp = np.asarray(c["test_pred"]), np.asarray(c["train_pred"])
            records.append({
                "cell": args.cell, "seed": seed, "round": h.get("round", 1.0), "cycle": h["cycle"],
                "val_acc": h["val/acc"], "proxy_asr": h.get("val/proxy_asr"), "victim_val_acc": d.validation.victim_acc,
                "test_cacc": float(c["cacc"]), "test_asr": float(c["asr"]),
                "test_recall": [share(tp[test_labels == j] == j) for j in range(k)],
                "train_agree_victim": [share(trp[victim_pred == j] == j) for j in range(k)],
                "chosen": h.get("round", 1.0) == cycles[-1].get("round", 1.0) and h["cycle"] == d.chosen_cycle,
                "punished_label": d.punished_label,
            })
        print(json.dumps({"seed": seed, "chosen_cycle": d.chosen_cycle, "wall_s": round(d.wall_s, 1)}), flush=True)
        args.out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(args.out.with_suffix(".npz"), **raw)
    victim_rec = {"cacc": victim_test.cacc, "asr": cell.victim_asr, "recall": [share(victim_test.clean_pred[test_labels == j] == j) for j in range(k)]}
    args.out.with_suffix(".victim.json").write_text(json.dumps(victim_rec, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
