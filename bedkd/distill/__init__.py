"""distill: adversarial knowledge distillation (AKD) of BeDKD, as released.

The student starts as a copy of the victim (the teacher). Each cycle runs one *trust* pass
(minimise L on the defender's clean rows) and one *punish* pass (minimise -punish_weight * L on
the rows DMM selected). The final cycle's model is the output: no selection on test data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bedkd.config import DistillParams
from bedkd.distillation import distill_pass, with_teacher
from bedkd.events import Callback, Event, emit
from bedkd.modeling import Classifier, clone_classifier, encode
from bedkd.runtime import Runtime

# Called after a cycle with the student; returns e.g. {"dev/cacc": .., "dev/asr": ..}.
CycleEval = Callable[[Classifier], dict[str, float]]


@dataclass(frozen=True)
class DistillResult:
    student: Classifier
    history: list[dict[str, float]] = field(default_factory=list)


def akd(
    victim: Classifier,
    clean: pd.DataFrame,
    punish: pd.DataFrame,
    params: DistillParams,
    runtime: Runtime,
    seed: int,
    max_length: int,
    evaluate: CycleEval | None = None,
    callbacks: Sequence[Callback] = (),
) -> DistillResult:
    """Run AKD. ``clean``/``punish``: frames with text and label (punish: the detected rows)."""
    if "is_poisoned" in punish.columns or "is_poisoned" in clean.columns:
        raise ValueError("distill must not see the is_poisoned column")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = victim.tokenizer
    need_hidden = params.loss.hidden_weight > 0
    trust_set = with_teacher(victim, encode(tok, clean["text"].tolist(), clean["label"].to_numpy(), max_length), runtime, 256, need_hidden)
    punish_set = None
    if len(punish) and params.punish_weight > 0:
        punish_set = with_teacher(victim, encode(tok, punish["text"].tolist(), punish["label"].to_numpy(), max_length), runtime, 256, need_hidden)
    student = clone_classifier(victim)
    student.model.to(runtime.device)
    opt = torch.optim.Adam(student.model.parameters(), lr=params.lr)
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, params.cycles + 1), desc="distill cycles", disable=not runtime.progress)
    for cycle in bar:
        t0 = time.perf_counter()
        trust = distill_pass(student, trust_set, params.loss, opt, runtime, rng, params.batch_size)
        metrics = {f"distill/trust/{k}": v for k, v in trust.items()}
        if punish_set is not None:
            # Gradient ascent on L over the detected rows: move away from the teacher's mapping.
            pun = distill_pass(student, punish_set, params.loss, opt, runtime, rng, params.batch_size, sign=-params.punish_weight)
            metrics.update({f"distill/punish/{k}": v for k, v in pun.items()})
        metrics["cycle_s"] = time.perf_counter() - t0
        if evaluate is not None and (cycle % params.eval_every == 0 or cycle == params.cycles):
            metrics.update(evaluate(student))
            student.model.train()
        history.append({"cycle": float(cycle), **metrics})
        emit(callbacks, Event("distill", cycle, metrics))
        if "dev/cacc" in metrics:
            bar.set_postfix(cacc=f"{metrics['dev/cacc']:.3f}", asr=f"{metrics.get('dev/asr', float('nan')):.3f}")
    student.model.eval()
    return DistillResult(student=student, history=history)
