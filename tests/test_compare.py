"""The comparison harness end to end on a tiny cell: every defense, resume, table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import bedkd.compare as compare
from bedkd.compare import RunRecord, aggregate, render_markdown, run_grid
from bedkd.config import Params, load_params, with_overrides
from bedkd.metrics import detection_metrics
from bedkd.runtime import Runtime, resolve_runtime
from bedkd.tune import Data, TuneContext


def _record(defense: str, seed: int, asr: float, cacc: float, auroc: float | None) -> RunRecord:
    return RunRecord(
        dataset="sst-2", attack="badnets", defense=defense, seed=seed, victim_cacc=0.9, victim_asr=1.0,
        student_cacc=cacc, student_asr=asr, detect_auroc=auroc, detect_precision=None if auroc is None else 0.9,
        detect_recall=None if auroc is None else 0.3, n_kept=None, chosen_cycle=None, wall_s=10.0 + seed, machine="m",
    )


def test_machine_name_says_the_numerics() -> None:
    """A record names the precision it ran in: fp32 and bf16-autocast victims of one key differ."""
    cpu = torch.device("cpu")
    assert compare.machine_name(Runtime(cpu, None, False)).endswith("threads, fp32")
    assert compare.machine_name(Runtime(cpu, torch.bfloat16, False)).endswith("threads, bfloat16 autocast")


def test_aggregate_means_and_sample_std_over_seeds() -> None:
    rows = aggregate([_record("bedkd", 0, 0.0, 0.90, 0.99), _record("bedkd", 1, 0.02, 0.88, 0.97), _record("kd", 0, 0.5, 0.9, None)])
    assert [r["defense"] for r in rows] == ["bedkd", "kd"]
    b = rows[0]
    assert set(b) == set(compare.ROW_KEYS)
    assert b["seeds"] == [0, 1]
    assert b["student_asr"] == pytest.approx(0.01) and b["student_asr_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert b["student_cacc"] == pytest.approx(0.89) and b["detect_auroc"] == pytest.approx(0.98)
    assert rows[1]["detect_auroc"] is None and rows[1]["student_asr_std"] == 0.0
    md = render_markdown(rows)
    assert "| sst-2 | badnets | bedkd | 2 | 90.0 / 100.0 | 89.0 ± 1.4 | 1.0 ± 1.4 | 0.980 |" in md
    assert "| sst-2 | badnets | kd | 1 |" in md and "| - | - |" in md


def test_aggregate_means_victims_and_lists_machines_when_a_victim_was_retrained() -> None:
    """Seeds defended from victims retrained on two boxes: the row shows the mean victim, not the first."""
    a = _record("bedkd", 0, 0.0, 0.90, 0.99)
    b = dataclasses.replace(_record("bedkd", 1, 0.0, 0.88, 0.97), victim_cacc=0.8, machine="other")
    (row,) = aggregate([a, b])
    assert row["victim_cacc"] == pytest.approx(0.85) and row["victim_asr"] == pytest.approx(1.0)
    assert row["machine"] == "m; other"
    assert aggregate([a])[0]["machine"] == "m"


@pytest.mark.slow
def test_every_defense_runs_on_a_tiny_cell_and_resumes(tmp_path: Path, tiny_model: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = with_overrides(
        load_params(),
        {
            "data.max_rows": 300,
            "model.backbone": str(tiny_model),
            "model.max_length": 48,
            "train_victim.epochs": 1,
            "train_victim.batch_size": 16,
            "train_victim.lr": 1e-4,
            "detect.flip_per_class": 10,
            "detect.epochs": 2,
            "detect.batch_size": 8,
            "detect.keep": 20,
            "detect.holdout": 5,
            "distill.clean_per_class": 20,
            "distill.cycles": 2,
            "distill.batch_size": 8,
            "compare.cells": ["sst-2/badnets"],
            "compare.seeds": {"clean": [0], "finetune": [0], "kd": [0], "released": [0], "bedkd": [0, 1], "bedkd-same": [0], "bedkd-one": [0]},
            # a variant equal to params.yaml's bedkd shares its record; another setting runs as its own row
            "compare.variants": {"bedkd-same": {"distill.cycles": 2}, "bedkd-one": {"distill.cycles": 1, "distill.redetect": 0}},
            "compare.finetune.epochs": 1,
        },
    )
    store = tmp_path / "records"
    runtime = resolve_runtime()
    seen: list[str] = []

    def victim_for(cp: Params, folder: Path):  # type: ignore[no-untyped-def]
        ctx = TuneContext(Data.load(folder / "prepared", folder / "poisoned"), runtime, tmp_path / "cache")
        assert "is_poisoned" not in ctx.data.train.columns
        return ctx.victim(cp)

    records = run_grid(params, data_dir, tmp_path / "cache", runtime, victim_for, lambda r: seen.append(r.defense), records=store)
    assert seen == ["clean", "finetune", "kd", "released", "bedkd", "bedkd", "bedkd-one"]
    by = {(r.defense, r.seed): r for r in records}
    for r in records:
        assert 0.0 <= r.student_cacc <= 1.0 and 0.0 <= r.student_asr <= 1.0 and r.wall_s > 0
        assert r.victim_cacc == records[0].victim_cacc  # one victim per cell
    for d in ("clean", "finetune", "kd"):
        assert by[(d, 0)].detect_auroc is None
    # The clean reference is trained on unpoisoned rows, once per dataset, and cached.
    assert len(list((tmp_path / "cache" / "clean").glob("*/model.safetensors"))) == 1
    for d in ("released", "bedkd"):
        assert 0.0 <= by[(d, 0)].detect_auroc <= 1.0
    assert by[("released", 0)].n_kept <= 32 and by[("bedkd", 0)].n_kept <= 20
    # released runs the released settings whatever params.yaml says (50 cycles, last one kept)
    assert by[("kd", 0)].chosen_cycle == 2 and by[("released", 0)].chosen_cycle == 50
    assert 1 <= by[("bedkd", 0)].chosen_cycle <= 2
    same, one = by[("bedkd-same", 0)], by[("bedkd-one", 0)]
    assert {**same.__dict__, "defense": "bedkd"} == by[("bedkd", 0)].__dict__  # read from bedkd's record, relabelled
    assert one.chosen_cycle == 1 and one.val_history is not None and len(one.val_history) == 1 + 1  # its own params: 1 cycle, 1 round
    # the defender's validation is kept per cycle: victim (cycle 0) + each cycle, per AKD round
    bk, rel = by[("bedkd", 0)], by[("released", 0)]
    assert bk.val_history is not None and len(bk.val_history) == 2 * (1 + 2)  # redetect 1: two rounds
    assert bk.val_acc == next(h["val/acc"] for h in bk.val_history if h["round"] == 2.0 and h["cycle"] == bk.chosen_cycle)
    assert rel.val_history is not None and len(rel.val_history) == 51 and rel.val_acc == rel.val_history[-1]["val/acc"]
    assert bk.victim_val_acc == rel.victim_val_acc  # same defender rows, same victim
    for d in ("clean", "finetune", "kd"):
        assert by[(d, 0)].val_acc is None and by[(d, 0)].val_history is None
    # Each detecting run leaves its rows' per-round scores beside its record; the last round's
    # grade recomputed from that file is the record's.
    assert not (tmp_path / "cache" / "compare").exists()  # records go to the store, models stay in the cache
    cached = store
    one_key = compare.run_key(compare.cell_params(params, "sst-2/badnets"), "bedkd-one", 0, compare.victim_key(compare.cell_params(params, "sst-2/badnets")))
    frames = {
        "".join(p.name.removeprefix("sst-2-badnets-").split("-")[:2]): pd.read_parquet(p)
        for p in cached.glob("*.scores.parquet") if one_key not in p.name
    }
    assert sorted(frames) == ["bedkd0", "bedkd1", "released0"]
    assert len(list(cached.glob("*.json"))) == 7  # 8 grid entries: bedkd-same shares bedkd seed 0's record
    for key, rounds in (("bedkd0", 2), ("released0", 1)):
        f, rec = frames[key], by[(key[:-1], 0)]
        assert list(f.columns) == ["label", "is_poisoned", "victim_fits"] + [c for k in range(1, rounds + 1) for c in (f"score_r{k}", f"selected_r{k}")]
        assert len(f) == 300 and f["is_poisoned"].any()
        m = detection_metrics(f[f"score_r{rounds}"].to_numpy(), f["is_poisoned"].to_numpy(), f[f"selected_r{rounds}"].to_numpy())
        assert m.auroc == pytest.approx(rec.detect_auroc) and m.n_kept == rec.n_kept
    assert not [p for p in cached.iterdir() if p.name.startswith(".")]  # no temporary file left behind

    # A second call reads every run from the cache: nothing is retrained.
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("run_defense called on a cached run")

    monkeypatch.setattr(compare, "run_defense", boom)
    again = run_grid(params, data_dir, tmp_path / "cache", runtime, victim_for, records=store)
    assert [json.dumps(r.__dict__, sort_keys=True) for r in again] == [json.dumps(r.__dict__, sort_keys=True) for r in records]
    rows = aggregate(again)
    assert [r["defense"] for r in rows] == ["clean", "finetune", "kd", "released", "bedkd", "bedkd-same", "bedkd-one"]
    assert rows[4]["seeds"] == [0, 1]

    # cached_only tabulates what exists and reports the rest without training anything.
    more = with_overrides(params, {"compare.seeds": {"bedkd": [0, 1, 2], "kd": [0]}})
    missing: list[str] = []
    part = run_grid(more, data_dir, tmp_path / "cache", runtime, victim_for, records=store, cached_only=True, on_missing=missing.append)
    assert [(r.defense, r.seed) for r in part] == [("bedkd", 0), ("bedkd", 1), ("kd", 0)]
    assert missing == ["sst-2/badnets bedkd seed 2"]


def test_clean_reference_is_one_model_per_dataset() -> None:
    """The clean reference ignores the attack (one unpoisoned model serves every cell of a
    dataset) but not the recipe, the backbone or the dataset."""
    from bedkd.compare import cell_params, clean_model_key, run_key

    p = load_params()
    keys = {clean_model_key(cell_params(p, c)) for c in ("sst-2/badnets", "sst-2/addsent", "sst-2/syntactic", "sst-2/style")}
    assert len(keys) == 1
    assert clean_model_key(cell_params(p, "olid/badnets")) not in keys
    assert clean_model_key(with_overrides(p, {"train_victim.epochs": 2})) not in keys
    # ...while each cell still gets its own cached record (its own triggered test rows).
    a, b = cell_params(p, "sst-2/badnets"), cell_params(p, "sst-2/style")
    assert run_key(a, "clean", 0, "v") != run_key(b, "clean", 0, "v")


def test_run_keys_follow_what_each_defense_reads() -> None:
    p = load_params()
    key = lambda q, d: compare.run_key(q, d, 0, "victim")  # noqa: E731
    punish = with_overrides(p, {"distill.punish": "capped_ascent", "distill.punish_cap": 3.0})
    trust = with_overrides(p, {"distill.loss.temperature": 4.0})
    warm = with_overrides(p, {"detect.warmup_ratio": 0.1})
    # kd never punishes and has no detector: punish and detect knobs keep its cached runs valid
    assert key(punish, "kd") == key(p, "kd") == key(warm, "kd")
    assert key(trust, "kd") != key(p, "kd")
    # bedkd reads all of them; the released preset fixes detect/distill, so none of them moves it
    assert len({key(q, "bedkd") for q in (p, punish, trust, warm)}) == 4
    assert len({key(q, "released") for q in (p, punish, trust, warm)}) == 1
    # an option added after runs were cached leaves the keys of runs that do not switch it on
    # alone (KEY_OFF), and moves them once it is on
    calibrated = with_overrides(p, {"detect.reference_quantile": 0.1})
    off = compare.section_hash(
        {"cell": compare.cell_key(p), "victim": "victim", "defense": "bedkd",
         **{k: v for k, v in p.model_dump(mode="json").items() if k in ("seed", "evaluate")},
         "detect": {k: v for k, v in p.detect.model_dump(mode="json").items() if k not in ("reference_quantile", "shift_dims", "unfitted")},
         "distill": {k: v for k, v in p.distill.model_dump(mode="json").items() if k not in ("calibrate", "punish_anchor", "punish_steps", "redetect_pick", "redetect_score", "select_fallback", "select_train_rows", "select_train_share", "trust_train_rows", "trust_train_share")}}
    )
    assert key(p, "bedkd") == off
    assert len({key(q, "bedkd") for q in (p, calibrated, with_overrides(p, {"detect.reference_quantile": 0.2}))}) == 3
    biased = with_overrides(p, {"distill.calibrate": "label_bias"})
    assert key(biased, "bedkd") != key(p, "bedkd") and key(biased, "kd") == key(p, "kd")  # kd never calibrates
    anchored = with_overrides(p, {"distill.punish_anchor": "label"})
    assert key(anchored, "bedkd") not in (key(p, "bedkd"), key(biased, "bedkd")) and key(anchored, "kd") == key(p, "kd")
    budget = with_overrides(p, {"distill.punish_steps": 40})
    assert key(budget, "bedkd") not in (key(p, "bedkd"), key(anchored, "bedkd")) and key(budget, "kd") == key(p, "kd")
    wider = with_overrides(p, {"distill.select_train_rows": 2000})
    assert key(wider, "bedkd") not in (key(p, "bedkd"), key(budget, "bedkd")) and key(wider, "kd") == key(p, "kd")  # kd keeps the last cycle
    meaned = with_overrides(p, {"distill.redetect_score": "mean"})
    assert key(meaned, "bedkd") not in (key(p, "bedkd"), key(wider, "bedkd")) and key(meaned, "kd") == key(p, "kd")  # kd never redetects
    fed = with_overrides(p, {"distill.trust_train_rows": 640})
    assert key(fed, "bedkd") not in (key(p, "bedkd"), key(meaned, "bedkd")) and key(fed, "kd") == key(p, "kd")  # kd: clean rows only
    banded = with_overrides(p, {"distill.select_fallback": "band"})
    assert key(banded, "bedkd") not in (key(p, "bedkd"), key(fed, "bedkd")) and key(banded, "kd") == key(p, "kd")  # kd keeps the last cycle
    scored = with_overrides(p, {"detect.unfitted": "scored"})  # same punish sets, another graded score: its own record
    assert key(scored, "bedkd") not in (key(p, "bedkd"), key(banded, "bedkd")) and key(scored, "kd") == key(p, "kd")
    picked = with_overrides(p, {"distill.redetect_pick": "all", "distill.select": "best"})  # another returned round: its own record
    assert key(picked, "bedkd") not in (key(with_overrides(p, {"distill.select": "best"}), "bedkd"), key(scored, "bedkd")) and key(picked, "kd") == key(p, "kd")  # kd never redetects
    # a compare.variants entry is keyed as the bedkd run of its params: equal settings share a record
    v = with_overrides(p, {"compare.variants": {**p.compare.variants, "bedkd-short": {"distill.cycles": 3}, "bedkd-same": {}}})
    assert key(v, "bedkd-short") == key(with_overrides(p, {"distill.cycles": 3}), "bedkd") != key(v, "bedkd")
    assert key(v, "bedkd-same") == key(v, "bedkd") == key(p, "bedkd")
    with pytest.raises(ValueError, match="unknown defense"):
        key(p, "bedkd-short")
    shifted = with_overrides(p, {"detect.score": "shift"})
    narrow = with_overrides(p, {"detect.score": "shift", "detect.shift_dims": 16})
    assert len({key(q, "bedkd") for q in (p, shifted, narrow)}) == 3 and key(shifted, "kd") == key(p, "kd")


def test_the_committed_table_is_what_the_record_store_holds(tmp_path: Path) -> None:
    """reports/comparison.json is the cached-only grid over reports/compare/records: every row
    comes from a committed run record, and every record of params.yaml's grid is in the table."""
    root = Path(__file__).resolve().parents[1]
    missing: list[str] = []
    records = run_grid(
        load_params(root / "params.yaml"), tmp_path, tmp_path / "cache", resolve_runtime(), lambda *a: None,  # type: ignore[arg-type,return-value]
        records=root / "reports" / "compare" / "records", cached_only=True, on_missing=missing.append,
    )
    table = json.loads((root / "reports" / "comparison.json").read_text())
    assert json.loads(json.dumps(aggregate(records))) == table
    assert len(records) == len(list((root / "reports" / "compare" / "records").glob("*.json")))  # no orphan record
    assert not (tmp_path / "cache").exists()  # tabulating trains and writes nothing
