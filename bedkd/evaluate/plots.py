"""PNG plots of the pipeline outputs (DVC's HTML plots need a CDN; PNGs work offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def plot_cycles(history: Sequence[dict[str, float]], path: Path, victim: dict[str, float] | None = None) -> None:
    """Dev CACC and ASR per AKD cycle."""
    rows = [h for h in history if "dev/cacc" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        x = [h["cycle"] for h in rows]
        ax.plot(x, [h["dev/cacc"] for h in rows], marker=".", label="dev CACC")
        ax.plot(x, [h["dev/asr"] for h in rows], marker=".", label="dev ASR")
    if victim:
        ax.axhline(victim["cacc"], color="C0", ls=":", lw=1, label="victim test CACC")
        ax.axhline(victim["asr"], color="C1", ls=":", lw=1, label="victim test ASR")
    ax.set_xlabel("AKD cycle")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Adversarial distillation: per-cycle dev metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_detection(score: np.ndarray, is_poisoned: np.ndarray, path: Path, threshold: float | None = None) -> None:
    """Histogram of DMM scores by ground truth, and the ROC of -score."""
    score = np.asarray(score)
    y = np.asarray(is_poisoned, dtype=bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(0, max(float(score.max()), 1e-6), 40)
    ax1.hist(score[~y], bins=bins, alpha=0.6, label="clean rows", density=True)
    ax1.hist(score[y], bins=bins, alpha=0.6, label="poisoned rows", density=True)
    if threshold is not None:
        ax1.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold}")
    ax1.set_xlabel("DMM score mean|p_victim - p_student| (low = suspicious)")
    ax1.set_ylabel("density")
    ax1.legend(fontsize=8)
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, -score)
        ax2.plot(fpr, tpr)
    ax2.plot([0, 1], [0, 1], color="grey", ls=":")
    ax2.set_xlabel("false positive rate")
    ax2.set_ylabel("true positive rate")
    ax2.set_title("detection ROC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], path: Path, title: str) -> None:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(rows: Sequence[dict[str, float]], path: Path, title: str) -> None:
    """Every complete trial in (CACC, ASR), the Pareto front highlighted."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([r["cacc"] for r in rows], [r["asr"] for r in rows], c="lightgrey", edgecolors="grey", label="trials")
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["cacc"])
    if front:
        ax.plot([r["cacc"] for r in front], [r["asr"] for r in front], "o-", color="C3", label="Pareto front")
        for r in front:
            ax.annotate(str(int(r["number"])), (r["cacc"], r["asr"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("dev CACC (higher is better)")
    ax.set_ylabel("ASR (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
