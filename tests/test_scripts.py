"""The research scripts under scripts/ run against the current library on a tiny real cell."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.project import CYCLES, ROOT, tiny_params


def run_script(tmp_path: Path, tiny_model: Path, data_dir: Path, script: str, *args: str) -> list[dict]:
    """Run scripts/<script> on the tiny sst-2/badnets cell (own cache); its --out records."""
    params = tmp_path / "params.yaml"
    params.write_text(tiny_params(tiny_model))
    out = tmp_path / "out.json"
    env = {**os.environ, "BEDKD_DATA_DIR": str(data_dir), "BEDKD_CACHE_DIR": str(tmp_path / "cache"), "BEDKD_PROGRESS": "false"}
    cmd = [sys.executable, f"scripts/{script}", "--params", str(params), "--cell", "sst-2/badnets", *args, "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def test_detector_signals_grades_every_signal_on_a_tiny_cell(tmp_path: Path, tiny_model: Path, data_dir: Path) -> None:
    (rec,) = run_script(tmp_path, tiny_model, data_dir, "detector_signals.py", "--seeds", "0", "--copies", "2")
    assert rec["cell"] == "sst-2/badnets" and rec["seed"] == 0
    assert [c["copy"] for c in rec["dmm"]] == [0, 1]
    assert rec["dmm"][0]["single"] == rec["dmm"][0]["mean_of_copies"]  # the mean of one copy is that copy
    # tiny backbone: 2 layers -> the victim's embeddings + 2 layers; the pretrained model's first and last
    assert sorted(k for k in rec if "/" in k) == ["pretrained/layer0", "pretrained/layer2", "victim/layer0", "victim/layer1", "victim/layer2"]
    for key in ("victim/layer1", "pretrained/layer2"):
        for signal in ("novelty", "probe", "probe+dmm"):
            auc = rec[key][signal]["all"]
            assert 0.0 <= auc <= 1.0, (key, signal, auc)
            fit = rec[key][signal]["fit_target"]
            assert math.isnan(fit) or 0.0 <= fit <= 1.0
    # the shift score (no copy) and its label choice are graded too, and alone with --copies 0
    assert 0.0 <= rec["shift"]["all"] <= 1.0 and 0.0 <= rec["shift+dmm"]["all"] <= 1.0
    assert len(rec["shift_excess"]) == 2 and rec["shift_label"] in (0, 1)
    (alone,) = run_script(tmp_path, tiny_model, data_dir, "detector_signals.py", "--seeds", "0", "--copies", "0")
    assert alone["shift"] == rec["shift"] and alone["dmm"] == [] and not any("/" in k for k in alone)


def test_probe_label_choice_records_each_seeds_choice_on_a_tiny_cell(tmp_path: Path, tiny_model: Path, data_dir: Path) -> None:
    recs = run_script(tmp_path, tiny_model, data_dir, "probe_label_choice.py", "--seeds", "0,1")
    assert [r["seed"] for r in recs] == [0, 1]
    for r in recs:
        assert r["choice"] in (0, 1) and [x["label"] for x in r["per_label"]] == [0, 1]
        # the choice is the label with the largest excess of flagged training rows over reference rows
        assert r["choice"] == max(r["per_label"], key=lambda x: x["excess"])["label"]
        for x in r["per_label"]:
            assert 0.0 <= x["train_rate"] <= 1.0 and 0.0 <= x["ref_rate"] <= 1.0
            assert math.isclose(x["excess"], x["train_rate"] - x["ref_rate"], abs_tol=2e-4)
        assert 0.0 <= r["probe_auroc_all"] <= 1.0


def test_calibration_check_grades_each_student_before_and_after_the_shift(tmp_path: Path, tiny_model: Path, data_dir: Path) -> None:
    (rec,) = run_script(tmp_path, tiny_model, data_dir, "calibration_check.py", "--seeds", "0")
    assert rec["cell"] == "sst-2/badnets" and rec["seed"] == 0 and rec["punished_label"] in (0, 1)
    for when in ("victim", "before", "after"):
        assert 0.0 <= rec[when]["cacc"] <= 1.0 and 0.0 <= rec[when]["asr"] <= 1.0 and len(rec[when]["recall"]) == 2
    assert rec["shift"] >= 0.0 and rec["val_rows"] > 0
    if rec["student_count"] >= rec["victim_count"]:  # nothing missing: nothing moved
        assert rec["shift"] == 0.0 and rec["after"] == rec["before"]
    else:  # the shift only ever raises the punished label
        lab = rec["punished_label"]
        assert rec["calibrated_count"] > rec["student_count"] and rec["after"]["recall"][lab] >= rec["before"]["recall"][lab]


def test_selection_signals_traces_every_akd_cycle_of_the_harness_run(tmp_path: Path, tiny_model: Path, data_dir: Path) -> None:
    import numpy as np

    recs = run_script(tmp_path, tiny_model, data_dir, "selection_signals.py", "--seeds", "0")
    # redetect 1 (params.yaml): two AKD rounds of CYCLES cycles, each traced once, in order
    assert [(r["round"], r["cycle"]) for r in recs] == [(rnd, c) for rnd in (1.0, 2.0) for c in map(float, range(1, CYCLES + 1))]
    assert sum(r["chosen"] for r in recs) == 1 and recs[-1]["round"] == 2.0
    for r in recs:
        assert 0.0 <= r["test_cacc"] <= 1.0 and 0.0 <= r["test_asr"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0
        assert len(r["test_recall"]) == 2 and len(r["train_agree_victim"]) == 2
    raw = np.load(tmp_path / "out.npz")
    n = len(raw["sample"])
    assert raw["s0_train_pred"].shape == (2 * CYCLES, n) and raw["s0_dmm_score"].shape == (n,)
    assert raw["s0_test_pred"].shape == (2 * CYCLES, len(raw["test_labels"]))
    # the trace grades the run the harness records: the chosen cycle's test predictions give its CACC
    (i,) = [j for j, r in enumerate(recs) if r["chosen"]]
    assert float((raw["s0_test_pred"][i] == raw["test_labels"]).mean()) == recs[i]["test_cacc"]


def test_device_grid_tabulates_what_finished_when_its_budget_is_spent(tmp_path: Path) -> None:
    """scripts/device_grid.sh with no budget left: every queued run is skipped, and the table, the
    list of missing runs and the records archive are still written (what a cut-off GPU call
    brings back). The queue's params files are valid params (the --cached-only run loads the grid's)."""
    import yaml

    payload = tmp_path / "payload"
    (payload / "whl").mkdir(parents=True)
    (tmp_path / "data").mkdir()  # nothing runs, so an empty corpus archive will do
    subprocess.run(["tar", "-C", str(tmp_path), "-cJf", str(payload / "data.tar.xz"), "data"], check=True)
    (tmp_path / "last" / "compare").mkdir(parents=True)  # an earlier call's finished run
    (tmp_path / "last" / "compare" / "agnews-addsent-bedkd-0-0123456789abcdef.json").write_text("{}")
    subprocess.run(["tar", "-C", str(tmp_path / "last"), "-czf", str(payload / "records.tgz"), "compare"], check=True)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PAYLOAD": str(payload), "WORK": str(work), "BUDGET_S": "0", "JOBS": "3",
           "PYTHON": sys.executable, "BEDKD_PROGRESS": "false"}
    subprocess.run(["bash", "scripts/device_grid.sh"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert json.loads((out / "comparison.json").read_text()) == []
    assert json.loads((out / "runs.json").read_text()) == []
    with tarfile.open(out / "records.tgz") as tar:  # the resumed record travels back with the new ones
        assert "compare/agnews-addsent-bedkd-0-0123456789abcdef.json" in tar.getnames()
    log = (out / "log.txt").read_text()
    assert "resumed: 1 finished runs" in log
    assert "queue: 48 runs over agnews/addsent, agnews/badnets, agnews/style" in log
    assert "job 000-agnews-addsent-bedkd-shift-mean-s0: skipped, budget spent" in log
    assert "not run (left out of the table): agnews/style bedkd-probe seed 2" in log
    # queue order: the strongest variant's first seed on every cell, then the probe variant on addsent
    jobs = sorted(f.name for f in (work / "jobs").iterdir())
    assert jobs[:4] == [
        "000-agnews-addsent-bedkd-shift-mean-s0.yaml", "001-agnews-badnets-bedkd-shift-mean-s0.yaml",
        "002-agnews-style-bedkd-shift-mean-s0.yaml", "003-agnews-addsent-bedkd-shift-mean-probe-s0.yaml",
    ]
    probe = yaml.safe_load((work / "jobs" / jobs[3]).read_text())
    assert probe["compare"]["cells"] == ["agnews/addsent"] and probe["compare"]["seeds"] == {"bedkd-shift-mean-probe": [0]}
    assert probe["compare"]["variants"]["bedkd-shift-mean-probe"]["detect.label_filter"] == "probe"
    assert probe["model"]["backbone"] == f"{payload}/all-MiniLM-L6-v2-fp16"
    # a second call on the same (warm) machine and WORK queues its own cells only
    subprocess.run(["bash", "scripts/device_grid.sh"], cwd=ROOT, env={**env, "CELLS": "agnews/addsent"}, check=True, capture_output=True, text=True)
    again = sorted(f.name for f in (work / "jobs").iterdir())
    assert len(again) == 16 and all("-agnews-addsent-" in f for f in again)


def test_round_scores_grades_each_round_and_their_combinations(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    # 8 rows: label 1 is punished; rows 0-2 are poisoned. Round 1 ranks them first within label 1
    # but a clean label-0 row (6) lower still; round 2 ranks poisoned row 2 behind a clean row.
    frame = pd.DataFrame(
        {
            "label": [1, 1, 1, 1, 1, 0, 0, 1],
            "is_poisoned": [True, True, True, False, False, False, False, False],
            "score_r1": [0.10, 0.20, 0.30, 0.60, 0.70, 0.50, 0.05, 1.40],  # row 7: victim does not fit it (+1)
            "selected_r1": [True, True, False, False, False, False, False, False],
            "score_r2": [0.05, 0.15, 0.45, 0.40, 0.90, 0.80, 0.70, 1.30],
            "selected_r2": [True, True, False, False, False, False, False, False],
        }
    )
    path = tmp_path / "run.scores.parquet"
    frame.to_parquet(path)
    out = tmp_path / "rounds.json"
    subprocess.run([sys.executable, "scripts/round_scores.py", str(path), "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    (rec,) = json.loads(out.read_text()).values()
    assert (rec["n_poisoned"], rec["punished_label"], rec["n_kept"], rec["run_precision"]) == (3, 1, 2, 1.0)
    # round 1: all rows, row 6 (clean, label 0) outranks every poisoned row: 3 x 5 pairs, 3 wrong
    assert rec["r1"]["all"] == 0.8 and rec["r1"]["label"] == 1.0 and rec["r1"]["fit_target"] == 1.0
    # round 2: within label 1's fitted rows, clean row 3 (0.40) beats poisoned row 2 (0.45): 1 of 6 pairs
    assert rec["r2"]["fit_target"] == round(5 / 6, 4) and rec["r2"]["precision"] == 1.0
    # the equal-weight rank mean puts row 2 (ranks 3 and 4 of 5) ahead of row 3 (4 and 3): tie -> 0.5 credit
    assert rec["rank_r1_r2_w0.5"]["fit_target"] == round(5.5 / 6, 4)
    assert rec["mean_r1_r2"]["fit_target"] == 1.0  # 0.375 < 0.5 in the score means
    assert rec["r1"]["all_behind"] == rec["r1"]["all"]  # row 7 is behind already (+1)
    # a detect.unfitted scored run: row 7 is a poisoned row the victim does not fit, reported by its
    # own score (0.08); victim_fits says which rows are fitted, whatever the scores are
    scored = frame[["label", "selected_r1"]].assign(
        is_poisoned=[True, True, True, False, False, False, False, True], victim_fits=[True] * 7 + [False],
        score_r1=[0.10, 0.20, 0.30, 0.60, 0.70, 0.50, 0.05, 0.08],
    )
    scored.to_parquet(path)
    subprocess.run([sys.executable, "scripts/round_scores.py", str(path), "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    (rec,) = json.loads(out.read_text()).values()
    # 4 x 4 pairs: row 6 (0.05) outranks the 4 poisoned rows; behind, row 7 also loses to rows 3-5
    assert rec["r1"]["all"] == 0.75 and rec["r1"]["all_behind"] == round(9 / 16, 4)
    assert rec["r1"]["fit_target"] == 1.0  # row 7 is not in the fitted pool


def test_import_records_files_runs_by_their_run_key_and_refuses_conflicts(tmp_path: Path) -> None:
    """Records of runs made before the store existed go where the harness itself would have put
    them (the committed store holds the same file names); a second import changes nothing, and a
    record that disagrees with the stored run is refused without writing anything."""
    runs = json.loads((ROOT / "reports" / "compare" / "runs.json").read_text())
    picked = [r for r in runs if r["dataset"] == "sst-2" and r["attack"] == "style" and r["defense"] in ("bedkd", "kd")]
    src = tmp_path / "runs.json"
    src.write_text(json.dumps(picked))
    store = tmp_path / "records"

    def imp(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "scripts/import_records.py", "--records", str(store), *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    assert imp("--source", str(src)).returncode == 0
    names = sorted(p.name for p in store.glob("*.json"))
    assert len(names) == len(picked) == 4 and all((ROOT / "reports" / "compare" / "records" / n).is_file() for n in names)
    assert imp("--source", str(src)).stderr.strip().endswith("0 records filed")
    # a bedkd run filed as a variant lands under that variant's key; a kd run cannot be one
    variant = [r for r in picked if r["defense"] == "bedkd"][:1]
    src.write_text(json.dumps(variant))
    assert imp("--defense", "bedkd-shift", "--source", str(src)).returncode == 0
    assert len(list(store.glob("*.json"))) == 5
    src.write_text(json.dumps([r for r in picked if r["defense"] == "kd"]))
    assert "cannot be filed as bedkd-shift" in imp("--defense", "bedkd-shift", "--source", str(src)).stderr
    # other results for a stored run: refused, nothing written
    src.write_text(json.dumps([{**picked[0], "student_asr": 0.5}]))
    before = {p.name: p.read_bytes() for p in store.glob("*.json")}
    bad = imp("--source", str(src))
    assert bad.returncode != 0 and "other results (student_asr)" in bad.stderr
    assert {p.name: p.read_bytes() for p in store.glob("*.json")} == before
