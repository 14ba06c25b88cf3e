"""CACC, ASR and detection metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """CACC on a clean split: share of rows predicted as their label."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float((pred == labels).mean())


def attack_success_rate(pred: np.ndarray, target: int) -> float:
    """ASR on a triggered split of non-target rows: share predicted as the target label."""
    pred = np.asarray(pred)
    if len(pred) == 0:
        return float("nan")
    return float((pred == target).mean())


@dataclass(frozen=True)
class DetectionMetrics:
    auroc: float  # of the suspicion (-score) against ground truth
    precision: float  # share of kept rows that are poisoned
    recall: float  # share of poisoned rows that were kept
    n_kept: int
    n_poisoned: int


def detection_metrics(score: np.ndarray, is_poisoned: np.ndarray, kept: np.ndarray) -> DetectionMetrics:
    """``score``: low = suspicious (DMM). ``kept``: boolean mask of the selected rows."""
    y = np.asarray(is_poisoned, dtype=bool)
    kept = np.asarray(kept, dtype=bool)
    n_pos = int(y.sum())
    auroc = float(roc_auc_score(y, -np.asarray(score))) if 0 < n_pos < len(y) else float("nan")
    n_kept = int(kept.sum())
    tp = int((kept & y).sum())
    return DetectionMetrics(
        auroc=auroc,
        precision=tp / n_kept if n_kept else 0.0,
        recall=tp / n_pos if n_pos else 0.0,
        n_kept=n_kept,
        n_poisoned=n_pos,
    )
