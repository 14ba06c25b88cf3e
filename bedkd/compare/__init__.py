"""compare: the defenses side by side on the same victim, clean budget and test rows.

Defenses (``bedkd.config.DEFENSES``):
- ``clean``: a reference, not a defense: the victim's backbone and recipe trained on the unpoisoned
  training set (one model per dataset, cached). Its ASR is the floor a backdoor-free model of this
  quality reaches: the share of triggered non-target rows it gets wrong anyway;
- ``finetune``: CE fine-tuning of the victim on the defender's clean rows only;
- ``kd``: AKD's trust distillation only (the ``bedkd`` distill settings, no punish, last cycle);
- ``released``: the faithful BeDKD (``bedkd.config.released``);
- ``bedkd``: the improved mode, i.e. the ``detect``/``distill`` sections of params.yaml;
- ``compare.variants``: named other settings of ``bedkd`` (``detect.*`` / ``distill.*`` overrides),
  each a row of its own.

Every defense draws the same defender pools for a seed (80 flipped + 320 clean rows per class by
default). Ground truth (``is_poisoned``) is read here only to grade the detector afterwards; the
detector and AKD get the training set without it. Test data is touched once per trained model.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from bedkd.compare.cells import cell_folder, cell_key, materialise_cell
from bedkd.config import Params, load_params, released, section_hash, with_overrides
from bedkd.defender import defender_pools, flipped_set
from bedkd.detect import detect
from bedkd.distill import Calibration, CycleEval, ValidationTrace, akd, purify, validation_trace
from bedkd.evaluate import EvalSplits, encode_eval_splits, evaluate_classifier
from bedkd.io import atomic_dir, drop_ground_truth, read_json, read_records, write_json, write_records
from bedkd.metrics import detection_metrics
from bedkd.modeling import Classifier, clone_classifier, encode, infer, load_classifier, pad_id_of, save_classifier
from bedkd.runtime import Runtime, resolve_runtime
from bedkd.settings import get_settings
from bedkd.train_victim import fit_classifier, train_classifier
from bedkd.tune import Data, TuneContext, victim_key

# Keys of a reports/comparison.json row, in the order (JSON is written with sorted keys).
ROW_KEYS = (
    "dataset", "attack", "defense", "seeds", "victim_cacc", "victim_asr", "student_cacc", "student_asr",
    "student_asr_std", "student_cacc_std", "detect_auroc", "detect_precision", "detect_recall", "wall_s", "machine",
)


def machine_name(runtime: Runtime) -> str:
    """A short description of where the numbers came from, numerics included: a victim retrained
    in fp32 on a CPU without native bf16 differs in its last digits from a bf16-autocast one."""
    numerics = "fp32" if runtime.amp_dtype is None else f"{str(runtime.amp_dtype).removeprefix('torch.')} autocast"
    if runtime.device.type == "cuda":
        return f"{torch.cuda.get_device_name(runtime.device)}, {os.cpu_count()} CPU cores, {numerics}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU only: {model}, {torch.get_num_threads()} threads, {numerics}"


def cell_params(params: Params, cell: str) -> Params:
    dataset, _, attack = cell.partition("/")
    return with_overrides(params, {"data.dataset": dataset, "poison.attack": attack}, where="compare.cells")


def defense_params(params: Params, defense: str, seed: int) -> Params:
    """The params a defense runs with (``seed`` = the defender's seed)."""
    p = params.model_copy(update={"seed": seed})
    if defense == "released":
        return released(p)
    if defense == "kd":
        return with_overrides(p, {"distill.punish_weight": 0.0, "distill.select": "last", "distill.redetect_pick": "last"})
    if defense in params.compare.variants:
        return with_overrides(p, params.compare.variants[defense], where=f"compare.variants.{defense}")
    if defense != "bedkd" and defense not in ("clean", "finetune"):
        raise ValueError(f"unknown defense {defense!r}: not one of clean, finetune, kd, released, bedkd nor a compare.variants name")
    return p


def method_of(params: Params, defense: str) -> str:
    """The defense a run actually executes: a ``compare.variants`` entry is a ``bedkd`` run of other params."""
    return "bedkd" if defense in params.compare.variants else defense


def clean_model_key(params: Params) -> str:
    """One clean reference model per dataset, backbone and training recipe (any attack)."""
    full = params.model_dump(mode="json")
    return section_hash({"clean": True, **{k: full[k] for k in ("seed", "data", "model", "train_victim")}})


def clean_model(params: Params, clean_train: pd.DataFrame, runtime: Runtime, cache_dir: Path | None) -> tuple[Classifier, float]:
    """The ``clean`` reference: ``train_victim`` on the unpoisoned training rows, seeded by
    ``params.seed``. Cached under ``cache_dir/clean`` (shared by a dataset's attacks); returns the
    model and its training seconds (as measured when it was trained)."""

    def train() -> tuple[Classifier, float]:
        t0 = time.perf_counter()
        clf, _ = fit_classifier(params, clean_train, runtime, stage="compare/clean")
        return clf, time.perf_counter() - t0

    if cache_dir is None:
        return train()
    path = Path(cache_dir) / "clean" / clean_model_key(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "model.safetensors").is_file():
            clf, wall = train()
            with atomic_dir(path) as tmp:
                save_classifier(clf, tmp)
                write_json(tmp / "train.json", {"wall_s": wall})
    return load_classifier(str(path), local=True), float(read_json(path / "train.json")["wall_s"])


@dataclass(frozen=True)
class RunRecord:
    """One defense, one seed, one cell. Detector fields are None for detector-free defenses."""

    dataset: str
    attack: str
    defense: str
    seed: int
    victim_cacc: float
    victim_asr: float
    student_cacc: float
    student_asr: float
    detect_auroc: float | None
    detect_precision: float | None
    detect_recall: float | None
    n_kept: int | None
    chosen_cycle: int | None
    wall_s: float
    machine: str
    punished_label: int | None = None  # the label detect chose to punish (label_filter), None = any
    # With distill.redetect, detect_* grade the last round's (purified-student) selection and
    # this field the DMM score the first round punished on.
    dmm_auroc: float | None = None
    # The defender's validation (no test data): accuracy on its clean validation rows of the victim
    # and of the returned student, and per AKD cycle (round, cycle, val/acc, val/proxy_asr), so a
    # run can be checked afterwards against distill.max_val_drop. None for runs without validation.
    victim_val_acc: float | None = None
    val_acc: float | None = None
    val_history: list[dict[str, float]] | None = None
    # distill.calibrate label_bias: the logit shift added to the punished label (None: option off).
    calibration_shift: float | None = None
    # With distill.redetect: the AKD round the student comes from (1 = DMM's selection); the detect_*
    # fields grade that round's selection. None: no redetection, or a record from before the field.
    chosen_round: int | None = None


@dataclass
class Cell:
    """A materialised cell with its victim and the frozen victim's cached outputs."""

    params: Params
    clean_train: pd.DataFrame
    train: pd.DataFrame  # without is_poisoned: what the defender sees
    is_poisoned: np.ndarray  # grading only
    test: EvalSplits
    victim: Classifier
    victim_cacc: float
    victim_asr: float
    victim_train_probs: np.ndarray  # [N, k] on ``train``


def cell_victim(params: Params, folder: Path, runtime: Runtime, cache_dir: Path) -> Classifier:
    """Train or load the victim of a materialised cell through the tuner's victim cache (same key:
    seed, data, poison, model, train_victim): the harness, the tuner and the research scripts share it."""
    return TuneContext(Data.load(folder / "prepared", folder / "poisoned"), runtime, cache_dir).victim(params)


@dataclass(frozen=True)
class OpenCell:
    """One grid cell made ready outside the harness (the research scripts): its params, its
    materialised data folder, its victim (trained or loaded from the shared cache) and the runtime."""

    params: Params
    folder: Path
    victim: Classifier
    runtime: Runtime


def open_cell(params_path: Path, cell: str) -> OpenCell:
    """``params_path`` narrowed to ``cell`` ("dataset/attack"), with data and cache folders and the
    device from the environment's settings (BEDKD_DATA_DIR, BEDKD_CACHE_DIR, BEDKD_DEVICE)."""
    settings = get_settings()
    runtime = resolve_runtime()
    cp = cell_params(load_params(params_path), cell)
    cache = settings.cache_dir.resolve()
    folder = materialise_cell(cp, settings.data_dir, cache / "cells")
    return OpenCell(cp, folder, cell_victim(cp, folder, runtime, cache), runtime)


def cell_parser(doc: str, example: str, seeds: str = "0,1,2") -> argparse.ArgumentParser:
    """The command line every research script on one cell shares: --params, --cell, --seeds
    (comma-separated, read with :func:`seed_list`), --out; a script adds its own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--cell", required=True, help=f"dataset/attack, e.g. {example}")
    ap.add_argument("--seeds", default=seeds, help="defender seeds, comma-separated")
    ap.add_argument("--out", type=Path, required=True)
    return ap


def seed_list(seeds: str) -> list[int]:
    return [int(s) for s in seeds.split(",")]


def load_cell(params: Params, folder: Path, victim: Classifier, runtime: Runtime) -> Cell:
    poisoned = read_records(folder / "poisoned" / "train.parquet", required=("text", "label", "is_poisoned"))
    test = encode_eval_splits(
        victim, read_records(folder / "prepared" / "clean" / "test.parquet"), read_records(folder / "poisoned" / "test.parquet"),
        params.target_label, params.model.max_length,
    )
    v = evaluate_classifier(victim, test, runtime, params.evaluate.batch_size)
    train = drop_ground_truth(poisoned)
    enc = encode(victim.tokenizer, train["text"].tolist(), train["label"].to_numpy(), params.model.max_length)
    probs = infer(victim.model, enc, runtime, params.evaluate.batch_size, pad_id_of(victim.tokenizer)).probs()
    return Cell(
        params=params,
        clean_train=read_records(folder / "prepared" / "clean" / "train.parquet"),
        train=train,
        is_poisoned=poisoned["is_poisoned"].to_numpy().astype(bool),
        test=test,
        victim=victim,
        victim_cacc=v.cacc,
        victim_asr=v.asr,
        victim_train_probs=probs,
    )


@dataclass(frozen=True)
class Defended:
    """One defended model before grading on test: the student and what the defense measured on the
    way (detector grades read ``is_poisoned`` only after detection is done)."""

    student: Classifier
    wall_s: float
    detect_auroc: float | None = None
    detect_precision: float | None = None
    detect_recall: float | None = None
    n_kept: int | None = None
    chosen_cycle: int | None = None
    punished_label: int | None = None
    dmm_auroc: float | None = None
    validation: ValidationTrace | None = None
    calibration: Calibration | None = None
    rounds: tuple[RoundScores, ...] = ()  # one per selection round: the detector's, then each redetection's
    chosen_round: int | None = None  # with distill.redetect: the AKD round the student comes from

    @property
    def dmm_score(self) -> np.ndarray | None:
        """[N] the detector's score of every training row (round 1; low = suspicious)."""
        return self.rounds[0].score if self.rounds else None


@dataclass(frozen=True)
class RoundScores:
    """What one selection round saw: the score of every training row (low = suspicious) [N] and the
    rows it punished [N] (bool). Kept beside the run record so that other rankings of the same runs
    can be graded without retraining."""

    score: np.ndarray
    selected: np.ndarray


def defend(
    cell: Cell, defense: str, seed: int, runtime: Runtime, cache_dir: Path | None = None, evaluate: CycleEval | None = None
) -> Defended:
    """Train one defended model of ``cell`` (the ``clean`` reference included).
    ``cache_dir``: where the ``clean`` reference model is cached (None: train it afresh).
    ``evaluate``: research curves after every AKD cycle of ``bedkd`` / ``released`` (never used to pick)."""
    p = defense_params(cell.params, defense, seed)
    t0 = time.perf_counter()
    if defense == "clean":
        ref, wall = clean_model(p, cell.clean_train, runtime, cache_dir)
        return Defended(student=ref, wall_s=wall)
    pools = defender_pools(cell.clean_train["label"].to_numpy(), p.num_classes, p.detect.flip_per_class, p.distill.clean_per_class, seed)
    clean = cell.clean_train.iloc[pools.akd][["text", "label"]].reset_index(drop=True)
    if defense == "finetune":
        student = clone_classifier(cell.victim)
        enc = encode(student.tokenizer, clean["text"].tolist(), clean["label"].to_numpy(), p.model.max_length)
        train_classifier(student, enc, p.compare.finetune, runtime, seed, stage="compare/finetune")
        return Defended(student=student, wall_s=time.perf_counter() - t0)
    if defense == "kd":  # trust passes only, nothing punished
        out = akd(cell.victim, clean, clean.iloc[:0], p.distill, runtime, seed, p.model.max_length)
        return Defended(student=out.student, wall_s=time.perf_counter() - t0, chosen_cycle=out.chosen_cycle)
    # released / bedkd (and its compare.variants, whose params p already holds)
    flip = flipped_set(cell.clean_train, pools.dmm, p.num_classes, p.detect.flip_ratio, seed)
    res = detect(
        cell.victim, cell.train, flip, p.detect, runtime, seed, p.model.max_length, p.evaluate.batch_size,
        victim_probs=cell.victim_train_probs, reference=clean,
    )
    scores = res.scores
    m = detection_metrics(scores["score"].to_numpy(), cell.is_poisoned, scores["selected"].to_numpy())
    det_auroc, det_prec, det_rec, n_kept = m.auroc, m.precision, m.recall, m.n_kept
    rounds = [RoundScores(score=scores["score"].to_numpy(), selected=scores["selected"].to_numpy().astype(bool))]
    dmm_auroc = None
    target = int(res.summary["detect/target_label"])
    punished = None if target < 0 else target
    pur = purify(
        cell.victim, clean, cell.train, scores["victim_pred"].to_numpy(), res.selected, res.holdout, punished,
        p.distill, p.detect, runtime, seed, p.model.max_length,
        validation_clean=cell.clean_train.iloc[pools.dmm][["text", "label"]].reset_index(drop=True),
        evaluate=evaluate, eval_batch_size=p.evaluate.batch_size, score=scores["score"].to_numpy(),
    )
    if pur.redetections:
        rounds += [RoundScores(score=r.score, selected=r.mask(r.selected)) for r in pur.redetections]
        if pur.result.chosen_round > 1:  # graded: the selection the returned student was punished on
            kept = pur.redetections[pur.result.chosen_round - 2]
            m2 = detection_metrics(kept.score, cell.is_poisoned, kept.mask(kept.selected))
            dmm_auroc, det_auroc, det_prec, det_rec, n_kept = det_auroc, m2.auroc, m2.precision, m2.recall, m2.n_kept
    return Defended(
        student=pur.result.student, wall_s=time.perf_counter() - t0, detect_auroc=det_auroc, detect_precision=det_prec,
        detect_recall=det_rec, n_kept=n_kept, chosen_cycle=pur.result.chosen_cycle, punished_label=punished,
        dmm_auroc=dmm_auroc, validation=validation_trace(pur.result.history, pur.result.chosen_cycle, pur.result.chosen_round),
        calibration=pur.calibration, rounds=tuple(rounds), chosen_round=pur.result.chosen_round if pur.redetections else None,
    )


def round_frame(rounds: Sequence[RoundScores], cell: Cell) -> pd.DataFrame:
    """The training rows' per-round scores and selections with their file label and ground truth,
    one row per training row: ``label``, ``is_poisoned``, ``victim_fits`` (the victim predicts the file
    label), ``score_r<k>``, ``selected_r<k>`` (k = 1 is the detector's round). Written after the run,
    for grading other rankings offline."""
    labels = cell.train["label"].to_numpy()
    cols: dict[str, np.ndarray] = {
        "label": labels, "is_poisoned": cell.is_poisoned, "victim_fits": cell.victim_train_probs.argmax(1) == labels,
    }
    for k, r in enumerate(rounds, start=1):
        cols[f"score_r{k}"], cols[f"selected_r{k}"] = np.asarray(r.score, dtype=np.float64), np.asarray(r.selected, dtype=bool)
    return pd.DataFrame(cols)


def run_defense(
    cell: Cell, defense: str, seed: int, runtime: Runtime, machine: str, cache_dir: Path | None = None,
    scores_path: Path | None = None,
) -> RunRecord:
    """Train one defended model (:func:`defend`) and grade it on test.
    ``scores_path``: where to write :func:`round_frame` (defenses with a detector only)."""
    d = defend(cell, defense, seed, runtime, cache_dir)
    if scores_path is not None and d.rounds:
        write_records(scores_path, round_frame(d.rounds, cell))
    s = evaluate_classifier(d.student, cell.test, runtime, cell.params.evaluate.batch_size)
    val = d.validation
    return RunRecord(
        dataset=cell.params.data.dataset, attack=cell.params.poison.attack, defense=defense, seed=seed,
        victim_cacc=cell.victim_cacc, victim_asr=cell.victim_asr, student_cacc=s.cacc, student_asr=s.asr,
        detect_auroc=d.detect_auroc, detect_precision=d.detect_precision, detect_recall=d.detect_recall, n_kept=d.n_kept,
        chosen_cycle=d.chosen_cycle, wall_s=d.wall_s, machine=machine, punished_label=d.punished_label, dmm_auroc=d.dmm_auroc,
        victim_val_acc=None if val is None else val.victim_acc, val_acc=None if val is None else val.acc,
        val_history=None if val is None else val.history, calibration_shift=None if d.calibration is None else d.calibration.shift,
        chosen_round=d.chosen_round,
    )


def run_key(params: Params, defense: str, seed: int, victim_key: str) -> str:
    """Cache key of one run: the cell, the victim and everything the defense reads."""
    p = defense_params(params, defense, seed)
    defense = method_of(params, defense)  # a variant is keyed as the bedkd run it is: same params, same key
    full = p.model_dump(mode="json")
    for section, name in KEY_OFF:  # an option added later, while off, reads nothing: keep older keys
        if full[section][name] == KEY_OFF[(section, name)]:
            del full[section][name]
    parts = {k: full[k] for k in ("seed", "detect", "distill", "evaluate")}
    if defense == "kd":  # no detector, no punish pass, last cycle: those knobs cannot change it
        parts = {k: full[k] for k in ("seed", "distill", "evaluate")}
        parts["distill"] = {k: v for k, v in full["distill"].items() if k not in KD_UNUSED}
        parts["budget"] = [p.detect.flip_per_class, p.distill.clean_per_class]
    if defense == "finetune":
        parts = {"seed": seed, "finetune": full["compare"]["finetune"], "budget": [p.detect.flip_per_class, p.distill.clean_per_class]}
    if defense == "clean":
        parts = {"model": clean_model_key(p), "evaluate": full["evaluate"]}
    return section_hash({"cell": cell_key(params), "victim": victim_key, "defense": defense, **parts})


# Options added after runs were cached, with their off value: left out of run keys while off, so
# that adding a switch does not invalidate every cached run that cannot take its code path.
KEY_OFF: dict[tuple[str, str], object] = {
    ("detect", "reference_quantile"): None, ("distill", "calibrate"): "none", ("distill", "punish_anchor"): "none",
    ("distill", "punish_steps"): None, ("distill", "select_train_rows"): 0, ("distill", "select_train_share"): 0.5,
    ("detect", "shift_dims"): 32, ("distill", "redetect_score"): "purified",
    ("distill", "trust_train_rows"): 0, ("distill", "trust_train_share"): 0.5, ("distill", "select_fallback"): "acc",
    ("detect", "unfitted"): "behind", ("distill", "redetect_pick"): "last",
}

# Distill fields a ``kd`` run never reads (its punish weight is 0 and it keeps the last cycle).
KD_UNUSED = frozenset({"calibrate", "punish", "punish_anchor", "punish_cap", "punish_steps", "max_val_drop", "redetect", "redetect_keep", "redetect_keep_max", "redetect_pick", "redetect_score", "schedule", "select_fallback", "select_train_rows", "select_train_share", "trust_train_rows", "trust_train_share"})


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(vals)) if vals else None


def _std(xs: Sequence[float]) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def aggregate(records: Sequence[RunRecord]) -> list[dict[str, object]]:
    """One row per dataset x attack x defense: means over seeds, sample std of student metrics.

    Victim metrics are means too: a record carries the victim it was defended from, and a victim
    retrained on another box (the cache is per machine) can differ in its last digits; ``machine``
    lists every box of the row's runs."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.dataset, r.attack, r.defense), []).append(r)
    rows: list[dict[str, object]] = []
    for (dataset, attack, defense), rs in groups.items():
        rows.append(
            {
                "dataset": dataset,
                "attack": attack,
                "defense": defense,
                "seeds": sorted(r.seed for r in rs),
                "victim_cacc": _mean([r.victim_cacc for r in rs]),
                "victim_asr": _mean([r.victim_asr for r in rs]),
                "student_cacc": _mean([r.student_cacc for r in rs]),
                "student_asr": _mean([r.student_asr for r in rs]),
                "student_cacc_std": _std([r.student_cacc for r in rs]),
                "student_asr_std": _std([r.student_asr for r in rs]),
                "detect_auroc": _mean([r.detect_auroc for r in rs]),
                "detect_precision": _mean([r.detect_precision for r in rs]),
                "detect_recall": _mean([r.detect_recall for r in rs]),
                "wall_s": _mean([r.wall_s for r in rs]),
                "machine": "; ".join(sorted({r.machine for r in rs})),
            }
        )
    return rows


def render_markdown(rows: Sequence[dict[str, object]]) -> str:
    """The comparison table as Markdown (percentages, mean ± std over the listed seeds)."""

    def pct(x: object) -> str:
        return "-" if x is None else f"{100 * float(x):.1f}"  # type: ignore[arg-type]

    def pm(m: object, s: object) -> str:
        return f"{pct(m)} ± {pct(s)}"

    lines = [
        "| dataset | attack | defense | seeds | victim CACC / ASR | CACC | ASR | detector AUROC | precision / recall (kept) | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        seeds = r["seeds"]
        assert isinstance(seeds, list)
        auroc = "-" if r["detect_auroc"] is None else f"{float(r['detect_auroc']):.3f}"  # type: ignore[arg-type]
        pr = "-" if r["detect_precision"] is None else f"{pct(r['detect_precision'])} / {pct(r['detect_recall'])}"
        lines.append(
            f"| {r['dataset']} | {r['attack']} | {r['defense']} | {len(seeds)} | {pct(r['victim_cacc'])} / {pct(r['victim_asr'])} "
            f"| {pm(r['student_cacc'], r['student_cacc_std'])} | {pm(r['student_asr'], r['student_asr_std'])} | {auroc} | {pr} "
            f"| {float(r['wall_s']):.0f} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"




def record_path(records: Path, cp: Params, defense: str, seed: int, victim: str) -> Path:
    """Where the record of one run of the cell ``cp`` lives in the record store ``records``: named by
    the run it is (a variant's by ``bedkd``) and its :func:`run_key`, so a record is found by content."""
    key = run_key(cp, defense, seed, victim)
    return records / f"{cp.data.dataset}-{cp.poison.attack}-{method_of(cp, defense)}-{seed}-{key}.json"


def store_record(records: Path, cp: Params, rec: RunRecord, victim: str) -> Path:
    """Write ``rec`` (a run of the cell ``cp``) into the record store, atomically; returns its path."""
    path = record_path(records, cp, rec.defense, rec.seed, victim)
    write_json(path, asdict(rec))
    return path


def run_grid(
    params: Params,
    data_dir: Path,
    cache_dir: Path,
    runtime: Runtime,
    victim_for: Callable[[Params, Path], Classifier],
    on_record: Callable[[RunRecord], None] | None = None,
    *,
    records: Path | None = None,
    cached_only: bool = False,
    on_missing: Callable[[str], None] | None = None,
) -> list[RunRecord]:
    """Every cell x defense x seed of ``params.compare``. Each finished run is a JSON record in
    the record store ``records`` (default ``cache_dir/compare``; the project keeps its store in git,
    ``reports/compare/records``), so an interrupted grid resumes where it stopped, on this machine
    or another; its rows' per-round scores go beside it (``<record>.scores.parquet``,
    :func:`round_frame`) when it detects. Victims, cells and clean models stay in ``cache_dir``.

    ``on_record`` is called for each newly computed run. ``victim_for(cell_params, cell_folder)`` trains or loads the cell's victim (only called when a
    run has to be computed). ``cached_only``: compute nothing, return the finished runs and report
    each missing one to ``on_missing`` (a table of an unfinished grid).
    """
    machine = machine_name(runtime)
    store = cache_dir / "compare" if records is None else records
    out: list[RunRecord] = []
    for cell_name in params.compare.cells:
        cp = cell_params(params, cell_name)
        vkey = victim_key(cp)
        folder = cell_folder(cp, cache_dir / "cells")
        cell: Cell | None = None
        for defense, seeds in params.compare.seeds.items():
            for seed in seeds:
                path = record_path(store, cp, defense, seed, vkey)
                if path.is_file():
                    # The stored record may have been written under another name of the same run
                    # (a variant equal to params.yaml): the table labels it by this grid's name.
                    rec = replace(RunRecord(**read_json(path)), defense=defense)
                elif cached_only:
                    if on_missing is not None:
                        on_missing(f"{cell_name} {defense} seed {seed}")
                    continue
                else:
                    if cell is None:
                        folder = materialise_cell(cp, data_dir, cache_dir / "cells")
                        cell = load_cell(cp, folder, victim_for(cp, folder), runtime)
                    rec = run_defense(cell, defense, seed, runtime, machine, cache_dir, path.with_suffix(".scores.parquet"))
                    store_record(store, cp, rec, vkey)
                    if on_record is not None:  # new runs only: a resumed grid logs nothing twice
                        on_record(rec)
                out.append(rec)
    return out
