"""Research (not a pipeline stage): which detector signals separate a cell's poisoned rows?

Grades, on one cell of the comparison harness (the same victim and defender pools as
``python -m pipelines.compare``), the detector AUROC of
  - the DMM copy's agreement score, one copy and the mean of ``--copies`` copies (seeds s + 1000 k,
    the same flipped rows): does averaging copies remove the seed-to-seed spread of the DMM?
  - linear probes trained on the defender's clean rows (flipped + trust pools, true labels) over
    mean-pooled hidden states of the victim (every layer) and of the pretrained backbone (input
    embeddings and last layer): p_probe(file label), low = suspicious;
  - novelty: mean cosine similarity to the 10 nearest clean rows;
  - ``detect.score: shift`` (bedkd.detect.shift_scores: the whitened mean shift of each label's
    training rows from the defender's clean rows of it, over the victim's layers), alone and in a
    rank sum with the DMM score;
  - the rank sum of a probe and the DMM score (two signals with different failure modes).
AUROC is computed over all training rows (``all``) and over the rows selection actually ranks:
fitted by the victim, labelled with the target label (``fit_target``). ``is_poisoned`` is read
for grading only. Results in README "Results"; records in reports/compare/research-*.json.

    python scripts/detector_signals.py --cell sst-2/style --seeds 0,1 --copies 5 --out /tmp/style.json
    python scripts/detector_signals.py --cell sst-2/syntactic --seeds 0,1,2 --copies 0 --out /tmp/syn.json   # shift only
"""

from __future__ import annotations

import json
import time

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel

from bedkd.compare import cell_parser, defense_params, load_cell, open_cell, seed_list
from bedkd.defender import defender_pools, flipped_set
from bedkd.detect import agreement_score, excess_label, flip_distill, shift_reference, shift_scores
from bedkd.metrics import detection_metrics
from bedkd.modeling import encode, infer, pad_id_of, pooled_hidden_states, resolve_backbone


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = cell_parser(__doc__, "sst-2/style", seeds="0,1")
    ap.add_argument("--copies", type=int, default=5, help="DMM copies per seed; 0 = the shift score only")
    args = ap.parse_args()
    oc = open_cell(args.params, args.cell)
    cp, folder, victim, runtime = oc.params, oc.folder, oc.victim, oc.runtime
    cell = load_cell(cp, folder, victim, runtime)
    # Binary or not, the target label is the one the harness grades ASR against.
    labels = cell.train["label"].to_numpy()
    texts = cell.train["text"].tolist()
    poisoned = cell.is_poisoned
    v_probs = cell.victim_train_probs
    fit_target = (v_probs.argmax(1) == labels) & (labels == cp.target_label)
    pad = pad_id_of(victim.tokenizer)
    train_enc = encode(victim.tokenizer, texts, labels, cp.model.max_length)
    # safetensors only, no remote code: the pretrained backbone the victim was fine-tuned from.
    models = {"victim": victim.model}
    if args.copies > 0:  # --copies 0: the shift score alone (no DMM copy, no probes)
        models["pretrained"] = AutoModel.from_pretrained(resolve_backbone(cp.model.backbone), use_safetensors=True, trust_remote_code=False)
    # One encoding of the training rows serves the DMM scoring and the state extractions.
    states = {name: pooled_hidden_states(m, train_enc, 256, pad, runtime) for name, m in models.items()}

    def auroc(score: np.ndarray) -> dict[str, float]:
        none = np.zeros(len(score), dtype=bool)
        return {
            "all": round(detection_metrics(score, poisoned, none).auroc, 4),
            "fit_target": round(detection_metrics(score[fit_target], poisoned[fit_target], none[fit_target]).auroc, 4),
        }

    records: list[dict[str, object]] = []
    for seed in seed_list(args.seeds):
        p = defense_params(cp, "bedkd", seed)
        pools = defender_pools(cell.clean_train["label"].to_numpy(), p.num_classes, p.detect.flip_per_class, p.distill.clean_per_class, seed)
        flip = flipped_set(cell.clean_train, pools.dmm, p.num_classes, p.detect.flip_ratio, seed)
        flip_enc = encode(victim.tokenizer, flip["text"].tolist(), flip["label"].to_numpy(), cp.model.max_length)
        copies: list[np.ndarray] = []
        rec: dict[str, object] = {"cell": args.cell, "seed": seed, "dmm": []}
        # detect.score shift, as detect() computes it: the victim's layers against the whole clean
        # budget (AKD rows + DMM rows with their true labels, bedkd.detect.shift_reference).
        ref = shift_reference(cell.clean_train.iloc[pools.akd][["text", "label"]].reset_index(drop=True), flip)
        ref_labels = ref["label"].to_numpy()
        ref_enc = encode(victim.tokenizer, ref["text"].tolist(), ref_labels, cp.model.max_length)
        ref_states = {name: pooled_hidden_states(m, ref_enc, 256, pad, runtime) for name, m in models.items()}
        shift = shift_scores(states["victim"], labels, ref_states["victim"], ref_labels, p.num_classes, dims=p.detect.shift_dims)
        rec["shift"] = auroc(shift.train + (v_probs.argmax(1) != labels))
        # label_filter excess on the shift score: each label's flag rate at 0.5 (fitted rows) minus its clean rows'
        fits, ref_fits = v_probs.argmax(1) == labels, infer(victim.model, ref_enc, runtime, 256, pad).probs().argmax(1) == ref_labels
        rec["shift_excess"] = [
            round(float((shift.train[fits & (labels == c)] < 0.5).mean() - (shift.reference[ref_fits & (ref_labels == c)] < 0.5).mean()), 4)
            for c in range(p.num_classes)
        ]
        rec["shift_label"] = excess_label((shift.train < 0.5) & fits, labels, (shift.reference < 0.5) & ref_fits, ref_labels, p.num_classes)
        print(json.dumps({"seed": seed, "shift": rec["shift"], "shift_excess": rec["shift_excess"], "shift_label": rec["shift_label"]}), flush=True)
        if args.copies == 0:
            records.append(rec)
            args.out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
            continue
        for k in range(args.copies):
            t0 = time.perf_counter()
            copy, hist = flip_distill(victim, flip_enc, p.detect, runtime, seed + 1000 * k)
            copies.append(infer(copy.model, train_enc, runtime, 256, pad).probs())
            rec["dmm"].append({  # type: ignore[union-attr]
                "copy": k, "epochs": len(hist), "wall_s": round(time.perf_counter() - t0, 1),
                "single": auroc(agreement_score(v_probs, copies[-1], labels)),
                "mean_of_copies": auroc(agreement_score(v_probs, np.mean(copies, axis=0), labels)),
            })
        dmm = agreement_score(v_probs, copies[0], labels)
        rec["shift+dmm"] = auroc(rankdata(shift.train) + rankdata(dmm))
        for name, x_all in states.items():
            layers = range(x_all.shape[1]) if name == "victim" else (0, x_all.shape[1] - 1)
            for layer in layers:
                x, r = unit(x_all[:, layer]), unit(ref_states[name][:, layer])
                novelty = np.sort(x @ r.T, axis=1)[:, -10:].mean(1)  # [N]: high = close to clean rows
                probe = LogisticRegression(C=1.0, max_iter=3000).fit(r, ref_labels)
                p_label = probe.predict_proba(x)[np.arange(len(x)), labels]
                rec[f"{name}/layer{layer}"] = {
                    "novelty": auroc(novelty),
                    "probe": auroc(p_label),
                    "probe+dmm": auroc(rankdata(p_label) + rankdata(dmm)),
                }
        print(json.dumps(rec), flush=True)
        records.append(rec)
        args.out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
