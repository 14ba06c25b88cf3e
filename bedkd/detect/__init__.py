"""detect: the directional mapping module (DMM) of BeDKD, released and improved.

A copy of the victim is distilled from the victim on a small clean set with flipped labels. The
clean mapping breaks, the backdoor mapping (trigger -> target) has no flipped counter-examples and
survives, so rows on which the copy still agrees with the victim are suspicious.

Released: 20 epochs at 0.3 CE / 0.7 KD barely move the copy (it fits ~7% of the flipped rows and
still agrees with the victim on ~98% of the training rows), so only triggers the copy cannot
forget at all (BadNets words) separate. Improved (all switches in ``DetectParams``): train until
the copy actually fits the flipped rows (``stop_flip_acc``), score by the copy's confidence in the
victim's label (``score: agreement``) and rank instead of thresholding a scan
(``selection: rank``). On a binary task a copy whose clean mapping is flipped predicts the
*opposite* of a clean row's label, while on a dirty-label poisoned row (content of the source
class, label = target) both the flipped content and the surviving backdoor point to the target.

This module sees the poisoned training set WITHOUT its ``is_poisoned`` column.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from bedkd.config import DetectParams, Unfitted
from bedkd.defender import flip_labels
from bedkd.distillation import distill_pass, with_teacher
from bedkd.events import Callback, Event, emit
from bedkd.modeling import Classifier, Encoded, clone_classifier, encode, infer, pad_id_of, pooled_hidden_states, pooled_input_embeddings
from bedkd.runtime import Runtime


@dataclass(frozen=True)
class DetectResult:
    student: Classifier  # the DMM copy after flip distillation
    scores: pd.DataFrame  # one row per training row: text, label, score, victim_pred, student_pred, selected
    selected: np.ndarray  # indices (into the training set) of the rows kept for punishing
    holdout: np.ndarray  # flagged rows set aside for validation (never punished)
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


def mapping_score(victim_probs: np.ndarray, student_probs: np.ndarray) -> np.ndarray:
    """mean_c |p_victim(c|x) - p_student(c|x)|, [N, k] x [N, k] -> [N]. Low = suspicious."""
    return np.abs(np.asarray(victim_probs) - np.asarray(student_probs)).mean(axis=1)


def agreement_score(
    victim_probs: np.ndarray, student_probs: np.ndarray, file_label: np.ndarray, unfitted: Unfitted = "behind"
) -> np.ndarray:
    """1 - p_copy(victim's label | x), + 1 where the victim's label is not the file label. [N, k] -> [N].

    Low = suspicious: the flipped copy still backs the victim. Rows whose file label the victim
    does not even fit are pushed behind every other row (a poisoned row the backdoor took is
    fitted). ``unfitted="scored"`` (``detect.unfitted``): every row is scored against its file
    label instead, 1 - p_copy(file label | x), which is the same on fitted rows.
    """
    labels = np.asarray(file_label)
    if unfitted == "scored":
        return 1.0 - np.asarray(student_probs)[np.arange(len(labels)), labels]
    v_pred = np.asarray(victim_probs).argmax(1)
    p_agree = np.asarray(student_probs)[np.arange(len(v_pred)), v_pred]
    return 1.0 - p_agree + (v_pred != labels).astype(np.float64)


def purified_score(
    student_probs: np.ndarray, victim_pred: np.ndarray, file_label: np.ndarray, unfitted: Unfitted = "behind"
) -> np.ndarray:
    """p_purified(file label | x), + 1 where the victim does not fit the file label (``unfitted``
    "behind"; "scored" leaves the + 1 out). [N, k] -> [N].

    Low = suspicious. The redetection score (``distill.redetect``): after AKD the student has lost
    most of the backdoor but kept the clean mapping, so on a clean row it backs the file label as
    the victim does, while on a dirty-label poisoned row (source-class content, target label) it
    now predicts the source class. Unlike the DMM copy, its clean mapping is intact, so it does not
    need the flipped rows to generalise.
    """
    labels = np.asarray(file_label)
    p_label = np.asarray(student_probs)[np.arange(len(labels)), labels]
    if unfitted == "scored":
        return p_label
    return p_label + (np.asarray(victim_pred) != labels).astype(np.float64)


@dataclass(frozen=True)
class ShiftScores:
    """The ``shift`` score of the training rows and of the clean reference rows (low = suspicious)."""

    train: np.ndarray  # [N]
    reference: np.ndarray  # [M]


def _layer_shift(u: np.ndarray, r: np.ndarray, dims: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """One layer, one label, one fit: the whitened direction of the mean shift of the training rows
    ``u`` [n, H] from the clean rows ``r`` [m, H]. Returns the projections of u on it [n] and the
    map x [*, H] -> projection, in units of r's spread along it (0 at r's mean)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    mu = r.mean(0)
    k = int(min(dims, len(u) + len(r) - 1, u.shape[1], len(r) - 1))
    pca = PCA(k, random_state=0).fit(np.vstack([u, r]) - mu)
    # Whiten with the clean rows' covariance (Ledoit-Wolf: ~320 rows in k dims): the clean part of
    # u has the same law as r, so what is left of the mean shift is the poisoned rows' direction.
    uz, rz = pca.transform(u - mu), pca.transform(r - mu)  # [n, k], [m, k]
    w = np.linalg.cholesky(np.linalg.inv(LedoitWolf().fit(rz).covariance_))
    d = (uz @ w).mean(0) - (rz @ w).mean(0)
    axis = w @ (d / max(float(np.linalg.norm(d)), 1e-12))  # [k]
    pr = rz @ axis
    mean, sd = float(pr.mean()), max(float(pr.std()), 1e-12)
    return (uz @ axis - mean) / sd, lambda x: (pca.transform(x - mu) @ axis - mean) / sd


def shift_scores(
    train_x: np.ndarray, file_label: np.ndarray, ref_x: np.ndarray, ref_label: np.ndarray, num_classes: int, *, dims: int, folds: int = 5
) -> ShiftScores:
    """Mean-shift score of each row against the defender's clean rows of its own label.

    ``train_x`` [N, layers, H] / ``ref_x`` [M, layers, H]: pooled hidden states of the suspect
    model. Per label c and layer l, the training rows labelled c are a mix of clean rows, drawn like
    the defender's clean rows of c, and (for the target) poisoned rows, which the suspect model
    represents apart from them, whatever the trigger (a word, a sentence, a template, a register).
    So the shift of their mean from the clean rows' mean, whitened by the clean rows' covariance,
    points at the poison: z_l = (x - mu_r) . d_l in units of the clean rows' spread along d_l.

    Cross-fitted over ``folds`` folds of the clean rows: fold k's direction is fitted on the other
    folds, scores fold k's clean rows (out of fold) and every training row (averaged over the k
    fits). A direction fitted on a sample of clean rows also points along that sample's noise, so
    in-sample clean rows sit below unseen rows of the same law (measured: 12-21 points more flags
    on a clean label at 0.5); out of fold, the clean rows of a label without poison score like its
    training rows, and ``label_filter: excess`` compares like with like. The layers' z are
    averaged, standardised on the out-of-fold clean rows and mapped to a tail probability: score =
    Phi(-z) in (0, 1), 0.5 at the clean rows' mean, low = shifted = suspicious. Labels with fewer
    than 2 x ``folds`` clean rows (or 2 training rows) keep 1.0.
    """
    from scipy.special import ndtr

    if folds < 2:
        raise ValueError(f"shift_scores: folds must be >= 2, got {folds}")
    labels, ref_label = np.asarray(file_label), np.asarray(ref_label)
    out, ref_out = np.ones(len(labels)), np.ones(len(ref_label))
    for c in range(num_classes):
        rows, ref_rows = np.flatnonzero(labels == c), np.flatnonzero(ref_label == c)
        if len(rows) < 2 or len(ref_rows) < 2 * folds:
            continue
        fold_of = np.arange(len(ref_rows)) % folds  # ref rows come in data order: deterministic folds
        zu = np.zeros(len(rows))
        zr = np.zeros(len(ref_rows))
        for layer in range(train_x.shape[1]):
            u, r = train_x[rows, layer], ref_x[ref_rows, layer]
            for k in range(folds):
                pu, project = _layer_shift(u, r[fold_of != k], dims)
                zu += pu / folds
                zr[fold_of == k] += project(r[fold_of == k])
        sd = max(float(zr.std()), 1e-12)
        out[rows] = ndtr(-(zu - zr.mean()) / sd)
        ref_out[ref_rows] = ndtr(-(zr - zr.mean()) / sd)
    return ShiftScores(train=out, reference=ref_out)


def shift_reference(reference: pd.DataFrame, flip_set: pd.DataFrame) -> pd.DataFrame:
    """The clean rows the ``shift`` score measures against: the reference rows and DMM's rows with
    their true labels (``flipped_set`` keeps them in ``true_label``): the whole clean budget."""
    parts = [reference[["text", "label"]]]
    if "true_label" in flip_set.columns:
        parts.append(flip_set[["text", "true_label"]].rename(columns={"true_label": "label"}))
    return pd.concat(parts, ignore_index=True)


def score_rows(
    kind: str, victim_probs: np.ndarray, student_probs: np.ndarray, file_label: np.ndarray, unfitted: Unfitted = "behind"
) -> np.ndarray:
    if kind == "released":
        return mapping_score(victim_probs, student_probs)
    if kind == "agreement":
        return agreement_score(victim_probs, student_probs, file_label, unfitted)
    raise ValueError(f"unknown score {kind!r}")


def select_rank(
    score: np.ndarray,
    victim_pred: np.ndarray,
    file_label: np.ndarray,
    *,
    threshold: float,
    keep: int,
    holdout: int,
    only_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank selection: rows with score < threshold whose victim prediction is their file label
    (and, with ``only_label``, whose label is that one), most suspicious first (ties by index);
    the first ``keep`` are punished, the next ``holdout`` validate. Returns (selected, holdout)."""
    score = np.asarray(score)
    labels = np.asarray(file_label)
    ok = (score < threshold) & (np.asarray(victim_pred) == labels)
    if only_label is not None:
        ok &= labels == only_label
    cand = np.flatnonzero(ok)
    ranked = cand[np.lexsort((cand, score[cand]))]
    return ranked[:keep], ranked[keep : keep + holdout]


def majority_label(score: np.ndarray, victim_pred: np.ndarray, file_label: np.ndarray, *, threshold: float, top: int) -> int:
    """The most frequent label among the ``top`` rank-selection candidates."""
    ranked, _ = select_rank(score, victim_pred, file_label, threshold=threshold, keep=top, holdout=0)
    labels = np.asarray(file_label)[ranked]
    return int(np.bincount(labels).argmax()) if len(labels) else 0


def excess_label(flagged: np.ndarray, file_label: np.ndarray, ref_flagged: np.ndarray, ref_label: np.ndarray, num_classes: int) -> int:
    """The label whose training rows are flagged most in excess of its clean rows.

    An all-to-one backdoor adds flagged rows to one label only (the target). A copy that fails to
    flip one class flags that class's clean rows too, in the training set and in the defender's
    clean reference rows alike; subtracting the reference rate cancels that. [N] bool, [N], [M]
    bool, [M] -> label.
    """
    flagged, labels = np.asarray(flagged, dtype=bool), np.asarray(file_label)
    ref_flagged, ref_label = np.asarray(ref_flagged, dtype=bool), np.asarray(ref_label)
    excess = np.full(num_classes, -np.inf)
    for c in range(num_classes):
        n, m = (labels == c).sum(), (ref_label == c).sum()
        if n and m:
            excess[c] = flagged[labels == c].mean() - ref_flagged[ref_label == c].mean()
    return int(np.argmax(excess))


@dataclass(frozen=True)
class ProbeFlags:
    """A bag-of-embeddings probe's verdicts: does it assign a row to another label than its own?"""

    train: np.ndarray  # [N] bool: probe's label != file label (training rows)
    reference: np.ndarray  # [M] bool: cross-validated probe's label != true label (reference rows)


def probe_flags(train_x: np.ndarray, file_label: np.ndarray, ref_x: np.ndarray, ref_label: np.ndarray, seed: int) -> ProbeFlags:
    """Fit a logistic-regression probe on the clean reference rows ([M, H] features, true labels),
    predict the training rows ([N, H]); the reference rows' own error is measured out of fold
    (stratified k-fold, k = min(5, smallest label count)), so both rates are of unseen rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    ref_label = np.asarray(ref_label)
    _, counts = np.unique(ref_label, return_counts=True)
    folds = int(min(5, counts.min())) if len(counts) else 0
    if folds < 2 or len(counts) < 2:
        raise ValueError("probe label filter: needs >= 2 clean reference rows of each of >= 2 labels")
    probe = LogisticRegression(C=1.0, max_iter=3000)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    ref_pred = cross_val_predict(probe, ref_x, ref_label, cv=cv)
    train_pred = probe.fit(ref_x, ref_label).predict(train_x)
    return ProbeFlags(train=train_pred != np.asarray(file_label), reference=ref_pred != ref_label)


def reference_thresholds(
    ref_score: np.ndarray, ref_victim_pred: np.ndarray, ref_label: np.ndarray, num_classes: int, *, quantile: float, floor: float
) -> np.ndarray:
    """Per-label thresholds calibrated on clean rows: for label c, max(floor, the ``quantile``-quantile
    of the scores of the reference rows of c that the victim fits); ``floor`` where there is none.

    A clean row of c then falls under its threshold at a rate of at most about ``quantile`` (when
    the floor does not bind), whatever the copy's confidence on clean rows of c, so the labels'
    flag rates are comparable and a label holding poisoned rows (scored lower than its clean rows)
    stands out. [M] x 3 -> [num_classes].
    """
    ref_score, ref_label = np.asarray(ref_score), np.asarray(ref_label)
    fits = np.asarray(ref_victim_pred) == ref_label
    out = np.full(num_classes, float(floor))
    for c in range(num_classes):
        rows = fits & (ref_label == c)
        if rows.any():
            out[c] = max(float(floor), float(np.quantile(ref_score[rows], quantile)))
    return out


def excess_count(
    score: np.ndarray,
    victim_pred: np.ndarray,
    file_label: np.ndarray,
    ref_score: np.ndarray,
    ref_victim_pred: np.ndarray,
    ref_label: np.ndarray,
    *,
    label: int,
    threshold: float,
) -> int:
    """Estimated number of poisoned rows of ``label``: its flagged rows beyond the clean flag rate.

    Among the training rows of ``label`` that the victim fits (N of them, n flagged: score <
    threshold), a clean row is flagged at the rate f measured on the defender's clean reference
    rows of that label that the victim fits, a poisoned row (nearly) always. So n = f (N - P) + P,
    P = (n - f N) / (1 - f), rounded, clipped to [0, N]. The reference rows must be drawn like the
    training rows (the defender's clean rows are training rows too) and unseen by the scoring model.
    [N] x 3, [M] x 3 -> int.
    """
    labels, ref_label = np.asarray(file_label), np.asarray(ref_label)
    cand = (labels == label) & (np.asarray(victim_pred) == labels)
    ref = (ref_label == label) & (np.asarray(ref_victim_pred) == ref_label)
    if not ref.any():
        raise ValueError(f"excess_count: no clean reference row of label {label} that the victim fits")
    n_cand = int(cand.sum())
    n = int((np.asarray(score)[cand] < threshold).sum())
    f = float((np.asarray(ref_score)[ref] < threshold).mean())
    if f >= 1.0:
        return 0
    return int(np.clip(round((n - f * n_cand) / (1.0 - f)), 0, n_cand))


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


def flip_accuracy(student: Classifier, flip_enc: Encoded, runtime: Runtime, batch_size: int = 256) -> float:
    """Share of the flipped set the copy predicts as its (flipped) training label."""
    pred = infer(student.model, flip_enc, runtime, batch_size, pad_id_of(student.tokenizer)).probs().argmax(1)
    return float((pred == flip_enc.labels.numpy()).mean())


def pseudo_flip_rows(
    score: np.ndarray, victim_pred: np.ndarray, file_label: np.ndarray, num_classes: int, per_class: int, seed: int
) -> np.ndarray:
    """Per file label, the ``per_class`` least suspicious rows (highest score) among those the
    victim fits, ties broken by a seeded shuffle. Returns sorted training-row indices."""
    rng = np.random.default_rng(seed)
    score = np.asarray(score)
    fits = np.asarray(victim_pred) == np.asarray(file_label)
    out: list[np.ndarray] = []
    for c in range(num_classes):
        rows = np.flatnonzero(fits & (np.asarray(file_label) == c))
        rows = rows[rng.permutation(len(rows))]
        out.append(rows[np.argsort(-score[rows], kind="stable")][:per_class])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def warmup_schedule(opt: torch.optim.Optimizer, ratio: float, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Linear warm-up from lr/w to lr over the first w = ceil(ratio * total_steps) steps, then
    constant (None when ratio is 0: the released constant rate)."""
    warm = math.ceil(ratio * total_steps)
    if warm <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))


def flip_distill(
    victim: Classifier,
    flip_enc: Encoded,
    params: DetectParams,
    runtime: Runtime,
    seed: int,
    callbacks: Sequence[Callback] = (),
    first_epoch: int = 1,
) -> tuple[Classifier, list[dict[str, float]]]:
    """Train the DMM copy: up to ``params.epochs`` passes of the distillation loss on the flipped
    set; with ``stop_flip_acc`` set, stop after the first epoch whose flip accuracy reaches it."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    need_hidden = params.loss.hidden_weight > 0
    data = with_teacher(victim, flip_enc, runtime, batch_size=256, hidden=need_hidden)
    student = clone_classifier(victim)
    student.model.to(runtime.device)
    opt = torch.optim.Adam(student.model.parameters(), lr=params.lr)
    sched = warmup_schedule(opt, params.warmup_ratio, params.epochs * -(-len(flip_enc) // params.batch_size))
    history: list[dict[str, float]] = []
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        parts = distill_pass(
            student, data, params.loss, opt, runtime, rng, params.batch_size, desc=f"detect epoch {epoch}/{params.epochs}",
            scheduler=sched,
        )
        metrics = {f"detect/train/{k}": v for k, v in parts.items()}
        done = False
        if params.stop_flip_acc is not None:
            metrics["detect/train/flip_acc"] = flip_accuracy(student, flip_enc, runtime)
            done = metrics["detect/train/flip_acc"] >= params.stop_flip_acc
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append({"epoch": float(epoch), **metrics})
        emit(callbacks, Event("detect", first_epoch + epoch - 1, metrics))
        if done:
            break
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
    victim_probs: np.ndarray | None = None,
    reference: pd.DataFrame | None = None,
) -> DetectResult:
    """Run DMM end to end. ``train`` must not carry ground truth (checked).

    ``reference``: clean rows with true labels that the copy was not trained on (the AKD pool);
    needed by ``label_filter: excess``.

    ``victim_probs`` [N, k]: the victim's probabilities on ``train`` when already computed (the
    victim is frozen, so several seeds of one cell share them)."""
    if "is_poisoned" in train.columns:
        raise ValueError("detect must not see the is_poisoned column: pass io.drop_ground_truth(train)")
    tok = victim.tokenizer
    flip_enc = encode(tok, flip_set["text"].tolist(), flip_set["label"].to_numpy(), max_length)
    student, history = flip_distill(victim, flip_enc, params, runtime, seed, callbacks)

    train_enc = encode(tok, train["text"].tolist(), train["label"].to_numpy(), max_length)
    pad = pad_id_of(tok)
    if victim_probs is None:
        p_victim = infer(victim.model, train_enc, runtime, eval_batch_size, pad, desc="detect: victim scoring").probs()
    elif len(victim_probs) != len(train):
        raise ValueError(f"victim_probs has {len(victim_probs)} rows, train has {len(train)}")
    else:
        p_victim = np.asarray(victim_probs)
    p_student = infer(student.model, train_enc, runtime, eval_batch_size, pad, desc="detect: student scoring").probs()
    labels = train["label"].to_numpy()
    num_classes = p_victim.shape[1]
    shift: ShiftScores | None = None
    shift_ref: pd.DataFrame | None = None
    shift_ref_enc: Encoded | None = None
    if params.score == "shift":
        if reference is None or not len(reference):
            raise ValueError("detect.score=shift needs clean reference rows")
        shift_ref = shift_reference(reference, flip_set)
        shift_ref_enc = encode(tok, shift_ref["text"].tolist(), shift_ref["label"].to_numpy(), max_length)
        states = [pooled_hidden_states(victim.model, e, eval_batch_size, pad, runtime) for e in (train_enc, shift_ref_enc)]
        shift = shift_scores(states[0], labels, states[1], shift_ref["label"].to_numpy(), num_classes, dims=params.shift_dims)
        # As with agreement: rows whose file label the victim does not fit go behind every other row.
        score = shift.train + (p_victim.argmax(1) != labels).astype(np.float64)
    else:
        score = score_rows(params.score, p_victim, p_student, labels)
    for rnd in range(2, params.rounds + 1):
        # Self-training: the rows the copy most clearly flips are clean with high confidence;
        # flipping their labels too gives the next copy many more (free) flipped rows, so its
        # inverted mapping generalises beyond the 2 x flip_per_class defender rows.
        extra = pseudo_flip_rows(score, p_victim.argmax(1), labels, num_classes, params.pseudo_per_class, seed + rnd)
        texts = flip_set["text"].tolist() + train["text"].iloc[extra].tolist()
        flipped = np.concatenate([flip_set["label"].to_numpy(), flip_labels(labels[extra], num_classes)])
        round_enc = encode(tok, texts, flipped, max_length)
        student, more = flip_distill(victim, round_enc, params, runtime, seed + rnd, callbacks, first_epoch=len(history) + 1)
        history += [{**h, "round": float(rnd)} for h in more]
        p_student = infer(student.model, train_enc, runtime, eval_batch_size, pad, desc=f"detect: round {rnd} scoring").probs()
        score = score_rows(params.score, p_victim, p_student, labels)
    v_pred = p_victim.argmax(1)
    s_pred = p_student.argmax(1)
    only_label: int | None = None
    summary_extra: dict[str, float] = {}
    thresholds = np.full(num_classes, params.threshold)  # per label; reference-calibrated with reference_quantile
    if params.label_filter == "majority":
        only_label = majority_label(score, v_pred, labels, threshold=params.threshold, top=params.keep + params.holdout)
    elif params.label_filter in ("excess", "probe"):
        if reference is None or not len(reference):
            raise ValueError(f"detect.label_filter={params.label_filter} needs clean reference rows")
        ref_frame = reference if shift_ref is None else shift_ref
        ref_labels = ref_frame["label"].to_numpy()
        # the shift score's clean rows are already tokenised
        ref_enc = shift_ref_enc if shift_ref_enc is not None else encode(tok, ref_frame["text"].tolist(), ref_labels, max_length)
        pv_ref = infer(victim.model, ref_enc, runtime, eval_batch_size, pad).probs()
        ref_fits = pv_ref.argmax(1) == ref_labels
        if params.label_filter == "excess" or params.reference_quantile is not None:
            if shift is not None:
                ref_score = shift.reference
            else:
                ps_ref = infer(student.model, ref_enc, runtime, eval_batch_size, pad).probs()
                ref_score = score_rows(params.score, pv_ref, ps_ref, ref_labels)
            if params.reference_quantile is not None:
                thresholds = reference_thresholds(
                    ref_score, pv_ref.argmax(1), ref_labels, num_classes, quantile=params.reference_quantile, floor=params.threshold
                )
        if params.label_filter == "excess":
            ref_flagged = (ref_score < thresholds[ref_labels]) & ref_fits
            flagged = (score < thresholds[labels]) & (v_pred == labels)
        else:
            # Features from the suspect model's own embedding table: no other weights needed.
            feats = [pooled_input_embeddings(victim.model, e, eval_batch_size, pad, runtime.device) for e in (train_enc, ref_enc)]
            probe = probe_flags(feats[0], labels, feats[1], ref_labels, seed)
            flagged, ref_flagged = probe.train & (v_pred == labels), probe.reference & ref_fits
            summary_extra["detect/probe_flag_rate"] = float(flagged.mean())
        only_label = excess_label(flagged, labels, ref_flagged, ref_labels, num_classes)
    # The punished label's threshold (a reference-calibrated one where set) admits the rank candidates.
    threshold = float(thresholds[only_label]) if only_label is not None else params.threshold
    if params.selection == "rank":
        selected, held = select_rank(
            score, v_pred, labels, threshold=threshold, keep=params.keep, holdout=params.holdout, only_label=only_label
        )
    else:
        selected = select_released(
            score, v_pred, labels, threshold=params.threshold, scan_size=params.scan_size, keep=params.keep, seed=seed
        )
        # The next flagged rows in scan order that were not kept validate the purification.
        sel_set = set(selected.tolist())
        flagged = flagged_in_scan_order(score, params.threshold, seed)
        held = np.array([i for i in flagged.tolist() if i not in sel_set][: params.holdout], dtype=np.int64)
    # Everything above selected on ``score`` (unfitted rows behind); detect.unfitted only changes
    # what is reported and graded of the rows no rule can select.
    reported = score
    if params.unfitted == "scored":
        reported = shift.train if shift is not None else score_rows(params.score, p_victim, p_student, labels, "scored")
    is_sel = np.zeros(len(train), dtype=bool)
    is_sel[selected] = True
    is_held = np.zeros(len(train), dtype=bool)
    is_held[held] = True
    scores = pd.DataFrame(
        {
            "text": train["text"].to_numpy(),
            "label": labels,
            "score": reported,
            "victim_pred": v_pred,
            "student_pred": s_pred,
            "selected": is_sel,
            "holdout": is_held,
        }
    )
    # How far the flip distillation moved the copy (no ground truth needed).
    p_flip = infer(student.model, flip_enc, runtime, eval_batch_size, pad).probs().argmax(1)
    summary = {
        "detect/agreement": float((v_pred == s_pred).mean()),
        "detect/flip_acc": float((p_flip == flip_set["label"].to_numpy()).mean()),
        "detect/n_flagged": float((score < thresholds[labels]).sum()),
        "detect/n_selected": float(len(selected)),
        "detect/n_holdout": float(len(held)),
        "detect/epochs_run": float(len(history)),
        "detect/target_label": float(-1 if only_label is None else only_label),
        "detect/threshold": threshold,
        **summary_extra,
    }
    return DetectResult(student=student, scores=scores, selected=selected, holdout=held, history=history, summary=summary)
