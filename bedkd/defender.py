"""The defender's small clean budget, drawn once and shared by detect and distill.

Per class, one seeded permutation of the clean train rows: the first ``flip_per_class`` rows go
to DMM's flipped set, the next ``clean_per_class`` to AKD's trust set, so the two never overlap.
Dev and test rows are never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bedkd.config import Params
from bedkd.errors import DataError


@dataclass(frozen=True)
class DefenderPools:
    dmm: np.ndarray  # row indices into the clean train split
    akd: np.ndarray


def defender_pools(labels: np.ndarray, num_classes: int, flip_per_class: int, clean_per_class: int, seed: int) -> DefenderPools:
    rng = np.random.default_rng(seed)
    dmm: list[np.ndarray] = []
    akd: list[np.ndarray] = []
    for c in range(num_classes):
        rows = np.flatnonzero(np.asarray(labels) == c)
        need = flip_per_class + clean_per_class
        if len(rows) < need:
            raise DataError(f"defender budget: class {c} has {len(rows)} clean train rows, need {need}")
        perm = rng.permutation(rows)
        dmm.append(perm[:flip_per_class])
        akd.append(perm[flip_per_class:need])
    return DefenderPools(dmm=np.sort(np.concatenate(dmm)), akd=np.sort(np.concatenate(akd)))


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Binary: 1 - y; k classes: (y + 1) mod k."""
    labels = np.asarray(labels, dtype=np.int64)
    return (1 - labels) if num_classes == 2 else (labels + 1) % num_classes


def flipped_set(clean_train: pd.DataFrame, rows: np.ndarray, num_classes: int, flip_ratio: float, seed: int) -> pd.DataFrame:
    """DMM's training rows: a seeded ``flip_ratio`` share of them get a flipped label."""
    df = clean_train.iloc[rows][["text", "label"]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    n_flip = int(round(flip_ratio * len(df)))
    flip = np.zeros(len(df), dtype=bool)
    flip[rng.choice(len(df), size=n_flip, replace=False)] = True
    true = df["label"].to_numpy()
    df["true_label"] = true
    df["flipped"] = flip
    df["label"] = np.where(flip, flip_labels(true, num_classes), true)
    return df


def pools_for(params: Params, clean_train: pd.DataFrame) -> DefenderPools:
    """The pools for a params set (detect, distill and tune all draw them this way)."""
    return defender_pools(
        clean_train["label"].to_numpy(),
        params.num_classes,
        params.detect.flip_per_class,
        params.distill.clean_per_class,
        params.seed,
    )
