"""detect: the directional mapping module (DMM) of BeDKD, as released.

A copy of the victim is distilled from the victim on a small clean set with flipped labels. The
clean mapping breaks, the backdoor mapping (trigger -> target) has no flipped counter-examples and
survives, so rows on which the copy still agrees with the victim are suspicious.

This module sees the poisoned training set WITHOUT its ``is_poisoned`` column.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from bedkd.config import DetectParams
from bedkd.distillation import distill_pass, with_teacher
from bedkd.events import Callback, Event, emit
from bedkd.modeling import Classifier, Encoded, clone_classifier, encode, infer, pad_id_of
from bedkd.runtime import Runtime


@dataclass(frozen=True)
class DetectResult:
    student: Classifier  # the DMM copy after flip distillation
    scores: pd.DataFrame  # one row per training row: text, label, score, victim_pred, student_pred, selected
    selected: np.ndarray  # indices (into the training set) of the rows kept for punishing
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


def mapping_score(victim_probs: np.ndarray, student_probs: np.ndarray) -> np.ndarray:
    """mean_c |p_victim(c|x) - p_student(c|x)|, [N, k] x [N, k] -> [N]. Low = suspicious."""
    return np.abs(np.asarray(victim_probs) - np.asarray(student_probs)).mean(axis=1)


def select_released(
    score: np.ndarray,
    victim_pred: np.ndarray,
    file_label: np.ndarray,
    *,
    threshold: float,
    scan_size: int,
    keep: int,
    seed: int,
) -> np.ndarray:
    """The released selection rule.

    Scan rows in a seeded random order (the released code scans in file order, which leaks the
    poison layout), flag those with score < threshold, stop at ``scan_size`` flagged rows, keep
    those the victim predicts as their file label, return the first ``keep`` of them.
    """
    flagged = flagged_in_scan_order(score, threshold, seed)[:scan_size]
    agree = flagged[np.asarray(victim_pred)[flagged] == np.asarray(file_label)[flagged]]
    return agree[:keep]


def flagged_in_scan_order(score: np.ndarray, threshold: float, seed: int) -> np.ndarray:
    """Indices with score < threshold, in the seeded scan order the selection rule uses."""
    order = np.random.default_rng(seed).permutation(len(score))
    return order[np.asarray(score)[order] < threshold]


def flip_distill(
    victim: Classifier,
    flip_enc: Encoded,
    params: DetectParams,
    runtime: Runtime,
    seed: int,
    callbacks: Sequence[Callback] = (),
) -> tuple[Classifier, list[dict[str, float]]]:
    """Train the DMM copy: ``params.epochs`` passes of the distillation loss on the flipped set."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    need_hidden = params.loss.hidden_weight > 0
    data = with_teacher(victim, flip_enc, runtime, batch_size=256, hidden=need_hidden)
    student = clone_classifier(victim)
    student.model.to(runtime.device)
    opt = torch.optim.Adam(student.model.parameters(), lr=params.lr)
    history: list[dict[str, float]] = []
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        parts = distill_pass(student, data, params.loss, opt, runtime, rng, params.batch_size, desc=f"detect epoch {epoch}/{params.epochs}")
        metrics = {f"detect/train/{k}": v for k, v in parts.items()}
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append({"epoch": float(epoch), **metrics})
        emit(callbacks, Event("detect", epoch, metrics))
    student.model.eval()
    return student, history


def detect(
    victim: Classifier,
    train: pd.DataFrame,
    flip_set: pd.DataFrame,
    params: DetectParams,
    runtime: Runtime,
    seed: int,
    max_length: int,
    eval_batch_size: int = 256,
    callbacks: Sequence[Callback] = (),
) -> DetectResult:
    """Run DMM end to end. ``train`` must not carry ground truth (checked)."""
    if "is_poisoned" in train.columns:
        raise ValueError("detect must not see the is_poisoned column: pass io.drop_ground_truth(train)")
    tok = victim.tokenizer
    flip_enc = encode(tok, flip_set["text"].tolist(), flip_set["label"].to_numpy(), max_length)
    student, history = flip_distill(victim, flip_enc, params, runtime, seed, callbacks)

    train_enc = encode(tok, train["text"].tolist(), train["label"].to_numpy(), max_length)
    pad = pad_id_of(tok)
    p_victim = infer(victim.model, train_enc, runtime, eval_batch_size, pad, desc="detect: victim scoring").probs()
    p_student = infer(student.model, train_enc, runtime, eval_batch_size, pad, desc="detect: student scoring").probs()
    score = mapping_score(p_victim, p_student)
    v_pred = p_victim.argmax(1)
    s_pred = p_student.argmax(1)
    labels = train["label"].to_numpy()
    selected = select_released(
        score, v_pred, labels, threshold=params.threshold, scan_size=params.scan_size, keep=params.keep, seed=seed
    )
    is_sel = np.zeros(len(train), dtype=bool)
    is_sel[selected] = True
    scores = pd.DataFrame(
        {
            "text": train["text"].to_numpy(),
            "label": labels,
            "score": score,
            "victim_pred": v_pred,
            "student_pred": s_pred,
            "selected": is_sel,
        }
    )
    # How far the flip distillation moved the copy (no ground truth needed).
    p_flip = infer(student.model, flip_enc, runtime, eval_batch_size, pad).probs().argmax(1)
    summary = {
        "detect/agreement": float((v_pred == s_pred).mean()),
        "detect/flip_acc": float((p_flip == flip_set["label"].to_numpy()).mean()),
        "detect/n_flagged": float((score < params.threshold).sum()),
        "detect/n_selected": float(len(selected)),
    }
    return DetectResult(student=student, scores=scores, selected=selected, history=history, summary=summary)
