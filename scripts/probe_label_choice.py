"""Research (not a pipeline stage): the ``detect.label_filter: probe`` label choice, per defender seed.

On one cell of the comparison harness (the same victim and defender pools as
``python -m pipelines.compare``), prints and records for each seed the punished label that the
probe filter picks, with each label's flag rate on the fitted training rows, on the defender's
clean reference rows (out of fold) and their difference (the excess the choice maximises). The
probe reads only the victim's embedding table, which rows the victim fits and the reference rows,
not the DMM copy, so this is the whole label choice of a ``bedkd`` run with the option, at the cost
of one victim pass over the training rows. ``is_poisoned`` is read for grading only. Records in
reports/compare/research-probe-label.json.

    python scripts/probe_label_choice.py --cell agnews/addsent --seeds 1,2,0 --out /tmp/probe.json
"""

from __future__ import annotations

import json
import time

import numpy as np

from bedkd.compare import cell_parser, defense_params, open_cell, seed_list
from bedkd.defender import defender_pools
from bedkd.detect import excess_label, probe_flags
from bedkd.io import drop_ground_truth, read_records
from bedkd.metrics import detection_metrics
from bedkd.modeling import encode, infer, pad_id_of, pooled_input_embeddings


def main() -> None:
    ap = cell_parser(__doc__, "agnews/addsent")
    args = ap.parse_args()
    oc = open_cell(args.params, args.cell)
    cp, folder, victim, runtime = oc.params, oc.folder, oc.victim, oc.runtime
    poisoned = read_records(folder / "poisoned" / "train.parquet", required=("text", "label", "is_poisoned"))
    is_poisoned = poisoned["is_poisoned"].to_numpy().astype(bool)
    train = drop_ground_truth(poisoned)
    clean_train = read_records(folder / "prepared" / "clean" / "train.parquet")
    tok, pad, max_length = victim.tokenizer, pad_id_of(victim.tokenizer), cp.model.max_length
    labels = train["label"].to_numpy()
    t0 = time.perf_counter()
    train_enc = encode(tok, train["text"].tolist(), labels, max_length)
    fits = infer(victim.model, train_enc, runtime, 256, pad).probs().argmax(1) == labels  # [N]
    train_x = pooled_input_embeddings(victim.model, train_enc, 256, pad, runtime.device)  # [N, H]
    scoring_s = time.perf_counter() - t0
    records: list[dict[str, object]] = []
    for seed in seed_list(args.seeds):
        t1 = time.perf_counter()
        p = defense_params(cp, "bedkd", seed)
        k = p.num_classes
        pools = defender_pools(clean_train["label"].to_numpy(), k, p.detect.flip_per_class, p.distill.clean_per_class, seed)
        ref = clean_train.iloc[pools.akd][["text", "label"]].reset_index(drop=True)  # the reference rows detect() gets
        ref_labels = ref["label"].to_numpy()
        ref_enc = encode(tok, ref["text"].tolist(), ref_labels, max_length)
        ref_fits = infer(victim.model, ref_enc, runtime, 256, pad).probs().argmax(1) == ref_labels
        ref_x = pooled_input_embeddings(victim.model, ref_enc, 256, pad, runtime.device)
        flags = probe_flags(train_x, labels, ref_x, ref_labels, seed)
        flagged, ref_flagged = flags.train & fits, flags.reference & ref_fits
        per_label = []
        for c in range(k):
            tr, rf = float(flagged[labels == c].mean()), float(ref_flagged[ref_labels == c].mean())
            per_label.append({"label": c, "train_rate": round(tr, 4), "ref_rate": round(rf, 4), "excess": round(tr - rf, 4)})
        none = np.zeros(len(labels), dtype=bool)
        rec: dict[str, object] = {
            "cell": args.cell, "seed": seed, "target_label": cp.target_label,
            "choice": excess_label(flagged, labels, ref_flagged, ref_labels, k),
            "per_label": per_label,
            "probe_auroc_all": round(detection_metrics((~flags.train).astype(float), is_poisoned, none).auroc, 4),
            "poisoned_flagged": round(float(flags.train[is_poisoned].mean()), 4) if is_poisoned.any() else None,
            "wall_s": round(time.perf_counter() - t1, 1), "victim_scoring_s": round(scoring_s, 1),
        }
        print(json.dumps(rec), flush=True)
        records.append(rec)
        args.out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
