"""evaluate: CACC and ASR of a classifier on the clean and triggered splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bedkd.distill import CycleEval
from bedkd.metrics import accuracy, attack_success_rate
from bedkd.modeling import Classifier, Encoded, encode, predict_proba
from bedkd.runtime import Runtime


@dataclass(frozen=True)
class EvalSplits:
    """A clean split and its triggered counterpart, tokenised once."""

    clean: Encoded
    triggered: Encoded
    target: int


def encode_eval_splits(clf: Classifier, clean: pd.DataFrame, triggered: pd.DataFrame, target: int, max_length: int) -> EvalSplits:
    tok = clf.tokenizer
    return EvalSplits(
        clean=encode(tok, clean["text"].tolist(), clean["label"].to_numpy(), max_length),
        triggered=encode(tok, triggered["text"].tolist(), triggered["label"].to_numpy(), max_length),
        target=target,
    )


@dataclass(frozen=True)
class EvalResult:
    cacc: float
    asr: float
    clean_pred: np.ndarray
    triggered_pred: np.ndarray


def evaluate_classifier(clf: Classifier, splits: EvalSplits, runtime: Runtime, batch_size: int, desc: str | None = None) -> EvalResult:
    clean_pred = predict_proba(clf, splits.clean, runtime, batch_size, desc=desc and f"{desc} clean").argmax(1)
    trig_pred = predict_proba(clf, splits.triggered, runtime, batch_size, desc=desc and f"{desc} triggered").argmax(1)
    return EvalResult(
        cacc=accuracy(clean_pred, splits.clean.labels.numpy()),
        asr=attack_success_rate(trig_pred, splits.target),
        clean_pred=clean_pred,
        triggered_pred=trig_pred,
    )


def cycle_evaluator(splits: EvalSplits, runtime: Runtime, batch_size: int, prefix: str = "dev") -> CycleEval:
    """Per-cycle dev CACC / ASR for AKD's history (the research view; never used to pick a model)."""

    def run(student: Classifier) -> dict[str, float]:
        r = evaluate_classifier(student, splits, runtime, batch_size)
        return {f"{prefix}/cacc": r.cacc, f"{prefix}/asr": r.asr}

    return run


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    """[true][pred] counts."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(pred)), 1)
    return m.tolist()
