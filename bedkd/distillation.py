"""Teacher-student distillation passes shared by DMM (detect) and AKD (distill).

The teacher is frozen, so its logits and last hidden states are computed once per row set and
reused by every epoch / cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from bedkd.config import DistillLoss
from bedkd.losses import LossParts, capped_ascent_loss, complement_loss, distill_loss
from bedkd.modeling import Batch, Classifier, Encoded, Outputs, infer, pad_id_of, train_batches
from bedkd.runtime import Runtime


@dataclass(frozen=True)
class DistillSet:
    """Rows to distil on, with the frozen teacher's cached outputs."""

    enc: Encoded
    teacher: Outputs

    def __len__(self) -> int:
        return len(self.enc)

    def take(self, rows: np.ndarray) -> "DistillSet":
        """The rows ``rows`` (indices into this set), teacher outputs included, renumbered 0..len-1."""
        idx = np.asarray(rows, dtype=np.int64)
        enc = Encoded(ids=[self.enc.ids[i] for i in idx], labels=self.enc.labels[torch.from_numpy(idx)])
        hidden = None if self.teacher.hidden is None else [self.teacher.hidden[i] for i in idx]
        return DistillSet(enc, Outputs(logits=self.teacher.logits[torch.from_numpy(idx)], hidden=hidden))

    def with_labels(self, labels: "Iterable[int]") -> "DistillSet":
        """The rows whose label is in ``labels``."""
        keep = np.isin(self.enc.labels.numpy(), np.fromiter(labels, dtype=np.int64))
        return self.take(np.flatnonzero(keep))


def with_teacher(teacher: Classifier, enc: Encoded, runtime: Runtime, batch_size: int, hidden: bool) -> DistillSet:
    out = infer(teacher.model, enc, runtime, batch_size, pad_id_of(teacher.tokenizer), hidden=hidden)
    return DistillSet(enc, out)


def _pad_hidden(states: list[torch.Tensor], length: int) -> torch.Tensor:
    """N x [len_i, H] -> [N, length, H] zero-padded (padding is masked out of the MSE)."""
    h = states[0].shape[-1]
    out = torch.zeros((len(states), length, h), dtype=states[0].dtype)
    for r, s in enumerate(states):
        out[r, : s.shape[0]] = s
    return out


def _distill_batch_loss(
    model: torch.nn.Module, data: DistillSet, b: Batch, loss_cfg: DistillLoss, runtime: Runtime, use_hidden: bool
) -> LossParts:
    """L (bedkd.losses.distill_loss) of the student on one batch of ``data`` against the cached teacher."""
    t_logits = data.teacher.logits[b.index].to(runtime.device)
    with runtime.autocast():
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=use_hidden)
    t_hidden = s_hidden = None
    if use_hidden:
        assert data.teacher.hidden is not None
        t_hidden = _pad_hidden([data.teacher.hidden[i] for i in b.index.tolist()], b.input_ids.shape[1]).to(runtime.device)
        s_hidden = out.hidden_states[-1]
    return distill_loss(
        out.logits,
        t_logits,
        b.labels,
        alpha=loss_cfg.alpha,
        temperature=loss_cfg.temperature,
        student_hidden=s_hidden,
        teacher_hidden=t_hidden,
        mask=b.attention_mask,
        hidden_weight=loss_cfg.hidden_weight,
    )


def _flagged_batch_loss(model: torch.nn.Module, b: Batch, runtime: Runtime, cap: float | None) -> torch.Tensor:
    with runtime.autocast():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    return complement_loss(logits, b.labels) if cap is None else capped_ascent_loss(logits, b.labels, cap)


def _accumulate(sums: dict[str, float], parts: LossParts, k: int) -> int:
    """Add a batch of ``k`` rows' loss parts (unsigned) to the running sums; returns ``k``."""
    sums["loss"] += float(parts.total.detach()) * k
    sums["ce"] += parts.ce * k
    sums["kl"] += parts.kl * k
    sums["mse"] += parts.mse * k
    return k


def distill_pass(
    student: Classifier,
    data: DistillSet,
    loss_cfg: DistillLoss,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    rng: np.random.Generator,
    batch_size: int,
    *,
    sign: float = 1.0,
    desc: str | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """One epoch over ``data`` minimising ``sign * L``; returns mean loss parts (unsigned L).
    ``scheduler`` (if any) is stepped after every optimizer step."""
    model = student.model
    model.train()
    pad = pad_id_of(student.tokenizer)
    use_hidden = data.teacher.hidden is not None and loss_cfg.hidden_weight > 0
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "mse": 0.0}
    n = 0
    n_batches = (len(data) + batch_size - 1) // batch_size
    batches = train_batches(data.enc, batch_size, rng, pad, runtime.device)
    for b in tqdm(batches, total=n_batches, desc=desc, disable=not runtime.progress or desc is None, leave=False):
        parts = _distill_batch_loss(model, data, b, loss_cfg, runtime, use_hidden)
        optimizer.zero_grad(set_to_none=True)
        (sign * parts.total).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n += _accumulate(sums, parts, len(b.index))
    return {key: v / max(n, 1) for key, v in sums.items()}


def flagged_pass(
    student: Classifier,
    enc: Encoded,
    weight: float,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    rng: np.random.Generator,
    batch_size: int,
    *,
    cap: float | None = None,
    anchor: DistillSet | None = None,
    loss_cfg: DistillLoss | None = None,
    batches: Iterable[Batch] | None = None,
) -> dict[str, float]:
    """One bounded punish pass over flagged rows (no teacher needed): minimise
    ``weight * complement_loss``, or with ``cap`` set ``weight * capped_ascent_loss(cap)``.
    Returns the mean loss under its name.

    ``batches``: the flagged batches to step on (batches of ``enc``, e.g. a slice of
    :func:`endless_batches` for ``distill.punish_steps``); default one reshuffled epoch of ``enc``.

    ``anchor`` (``distill.punish_anchor: label``): clean rows with the teacher's outputs; every
    step then minimises ``weight * P(flagged batch) + L(anchor batch)`` (``loss_cfg``: L), the
    anchor rows drawn in reshuffled rounds, one batch per flagged batch. The mean anchor L is
    returned as ``anchor/loss``."""
    if anchor is not None and loss_cfg is None:
        raise ValueError("an anchored punish pass needs the trust loss (loss_cfg)")
    model = student.model
    model.train()
    pad = pad_id_of(student.tokenizer)
    use_hidden = anchor is not None and anchor.teacher.hidden is not None and loss_cfg is not None and loss_cfg.hidden_weight > 0
    anchors = endless_batches(anchor.enc, batch_size, rng, pad, runtime.device) if anchor is not None and len(anchor) else None
    total, anchor_total, n, n_steps = 0.0, 0.0, 0, 0
    for b in train_batches(enc, batch_size, rng, pad, runtime.device) if batches is None else batches:
        loss = _flagged_batch_loss(model, b, runtime, cap)
        step_loss = weight * loss
        if anchors is not None:
            assert anchor is not None and loss_cfg is not None
            held = _distill_batch_loss(model, anchor, next(anchors), loss_cfg, runtime, use_hidden).total
            step_loss = step_loss + held
            anchor_total += float(held.detach())
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(b.index)
        n += len(b.index)
        n_steps += 1
    out = {("complement" if cap is None else "capped_ascent"): total / max(n, 1)}
    if anchors is not None:
        out["anchor/loss"] = anchor_total / max(n_steps, 1)
    return out


def endless_batches(enc: Encoded, batch_size: int, rng: np.random.Generator, pad: int, device: torch.device) -> Iterator[Batch]:
    """Shuffled batches of ``enc``, reshuffled each time it is used up."""
    while True:
        yield from train_batches(enc, batch_size, rng, pad, device)


def joint_pass(
    student: Classifier,
    trust: DistillSet,
    flagged: Encoded,
    loss_cfg: DistillLoss,
    weight: float,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    rng: np.random.Generator,
    batch_size: int,
    *,
    cap: float | None = None,
) -> dict[str, float]:
    """One epoch over the trust rows in which every step also punishes a batch of flagged rows:
    minimise L(trust batch) + ``weight`` * P(flagged batch), P = complement_loss (or
    capped_ascent_loss with ``cap``). The flagged rows are drawn in reshuffled rounds, as many
    batches as the trust pass has. Unlike a trust pass followed by a punish pass, the student
    never takes a run of punish-only steps (those push every row of the flagged label away,
    clean ones too, and the next trust pass has to win them back). Returns the mean trust loss
    parts and the mean punish term under its name."""
    model = student.model
    model.train()
    pad = pad_id_of(student.tokenizer)
    use_hidden = trust.teacher.hidden is not None and loss_cfg.hidden_weight > 0
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "mse": 0.0}
    pun_sum, n, n_steps = 0.0, 0, 0
    punish_batches = endless_batches(flagged, batch_size, rng, pad, runtime.device) if len(flagged) else None
    for b in train_batches(trust.enc, batch_size, rng, pad, runtime.device):
        parts = _distill_batch_loss(model, trust, b, loss_cfg, runtime, use_hidden)
        total = parts.total
        if punish_batches is not None:
            pun = _flagged_batch_loss(model, next(punish_batches), runtime, cap)
            total = total + weight * pun
            pun_sum += float(pun.detach())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        n += _accumulate(sums, parts, len(b.index))
        n_steps += 1
    out = {f"trust/{key}": v / max(n, 1) for key, v in sums.items()}
    out["punish/" + ("complement" if cap is None else "capped_ascent")] = pun_sum / max(n_steps, 1)
    return out
