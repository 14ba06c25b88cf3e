"""train_victim: fine-tune the backbone on the (poisoned) training set with cross-entropy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bedkd.config import Params, TrainVictimParams
from bedkd.events import Callback, Event, emit
from bedkd.modeling import Classifier, Encoded, encode, load_classifier, pad_id_of, train_batches
from bedkd.runtime import Runtime


@dataclass(frozen=True)
class TrainHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)


def train_classifier(
    clf: Classifier,
    train: Encoded,
    params: TrainVictimParams,
    runtime: Runtime,
    seed: int,
    callbacks: Sequence[Callback] = (),
    stage: str = "train_victim",
) -> TrainHistory:
    """Plain fine-tuning: AdamW, linear warm-up then decay. Mutates ``clf.model`` in place."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = clf.model.to(runtime.device)
    model.train()
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": params.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=params.lr)
    steps_per_epoch = (len(train) + params.batch_size - 1) // params.batch_size
    total = steps_per_epoch * params.epochs
    sched = get_linear_schedule_with_warmup(opt, int(params.warmup_ratio * total), total)
    pad = pad_id_of(clf.tokenizer)
    history = TrainHistory()
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        losses: list[float] = []
        correct = 0
        batches = train_batches(train, params.batch_size, rng, pad, runtime.device)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{stage} epoch {epoch}/{params.epochs}", disable=not runtime.progress, leave=False)
        for b in bar:
            with runtime.autocast():
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            loss = F.cross_entropy(logits.float(), b.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(-1) == b.labels).sum())
        metrics = {
            "train/loss": float(np.mean(losses)),
            "train/acc": correct / len(train),
            "epoch_s": time.perf_counter() - t0,
        }
        history.epochs.append({"epoch": float(epoch), **metrics})
        emit(callbacks, Event(stage, epoch, metrics))
    model.eval()
    return history


def fit_classifier(
    params: Params,
    rows: pd.DataFrame,
    runtime: Runtime,
    callbacks: Sequence[Callback] = (),
    stage: str = "train_victim",
) -> tuple[Classifier, TrainHistory]:
    """A fresh ``params.model.backbone`` classifier (head seeded by ``params.seed``) fine-tuned on
    ``rows`` (text, label) with ``params.train_victim``: the victim, or the clean reference."""
    clf = load_classifier(params.model.backbone, num_labels=params.num_classes, label_names=params.label_names, seed=params.seed)
    enc = encode(clf.tokenizer, rows["text"].tolist(), rows["label"].to_numpy(), params.model.max_length)
    history = train_classifier(clf, enc, params.train_victim, runtime, params.seed, callbacks, stage)
    return clf, history
