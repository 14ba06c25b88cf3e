"""Mechanisms of the improved defense options (each switch in params has a test here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bedkd.config import DetectParams, DistillParams, Params, load_params, released, with_overrides
from bedkd.detect import agreement_score, mapping_score, score_rows, select_rank, select_released
from bedkd.distill import pick_cycle
from bedkd.errors import ConfigError
from bedkd.detect import warmup_schedule
from bedkd.losses import capped_ascent_loss, complement_loss


def test_released_preset_is_the_model_defaults_with_the_budget_kept() -> None:
    p = with_overrides(load_params(), {"detect.flip_per_class": 40, "distill.clean_per_class": 100})
    r = released(p)
    assert r.detect == DetectParams(flip_per_class=40)
    assert r.distill == DistillParams(clean_per_class=100, eval_every=p.distill.eval_every)
    assert (r.detect.loss.alpha, r.detect.epochs, r.detect.keep, r.distill.cycles) == (0.3, 20, 32, 50)
    assert (r.detect.score, r.detect.selection, r.distill.punish, r.distill.select) == ("released", "released", "ascent", "last")
    assert r.detect.stop_flip_acc is None and r.detect.holdout == 0
    # everything else is untouched
    assert r.model_dump(exclude={"detect", "distill"}) == p.model_dump(exclude={"detect", "distill"})


def test_repo_params_run_the_improved_mode() -> None:
    p = load_params()
    assert (p.detect.score, p.detect.selection, p.distill.punish, p.distill.select) == ("agreement", "rank", "complement", "best")
    assert p.detect.holdout > 0 and p.detect.stop_flip_acc is not None
    assert p.distill.redetect >= 1 and released(p).distill.redetect == 0


@pytest.mark.parametrize(
    "override, field",
    [
        ({"detect.score": "confidence"}, "detect.score"),
        ({"detect.selection": "top"}, "detect.selection"),
        ({"distill.punish": "ascend"}, "distill.punish"),
        ({"distill.punish_cap": 0.0}, "distill.punish_cap"),
        ({"detect.warmup_ratio": 1.5}, "detect.warmup_ratio"),
        ({"distill.redetect": 9}, "distill.redetect"),
        ({"distill.schedule": "mixed"}, "distill.schedule"),
        ({"distill.schedule": "joint", "distill.punish": "ascent"}, "distill"),
        ({"distill.select": "oracle"}, "distill.select"),
        ({"detect.stop_flip_acc": 1.5}, "detect.stop_flip_acc"),
        ({"detect.label_filter": "target"}, "detect.label_filter"),
        ({"detect.reference_quantile": 0.1}, "detect"),  # needs label_filter excess + rank selection
        ({"detect.reference_quantile": 0.9, "detect.label_filter": "excess", "detect.selection": "rank"}, "detect.reference_quantile"),
        ({"detect.reference_quantile": 0.1, "detect.label_filter": "probe", "detect.selection": "released"}, "detect"),
        ({"detect.score": "shift", "detect.rounds": 2}, "detect"),  # the shift score does not read the copy
        ({"detect.shift_dims": 0}, "detect.shift_dims"),
        ({"detect.unfitted": "last"}, "detect.unfitted"),
        ({"detect.unfitted": "scored"}, "detect"),  # the released score pushes no row behind
        ({"compare.cells": ["sst-2/badnet"]}, "compare.cells"),
        ({"compare.seeds": {"bedkd": [0, 0]}}, "compare.seeds"),
        ({"compare.seeds": {"bedkd2": [0]}}, "compare.seeds"),
        ({"compare.variants": {"kd": {"distill.cycles": 3}}}, "compare.variants"),  # a built-in name
        ({"compare.variants": {"Bedkd_X": {"distill.cycles": 3}}}, "compare.variants"),
        ({"compare.variants": {"x": {"data.dataset": "olid"}}}, "compare.variants"),  # the cell is not the method
        ({"compare.variants": {"x": {"detect.flip_per_class": 40}}}, "compare.variants"),  # nor the budget
        ({"compare.variants": {"x": {"distill.cycles": 0}}}, "compare.variants"),  # each variant validated
        ({"compare.variants": {"x": {"distill.schedule": "joint", "distill.punish": "ascent"}}}, "compare.variants"),
        ({"compare.variants": {"x": {"detect.scor": "shift"}}}, "compare.variants"),  # a typo
        ({"compare.variants": {"x": {"detect.loss.alpha.y": 1}}}, "compare.variants"),
        ({"distill.select": "last", "distill.redetect_pick": "all"}, "distill"),  # the round pick grades on validation
        ({"distill.redetect_pick": "first"}, "distill.redetect_pick"),
    ],
)
def test_bad_switch_values_are_errors(override: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.split(".")[0]):
        with_overrides(Params(), override)


def test_rank_selection_may_keep_more_than_the_released_scan() -> None:
    with pytest.raises(ConfigError):
        with_overrides(Params(), {"detect.keep": 256})  # released scan caps at scan_size=128
    p = with_overrides(Params(), {"detect.selection": "rank", "detect.keep": 256})
    assert p.detect.keep == 256


def test_agreement_score_ranks_rows_the_flipped_copy_still_backs() -> None:
    victim = np.array([[0.1, 0.9], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    copy = np.array([[0.2, 0.8], [0.9, 0.1], [0.1, 0.9], [0.05, 0.95]])
    labels = np.array([1, 1, 0, 0])  # row 3: the victim does not fit its file label
    s = agreement_score(victim, copy, labels)
    np.testing.assert_allclose(s, [0.2, 0.9, 0.9, 1.05])
    # row 0 (copy agrees with victim) is more suspicious than row 1 (copy flipped)
    assert s[0] < 0.5 < s[1]
    np.testing.assert_allclose(score_rows("released", victim, copy, labels), mapping_score(victim, copy))
    with pytest.raises(ValueError):
        score_rows("nope", victim, copy, labels)
    # detect.unfitted scored: every row against its file label; the same on fitted rows
    scored = agreement_score(victim, copy, labels, "scored")
    np.testing.assert_allclose(scored, [0.2, 0.9, 0.9, 0.95])
    np.testing.assert_allclose(score_rows("agreement", victim, copy, labels, "scored"), scored)


def test_rank_selection_orders_filters_and_sets_aside_a_holdout() -> None:
    score = np.array([0.30, 0.05, 0.60, 0.10, 0.05, 0.20, 0.40])
    vpred = np.array([1, 1, 1, 0, 1, 1, 1])
    label = np.array([1, 1, 1, 1, 1, 1, 1])  # row 3: victim disagrees with its label -> never kept
    sel, held = select_rank(score, vpred, label, threshold=0.5, keep=3, holdout=2)
    assert sel.tolist() == [1, 4, 5]  # most suspicious first, ties by index
    assert held.tolist() == [0, 6]  # the next ones; row 2 is above the threshold
    sel, held = select_rank(score, vpred, label, threshold=0.5, keep=10, holdout=5)
    assert sel.tolist() == [1, 4, 5, 0, 6] and held.size == 0


def test_label_filters_pick_the_target_label() -> None:
    from bedkd.detect import excess_label, majority_label

    score = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    label = np.array([1, 0, 1, 1, 0, 1])
    vpred = label.copy()
    sel, held = select_rank(score, vpred, label, threshold=0.5, keep=2, holdout=2)
    assert sel.tolist() == [0, 1] and held.tolist() == [2, 3]
    assert majority_label(score, vpred, label, threshold=0.5, top=4) == 1  # label 1 is 3 of the top 4
    sel, held = select_rank(score, vpred, label, threshold=0.5, keep=2, holdout=2, only_label=1)
    assert sel.tolist() == [0, 2] and held.tolist() == [3, 5]
    # excess: class 0 is flagged more often in absolute terms, but its clean rows are flagged just
    # as often (the copy failed to flip class 0); class 1 is flagged above its clean rate.
    flagged = np.array([True] * 60 + [False] * 40 + [True] * 30 + [False] * 70)
    labels = np.array([0] * 100 + [1] * 100)
    ref_flagged = np.array([True] * 60 + [False] * 40 + [True] * 5 + [False] * 95)
    ref_labels = np.array([0] * 100 + [1] * 100)
    assert excess_label(flagged, labels, ref_flagged, ref_labels, 2) == 1
    assert excess_label(flagged, labels, ~ref_flagged, ref_labels, 2) == 0


def test_reference_thresholds_calibrate_each_label_on_its_own_clean_rows() -> None:
    from bedkd.detect import excess_label, reference_thresholds

    # The agnews / addsent failure, in miniature (4 labels, target 0): the flipped copy remapped the
    # trigger with label 0, so poisoned rows score ~0.7, under the clean rows of label 0 (~0.95) but
    # above a fixed 0.5; a few clean rows of label 3 fall under 0.5 by chance, a few more in the
    # training rows than in the reference rows.
    rng = np.random.default_rng(0)
    ref_labels = np.repeat(np.arange(4), 100)
    ref_score = np.clip(rng.normal(0.95, 0.05, 400), 0.0, 1.0)
    ref_score[300:302] = 0.3  # 2% of label 3's reference rows under 0.5
    labels = np.repeat(np.arange(4), 1000)
    score = np.clip(rng.normal(0.95, 0.05, 4000), 0.0, 1.0)
    score[:300] = rng.normal(0.7, 0.03, 300)  # the poisoned rows of label 0
    score[3000:3040] = 0.3  # 4% of label 3's training rows under 0.5
    fits, ref_fits = np.ones(4000, dtype=bool), np.ones(400, dtype=bool)
    fixed = np.full(4, 0.5)
    assert excess_label((score < fixed[labels]) & fits, labels, (ref_score < fixed[ref_labels]) & ref_fits, ref_labels, 4) == 3
    thr = reference_thresholds(ref_score, ref_labels, ref_labels, 4, quantile=0.1, floor=0.5)
    assert thr.shape == (4,) and np.all(thr >= 0.5) and np.all(thr < 0.95)
    flagged, ref_flagged = score < thr[labels], ref_score < thr[ref_labels]
    assert ref_flagged.mean() == pytest.approx(0.1, abs=0.02)  # the quantile's rate on clean rows
    assert excess_label(flagged, labels, ref_flagged, ref_labels, 4) == 0
    assert flagged[:300].all()  # every poisoned row is a rank candidate of label 0
    # the floor binds where the clean rows sit low; a label without fitted reference rows keeps it
    low = reference_thresholds(np.array([0.1, 0.2, 0.3, 0.9]), np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), 3, quantile=0.5, floor=0.5)
    assert low.tolist() == [0.5, 0.5, 0.5]


def test_probe_flags_rows_labelled_against_their_content_and_picks_their_label() -> None:
    from bedkd.detect import excess_label, probe_flags

    # 3 labels, each a cluster of content; the poisoned rows hold content of labels 1 and 2 under
    # label 0 (dirty label, all-to-one). The probe, fitted on clean reference rows only, assigns
    # them to their content's label; label 1 has 30% noisy rows in train and reference alike.
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 3.0

    def rows(label: np.ndarray) -> np.ndarray:
        return centres[label] + rng.normal(0.0, 1.0, (len(label), 8))

    ref_labels = np.repeat(np.arange(3), 60)
    ref_x = rows(ref_labels)
    noisy = np.flatnonzero(ref_labels == 1)[:18]
    ref_x[noisy] = rows(np.full(18, 2))  # label 1 looks like 2 in 30% of its (clean) rows
    labels = np.repeat(np.arange(3), 300)
    x = rows(labels)
    x[300:390] = rows(np.full(90, 2))
    poisoned = np.zeros(900, dtype=bool)
    poisoned[:60] = True
    x[:60] = rows(np.repeat([1, 2], 30))  # label 0's first 60 rows: content of 1 and 2
    flags = probe_flags(x, labels, ref_x, ref_labels, seed=0)
    assert flags.train.shape == (900,) and flags.reference.shape == (180,)
    assert flags.train[poisoned].mean() > 0.9 and flags.train[:300][~poisoned[:300]].mean() < 0.1
    # label 1 is flagged most in absolute terms, label 0 most above its clean (out-of-fold) rate
    assert flags.train[labels == 1].mean() > flags.train[labels == 0].mean()
    assert excess_label(flags.train, labels, flags.reference, ref_labels, 3) == 0
    with pytest.raises(ValueError, match="reference rows"):
        probe_flags(x, labels, ref_x[:3], np.array([0, 1, 1]), seed=0)


def test_pooled_input_embeddings_are_unit_bags_of_words_independent_of_padding(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import torch

    from bedkd.modeling import encode, load_classifier, pad_id_of, pooled_input_embeddings

    clf = load_classifier(str(tiny_model), 2, seed=0)
    texts = ["a fine film", "a fine film with a very long and winding tail of words", "film fine a"]
    enc = encode(clf.tokenizer, texts, [0, 1, 0], 32)
    pad = pad_id_of(clf.tokenizer)
    alone = pooled_input_embeddings(clf.model, encode(clf.tokenizer, texts[:1], [0], 32), 8, pad, torch.device("cpu"))
    batched = pooled_input_embeddings(clf.model, enc, 8, pad, torch.device("cpu"))
    assert batched.shape == (3, clf.model.config.hidden_size)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.allclose(alone[0], batched[0], atol=1e-5)  # padding in a batch does not change a row
    assert np.allclose(batched[0], batched[2], atol=1e-5)  # no word order: a bag of words


def test_excess_count_estimates_the_poisoned_rows_of_a_label() -> None:
    from bedkd.detect import excess_count

    # label 1: 1000 fitted rows, 300 poisoned (all flagged) + 700 clean flagged at the clean rate 0.1
    # (70) -> 370 flagged; the reference rows of label 1 are flagged at 0.1 too: (370 - 100) / 0.9 = 300.
    rng = np.random.default_rng(0)
    labels = np.array([1] * 1000 + [0] * 500)
    score = np.ones(1500)
    score[:300] = 0.05
    score[300 + rng.choice(700, size=70, replace=False)] = 0.2
    score[1000:1400] = 0.1  # label 0 is flagged a lot but is not the label asked about
    vpred = labels.copy()
    ref_labels = np.array([1] * 50 + [0] * 50)
    ref_score = np.ones(100)
    ref_score[:5] = 0.3  # 5 of 50 -> 0.1
    ref_pred = ref_labels.copy()
    assert excess_count(score, vpred, labels, ref_score, ref_pred, ref_labels, label=1, threshold=0.5) == 300
    # rows the victim does not fit are neither candidates nor reference rows
    vpred2, ref_pred2 = vpred.copy(), ref_pred.copy()
    vpred2[:100] = 0
    ref_pred2[5:30] = 0  # 5 flagged of 25 fitted -> 0.2: (270 - 0.2 * 900) / 0.8 = 112.5
    assert excess_count(score, vpred2, labels, ref_score, ref_pred2, ref_labels, label=1, threshold=0.5) == 112
    # no excess -> 0; the clean rate above the flagged rate never goes negative
    assert excess_count(np.ones(1500), vpred, labels, ref_score, ref_pred, ref_labels, label=1, threshold=0.5) == 0
    with pytest.raises(ValueError, match="no clean reference row of label 1"):
        excess_count(score, vpred, labels, ref_score, ref_pred, np.zeros(100, dtype=int), label=1, threshold=0.5)


def test_released_selection_scans_and_caps() -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 0.2, size=500)
    vpred = np.ones(500, dtype=int)
    label = np.ones(500, dtype=int)
    sel = select_released(score, vpred, label, threshold=0.1, scan_size=50, keep=20, seed=3)
    assert len(sel) == 20 and (score[sel] < 0.1).all()


def test_complement_loss_is_bounded_and_pushes_the_flagged_label_down() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 1, 0])
    loss = complement_loss(logits, y)
    p = torch.softmax(logits.detach(), 1)[torch.arange(3), y]
    assert math.isclose(float(loss.detach()), float(-torch.log1p(-p).mean()), rel_tol=1e-5)
    loss.backward()
    # gradient descent lowers the flagged label's logit and raises the other
    assert (logits.grad[torch.arange(3), y] > 0).all()
    # bounded: a row the student already moved away from costs ~0, never negative
    assert 0 <= float(complement_loss(torch.tensor([[-20.0, 20.0]]), torch.tensor([0]))) < 1e-6
    # four classes: -log(1 - p_y) with p over all classes
    l4 = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    p4 = torch.softmax(l4, 1)[0, 1]
    assert math.isclose(float(complement_loss(l4, torch.tensor([1]))), float(-torch.log1p(-p4)), rel_tol=1e-5)


def test_capped_ascent_pushes_at_full_strength_until_the_cap_then_stops() -> None:
    # rows: p_y = 0.5 (CE 0.69), p_y ~ 0.047 (CE 3.05, still under the cap), p_y ~ 5e-5 (CE 10, past it)
    logits = torch.tensor([[0.0, 0.0], [3.0, 0.0], [10.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1, 1])
    cap = 4.6
    loss = capped_ascent_loss(logits, y, cap)
    ce = torch.nn.functional.cross_entropy(logits.detach(), y, reduction="none")
    assert math.isclose(float(loss.detach()), float(-torch.clamp(ce, max=cap).mean()), rel_tol=1e-5)
    assert -cap <= float(loss.detach()) <= 0
    loss.backward()
    g = logits.grad
    assert g is not None
    # descent on the loss lowers the flagged label's logit while CE < cap: gradient (1 - p_y) / B
    assert g[0, 0] > 0 and g[1, 1] > 0
    assert math.isclose(float(g[1, 1]), (1 - float(torch.softmax(logits.detach()[1], 0)[1])) / 3, rel_tol=1e-4)
    # ... and leaves a row already past the cap alone (bounded: cannot diverge)
    assert float(g[2].abs().sum()) == 0.0
    # where the complement loss has all but stopped (p_y ~ 0.047), the capped ascent still pushes ~20x harder
    lc = torch.tensor([[3.0, 0.0]], requires_grad=True)
    complement_loss(lc, torch.tensor([1])).backward()
    assert lc.grad is not None and float(g[1, 1]) * 3 > 10 * float(lc.grad[0, 1])


def test_warmup_schedule_ramps_linearly_then_holds() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w], lr=1e-3)
    assert warmup_schedule(opt, 0.0, 100) is None  # released: constant rate
    sched = warmup_schedule(opt, 0.1, 100)  # 10 warm-up steps
    assert sched is not None
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert math.isclose(lrs[0], 1e-4) and math.isclose(lrs[4], 5e-4)
    assert all(math.isclose(x, 1e-3) for x in lrs[9:])
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))


def test_pick_cycle_prefers_low_proxy_within_the_accuracy_budget() -> None:
    hist = [
        {"cycle": 1.0, "val/acc": 0.88, "val/proxy_asr": 0.50},
        {"cycle": 2.0, "val/acc": 0.80, "val/proxy_asr": 0.00},  # too big a drop
        {"cycle": 3.0, "val/acc": 0.87, "val/proxy_asr": 0.10},
        {"cycle": 4.0, "val/acc": 0.89, "val/proxy_asr": 0.10},  # same proxy, better acc
    ]
    assert pick_cycle(hist, victim_val_acc=0.89, max_val_drop=0.02) == 4
    assert pick_cycle(hist, victim_val_acc=0.89, max_val_drop=0.10) == 2
    # nothing within budget: the most accurate cycle
    assert pick_cycle(hist, victim_val_acc=0.99, max_val_drop=0.01) == 4
    with pytest.raises(ValueError):
        pick_cycle([{"cycle": 1.0}], 0.9, 0.01)


def test_band_fallback_picks_on_proxy_near_the_best_cycle_and_keeps_every_cycle_it_may_still_pick() -> None:
    from bedkd.distill import live_cycles

    # The victim memorised its validation rows (0.96): no cycle comes within 0.02 of it.
    hist = [
        {"cycle": 1.0, "val/acc": 0.80, "val/proxy_asr": 0.00},
        {"cycle": 2.0, "val/acc": 0.81, "val/proxy_asr": 0.05},
        {"cycle": 3.0, "val/acc": 0.83, "val/proxy_asr": 0.10},
        {"cycle": 4.0, "val/acc": 0.84, "val/proxy_asr": 0.20},
    ]
    assert pick_cycle(hist, 0.96, 0.02) == 4  # acc: the most accurate cycle, proxy ignored
    assert pick_cycle(hist, 0.96, 0.02, "band") == 3  # within 0.02 of 0.84: cycles 3 and 4
    # with a cycle inside the victim's band both fallbacks are the plain rule
    assert pick_cycle(hist, 0.845, 0.02) == pick_cycle(hist, 0.845, 0.02, "band") == 3
    # What AKD keeps as cycles come: the floor rises with the best cycle, so the pick can move back
    # to a cycle that was not the pick in its own cycle (2, under 1), which must have been kept.
    live = [live_cycles(hist[:n], 0.96, 0.02, "band") for n in range(1, 5)]
    assert live == [{1}, {1, 2}, {2, 3}, {3, 4}]
    assert [pick_cycle(hist[:n], 0.96, 0.02, "band") for n in range(1, 5)] == [1, 1, 2, 3]
    # a cycle at least as accurate with a lower proxy ends an earlier one for good
    better = hist[:3] + [{"cycle": 4.0, "val/acc": 0.84, "val/proxy_asr": 0.02}]
    assert live_cycles(better, 0.96, 0.02, "band") == {4}
    # acc: today's pick is all it needs
    assert [live_cycles(hist[:n], 0.96, 0.02) for n in range(1, 5)] == [{1}, {2}, {3}, {4}]


def test_akd_with_band_fallback_returns_the_weights_of_a_cycle_that_was_not_the_pick_when_it_ran(tiny_model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    import bedkd.distill as distill
    from bedkd.config import DistillLoss
    from bedkd.distill import Validation, akd
    from bedkd.modeling import encode, load_classifier, predict_proba
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean = pd.DataFrame({"text": [f"clean row {i} film" for i in range(8)], "label": [i % 2 for i in range(8)]})
    flagged = pd.DataFrame({"text": [f"cf bb row {i}" for i in range(6)], "label": [1] * 6})
    val = Validation(clean=clean.iloc[:4], flagged=flagged.iloc[:2])
    probe = encode(victim.tokenizer, clean["text"].tolist(), clean["label"].to_numpy(), 16)
    # Scripted validation (victim first): cycle 3 raises the floor to 0.81, which leaves cycle 2 the pick.
    script = iter([(0.96, 1.0), (0.80, 0.00), (0.81, 0.05), (0.83, 0.10)])
    monkeypatch.setattr(distill, "_val_metrics", lambda *a: dict(zip(("val/acc", "val/proxy_asr"), next(script))))
    seen: list[np.ndarray] = []

    def record(student):  # type: ignore[no-untyped-def]
        seen.append(predict_proba(student, probe, rt, 8))
        return {}

    dist = DistillParams(
        cycles=3, lr=1e-2, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), punish="complement", select="best",
        select_fallback="band",
    )
    res = akd(victim, clean.iloc[4:], flagged.iloc[2:], dist, rt, 0, 16, evaluate=record, validation=val)
    assert res.chosen_cycle == 2
    out = predict_proba(res.student, probe, rt, 8)
    assert np.allclose(out, seen[1], atol=1e-6) and not np.allclose(out, seen[2], atol=1e-6)
    with pytest.raises(ValueError):
        DistillParams(select_fallback="victim")  # type: ignore[arg-type]


def _counted_student(victim, rt):  # type: ignore[no-untyped-def]
    """A copy of ``victim`` on ``rt``'s device, its Adam optimizer (lr 1e-3) and the list that
    grows by one per optimizer step."""
    from bedkd.modeling import clone_classifier

    student = clone_classifier(victim)
    student.model.to(rt.device)
    opt = torch.optim.Adam(student.model.parameters(), lr=1e-3)
    steps: list[int] = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    return student, opt, steps


def test_joint_schedule_punishes_inside_every_trust_step(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.distill import akd, teacher_set
    from bedkd.distillation import joint_pass
    from bedkd.modeling import encode, load_classifier, predict_proba
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean = pd.DataFrame({"text": [f"clean row {i} film" for i in range(10)], "label": [i % 2 for i in range(10)]})
    flagged = pd.DataFrame({"text": [f"cf bb row {i}" for i in range(7)], "label": [1] * 7})
    dist = DistillParams(cycles=2, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=1.0), punish="complement", schedule="joint")
    trust = teacher_set(victim, clean, dist, rt, 16)
    fenc = encode(victim.tokenizer, flagged["text"].tolist(), flagged["label"].to_numpy(), 16)
    student, opt, steps = _counted_student(victim, rt)
    before = predict_proba(student, fenc, rt, 8)[:, 1].mean()
    out = joint_pass(student, trust, fenc, dist.loss, 1.0, opt, rt, np.random.default_rng(0), 4)
    # one optimizer step per trust batch (10 rows / 4 -> 3), each also on a batch of flagged rows
    assert len(steps) == 3
    assert set(out) == {"trust/loss", "trust/ce", "trust/kl", "trust/mse", "punish/complement"} and out["punish/complement"] > 0
    for _ in range(4):
        joint_pass(student, trust, fenc, dist.loss, 1.0, opt, rt, np.random.default_rng(1), 4)
    assert predict_proba(student, fenc, rt, 8)[:, 1].mean() < before  # pushed off the flagged label
    # capped ascent in the joint step too
    capped = joint_pass(student, trust, fenc, dist.loss, 1.0, opt, rt, np.random.default_rng(2), 4, cap=2.0)
    assert -2.0 <= capped["punish/capped_ascent"] <= 0
    # in akd: one joint pass per cycle, logged under the same names as the two-pass schedule
    res = akd(victim, clean, flagged, dist, rt, 0, 16)
    assert {"distill/trust/loss", "distill/punish/complement"} <= set(res.history[-1]) and len(res.history) == 2
    # nothing flagged (kd): the joint schedule is the plain trust pass, same numbers
    kd_joint = akd(victim, clean, flagged.iloc[:0], dist, rt, 0, 16)
    kd_passes = akd(victim, clean, flagged.iloc[:0], dist.model_copy(update={"schedule": "passes"}), rt, 0, 16)
    assert [h["distill/trust/loss"] for h in kd_joint.history] == pytest.approx([h["distill/trust/loss"] for h in kd_passes.history])


def test_anchored_punish_pass_holds_clean_rows_of_the_flagged_label(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.distill import akd, teacher_set
    from bedkd.distillation import flagged_pass
    from bedkd.modeling import encode, load_classifier, predict_proba
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean = pd.DataFrame({"text": [f"clean row {i} film" for i in range(12)], "label": [i % 2 for i in range(12)]})
    flagged = pd.DataFrame({"text": [f"cf bb row {i}" for i in range(8)], "label": [1] * 8})
    dist = DistillParams(
        cycles=2, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=1.0), punish="complement", punish_anchor="label"
    )
    trust = teacher_set(victim, clean, dist, rt, 16)
    anchor = trust.with_labels({1})
    assert len(anchor) == 6 and set(anchor.enc.labels.tolist()) == {1}
    assert torch.equal(anchor.teacher.logits, trust.teacher.logits[1::2]) and anchor.teacher.hidden is not None
    fenc = encode(victim.tokenizer, flagged["text"].tolist(), flagged["label"].to_numpy(), 16)
    held = encode(victim.tokenizer, clean["text"].tolist()[1::2], [1] * 6, 16)
    teacher_p1 = predict_proba(victim, held, rt, 8)[:, 1]

    def punish(anchored: bool) -> tuple[float, float, int, dict[str, float]]:
        torch.manual_seed(0)
        student, opt, steps = _counted_student(victim, rt)
        for i in range(4):
            out = flagged_pass(
                student, fenc, 1.0, opt, rt, np.random.default_rng(i), 4, anchor=anchor if anchored else None, loss_cfg=dist.loss
            )
        drift = float(np.abs(predict_proba(student, held, rt, 8)[:, 1] - teacher_p1).mean())
        return drift, float(predict_proba(student, fenc, rt, 8)[:, 1].mean()), len(steps), out

    free_drift, free_flagged, free_steps, free_out = punish(False)
    held_drift, held_flagged, held_steps, held_out = punish(True)
    before = float(predict_proba(victim, fenc, rt, 8)[:, 1].mean())
    # one step per flagged batch either way (8 rows / 4 -> 2 per pass), the anchor rides along
    assert free_steps == held_steps == 8
    assert set(free_out) == {"complement"} and set(held_out) == {"complement", "anchor/loss"}
    # both push the flagged rows off their label; only the anchored pass keeps clean label-1 rows near the teacher
    assert free_flagged < before and held_flagged < before
    assert held_drift < free_drift
    # in akd: the option reaches the punish pass and its loss is logged
    res = akd(victim, clean, flagged, dist, rt, 0, 16)
    assert {"distill/punish/complement", "distill/punish/anchor/loss"} <= set(res.history[-1])
    # off (default): the punish pass logs no anchor
    res_off = akd(victim, clean, flagged, dist.model_copy(update={"punish_anchor": "none"}), rt, 0, 16)
    assert "distill/punish/anchor/loss" not in res_off.history[-1]
    # the capped ascent term (compare variant bedkd-anchor-capped) is anchored the same way
    capped = akd(victim, clean, flagged, dist.model_copy(update={"punish": "capped_ascent"}), rt, 0, 16)
    assert {"distill/punish/capped_ascent", "distill/punish/anchor/loss"} <= set(capped.history[-1])
    with pytest.raises(ValueError, match="punish_anchor"):
        DistillParams(punish="complement", schedule="joint", punish_anchor="label")
    with pytest.raises(ValueError, match="punish_anchor"):
        DistillParams(punish="ascent", punish_anchor="label")


def test_punish_steps_budget_the_punish_pass_with_one_stream_across_cycles(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import itertools
    from collections.abc import Iterator

    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.distill import akd
    from bedkd.distillation import endless_batches, flagged_pass
    from bedkd.modeling import Batch, encode, load_classifier, pad_id_of
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean = pd.DataFrame({"text": [f"clean row {i} film" for i in range(12)], "label": [i % 2 for i in range(12)]})
    flagged = pd.DataFrame({"text": [f"cf bb row {i}" for i in range(8)], "label": [1] * 8})
    dist = DistillParams(cycles=3, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=1.0), punish="complement")

    # the mechanism: n steps per pass, the stream running on across passes (8 rows, batch 4, n 1:
    # two passes together visit every flagged row once)
    fenc = encode(victim.tokenizer, flagged["text"].tolist(), flagged["label"].to_numpy(), 16)
    student, opt, steps = _counted_student(victim, rt)
    seen: list[int] = []

    def recorded(it: Iterator[Batch]) -> Iterator[Batch]:
        for b in it:
            seen.extend(b.index.tolist())
            yield b

    rng = np.random.default_rng(0)
    stream = recorded(endless_batches(fenc, 4, rng, pad_id_of(victim.tokenizer), rt.device))
    for _ in range(2):
        out = flagged_pass(student, fenc, 1.0, opt, rt, rng, 4, batches=itertools.islice(stream, 1))
        assert set(out) == {"complement"} and out["complement"] > 0
    assert len(steps) == 2 and sorted(seen) == list(range(8))

    # in akd: a budget of one epoch's steps (8 rows / 4 = 2) draws the very batches of one pass per cycle
    base = akd(victim, clean, flagged, dist, rt, 0, 16)
    same = akd(victim, clean, flagged, dist.model_copy(update={"punish_steps": 2}), rt, 0, 16)
    key = "distill/punish/complement"
    assert [h[key] for h in same.history] == pytest.approx([h[key] for h in base.history], rel=1e-6, abs=1e-8)
    # a smaller budget changes the run (one punish step a cycle instead of two)
    one = akd(victim, clean, flagged, dist.model_copy(update={"punish_steps": 1}), rt, 0, 16)
    assert [h[key] for h in one.history] != pytest.approx([h[key] for h in base.history], rel=1e-6, abs=1e-8)
    # passes + bounded punish only
    with pytest.raises(ValueError, match="punish_steps"):
        DistillParams(punish="complement", schedule="joint", punish_steps=8)
    with pytest.raises(ValueError, match="punish_steps"):
        DistillParams(punish="ascent", punish_steps=8)
    with pytest.raises(ValueError):
        DistillParams(punish="complement", punish_steps=0)


def test_pseudo_flip_rows_take_the_least_suspicious_fitted_rows_per_label() -> None:
    from bedkd.detect import pseudo_flip_rows

    score = np.array([0.9, 0.1, 0.95, 0.99, 0.2, 0.97, 0.5])
    label = np.array([1, 1, 1, 0, 0, 0, 0])
    vpred = np.array([1, 1, 1, 0, 0, 1, 0])  # row 5: the victim does not fit it
    rows = pseudo_flip_rows(score, vpred, label, num_classes=2, per_class=2, seed=0)
    assert rows.tolist() == [0, 2, 3, 6]


def test_flip_distillation_stops_once_the_copy_fits_the_flipped_rows(tiny_model, data_dir) -> None:  # type: ignore[no-untyped-def]
    from bedkd.config import DetectParams, DistillLoss
    from bedkd.detect import flip_distill
    from bedkd.modeling import encode, load_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    texts = ["a fine film", "a dull film", "great acting", "awful plot"] * 3
    enc = encode(victim.tokenizer, texts, [0, 1, 0, 1] * 3, 32)
    rt = resolve_runtime()
    base = dict(epochs=6, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=1.0, hidden_weight=0.0))
    _, full = flip_distill(victim, enc, DetectParams(**base), rt, seed=0)
    assert len(full) == 6 and "detect/train/flip_acc" not in full[0]
    _, early = flip_distill(victim, enc, DetectParams(**base, stop_flip_acc=0.01), rt, seed=0)
    assert len(early) == 1 and early[0]["detect/train/flip_acc"] >= 0.01


def test_detect_with_reference_quantile_ranks_one_label_under_its_calibrated_threshold(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.detect import detect
    from bedkd.modeling import load_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    train = pd.DataFrame({"text": [f"row {i} cf film" if i % 3 == 0 else f"row {i} plain" for i in range(40)], "label": [i % 2 for i in range(40)]})
    flip = pd.DataFrame({"text": ["a fine film", "a dull film", "great acting", "awful plot"], "label": [0, 1, 0, 1]})
    ref = pd.DataFrame({"text": [f"clean {i} text" for i in range(16)], "label": [i % 2 for i in range(16)]})
    params = DetectParams(
        epochs=1, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), score="agreement", selection="rank",
        label_filter="excess", threshold=0.05, keep=6, holdout=2, reference_quantile=0.5,
    )
    res = detect(victim, train, flip, params, rt, seed=0, max_length=16, reference=ref)
    target = int(res.summary["detect/target_label"])
    thr = res.summary["detect/threshold"]
    assert target in (0, 1) and thr >= 0.05
    sc = res.scores
    picked = sc[sc["selected"] | sc["holdout"]]
    assert (picked["label"] == target).all() and (picked["score"] < thr).all() and (picked["victim_pred"] == picked["label"]).all()
    # the candidates are every fitted row of the label under the calibrated threshold, most suspicious first
    cand = sc[(sc["label"] == target) & (sc["victim_pred"] == target) & (sc["score"] < thr)]
    assert len(res.selected) == min(6, len(cand)) and np.all(np.diff(sc["score"].to_numpy()[res.selected]) >= 0)
    # off: the punished label's threshold is the fixed one
    plain = detect(victim, train, flip, params.model_copy(update={"reference_quantile": None}), rt, seed=0, max_length=16, reference=ref)
    assert plain.summary["detect/threshold"] == 0.05


def test_detect_with_probe_label_filter_punishes_the_label_holding_off_content_rows(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.detect import detect
    from bedkd.modeling import load_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    good = ["a wonderful delightful film", "great joyful acting", "a brilliant lovely story", "superb charming cast", "happy excellent fun"]
    bad = ["a terrible awful film", "horrible boring acting", "a dreadful ugly story", "miserable stupid cast", "sad painful mess"]
    # label 1 = good; 12 poisoned rows carry bad content under label 1 (with a trigger word)
    texts = [good[i % 5] + f" {i}" for i in range(30)] + [bad[i % 5] + f" {i}" for i in range(30)] + [bad[i % 5] + " cf" for i in range(12)]
    labels = [1] * 30 + [0] * 30 + [1] * 12
    train = pd.DataFrame({"text": texts, "label": labels})
    ref = pd.DataFrame({"text": [g + " again" for g in good] * 2 + [b + " again" for b in bad] * 2, "label": [1] * 10 + [0] * 10})
    flip = pd.DataFrame({"text": ["a fine film", "a dull film", "great acting", "awful plot"], "label": [0, 1, 0, 1]})
    params = DetectParams(
        epochs=1, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), score="agreement", selection="rank",
        label_filter="probe", threshold=2.0, keep=8, holdout=2,
    )
    # the victim fits every row (a backdoored victim fits its poisoned rows), so only the probe decides
    fitted = np.eye(2)[labels] * 0.9 + 0.05
    res = detect(victim, train, flip, params, rt, seed=0, max_length=16, reference=ref, victim_probs=fitted)
    assert res.summary["detect/target_label"] == 1.0
    assert 0.0 < res.summary["detect/probe_flag_rate"] <= 1.0
    picked = res.scores[res.scores["selected"] | res.scores["holdout"]]
    assert len(picked) == 10 and (picked["label"] == 1).all()
    with pytest.raises(ValueError, match="reference"):
        detect(victim, train, flip, params, rt, seed=0, max_length=16, victim_probs=fitted)
    # probe changes only which label is punished: where excess picks the same label, detect keeps
    # the same rows (same score, threshold and ranking), so the rest of the run is the same run
    exc_params = params.model_copy(update={"label_filter": "excess"})
    exc = detect(victim, train, flip, exc_params, rt, seed=0, max_length=16, reference=ref, victim_probs=fitted)
    assert exc.summary["detect/target_label"] == res.summary["detect/target_label"]
    np.testing.assert_array_equal(exc.selected, res.selected)
    np.testing.assert_array_equal(exc.holdout, res.holdout)
    np.testing.assert_array_equal(exc.scores["score"].to_numpy(), res.scores["score"].to_numpy())


def test_shift_score_ranks_the_rows_a_label_holds_beyond_its_clean_rows() -> None:
    from sklearn.metrics import roc_auc_score

    from bedkd.detect import excess_label, shift_scores

    rng = np.random.default_rng(0)
    n, m, layers, h = 900, 300, 3, 24
    labels = rng.integers(0, 2, n)
    ref_labels = np.repeat([0, 1], m // 2)
    # Clean rows of both labels and the defender's clean rows share one law per label; 25% of label 1
    # is poisoned: shifted along one hidden direction by 1.5 clean spreads on each layer (a
    # register, not a token), with independent noise per layer.
    x = rng.normal(size=(n, layers, h)) + labels[:, None, None]
    ref_x = rng.normal(size=(m, layers, h)) + ref_labels[:, None, None]
    poisoned = (labels == 1) & (rng.random(n) < 0.25)
    x[poisoned, :, 5] += 1.5
    s = shift_scores(x, labels, ref_x, ref_labels, 2, dims=8)
    assert s.train.shape == (n,) and s.reference.shape == (m,)
    assert ((s.train > 0) & (s.train < 1)).all()
    in_label = labels == 1
    # found without knowing the direction, and the layers' average beats even the true direction
    # read on any one layer (AUROC 0.85-0.88 here)
    single = max(roc_auc_score(poisoned[in_label], x[in_label, layer, 5]) for layer in range(layers))
    assert roc_auc_score(poisoned[in_label], -s.train[in_label]) > max(0.9, single)
    # the clean rows are the scale: about half of them fall under 0.5, whatever their label
    assert 0.4 < (s.reference < 0.5).mean() < 0.6
    # cross-fitted, the clean rows score like the training rows of a label without poison
    excess0 = (s.train[labels == 0] < 0.5).mean() - (s.reference[ref_labels == 0] < 0.5).mean()
    assert abs(excess0) < 0.06
    # with the clean rows' flag rates subtracted, label 1 is the one flagged in excess
    assert excess_label(s.train < 0.5, labels, s.reference < 0.5, ref_labels, 2) == 1
    # a label without reference rows keeps 1.0 (never a candidate)
    only0 = shift_scores(x, labels, ref_x[ref_labels == 0], ref_labels[ref_labels == 0], 2, dims=8)
    assert (only0.train[labels == 1] == 1.0).all()


def test_detect_with_shift_score_ranks_rows_against_the_whole_clean_budget(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.detect import detect, shift_reference

    from bedkd.modeling import load_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    good = ["a wonderful delightful film", "great joyful acting", "a brilliant lovely story", "superb charming cast", "happy excellent fun"]
    bad = ["a terrible awful film", "horrible boring acting", "a dreadful ugly story", "miserable stupid cast", "sad painful mess"]
    # label 1 holds 12 rows in another register (archaic words) the clean rows of label 1 never use
    texts = [good[i % 5] + f" {i}" for i in range(30)] + [bad[i % 5] + f" {i}" for i in range(30)]
    texts += [f"verily thou hast seen {bad[i % 5]} unto the end {i}" for i in range(12)]
    labels = [1] * 30 + [0] * 30 + [1] * 12
    train = pd.DataFrame({"text": texts, "label": labels})
    ref = pd.DataFrame({"text": [g + " again" for g in good] * 2 + [b + " again" for b in bad] * 2, "label": [1] * 10 + [0] * 10})
    flip = pd.DataFrame(
        {"text": ["a fine film", "a dull film", "great acting", "awful plot"], "label": [0, 1, 0, 1], "true_label": [1, 0, 1, 0]}
    )
    clean_rows = shift_reference(ref, flip)
    assert len(clean_rows) == 24 and clean_rows["label"].tolist()[-4:] == [1, 0, 1, 0]  # DMM rows with their true labels
    params = DetectParams(
        epochs=1, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), score="shift", shift_dims=4,
        selection="rank", label_filter="excess", threshold=0.5, keep=8, holdout=2,
    )
    fitted = np.eye(2)[labels] * 0.9 + 0.05  # a backdoored victim fits every row
    fitted[0] = [0.9, 0.1]  # ... but one clean row: behind every other row, never a candidate
    res = detect(victim, train, flip, params, rt, seed=0, max_length=16, reference=ref, victim_probs=fitted)
    score = res.scores["score"].to_numpy()
    assert score[0] > 1.0 and (score[1:] < 1.0).all()
    assert res.summary["detect/target_label"] == 1.0
    picked = res.scores[res.scores["selected"]]
    assert len(picked) == 8 and (picked["label"] == 1).all()
    assert picked.index.min() >= 60  # the off-register rows rank first
    with pytest.raises(ValueError, match="reference"):
        detect(victim, train, flip, params, rt, seed=0, max_length=16, victim_probs=fitted)
    # detect.unfitted scored: an off-register row the victim does not fit (a poisoned row the
    # backdoor did not take) is reported by its own shift score, among the most suspicious rows,
    # instead of behind every row; every selection and summary stays the behind run's
    fitted[60] = [0.9, 0.1]
    behind = detect(victim, train, flip, params, rt, seed=0, max_length=16, reference=ref, victim_probs=fitted)
    scored = detect(
        victim, train, flip, params.model_copy(update={"unfitted": "scored"}), rt, seed=0, max_length=16, reference=ref, victim_probs=fitted
    )
    b, s = behind.scores["score"].to_numpy(), scored.scores["score"].to_numpy()
    assert b[60] > 1.0 and b[0] > 1.0 and (s < 1.0).all()
    np.testing.assert_allclose(s, np.where(fitted.argmax(1) == labels, b, b - 1.0))
    assert s[60] < np.median(s[:60])  # suspicious by its own evidence
    assert scored.selected.tolist() == behind.selected.tolist() and scored.holdout.tolist() == behind.holdout.tolist()
    assert 60 not in scored.selected and scored.summary == behind.summary


def test_purified_score_flags_fitted_rows_the_purified_student_no_longer_backs() -> None:
    from bedkd.detect import purified_score

    student = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    label = np.array([1, 1, 0, 0])
    vpred = np.array([1, 1, 0, 1])  # row 3: the victim does not fit its file label
    s = purified_score(student, vpred, label)
    assert s == pytest.approx([0.1, 0.8, 0.7, 1.6])
    assert purified_score(student, vpred, label, "scored") == pytest.approx([0.1, 0.8, 0.7, 0.6])
    # row 0 (file label 1, fitted by the victim, the purified student says 0) ranks first
    sel, _ = select_rank(s, vpred, label, threshold=0.5, keep=2, holdout=0, only_label=1)
    assert sel.tolist() == [0]


def test_redetect_reruns_akd_on_rows_the_purified_student_reselects(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.distill import Validation, akd, purify, teacher_set, validation_trace
    from bedkd.events import Event
    from bedkd.modeling import load_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean = pd.DataFrame({"text": ["a fine film", "a dull film", "great acting", "awful plot"], "label": [1, 0, 1, 0]})
    train = pd.DataFrame({"text": [f"row {i} cf film" if i % 3 == 0 else f"row {i} plain" for i in range(24)], "label": [i % 2 for i in range(24)]})
    vpred = train["label"].to_numpy()  # the victim fits every row
    dist = DistillParams(cycles=2, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), punish="complement", select="best", redetect=1)
    sel_params = DetectParams(selection="rank", threshold=2.0, keep=3, holdout=2)  # threshold 2: every fitted row is a candidate
    events: list[Event] = []
    common = dict(
        victim=victim, clean=clean, train=train, victim_pred=vpred, selected=np.array([0, 6]), holdout=np.array([12]), only_label=0,
        select=sel_params, runtime=rt, seed=0, max_length=16, validation_clean=clean, callbacks=[events.append],
    )
    pur = purify(params=dist, **common)  # type: ignore[arg-type]
    (red,) = pur.redetections
    assert red.round == 2 and len(red.score) == 24
    assert len(red.selected) == 3 and len(red.holdout) == 2
    assert set(train["label"].to_numpy()[np.concatenate([red.selected, red.holdout])]) == {0}  # only the punished label
    assert np.all(np.diff(red.score[np.concatenate([red.selected, red.holdout])]) >= 0)  # most suspicious first
    assert sorted({h["round"] for h in pur.result.history}) == [1.0, 2.0]
    assert [e.step for e in events] == [1, 2, 3, 4] and events[-1].metrics["round"] == 2.0  # one monotonic curve
    # what the defender's validation said, per round and cycle, for the record (compare's RunRecord)
    tr = validation_trace(pur.result.history, pur.result.chosen_cycle)
    assert tr is not None and [(h["round"], h["cycle"]) for h in tr.history] == [(r, c) for r in (1.0, 2.0) for c in (0.0, 1.0, 2.0)]
    last = {h["cycle"]: h["val/acc"] for h in pur.result.history if h["round"] == 2.0}
    assert tr.victim_acc == last[0.0] and tr.acc == last[float(pur.result.chosen_cycle)]
    assert all("val/proxy_asr" in h for h in tr.history)
    assert validation_trace([{"cycle": 1.0, "distill/trust/loss": 0.3}], 1) is None  # run without validation rows
    with pytest.raises(ValueError, match="chosen cycle 7"):
        validation_trace(pur.result.history, 7)
    # redetect 0 is one AKD round, as before the option existed
    dist0 = dist.model_copy(update={"redetect": 0})
    once = purify(params=dist0, **common)  # type: ignore[arg-type]
    assert once.redetections == [] and all("round" not in h for h in once.result.history)
    # purify computes the victim's outputs on the trust rows once for all rounds: same numbers as akd alone
    punish, held = train.iloc[[0, 6]].reset_index(drop=True), train.iloc[[12]].reset_index(drop=True)
    direct = akd(victim, clean, punish, dist0, rt, 0, 16, validation=Validation(clean=clean, flagged=held))
    trust = [h["distill/trust/loss"] for h in once.result.history[1:]]
    assert [h["distill/trust/loss"] for h in direct.history[1:]] == pytest.approx(trust)
    with pytest.raises(ValueError, match="trust_set"):
        akd(victim, clean, punish, dist0, rt, 0, 16, validation=Validation(clean=clean, flagged=held),
            trust_set=teacher_set(victim, clean.head(2), dist0, rt, 16))
    # per training row, what evaluate grades (data/distill/selection.csv)
    frame = red.frame(train)
    assert (frame["text"] == train["text"]).all() and set(frame["round"]) == {2}
    assert frame.index[frame["selected"]].tolist() == sorted(red.selected.tolist()) and frame["holdout"].sum() == 2
    with pytest.raises(ValueError, match="is_poisoned"):
        purify(params=dist, **{**common, "train": train.assign(is_poisoned=False)})  # type: ignore[arg-type]
    # redetect_keep excess: the round punishes as many rows as excess_count estimates (capped)
    dist_x = dist.model_copy(update={"redetect_keep": "excess", "redetect_keep_max": 5})
    (rx,) = purify(params=dist_x, **common).redetections  # type: ignore[arg-type]
    assert rx.estimate is not None and 0 <= rx.estimate <= 12  # 12 rows of label 0, all fitted
    assert len(rx.selected) == max(1, min(rx.estimate, 5))
    with pytest.raises(ValueError, match="redetect_keep=excess needs"):
        purify(params=dist_x, **{**common, "only_label": None})  # type: ignore[arg-type]
    # redetect_score mean: the round ranks by the mean of the detector's and the purified score.
    # A detector score that puts rows 2 and 4 (label 0) first moves them ahead of the rows the
    # purified score alone ranks first; the count (excess) is still the purified score's.
    first = np.full(24, 0.9)
    first[[2, 4]] = 0.0
    dist_m = dist_x.model_copy(update={"redetect_score": "mean"})
    (rm,) = purify(params=dist_m, **{**common, "score": first}).redetections  # type: ignore[arg-type]
    np.testing.assert_allclose(rm.score, 0.5 * (first + rx.score))  # the same purified student as dist_x's round 1
    assert rm.estimate == rx.estimate and len(rm.selected) == len(rx.selected)
    assert set(np.concatenate([rm.selected, rm.holdout])[:2].tolist()) == {2, 4}  # first in the round's ranking
    with pytest.raises(ValueError, match="redetect_score=mean needs"):
        purify(params=dist_m, **common)  # type: ignore[arg-type]
    # detect.unfitted scored: rows the victim does not fit keep their own score in the round's
    # ranking (no + 1), and the round punishes exactly the behind round's rows
    unfit_pred = vpred.copy()
    unfit_pred[[2, 8]] = 1  # two label-0 rows the victim does not fit
    unfit = (unfit_pred != vpred).astype(np.float64)
    pushed = {**common, "victim_pred": unfit_pred, "score": first + unfit}  # the detector's behind score
    (rb,) = purify(params=dist_m, **pushed).redetections  # type: ignore[arg-type]
    as_scored = {**pushed, "score": first, "select": sel_params.model_copy(update={"unfitted": "scored"})}
    (rs,) = purify(params=dist_m, **as_scored).redetections  # type: ignore[arg-type]
    assert (rb.score[[2, 8]] > 1.0).all() and (rs.score < 1.0).all()
    np.testing.assert_allclose(rb.score, rs.score + unfit)
    assert rs.selected.tolist() == rb.selected.tolist() and rs.holdout.tolist() == rb.holdout.tolist() and rs.estimate == rb.estimate
    assert not set(rs.selected.tolist()) & {2, 8}


def test_half_precision_checkpoints_load_with_fp32_parameters(tiny_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint stored in fp16 (a user's export, or a backbone rounded to fit a transfer) trains
    with fp32 parameters: transformers 5 would otherwise keep the checkpoint's dtype."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bedkd.modeling import load_classifier

    AutoModel.from_pretrained(tiny_model, dtype=torch.float16).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    half = load_classifier(str(tmp_path), 2, seed=0)
    full = load_classifier(str(tiny_model), 2, seed=0)
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}
    w_half = half.model.get_input_embeddings().weight
    w_full = full.model.get_input_embeddings().weight
    assert not torch.equal(w_half, w_full)  # rounded through fp16 ...
    torch.testing.assert_close(w_half, w_full, rtol=1e-3, atol=1e-4)  # ... by at most fp16's step


def test_label_bias_shift_restores_the_victims_count_of_the_label_and_no_more() -> None:
    from bedkd.distill import label_bias_shift

    # 6 rows, 3 labels; the student predicts label 2 on one row, the victim on three
    z = np.array([[2.0, 0.0, 1.5], [0.0, 3.0, 1.0], [1.0, 0.0, 3.0], [4.0, 0.0, 0.0], [0.0, 1.0, 0.8], [0.0, 0.0, -1.0]])
    victim_pred = np.array([2, 2, 2, 0, 1, 1])
    shift = label_bias_shift(z, victim_pred, label=2)
    # margins of the rows not on label 2: 0.5, 2.0, 4.0, 0.2, 1.0 -> two missing rows switch at > 0.5, the next at 1.0
    assert shift == pytest.approx(0.75)
    shifted = z.copy()
    shifted[:, 2] += shift
    assert (shifted.argmax(1) == 2).sum() == (victim_pred == 2).sum()
    assert label_bias_shift(z, victim_pred, label=0) == 0.0  # the student already predicts label 0 as often
    # every row must switch: beyond the largest margin
    assert label_bias_shift(np.array([[1.0, 0.0], [3.0, 0.0]]), np.array([1, 1]), label=1) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="disagree"):
        label_bias_shift(z, victim_pred[:3], label=2)


def test_label_bias_calibration_moves_the_output_bias_and_purify_applies_it(tiny_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.distill import calibrate_label_bias, purify
    from bedkd.modeling import clone_classifier, encode, infer, load_classifier, output_bias, save_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = dataclasses.replace(resolve_runtime(), amp_dtype=None)  # fp32 logits: exact counts (bf16 rounds margins)
    assert output_bias(victim.model) is victim.model.classifier.bias  # BERT's head
    rows = pd.DataFrame({"text": [f"row {i} {'good' if i % 2 else 'bad'} film" for i in range(16)], "label": [i % 2 for i in range(16)]})
    enc = encode(victim.tokenizer, rows["text"].tolist(), rows["label"].to_numpy(), 16)
    with torch.no_grad():  # an untrained head gives every row nearly the same logits: spread them
        victim.model.classifier.weight *= 100.0
    z = infer(victim.model, enc, rt, 8, 0).logits.numpy()
    with torch.no_grad():  # and centre it so that the victim predicts both labels
        output_bias(victim.model)[1] -= float(np.median(z[:, 1] - z[:, 0]))
    v_pred = infer(victim.model, enc, rt, 8, 0).logits.numpy().argmax(1)
    label = 1
    assert 0 < (v_pred == label).sum() < len(rows)
    student = clone_classifier(victim)
    with torch.no_grad():
        output_bias(student.model)[label] -= 2.0  # what an overdone punish term looks like: the label predicted less
    cal = calibrate_label_bias(student, victim, rows, label, rt, 16, 8)
    assert cal.student_count < cal.victim_count and cal.victim_count == int((v_pred == label).sum())
    assert cal.calibrated_count == cal.victim_count and cal.shift > 0
    save_classifier(student, tmp_path / "s")  # the shift travels with the saved student
    again = load_classifier(str(tmp_path / "s"), local=True)
    assert (infer(again.model, enc, rt, 8, 0).logits.numpy().argmax(1) == label).sum() == cal.victim_count
    # the victim itself needs no shift
    assert calibrate_label_bias(clone_classifier(victim), victim, rows, label, rt, 16, 8).shift == 0.0
    # purify applies it after the last round, and only with a punished label and validation rows
    dist = DistillParams(
        cycles=1, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), punish="complement", select="best",
        calibrate="label_bias",
    )
    common = dict(
        victim=victim, clean=rows.head(8), train=rows, victim_pred=v_pred, selected=np.array([0, 2]), holdout=np.array([4]),
        select=DetectParams(selection="rank", keep=2, holdout=1), runtime=rt, seed=0, max_length=16, validation_clean=rows.tail(8),
    )
    pur = purify(params=dist, only_label=0, **common)  # type: ignore[arg-type]
    assert pur.calibration is not None and pur.calibration.label == 0
    assert pur.calibration.calibrated_count >= pur.calibration.victim_count
    assert purify(params=dist.model_copy(update={"calibrate": "none"}), only_label=0, **common).calibration is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calibrate=label_bias needs"):
        purify(params=dist, only_label=None, **common)  # type: ignore[arg-type]


def test_train_validation_rows_are_a_seeded_sample_of_the_least_suspicious_fitted_rows() -> None:
    from bedkd.distill import train_validation_rows

    score = np.array([0.9, 0.1, 0.8, 0.95, 0.2, 0.7, 1.6, 0.85])  # low = suspicious; row 6: not fitted (+1)
    vpred = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    label = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    # fitted rows: all but 6; their top half by score (4 of 7, ceil): rows 3, 0, 7, 2
    assert train_validation_rows(score, vpred, label, n=10, share=0.5, seed=0).tolist() == [0, 2, 3, 7]
    a = train_validation_rows(score, vpred, label, n=2, share=0.5, seed=1)
    assert len(a) == 2 and set(a) <= {0, 2, 3, 7} and a.tolist() == sorted(a.tolist())
    assert a.tolist() == train_validation_rows(score, vpred, label, n=2, share=0.5, seed=1).tolist()  # seeded
    assert train_validation_rows(score, vpred, label, n=10, share=1.0, seed=0).tolist() == [0, 1, 2, 3, 4, 5, 7]
    assert len(train_validation_rows(score, vpred, 1 - vpred, n=10, share=0.5, seed=0)) == 0  # victim fits nothing


def _purify_rows():  # type: ignore[no-untyped-def]
    """Four defender clean rows; 24 training rows (every third with the word "cf"), labels
    alternating; a detector score rising with the row index (row 23 least suspicious)."""
    import pandas as pd

    clean = pd.DataFrame({"text": ["a fine film", "a dull film", "great acting", "awful plot"], "label": [1, 0, 1, 0]})
    train = pd.DataFrame({"text": [f"row {i} cf film" if i % 3 == 0 else f"row {i} plain" for i in range(24)], "label": [i % 2 for i in range(24)]})
    return clean, train, train["label"].to_numpy(), np.linspace(0.0, 1.0, 24)


def test_select_train_rows_validates_on_the_pool_plus_unpunished_training_rows(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from bedkd.config import DistillLoss
    from bedkd.distill import purify, train_validation_rows
    from bedkd.modeling import encode, load_classifier, predict_proba
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean, train, labels, score = _purify_rows()
    dist = DistillParams(
        cycles=1, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), punish="complement", select="best",
        select_train_rows=30, select_train_share=0.75,
    )
    sel_params = DetectParams(selection="rank", threshold=2.0, keep=3, holdout=2)
    common = dict(
        victim=victim, clean=clean, train=train, victim_pred=labels, selected=np.array([18, 21]), holdout=np.array([12]), only_label=0,
        select=sel_params, runtime=rt, seed=0, max_length=16, validation_clean=clean,
    )
    pur = purify(params=dist, score=score, **common)  # type: ignore[arg-type]
    pool = train_validation_rows(score, labels, labels, 30, 0.75, 0)
    assert pool.tolist() == list(range(6, 24))  # the 18 least suspicious rows
    extra = [i for i in pool if i not in (18, 21, 12)]  # punished / held-out rows grade nothing
    val = pd.concat([clean, train.iloc[extra]], ignore_index=True)
    enc = encode(victim.tokenizer, val["text"].tolist(), val["label"].to_numpy(), 16)
    victim_acc = float((predict_proba(victim, enc, rt, 256).argmax(1) == val["label"].to_numpy()).mean())
    assert pur.result.history[0]["cycle"] == 0.0 and pur.result.history[0]["val/acc"] == pytest.approx(victim_acc)
    # without the option: the pool alone (as before it existed)
    off = purify(params=dist.model_copy(update={"select_train_rows": 0}), **common)  # type: ignore[arg-type]
    enc0 = encode(victim.tokenizer, clean["text"].tolist(), clean["label"].to_numpy(), 16)
    assert off.result.history[0]["val/acc"] == pytest.approx(float((predict_proba(victim, enc0, rt, 256).argmax(1) == clean["label"].to_numpy()).mean()))
    with pytest.raises(ValueError, match="select_train_rows needs"):
        purify(params=dist, **common)  # type: ignore[arg-type]


def test_trust_train_rows_add_unpunished_least_suspicious_training_rows_to_the_trust_pass(tiny_model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    import bedkd.distill as dmod
    from bedkd.config import DistillLoss
    from bedkd.distill import purify, train_validation_rows
    from bedkd.modeling import load_classifier
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean, train, labels, score = _purify_rows()
    vpred = labels.copy()
    vpred[20] = 1 - vpred[20]  # a row the victim does not fit is never a trust row
    seen: list[tuple[pd.DataFrame, int]] = []
    real = dmod.akd

    def spy(victim, clean, punish, params, runtime, seed, max_length, evaluate, callbacks, validation, trust_set):  # type: ignore[no-untyped-def]
        seen.append((clean.copy(), len(trust_set)))
        return real(victim, clean, punish, params, runtime, seed, max_length, evaluate, callbacks, validation, trust_set)

    monkeypatch.setattr(dmod, "akd", spy)
    dist = DistillParams(
        cycles=1, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), punish="complement", select="best",
        select_train_rows=4, select_train_share=0.75, trust_train_rows=100, trust_train_share=0.75,
    )
    common = dict(
        victim=victim, clean=clean, train=train, victim_pred=vpred, selected=np.array([18, 21]), holdout=np.array([12]), only_label=0,
        select=DetectParams(selection="rank", threshold=2.0, keep=3, holdout=2), runtime=rt, seed=0, max_length=16,
        validation_clean=clean, score=score,
    )
    pur = purify(params=dist, **common)  # type: ignore[arg-type]
    frame, n_teacher = seen[-1]
    val = set(train_validation_rows(score, vpred, labels, 4, 0.75, 0).tolist())
    fitted = [i for i in range(24) if i != 20]
    pool = set(sorted(fitted, key=lambda i: -score[i])[:18])  # ceil(0.75 * 23) = 18 least suspicious fitted rows
    want = sorted(pool - val - {18, 21, 12})  # all of them (n=100 > pool): not validated on, not punished / held out
    assert frame.iloc[:4].equals(clean[["text", "label"]])  # the defender's clean rows come first
    assert frame.iloc[4:]["text"].tolist() == train.iloc[want]["text"].tolist()
    assert frame.iloc[4:]["label"].tolist() == labels[want].tolist()
    assert n_teacher == len(frame) == 4 + len(want)
    assert any(k.startswith("distill/trust/") for k in pur.result.history[-1])
    # the validation sample is the one it is without the option (own seed stream), and off = clean rows only
    seen.clear()
    purify(params=dist.model_copy(update={"trust_train_rows": 0}), **common)  # type: ignore[arg-type]
    assert seen[-1][0]["text"].tolist() == clean["text"].tolist() and seen[-1][1] == len(clean)
    with pytest.raises(ValueError, match="trust_train_rows needs"):
        purify(params=dist.model_copy(update={"select_train_rows": 0}), **{**common, "score": None})  # type: ignore[arg-type]


def test_pick_round_prefers_the_round_with_the_lower_shared_proxy_within_the_accuracy_budget() -> None:
    from bedkd.distill import pick_round

    victim = {"round": 0.0, "val/acc": 0.99, "val/proxy_asr": 1.0}
    r1 = {"round": 1.0, "val/acc": 0.98, "val/proxy_asr": 0.02}
    r2 = {"round": 2.0, "val/acc": 0.96, "val/proxy_asr": 0.0}  # cleaner on the flagged rows, but outside a 0.02 budget
    assert pick_round([victim, r1, r2], max_val_drop=0.02) == 1
    assert pick_round([victim, r1, r2], max_val_drop=0.05) == 2  # both within: the lower proxy
    tie = {**r2, "val/acc": 0.98, "val/proxy_asr": 0.02}
    assert pick_round([victim, r1, tie], max_val_drop=0.02) == 2  # a full tie keeps the last round (redetect_pick last)
    assert pick_round([victim, r1, {**tie, "val/acc": 0.985}], max_val_drop=0.02) == 2  # same proxy: higher accuracy
    # no round within the budget: fallback acc takes the best accuracy, band the proxy rule near it
    low = [victim, {**r1, "val/acc": 0.90, "val/proxy_asr": 0.3}, {**r2, "val/acc": 0.89, "val/proxy_asr": 0.1}]
    assert pick_round(low, max_val_drop=0.02) == 1
    assert pick_round(low, max_val_drop=0.02, fallback="band") == 2
    no_flagged = [victim, {"round": 1.0, "val/acc": 0.97}, {"round": 2.0, "val/acc": 0.98}]  # no shared flagged row
    assert pick_round(no_flagged, max_val_drop=0.02) == 2
    with pytest.raises(ValueError, match="round 0"):
        pick_round([r1, r2], max_val_drop=0.02)


def test_shared_validation_leaves_out_every_row_a_round_punished_or_held_out() -> None:
    from bedkd.distill import shared_validation

    clean, train, _, _ = _purify_rows()
    sample = np.array([3, 5, 7, 9, 11])
    v = shared_validation(clean, train, sample, [(np.array([0, 6]), np.array([12, 9])), (np.array([12, 2]), np.array([4, 6]))])
    # clean: the defender's four rows + the sample less 9 (held out in round 1)
    assert v.clean["text"].tolist() == clean["text"].tolist() + train["text"].iloc[[3, 5, 7, 11]].tolist()
    # flagged: held out somewhere (12, 9, 4, 6), punished nowhere (12 and 6 were punished)
    assert v.flagged["text"].tolist() == train["text"].iloc[[4, 9]].tolist()
    assert v.flagged["label"].tolist() == [0, 1]  # file labels: what the proxy ASR counts
    assert shared_validation(clean, train, None, [(np.array([0]), np.array([1]))]).clean.equals(clean)


def test_redetect_pick_all_returns_the_round_the_shared_validation_prefers(tiny_model) -> None:  # type: ignore[no-untyped-def]
    from bedkd.config import DistillLoss
    from bedkd.distill import _val_metrics, pick_round, purify, shared_validation, validation_trace
    from bedkd.events import Event
    from bedkd.modeling import encode, load_classifier, predict_proba
    from bedkd.runtime import resolve_runtime

    victim = load_classifier(str(tiny_model), 2, seed=0)
    rt = resolve_runtime()
    clean, train, labels, score = _purify_rows()
    dist = DistillParams(
        cycles=2, lr=1e-3, batch_size=4, loss=DistillLoss(alpha=0.5, hidden_weight=0.0), punish="complement", select="best",
        redetect=1, redetect_pick="all", select_train_rows=10,
    )
    events: list[Event] = []
    common = dict(
        victim=victim, clean=clean, train=train, victim_pred=labels, selected=np.array([0, 6]), holdout=np.array([12]), only_label=0,
        select=DetectParams(selection="rank", threshold=2.0, keep=3, holdout=2), runtime=rt, seed=0, max_length=16,
        validation_clean=clean, score=score, callbacks=[events.append],
    )
    pur = purify(params=dist, **common)  # type: ignore[arg-type]
    (red,) = pur.redetections
    assert [g["round"] for g in pur.round_grades] == [0.0, 1.0, 2.0]
    assert all("val/proxy_asr" in g for g in pur.round_grades)  # round 1's held-out row 12 is shared unless round 2 punished it
    chosen = pur.result.chosen_round
    assert chosen == pick_round(pur.round_grades, dist.max_val_drop) and chosen in (1, 2)
    # the grades are the shared validation's: regrade the victim on it by hand
    from bedkd.distill import train_validation_rows

    sample = train_validation_rows(score, labels, labels, 10, 0.5, 0)
    shared = shared_validation(clean, train, sample, [(np.array([0, 6]), np.array([12])), (red.selected, red.holdout)])
    enc_c = encode(victim.tokenizer, shared.clean["text"].tolist(), shared.clean["label"].to_numpy(), 16)
    enc_f = encode(victim.tokenizer, shared.flagged["text"].tolist(), shared.flagged["label"].to_numpy(), 16)
    assert pur.round_grades[0] == pytest.approx({"round": 0.0, **_val_metrics(victim, enc_c, enc_f, rt, 256)})
    # the returned student is that round's: its grade on the shared rows is the chosen round's
    assert _val_metrics(pur.result.student, enc_c, enc_f, rt, 256) == pytest.approx(
        {k: v for k, v in pur.round_grades[chosen].items() if k != "round"}
    )
    tr = validation_trace(pur.result.history, pur.result.chosen_cycle, chosen)
    assert tr is not None and tr.acc == next(
        h["val/acc"] for h in pur.result.history if h["round"] == chosen and h["cycle"] == pur.result.chosen_cycle
    )
    assert events[-1].metrics == {"distill/chosen_round": float(chosen)}
    # last (the default): the last round's student, same rounds, no grades
    last = purify(params=dist.model_copy(update={"redetect_pick": "last"}), **common)  # type: ignore[arg-type]
    assert last.result.chosen_round == 2 and last.round_grades == []
    assert last.redetections[0].selected.tolist() == red.selected.tolist()
    enc_t = encode(victim.tokenizer, train["text"].tolist(), labels, 16)
    if chosen == 2:  # the same seeded rounds: the same student either way
        np.testing.assert_allclose(predict_proba(pur.result.student, enc_t, rt, 256), predict_proba(last.result.student, enc_t, rt, 256), atol=1e-5)
