"""tune: what one Optuna trial computes, with the expensive parts cached across trials.

Optuna itself is driven from ``pipelines/tune.py``; this module knows nothing about it. A trial:
1. victim: trained once per (seed, data, poison, model, train_victim), cached under that hash;
2. detection (DMM scores + selection): cached under (victim hash, detect params);
3. AKD with the trial's distill params, evaluated on dev only (never test).

Objectives: ``oracle`` = dev CACC and ASR on the triggered dev split; ``blind`` = dev CACC and a
proxy ASR on flagged rows held out of the punish set (share the student still maps to their
suspicious label), which needs nothing a real defender lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from bedkd.config import Params, section_hash
from bedkd.defender import DefenderPools, flipped_set, pools_for
from bedkd.detect import detect
from bedkd.distill import purify
from bedkd.evaluate import EvalSplits, encode_eval_splits, evaluate_classifier
from bedkd.events import Callback
from bedkd.io import atomic_dir, drop_ground_truth, read_json, read_records, read_scores, write_json
from bedkd.modeling import Classifier, Encoded, encode, load_classifier, predict_proba, save_classifier
from bedkd.runtime import Runtime
from bedkd.train_victim import fit_classifier

log = logging.getLogger("bedkd.tune")


def victim_key(params: Params) -> str:
    full = params.model_dump(mode="json")
    return section_hash({k: full[k] for k in ("seed", "data", "poison", "model", "train_victim")})


def detect_key(params: Params) -> str:
    # The DMM pool depends on flip_per_class only; clean_per_class is in for the budget check.
    return section_hash(
        {"victim": victim_key(params), "detect": params.detect.model_dump(mode="json"), "clean_per_class": params.distill.clean_per_class}
    )


@dataclass
class CacheStats:
    victim_trained: int = 0
    victim_reused: int = 0
    detect_computed: int = 0
    detect_reused: int = 0


@dataclass(frozen=True)
class Data:
    """The prepared/poisoned splits a trial reads (ground truth dropped)."""

    clean_train: pd.DataFrame
    train: pd.DataFrame
    clean_dev: pd.DataFrame
    triggered_dev: pd.DataFrame
    clean_test: pd.DataFrame
    triggered_test: pd.DataFrame

    @classmethod
    def load(cls, prepared: Path, poisoned: Path) -> "Data":
        return cls(
            clean_train=read_records(prepared / "clean" / "train.parquet"),
            train=drop_ground_truth(read_records(poisoned / "train.parquet")),
            clean_dev=read_records(prepared / "clean" / "dev.parquet"),
            triggered_dev=read_records(poisoned / "dev.parquet"),
            clean_test=read_records(prepared / "clean" / "test.parquet"),
            triggered_test=read_records(poisoned / "test.parquet"),
        )


@dataclass(frozen=True)
class Detection:
    scores: pd.DataFrame  # every training row: text, label, victim_pred, selected, holdout (detect's scores.csv)
    target_label: int | None  # the label detect punishes (label_filter), None = any

    @property
    def selected(self) -> np.ndarray:
        """Training-row indices to punish."""
        return np.flatnonzero(self.scores["selected"].to_numpy().astype(bool))

    @property
    def holdout(self) -> np.ndarray:
        """Flagged rows left out of punishing (blind proxy)."""
        if "holdout" not in self.scores.columns:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.scores["holdout"].to_numpy().astype(bool))


@dataclass(frozen=True)
class TrialResult:
    dev_cacc: float
    dev_asr: float  # the objective: oracle ASR or blind proxy, by mode
    victim_dev_cacc: float
    oracle_asr: float  # triggered dev ASR, reported in both modes (never the blind objective)
    proxy_asr: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def cacc_drop(self) -> float:
        return self.victim_dev_cacc - self.dev_cacc


class TuneContext:
    """Shared, cached state for a study's trials within one worker process."""

    def __init__(self, data: Data, runtime: Runtime, cache_dir: Path) -> None:
        self.data = data
        self.runtime = runtime
        self.cache_dir = Path(cache_dir)
        self.stats = CacheStats()
        self._victims: dict[str, Classifier] = {}
        self._dev: dict[str, EvalSplits] = {}
        self._victim_dev_cacc: dict[str, float] = {}

    def seed_victim(self, params: Params, trained: Path) -> bool:
        """Put an already-trained victim (e.g. DVC's models/victim, trained with these params)
        into the cache under its key. Returns False when the cache already had one."""
        path = self.cache_dir / "victim" / victim_key(params)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if (path / "model.safetensors").is_file():
                return False
            with atomic_dir(path) as tmp:
                save_classifier(load_classifier(str(trained), local=True), tmp)
        return True

    def victim(self, params: Params) -> Classifier:
        key = victim_key(params)
        if key in self._victims:
            return self._victims[key]
        path = self.cache_dir / "victim" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several workers may want the same victim: one trains it, the others wait, then load.
        with FileLock(str(path) + ".lock"):
            if (path / "model.safetensors").is_file():
                self.stats.victim_reused += 1
            else:
                clf, _ = fit_classifier(params, self.data.train, self.runtime)
                with atomic_dir(path) as tmp:
                    save_classifier(clf, tmp)
                self.stats.victim_trained += 1
                log.info("victim %s trained and cached", key)
        self._victims[key] = load_classifier(str(path), local=True)
        return self._victims[key]

    def dev_splits(self, params: Params) -> EvalSplits:
        key = victim_key(params)
        if key not in self._dev:
            self._dev[key] = encode_eval_splits(
                self.victim(params), self.data.clean_dev, self.data.triggered_dev, params.target_label, params.model.max_length
            )
        return self._dev[key]

    def victim_dev_cacc(self, params: Params) -> float:
        key = victim_key(params)
        if key not in self._victim_dev_cacc:
            r = evaluate_classifier(self.victim(params), self.dev_splits(params), self.runtime, params.evaluate.batch_size)
            self._victim_dev_cacc[key] = r.cacc
        return self._victim_dev_cacc[key]

    def _pools(self, params: Params) -> DefenderPools:
        return pools_for(params, self.data.clean_train)

    def detection(self, params: Params) -> Detection:
        path = self.cache_dir / "detect" / detect_key(params)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if (path / "scores.csv").is_file():
                self.stats.detect_reused += 1
            else:
                flip = flipped_set(self.data.clean_train, self._pools(params).dmm, params.num_classes, params.detect.flip_ratio, params.seed)
                res = detect(
                    self.victim(params), self.data.train, flip, params.detect, self.runtime, params.seed,
                    params.model.max_length, params.evaluate.batch_size, reference=self.clean_rows(params),
                )
                with atomic_dir(path) as tmp:
                    res.scores.to_csv(tmp / "scores.csv", index_label="index")
                    write_json(tmp / "summary.json", res.summary)
                self.stats.detect_computed += 1
        scores = read_scores(path / "scores.csv", required=("victim_pred",))
        target = int(read_json(path / "summary.json").get("detect/target_label", -1))
        return Detection(scores=scores, target_label=None if target < 0 else target)

    def clean_rows(self, params: Params) -> pd.DataFrame:
        return self.data.clean_train.iloc[self._pools(params).akd][["text", "label"]].reset_index(drop=True)

    def proxy_asr(self, student: Classifier, holdout: Encoded, params: Params) -> float:
        """Share of held-out flagged rows the student still maps to their (suspicious) label."""
        if len(holdout) == 0:
            return float("nan")
        pred = predict_proba(student, holdout, self.runtime, params.evaluate.batch_size).argmax(1)
        return float((pred == holdout.labels.numpy()).mean())

    def run_trial(
        self, params: Params, mode: str, callbacks: Sequence[Callback] = ()
    ) -> tuple[TrialResult, Classifier]:
        victim = self.victim(params)
        det = self.detection(params)
        dev = self.dev_splits(params)
        bs = params.evaluate.batch_size
        rows = det.scores[["text", "label"]]

        def encode_rows(idx: np.ndarray) -> Encoded:
            return encode(victim.tokenizer, rows["text"].iloc[idx].tolist(), rows["label"].to_numpy()[idx], params.model.max_length)

        # Tokenised once: the proxy is evaluated every cycle in blind mode (on DMM's holdout rows).
        holdout = encode_rows(det.holdout)

        def per_cycle(student: Classifier) -> dict[str, float]:
            r = evaluate_classifier(student, dev, self.runtime, bs)
            out = {"dev/cacc": r.cacc, "dev/asr": r.asr}
            if mode == "blind":
                out["dev/proxy_asr"] = self.proxy_asr(student, holdout, params)
            return out

        pur = purify(
            victim, self.clean_rows(params), rows, det.scores["victim_pred"].to_numpy(), det.selected, det.holdout,
            det.target_label, params.distill, params.detect, self.runtime, params.seed, params.model.max_length,
            validation_clean=self.data.clean_train.iloc[self._pools(params).dmm][["text", "label"]].reset_index(drop=True),
            evaluate=per_cycle, callbacks=callbacks, eval_batch_size=bs, score=det.scores["score"].to_numpy(),
        )
        res = pur.result
        # The chosen cycle's row of the last round (the last cycle unless distill.select=best picked another).
        last = next(h for h in reversed(res.history) if int(h["cycle"]) == res.chosen_cycle)
        if "dev/cacc" not in last:
            r = evaluate_classifier(res.student, dev, self.runtime, bs)
            last = {**last, "dev/cacc": r.cacc, "dev/asr": r.asr}
        if pur.redetections and len(pur.redetections[-1].holdout):
            # The last round punished other rows: its own held-out rows are the proxy.
            proxy = self.proxy_asr(res.student, encode_rows(pur.redetections[-1].holdout), params)
        else:
            proxy = last["dev/proxy_asr"] if "dev/proxy_asr" in last else self.proxy_asr(res.student, holdout, params)
        result = TrialResult(
            dev_cacc=last["dev/cacc"],
            dev_asr=proxy if mode == "blind" else last["dev/asr"],
            victim_dev_cacc=self.victim_dev_cacc(params),
            oracle_asr=last["dev/asr"],
            proxy_asr=proxy,
            history=res.history,
        )
        return result, res.student

    def test_metrics(self, student: Classifier, params: Params) -> dict[str, float]:
        """The one evaluation on test, for the chosen trial only."""
        victim = self.victim(params)
        test = encode_eval_splits(victim, self.data.clean_test, self.data.triggered_test, params.target_label, params.model.max_length)
        v = evaluate_classifier(victim, test, self.runtime, params.evaluate.batch_size)
        s = evaluate_classifier(student, test, self.runtime, params.evaluate.batch_size)
        return {"victim/cacc": v.cacc, "victim/asr": v.asr, "student/cacc": s.cacc, "student/asr": s.asr}


def pick_best(rows: list[dict[str, float]], max_cacc_drop: float) -> dict[str, float] | None:
    """From Pareto rows: the lowest ASR within the CACC-drop budget, else the best CACC."""
    ok = [r for r in rows if r["cacc_drop"] <= max_cacc_drop]
    if ok:
        return min(ok, key=lambda r: (r["asr"], -r["cacc"]))
    return max(rows, key=lambda r: r["cacc"]) if rows else None
