"""Research (not a pipeline stage): grade other rankings of a finished run's training rows offline.

Reads the ``<record>.scores.parquet`` files that ``python -m pipelines.compare`` writes beside each
detecting run's cached record (columns ``label``, ``is_poisoned``, ``score_r<k>``, ``selected_r<k>``;
k = 1 is the detector's round, k >= 2 the redetections) and grades, per round and for a rank
combination of the detector's round with the last redetection:

  - ``all``: AUROC over every training row of the score as it is (the table's ``detect_auroc``);
  - ``all_behind``: the same with every row the victim does not fit ranked behind every fitted row
    (``detect.unfitted: behind``'s convention, whatever the run reported; equal to ``all`` there);
  - ``label``: AUROC of the ranking selection actually orders: rows outside the punished label
    (the label of the round's selected rows) ranked behind every row of it;
  - ``fit_target``: AUROC over the fitted rows of the punished label only (no help from the label
    choice);
  - the rank combinations: mean (weights 0.25 / 0.5 / 0.75 on round 1) and minimum of the two
    rounds' percentile ranks among the punished label's fitted rows, and the 0.5 mean among the
    rows the last round's 0.5 threshold flags (the candidates select_rank orders);
  - ``precision`` of the first ``n_kept`` rows of that ranking (``n_kept`` = the last round's
    punish-set size), against the run's own selection.

A row is "fitted" when the victim predicts its file label: the ``victim_fits`` column, or, in
files written before it existed (all with ``detect.unfitted: behind``), when no round pushed it
behind (every score < 1: the detector and the redetection add 1 where the victim does not predict
the file label). ``is_poisoned`` is read for grading only: nothing here feeds a run.

    python scripts/round_scores.py .cache/bedkd/compare/*.scores.parquet --out /tmp/rounds.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from bedkd.metrics import detection_metrics


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    """Low score = suspicious (the harness's grading, nothing kept)."""
    return detection_metrics(score, y, np.zeros(len(y), dtype=bool)).auroc


def within_rank(score: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[N] percentile rank in (0, 1] of ``score`` among ``rows`` (bool), 2 elsewhere (behind)."""
    out = np.full(len(score), 2.0)
    out[rows] = rankdata(score[rows]) / rows.sum()
    return out


def grade(frame: pd.DataFrame) -> dict[str, object]:
    y = frame["is_poisoned"].to_numpy().astype(bool)
    labels = frame["label"].to_numpy()
    rounds = sorted(int(c.removeprefix("score_r")) for c in frame.columns if c.startswith("score_r"))
    scores = {k: frame[f"score_r{k}"].to_numpy() for k in rounds}
    sel = {k: frame[f"selected_r{k}"].to_numpy().astype(bool) for k in rounds}
    if "victim_fits" in frame.columns:
        fitted = frame["victim_fits"].to_numpy().astype(bool)
    else:
        fitted = np.logical_and.reduce([s < 1.0 for s in scores.values()])
    last = rounds[-1]
    punished = np.unique(labels[sel[last]])
    if len(punished) != 1:
        raise ValueError(f"the last round punished labels {punished.tolist()}: expected one")
    lab = labels == punished[0]
    pool = fitted & lab
    n_kept = int(sel[last].sum())

    def one(s: np.ndarray) -> dict[str, float]:
        ranked = np.where(lab, s, s + 10.0)  # the label's rows first, in the score's order
        top = np.zeros(len(s), dtype=bool)
        top[np.lexsort((np.arange(len(s)), ranked))[:n_kept]] = True
        m = detection_metrics(ranked, y, top)
        return {
            "all": round(auroc(s, y), 4),
            "all_behind": round(auroc(np.where(fitted, s, 2.0 + s), y), 4),  # every score here is < 2 on unfitted rows
            "label": round(m.auroc, 4),
            "fit_target": round(auroc(s[pool], y[pool]), 4),
            "precision": round(m.precision, 4),
        }

    out: dict[str, object] = {
        "n_rows": len(y), "n_poisoned": int(y.sum()), "punished_label": int(punished[0]), "n_kept": n_kept,
        "run_precision": round(float(y[sel[last]].mean()), 4),
    }
    for k in rounds:
        out[f"r{k}"] = one(scores[k])
    if last > 1:
        r1, rl = within_rank(scores[1], pool), within_rank(scores[last], pool)
        for w in (0.25, 0.5, 0.75):
            out[f"rank_r1_r{last}_w{w}"] = one(w * r1 + (1 - w) * rl)
        out[f"rank_min_r1_r{last}"] = one(np.minimum(r1, rl))
        # Label-free: the mean of the two scores themselves (both in (0, 1) on fitted rows, +1 off).
        out[f"mean_r1_r{last}"] = one(0.5 * (scores[1] + scores[last]))
        # The same mean among the rows the last round's threshold flags (select_rank's candidates).
        cand = pool & (scores[last] < 0.5)
        c1, cl = within_rank(scores[1], cand), within_rank(scores[last], cand)
        out[f"rank_r1_r{last}_w0.5_flagged"] = one(np.where(cand, 0.5 * c1 + 0.5 * cl, 2.0 + rl))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parquets", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = {str(p): grade(pd.read_parquet(p)) for p in args.parquets}
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
