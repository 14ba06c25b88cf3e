"""distill: adversarial knowledge distillation (AKD) of BeDKD, released and improved.

The student starts as a copy of the victim (the teacher). Each cycle runs one *trust* pass
(minimise L on the defender's clean rows) and one *punish* pass on the rows DMM selected.

Released (``DistillParams`` defaults): the punish pass is gradient ascent on L (``punish:
ascent``), which has no lower bound (measured: CE on the punished rows climbs to ~19 and CACC/ASR
swing 10-20 points between cycles), and the last cycle is kept (``select: last``).
Improved: a bounded complementary-label punish term (``punish: complement``) and the cycle chosen
on what a defender has (``select: best``): accuracy on its own validation rows (the DMM pool with
true labels, never trained on here) and the proxy ASR on flagged rows held out of punishing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bedkd.config import DetectParams, DistillParams
from bedkd.detect import excess_count, purified_score, select_rank
from bedkd.distillation import DistillSet, distill_pass, endless_batches, flagged_pass, joint_pass, with_teacher
from bedkd.events import Callback, Event, emit
from bedkd.modeling import Classifier, Encoded, clone_classifier, encode, infer, output_bias, pad_id_of, predict_proba
from bedkd.runtime import Runtime

# Called after a cycle with the student; returns e.g. {"dev/cacc": .., "dev/asr": ..}.
CycleEval = Callable[[Classifier], dict[str, float]]
# distill.select_fallback: what picks the cycle when none is within max_val_drop of the victim.
Fallback = Literal["acc", "band"]


@dataclass(frozen=True)
class Validation:
    """What the defender validates a cycle on (no test data, no trigger knowledge)."""

    clean: pd.DataFrame  # clean rows with true labels that AKD does not train on
    flagged: pd.DataFrame  # flagged rows held out of punishing, with their (suspicious) file label


@dataclass(frozen=True)
class DistillResult:
    student: Classifier
    history: list[dict[str, float]] = field(default_factory=list)
    chosen_cycle: int = 0  # the cycle whose weights ``student`` holds
    chosen_round: int = 1  # purify: the AKD round ``student`` comes from (distill.redetect_pick)


def _pick_key(h: dict[str, float]) -> tuple[float, float, float]:
    # Lowest proxy ASR (a NaN proxy counts as 1.0), then higher val/acc, then the earlier cycle.
    proxy = h.get("val/proxy_asr", 0.0)
    return (proxy if proxy == proxy else 1.0, -h["val/acc"], h["cycle"])


def _val_floor(rows: Sequence[dict[str, float]], victim_val_acc: float, max_val_drop: float, fallback: Fallback) -> float | None:
    """The lowest val/acc a cycle may have to be picked on its proxy ASR; None: no cycle is within
    ``max_val_drop`` of the victim and ``fallback: acc`` picks on val/acc alone.

    ``fallback: band``: the band moves down to ``max_val_drop`` below the best cycle's val/acc. The
    floor never drops as cycles are added (it rises with the best val/acc, then jumps to the victim's
    band once a cycle reaches it), which :func:`live_cycles` relies on."""
    floor = victim_val_acc - max_val_drop - 1e-12
    if any(h["val/acc"] >= floor for h in rows):
        return floor
    if fallback == "band":
        return max(h["val/acc"] for h in rows) - max_val_drop - 1e-12
    return None


def pick_cycle(
    history: Sequence[dict[str, float]], victim_val_acc: float, max_val_drop: float, fallback: Fallback = "acc"
) -> int:
    """The cycle with the lowest ``val/proxy_asr`` among cycles whose ``val/acc`` is within
    ``max_val_drop`` of the victim's (ties: higher val/acc, then the earlier cycle). When no cycle
    is within: ``fallback: acc``, the one with the best val/acc; ``fallback: band``, the same
    proxy rule within ``max_val_drop`` of the best cycle's val/acc (``distill.select_fallback``)."""
    rows = [h for h in history if "val/acc" in h]
    if not rows:
        raise ValueError("no validated cycle to pick from")
    floor = _val_floor(rows, victim_val_acc, max_val_drop, fallback)
    if floor is None:
        return int(max(rows, key=lambda h: (h["val/acc"], -h["cycle"]))["cycle"])
    return int(min((h for h in rows if h["val/acc"] >= floor), key=_pick_key)["cycle"])


def live_cycles(
    history: Sequence[dict[str, float]], victim_val_acc: float, max_val_drop: float, fallback: Fallback = "acc"
) -> set[int]:
    """Cycles :func:`pick_cycle` may still return once more cycles are added: the weights AKD keeps.

    ``fallback: acc`` fixes the floor at the victim's band, so today's pick stays the pick unless a
    later cycle beats it: one cycle. ``fallback: band`` raises the floor as val/acc improves, which
    can drop today's pick for an earlier cycle; what can still be picked is every cycle above the
    floor that no cycle at least as accurate beats on (proxy, val/acc, cycle) (a handful: the
    accuracy/proxy front)."""
    rows = [h for h in history if "val/acc" in h]
    if not rows:
        return set()
    pick = pick_cycle(rows, victim_val_acc, max_val_drop, fallback)
    if fallback == "acc":
        return {pick}
    floor = _val_floor(rows, victim_val_acc, max_val_drop, fallback)
    assert floor is not None
    band = [h for h in rows if h["val/acc"] >= floor]
    return {pick} | {
        int(h["cycle"]) for h in band
        if not any(o is not h and o["val/acc"] >= h["val/acc"] and _pick_key(o) < _pick_key(h) for o in band)
    }


def train_validation_rows(
    score: np.ndarray, victim_pred: np.ndarray, file_label: np.ndarray, n: int, share: float, seed: int | Sequence[int],
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Training rows ``select: best`` also validates on (``distill.select_train_rows``): a seeded
    sample of ``n`` rows among those the victim fits (prediction = file label) whose DMM ``score``
    [N] (low = suspicious) is in the top ``share`` of the fitted rows. Sorted row indices.
    ``exclude``: rows never sampled (they still count in the share); ``distill.trust_train_rows``
    draws its rows the same way, excluding the validation sample.
    """
    score, fit = np.asarray(score, dtype=np.float64), np.asarray(victim_pred) == np.asarray(file_label)
    cand = np.flatnonzero(fit)
    if not len(cand):
        return cand
    # The least suspicious ceil(share * fitted) rows (ties by index, so the pool does not depend on sort stability).
    ranked = cand[np.lexsort((cand, -score[cand]))][: int(np.ceil(share * len(cand)))]
    if exclude is not None and len(exclude):
        ranked = ranked[~np.isin(ranked, exclude)]
    pick = np.random.default_rng(seed).choice(len(ranked), size=min(n, len(ranked)), replace=False)
    return np.sort(ranked[pick])


def trust_rows(clean: pd.DataFrame, train: pd.DataFrame, extra: np.ndarray) -> pd.DataFrame:
    """The trust pass's rows: the defender's clean rows, then the training rows ``extra`` (indices
    into ``train``) with their file labels, which the victim predicts (``train_validation_rows``
    samples fitted rows only). Text and label only, renumbered."""
    cols = ["text", "label"]
    return pd.concat([clean[cols], train.iloc[np.asarray(extra, dtype=np.int64)][cols]], ignore_index=True)


def _val_metrics(student: Classifier, clean: Encoded, flagged: Encoded, runtime: Runtime, batch_size: int) -> dict[str, float]:
    out = {"val/acc": float((predict_proba(student, clean, runtime, batch_size).argmax(1) == clean.labels.numpy()).mean())}
    if len(flagged):
        pred = predict_proba(student, flagged, runtime, batch_size).argmax(1)
        out["val/proxy_asr"] = float((pred == flagged.labels.numpy()).mean())
    return out


def teacher_set(victim: Classifier, clean: pd.DataFrame, params: DistillParams, runtime: Runtime, max_length: int) -> DistillSet:
    """The trust rows with the frozen victim's outputs (logits; hidden states when the loss uses them)."""
    enc = encode(victim.tokenizer, clean["text"].tolist(), clean["label"].to_numpy(), max_length)
    return with_teacher(victim, enc, runtime, 256, params.loss.hidden_weight > 0)


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
    validation: Validation | None = None,
    trust_set: DistillSet | None = None,
) -> DistillResult:
    """Run AKD. ``clean``/``punish``: frames with text and label (punish: the detected rows).

    ``validation`` is required for ``select: best`` and, when given, logged every cycle
    (``val/acc``, ``val/proxy_asr``); ``evaluate`` adds research curves (never used to pick).
    ``trust_set``: ``clean`` already run through the frozen victim (:func:`teacher_set`); purify
    passes it to every round instead of recomputing the same teacher outputs.
    """
    frames = (clean, punish) + ((validation.clean, validation.flagged) if validation else ())
    if any("is_poisoned" in f.columns for f in frames):
        raise ValueError("distill must not see the is_poisoned column")
    if params.select == "best" and validation is None:
        raise ValueError("distill.select=best needs validation rows (the defender's clean pool and held-out flagged rows)")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = victim.tokenizer
    need_hidden = params.loss.hidden_weight > 0
    if trust_set is None:
        trust_set = teacher_set(victim, clean, params, runtime, max_length)
    elif len(trust_set.enc) != len(clean):
        raise ValueError(f"trust_set has {len(trust_set.enc)} rows, clean has {len(clean)}")
    punish_enc = encode(tok, punish["text"].tolist(), punish["label"].to_numpy(), max_length)
    punish_set = None
    if len(punish) and params.punish_weight > 0 and params.punish == "ascent":
        punish_set = with_teacher(victim, punish_enc, runtime, 256, need_hidden)
    do_punish = len(punish) > 0 and params.punish_weight > 0
    anchor = None
    if do_punish and params.punish_anchor == "label":
        # [M] trust rows of the flagged label(s), with the victim's outputs: held in place while punishing
        anchor = trust_set.with_labels(set(punish["label"].tolist()))
    punish_stream = None
    if do_punish and params.punish_steps is not None:
        # One stream for the whole run (reshuffled when used up): with 512 flagged rows and
        # punish_steps 32 (batch 16) it draws the same batches as one pass per cycle.
        punish_stream = endless_batches(punish_enc, params.batch_size, rng, pad_id_of(tok), runtime.device)
    val_clean = val_flagged = None
    victim_val: dict[str, float] = {}
    if validation is not None:
        val_clean = encode(tok, validation.clean["text"].tolist(), validation.clean["label"].to_numpy(), max_length)
        val_flagged = encode(tok, validation.flagged["text"].tolist(), validation.flagged["label"].to_numpy(), max_length)
        victim_val = _val_metrics(victim, val_clean, val_flagged, runtime, 256)
    student = clone_classifier(victim)
    student.model.to(runtime.device)
    opt = torch.optim.Adam(student.model.parameters(), lr=params.lr)
    history: list[dict[str, float]] = []
    kept: dict[int, dict[str, torch.Tensor]] = {}  # select: best, the weights of every cycle that can still be picked
    bar = tqdm(range(1, params.cycles + 1), desc="distill cycles", disable=not runtime.progress)
    for cycle in bar:
        t0 = time.perf_counter()
        cap = params.punish_cap if params.punish == "capped_ascent" else None
        if do_punish and params.schedule == "joint":
            # One pass, each step L(trust batch) + punish_weight * P(flagged batch).
            both = joint_pass(student, trust_set, punish_enc, params.loss, params.punish_weight, opt, runtime, rng, params.batch_size, cap=cap)
            metrics = {f"distill/{k}": v for k, v in both.items()}
        else:
            trust = distill_pass(student, trust_set, params.loss, opt, runtime, rng, params.batch_size)
            metrics = {f"distill/trust/{k}": v for k, v in trust.items()}
            if do_punish and params.punish == "ascent":
                assert punish_set is not None
                # Gradient ascent on L over the detected rows: move away from the teacher's mapping.
                pun = distill_pass(student, punish_set, params.loss, opt, runtime, rng, params.batch_size, sign=-params.punish_weight)
                metrics.update({f"distill/punish/{k}": v for k, v in pun.items()})
            elif do_punish:
                pun = flagged_pass(
                    student, punish_enc, params.punish_weight, opt, runtime, rng, params.batch_size, cap=cap, anchor=anchor,
                    loss_cfg=params.loss,
                    batches=None if punish_stream is None else itertools.islice(punish_stream, params.punish_steps),
                )
                metrics.update({f"distill/punish/{k}": v for k, v in pun.items()})
        metrics["cycle_s"] = time.perf_counter() - t0
        if val_clean is not None and val_flagged is not None:
            metrics.update(_val_metrics(student, val_clean, val_flagged, runtime, 256))
        if evaluate is not None and (cycle % params.eval_every == 0 or cycle == params.cycles):
            metrics.update(evaluate(student))
        student.model.train()
        history.append({"cycle": float(cycle), **metrics})
        emit(callbacks, Event("distill", cycle, metrics))
        if params.select == "best":
            live = live_cycles(history, victim_val["val/acc"], params.max_val_drop, params.select_fallback)
            # Kept on the CPU: a model copy (~90 MB for MiniLM) per cycle that can still be picked.
            kept = {c: w for c, w in kept.items() if c in live}
            if cycle in live:
                kept[cycle] = {k: v.detach().to("cpu", copy=True) for k, v in student.model.state_dict().items()}
        if "dev/cacc" in metrics:
            bar.set_postfix(cacc=f"{metrics['dev/cacc']:.3f}", asr=f"{metrics.get('dev/asr', float('nan')):.3f}")
    chosen = params.cycles
    if params.select == "best" and history:
        chosen = pick_cycle(history, victim_val["val/acc"], params.max_val_drop, params.select_fallback)
        student.model.load_state_dict(kept[chosen])
    student.model.eval()
    if victim_val:
        history.insert(0, {"cycle": 0.0, **victim_val})
    return DistillResult(student=student, history=history, chosen_cycle=chosen)


@dataclass(frozen=True)
class ValidationTrace:
    """What the defender's validation said about a purification (read from an AKD history)."""

    victim_acc: float  # val/acc of the victim (cycle 0) in the round the student comes from
    acc: float  # val/acc of the returned student (the chosen cycle of the last round)
    history: list[dict[str, float]]  # per validated cycle: round, cycle, val/acc (, val/proxy_asr)


def validation_trace(history: Sequence[dict[str, float]], chosen_cycle: int, chosen_round: int | None = None) -> ValidationTrace | None:
    """The validation rows of an ``akd``/``purify`` history; None when it was run without validation.
    Rounds (``purify``) are told apart by their ``round`` key; the student is from ``chosen_round``
    (None: the last one)."""
    rows = [h for h in history if "val/acc" in h]
    if not rows:
        return None
    last = max(h.get("round", 1.0) for h in rows) if chosen_round is None else float(chosen_round)
    in_last = {int(h["cycle"]): h["val/acc"] for h in rows if h.get("round", 1.0) == last}
    if 0 not in in_last or chosen_cycle not in in_last:
        raise ValueError(f"history has no validation for the victim (cycle 0) or the chosen cycle {chosen_cycle}")
    keys = ("round", "cycle", "val/acc", "val/proxy_asr")
    return ValidationTrace(
        victim_acc=in_last[0],
        acc=in_last[chosen_cycle],
        history=[{k: float(h.get(k, 1.0)) for k in keys if k in h or k == "round"} for h in rows],
    )


@dataclass(frozen=True)
class Redetection:
    """One redetection: the purified student's view of the training set and the next punish set."""

    round: int  # the AKD round these rows feed (2 = first redetection)
    score: np.ndarray  # [N] what the round ranked by (distill.redetect_score) for every training row, low = suspicious
    selected: np.ndarray  # training-row indices punished in that round
    holdout: np.ndarray  # training-row indices held out of punishing, for validation
    estimate: int | None = None  # distill.redetect_keep=excess: the estimated poisoned rows (before the cap)

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """[N] boolean mask of ``rows`` (``self.selected`` or ``self.holdout``) over the training set."""
        out = np.zeros(len(self.score), dtype=bool)
        out[rows] = True
        return out

    def frame(self, train: pd.DataFrame) -> pd.DataFrame:
        """Per training row (``train``: text, label, in training order): score, selected, holdout, round."""
        if len(train) != len(self.score):
            raise ValueError(f"{len(train)} training rows, {len(self.score)} scores")
        return pd.DataFrame(
            {
                "text": train["text"].to_numpy(),
                "label": train["label"].to_numpy(),
                "score": self.score,
                "selected": self.mask(self.selected),
                "holdout": self.mask(self.holdout),
                "round": self.round,
            }
        )


def label_bias_shift(student_logits: np.ndarray, victim_pred: np.ndarray, label: int) -> float:
    """The logit shift for ``label`` with which the student predicts it on as many rows as the
    victim does (``student_logits`` [N, k], ``victim_pred`` [N]); 0 when it already does.

    A row not predicted as ``label`` switches to it once the shift exceeds its margin
    m_i = max_{c != label} z_ic - z_i,label (> 0). For d missing predictions the shift is the
    midpoint between the d-th and (d+1)-th smallest margins, so the d rows switch and the next does
    not, with the same slack on both sides.
    """
    z = np.asarray(student_logits, dtype=np.float64)
    if z.ndim != 2 or len(z) != len(victim_pred):
        raise ValueError(f"student_logits {z.shape} and victim_pred ({len(victim_pred)},) disagree")
    pred = z.argmax(1)
    deficit = int((np.asarray(victim_pred) == label).sum() - (pred == label).sum())
    if deficit <= 0:
        return 0.0
    others = np.delete(z, label, axis=1).max(1)
    margins = np.sort((others - z[:, label])[pred != label])  # [rows not on label] ascending, >= 0
    lo = margins[deficit - 1]
    hi = margins[deficit] if deficit < len(margins) else lo + 1.0
    return float((lo + hi) / 2)


@dataclass(frozen=True)
class Calibration:
    """``distill.calibrate: label_bias``: the shift added to the punished label's output bias."""

    label: int
    shift: float
    victim_count: int  # validation rows the victim predicts as ``label``
    student_count: int  # ... the student, before the shift
    calibrated_count: int  # ... the student, after it


def calibrate_label_bias(
    student: Classifier, victim: Classifier, rows: pd.DataFrame, label: int, runtime: Runtime, max_length: int, batch_size: int,
    victim_pred: np.ndarray | None = None,
) -> Calibration:
    """Fit :func:`label_bias_shift` on ``rows`` (clean rows AKD did not train on) and add it, in
    place, to the student's output-layer bias of ``label`` (a saved student carries it).
    ``victim_pred`` [len(rows)]: the victim's predictions on ``rows`` when the caller has them."""
    enc = encode(student.tokenizer, rows["text"].tolist(), rows["label"].to_numpy(), max_length)
    pad = pad_id_of(student.tokenizer)
    v_pred = infer(victim.model, enc, runtime, batch_size, pad).logits.numpy().argmax(1) if victim_pred is None else victim_pred
    z = infer(student.model, enc, runtime, batch_size, pad).logits.numpy()
    shift = label_bias_shift(z, v_pred, label)
    with torch.no_grad():
        output_bias(student.model)[label] += shift
    after = infer(student.model, enc, runtime, batch_size, pad).logits.numpy().argmax(1)
    return Calibration(
        label=label, shift=shift, victim_count=int((v_pred == label).sum()), student_count=int((z.argmax(1) == label).sum()),
        calibrated_count=int((after == label).sum()),
    )


@dataclass(frozen=True)
class PurifyResult:
    result: DistillResult  # the returned round (chosen_round): its student; history of all rounds ("round" key)
    redetections: list[Redetection] = field(default_factory=list)
    calibration: Calibration | None = None  # distill.calibrate: label_bias
    # distill.redetect_pick all: the shared validation's grade of the victim (round 0) and of each
    # round's chosen student: round, val/acc, val/proxy_asr (where some flagged row is shared).
    round_grades: list[dict[str, float]] = field(default_factory=list)


def pick_round(grades: Sequence[dict[str, float]], max_val_drop: float, fallback: Fallback = "acc") -> int:
    """The round ``distill.redetect_pick: all`` returns: the :func:`pick_cycle` rule over rounds.

    ``grades``: round 0 the victim, then one row per AKD round (round, val/acc, val/proxy_asr), all
    graded on the same rows. Lowest proxy ASR among rounds within ``max_val_drop`` of the victim's
    val/acc; ties: higher val/acc, then the later round (the ``last`` pick where nothing tells the
    rounds apart). None within: ``fallback: acc``, the best val/acc; ``band``, the proxy rule within
    ``max_val_drop`` of the best round's val/acc."""
    victim = next((g for g in grades if int(g["round"]) == 0), None)
    rows = [g for g in grades if int(g["round"]) > 0]
    if victim is None or not rows:
        raise ValueError("pick_round needs the victim's grade (round 0) and at least one round's")
    # pick_cycle breaks its last tie towards the earlier cycle: number the rounds -1, -2, .. so it
    # breaks them towards the later round.
    return -pick_cycle([{**g, "cycle": -g["round"]} for g in rows], victim["val/acc"], max_val_drop, fallback)


def shared_validation(
    validation_clean: pd.DataFrame, rows: pd.DataFrame, val_train: np.ndarray | None,
    selections: Sequence[tuple[np.ndarray, np.ndarray]],
) -> Validation:
    """One validation every round can be graded on (``distill.redetect_pick: all``).

    ``rows``: the training rows (text, label); ``val_train``: the ``distill.select_train_rows``
    sample (indices into ``rows``) or None; ``selections``: each round's (punished, held-out) row
    indices. Clean: the defender's validation rows plus the training sample less every row some round
    punished or held out (no round graded on a row it was told is suspicious); flagged: the rows some
    round held out and no round punished (a student punished on a row would grade itself on it)."""
    punished = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s, _ in selections]))
    held = np.unique(np.concatenate([np.asarray(h, dtype=np.int64) for _, h in selections]))
    clean = validation_clean[["text", "label"]].reset_index(drop=True)
    if val_train is not None and len(val_train):
        extra = np.setdiff1d(val_train, np.concatenate([punished, held]))
        clean = pd.concat([clean, rows.iloc[extra][["text", "label"]]], ignore_index=True)
    flagged = rows.iloc[np.setdiff1d(held, punished)][["text", "label"]].reset_index(drop=True)
    return Validation(clean=clean, flagged=flagged)


def _shifted(callbacks: Sequence[Callback], offset: int, rnd: int) -> list[Callback]:
    """Callbacks that see round ``rnd``'s cycles as steps offset + 1..: one monotonic MLflow curve."""
    def wrap(cb: Callback) -> Callback:
        return lambda e: cb(Event(e.stage, e.step + offset, {**e.metrics, "round": float(rnd)}))
    return [wrap(cb) for cb in callbacks]


def purify(
    victim: Classifier,
    clean: pd.DataFrame,
    train: pd.DataFrame,
    victim_pred: np.ndarray,
    selected: np.ndarray,
    holdout: np.ndarray,
    only_label: int | None,
    params: DistillParams,
    select: DetectParams,
    runtime: Runtime,
    seed: int,
    max_length: int,
    validation_clean: pd.DataFrame | None = None,
    evaluate: CycleEval | None = None,
    callbacks: Sequence[Callback] = (),
    eval_batch_size: int = 256,
    score: np.ndarray | None = None,
) -> PurifyResult:
    """AKD on DMM's selection, then ``params.redetect`` rounds of: rescore the training rows with
    the purified student, reselect (``select``: threshold, keep, holdout; rows of ``only_label``),
    rerun AKD from the victim. Each round restarts from the victim so a clean row punished by
    mistake in one round is not carried into the next by the student's own drift.

    ``train``: the poisoned training set without ground truth (text, label); ``victim_pred`` [N]:
    the victim's predicted labels on it; ``selected`` / ``holdout``: DMM's row indices.
    ``validation_clean``: the defender's clean validation rows (required for ``select: best``).
    ``score`` [N]: DMM's score of the training rows (low = suspicious); required with
    ``distill.select_train_rows``, which adds least suspicious training rows to the validation, and
    with ``distill.redetect_score: mean``, which ranks redetected rows by it and the purified score.
    """
    if "is_poisoned" in train.columns or "is_poisoned" in clean.columns:
        raise ValueError("distill must not see the is_poisoned column")
    rows = train[["text", "label"]].reset_index(drop=True)
    labels = rows["label"].to_numpy()
    tok = victim.tokenizer
    train_enc = encode(tok, rows["text"].tolist(), labels, max_length) if params.redetect else None
    val_train = None
    if params.select == "best" and params.select_train_rows:
        if score is None or len(score) != len(rows):
            raise ValueError(f"distill.select_train_rows needs DMM's score of every training row ({len(rows)} rows)")
        val_train = train_validation_rows(score, victim_pred, labels, params.select_train_rows, params.select_train_share, seed)
    trust_train = np.zeros(0, dtype=np.int64)  # training rows added to the trust pass (indices into rows)
    if params.trust_train_rows:
        if score is None or len(score) != len(rows):
            raise ValueError(f"distill.trust_train_rows needs DMM's score of every training row ({len(rows)} rows)")
        # Its own seed stream, so that switching it on leaves the validation sample as it was.
        trust_train = train_validation_rows(
            score, victim_pred, labels, params.trust_train_rows, params.trust_train_share, [seed, 1], exclude=val_train
        )
    trust_frame = trust_rows(clean, rows, trust_train) if len(trust_train) else clean  # off: the clean rows as given
    trust_set = teacher_set(victim, trust_frame, params, runtime, max_length)  # the same in every round

    def one_round(rnd: int, sel: np.ndarray, held: np.ndarray) -> DistillResult:
        validation = None
        if validation_clean is not None:
            val_clean = validation_clean
            if val_train is not None:
                # A row this round punishes or holds out would grade the punish pass on itself.
                extra = np.setdiff1d(val_train, np.concatenate([sel, held]))
                val_clean = pd.concat([validation_clean[["text", "label"]], rows.iloc[extra]], ignore_index=True)
            validation = Validation(clean=val_clean, flagged=rows.iloc[held].reset_index(drop=True))
        frame, tset = trust_frame, trust_set
        if len(trust_train):
            # A row this round punishes or holds out cannot also be distilled towards the victim.
            keep = np.concatenate([np.ones(len(clean), dtype=bool), ~np.isin(trust_train, np.concatenate([sel, held]))])
            if not keep.all():
                frame, tset = trust_frame[keep].reset_index(drop=True), trust_set.take(np.flatnonzero(keep))
        return akd(
            victim, frame, rows.iloc[sel].reset_index(drop=True), params, runtime, seed + rnd - 1, max_length, evaluate,
            _shifted(callbacks, (rnd - 1) * params.cycles, rnd) if params.redetect else callbacks, validation, tset,
        )

    ref: tuple[Encoded, np.ndarray, np.ndarray] | None = None  # validation rows: encoded, labels, victim's predictions
    if params.redetect and params.redetect_keep == "excess":
        if validation_clean is None or only_label is None:
            raise ValueError("distill.redetect_keep=excess needs the defender's validation rows and a punished label (detect.label_filter)")
        ref_labels = validation_clean["label"].to_numpy()
        ref_enc = encode(tok, validation_clean["text"].tolist(), ref_labels, max_length)
        ref = (ref_enc, ref_labels, predict_proba(victim, ref_enc, runtime, eval_batch_size).argmax(1))

    if params.calibrate == "label_bias" and (validation_clean is None or only_label is None):
        raise ValueError("distill.calibrate=label_bias needs the defender's validation rows and a punished label (detect.label_filter)")

    def finish(result: DistillResult, redetections: list[Redetection], grades: list[dict[str, float]] | None = None) -> PurifyResult:
        cal = None
        if params.calibrate == "label_bias":
            assert validation_clean is not None and only_label is not None
            cal = calibrate_label_bias(
                result.student, victim, validation_clean, only_label, runtime, max_length, eval_batch_size,
                victim_pred=None if ref is None else ref[2],  # redetect_keep=excess already ran the victim on these rows
            )
        return PurifyResult(result=result, redetections=redetections, calibration=cal, round_grades=grades or [])

    res = one_round(1, np.asarray(selected), np.asarray(holdout))
    if not params.redetect:
        return finish(res, [])
    results, selections = [res], [(np.asarray(selected), np.asarray(holdout))]
    history = [{**h, "round": 1.0} for h in res.history]
    first_score = None
    if params.redetect_score == "mean":
        if score is None or len(score) != len(rows):
            raise ValueError(f"distill.redetect_score=mean needs the detector's score of every training row ({len(rows)} rows)")
        first_score = np.asarray(score, dtype=np.float64)
    redetections: list[Redetection] = []
    for rnd in range(2, params.redetect + 2):
        assert train_enc is not None
        probs = predict_proba(res.student, train_enc, runtime, eval_batch_size)
        pure = purified_score(probs, victim_pred, labels, select.unfitted)
        keep, est = select.keep, None
        if ref is not None:
            assert only_label is not None
            ref_enc, ref_labels, ref_pred = ref
            ref_score = purified_score(predict_proba(res.student, ref_enc, runtime, eval_batch_size), ref_pred, ref_labels)
            est = excess_count(pure, victim_pred, labels, ref_score, ref_pred, ref_labels, label=only_label, threshold=select.threshold)
            keep = max(1, min(est, params.redetect_keep_max))
        # [N] what this round ranks by (low = suspicious); both terms carry the +1 of unfitted rows
        # (detect.unfitted "behind"), or neither ("scored"): select_rank reads fitted rows only
        ranked = pure if first_score is None else 0.5 * (first_score + pure)
        sel, held = select_rank(
            ranked, victim_pred, labels, threshold=select.threshold, keep=keep, holdout=select.holdout, only_label=only_label
        )
        redetections.append(Redetection(round=rnd, score=ranked, selected=sel, holdout=held, estimate=est))
        res = one_round(rnd, sel, held)
        history += [{**h, "round": float(rnd)} for h in res.history]
        results.append(res)
        selections.append((sel, held))
    grades: list[dict[str, float]] = []
    chosen_round = len(results)
    if params.redetect_pick == "all":
        assert validation_clean is not None  # select: best, checked by DistillParams and akd
        shared = shared_validation(validation_clean, rows, val_train, selections)
        enc_clean = encode(tok, shared.clean["text"].tolist(), shared.clean["label"].to_numpy(), max_length)
        enc_flagged = encode(tok, shared.flagged["text"].tolist(), shared.flagged["label"].to_numpy(), max_length)
        for rnd, model in enumerate([victim] + [r.student for r in results]):
            grades.append({"round": float(rnd), **_val_metrics(model, enc_clean, enc_flagged, runtime, eval_batch_size)})
        chosen_round = pick_round(grades, params.max_val_drop, params.select_fallback)
        res = results[chosen_round - 1]
        emit(callbacks, Event("distill", len(results) * params.cycles, {"distill/chosen_round": float(chosen_round)}))
    out = DistillResult(student=res.student, history=history, chosen_cycle=res.chosen_cycle, chosen_round=chosen_round)
    return finish(out, redetections, grades)


__all__ = [
    "Calibration", "CycleEval", "DistillResult", "PurifyResult", "Redetection", "Validation", "ValidationTrace", "akd",
    "calibrate_label_bias", "label_bias_shift", "live_cycles", "pick_cycle", "pick_round", "purify", "shared_validation", "teacher_set", "train_validation_rows", "trust_rows", "validation_trace",
]
