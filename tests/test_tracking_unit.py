from __future__ import annotations

from pathlib import Path

import pytest

from bedkd.config import Params, flatten, with_overrides
from bedkd.errors import ConfigError
from bedkd.events import Event
from bedkd.tracking import NullTracker, experiment_name, project_root, stage_params


def test_project_root_from_dvc_temp_copy(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    temp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp.mkdir(parents=True)
    (temp / "dvc.yaml").write_text("stages: {}\n")
    assert project_root(temp) == tmp_path
    sub = tmp_path / "notebooks"
    sub.mkdir()
    assert project_root(sub) == tmp_path


def test_stage_params_are_the_section_flattened() -> None:
    p = Params()
    sp = stage_params(p, "detect")
    assert sp["detect.loss.temperature"] == 1.5 and sp["seed"] == 0 and "distill.cycles" not in sp
    assert experiment_name(p) == "bedkd/sst-2/badnets"
    assert flatten({"a": {"b": [1, 2]}}) == {"a.b": "1,2"}


def test_null_tracker_accepts_everything() -> None:
    t = NullTracker()
    t.callback(Event("distill", 1, {"dev/asr": 0.5}))
    t.log_metrics({"x": 1.0}, step=1, on_parent=True)
    assert t.log_model(object(), "m", ["x"]) is None


def test_overrides_are_validated() -> None:
    p = with_overrides(Params(), {"distill.cycles": 7, "detect.loss.alpha": 0.5})
    assert p.distill.cycles == 7 and p.detect.loss.alpha == 0.5
    with pytest.raises(ConfigError, match="distill.punish_weight"):
        with_overrides(Params(), {"distill.punish_weight": -1.0})
