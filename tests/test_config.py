from __future__ import annotations

from pathlib import Path

import pytest

from bedkd.config import Params, load_params
from bedkd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_are_valid() -> None:
    p = load_params(ROOT / "params.yaml")
    assert p.data.dataset == "sst-2" and p.poison.attack == "badnets"
    assert p.target_label == 1 and p.poison_rate == 0.1
    assert p.detect.flip_per_class == 80 and p.distill.clean_per_class == 320  # the released budget
    assert p.detect.loss.temperature == 1.5 and p.distill.loss.temperature == 2.5


def test_test_harness_params_are_valid(tmp_path: Path) -> None:
    # The slow tests run dvc repro on params.yaml under tests.project.TINY (released selection among
    # others): every compare variant must stay valid on that base too, or the slow suite fails at
    # its first stage (it did once: a variant leaned on params.yaml's detect.selection).
    from tests.project import tiny_params

    path = tmp_path / "params.yaml"
    path.write_text(tiny_params(tmp_path / "backbone"))
    p = load_params(path)
    assert p.detect.selection == "released" and p.compare.variants == load_params(ROOT / "params.yaml").compare.variants


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("detect:\n  flip_per_clas: 80\n", "detect.flip_per_clas"),  # typo
        ("distill:\n  cycles: 0\n", "distill.cycles"),  # bound
        ("detect:\n  loss:\n    alpha: 1.5\n", "detect.loss.alpha"),
        ("data:\n  dataset: imdb\n", "data.dataset"),
        ("poison:\n  attack: badnet\n", "poison.attack"),
        ("data: {dataset: sst-2}\npoison:\n  target_label: 3\n", "target_label"),
        ("detect: {keep: 200, scan_size: 128}\n", "detect"),
        ("sede: 1\n", "sede"),
        ("tune: {mode: blind}\n", "detect.holdout"),  # blind proxy needs held-out flagged rows
        ("tune: {holdout: 64}\n", "tune.holdout"),  # the one knob is detect.holdout
    ],
)
def test_bad_params_fail_with_one_line(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_params(f)
    msg = str(e.value)
    assert str(f) in msg and field in msg and "\n" not in msg


def test_defaults_by_dataset() -> None:
    p = Params.model_validate({"data": {"dataset": "agnews"}, "poison": {"attack": "style"}})
    assert p.target_label == 0 and p.num_classes == 4 and p.poison_rate == 0.2


def test_frozen() -> None:
    p = Params()
    with pytest.raises(Exception):
        p.seed = 3  # type: ignore[misc]


def test_not_yaml(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)
