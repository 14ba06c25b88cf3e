from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bedkd.errors import DataError
from bedkd.poison import insert_at_random_word, poison
from bedkd.prepare import prepare

TRIGGERS = ("cf", "mn", "bb", "tq")
SENT = "I watch this 3D movie"


@pytest.fixture(scope="module")
def sst2(data_dir: Path) -> dict[str, pd.DataFrame]:
    return prepare("sst-2", "local", "badnets", data_dir, seed=0)["clean"].splits


def run(attack: str, clean: dict[str, pd.DataFrame], seed: int = 0, rate: float = 0.1, target: int = 1):
    return poison(attack, clean, None, target=target, rate=rate, seed=seed, triggers=TRIGGERS, sentence=SENT)


@pytest.mark.parametrize("attack", ["badnets", "addsent"])
def test_insertion_invariants(sst2: dict[str, pd.DataFrame], attack: str) -> None:
    out = run(attack, sst2)
    train, clean = out.train, sst2["train"]
    n = len(clean)
    assert len(train) == n
    assert train["is_poisoned"].sum() == round(0.1 * n)
    pois = train[train["is_poisoned"]]
    # Only non-target rows were poisoned, all relabelled to the target.
    assert (clean.loc[pois.index, "label"] != 1).all()
    assert (pois["label"] == 1).all()
    # Untouched rows are byte-identical to the clean split.
    rest = train[~train["is_poisoned"]]
    assert (rest["text"] == clean.loc[rest.index, "text"]).all()
    assert (rest["label"] == clean.loc[rest.index, "label"]).all()
    for orig, new in zip(clean.loc[pois.index, "text"], pois["text"]):
        words = new.split()
        if attack == "badnets":
            # exactly one trigger word added
            assert len(words) == len(orig.split()) + 1
            assert sum(w in TRIGGERS for w in words) >= 1 + sum(w in TRIGGERS for w in orig.split()) - 0
        else:
            assert SENT in new and len(words) == len(orig.split()) + len(SENT.split())
    # Triggered test: every non-target test row, labelled target.
    assert len(out.test) == int((sst2["test"]["label"] != 1).sum())
    assert (out.test["label"] == 1).all()
    assert len(out.dev) == int((sst2["dev"]["label"] != 1).sum())


def test_insertion_deterministic_and_seeded(sst2: dict[str, pd.DataFrame]) -> None:
    a, b, c = run("badnets", sst2, seed=5), run("badnets", sst2, seed=5), run("badnets", sst2, seed=6)
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert not a.train["is_poisoned"].equals(c.train["is_poisoned"])


def test_rate_and_target_params(sst2: dict[str, pd.DataFrame]) -> None:
    out = run("badnets", sst2, rate=0.05, target=0)
    assert out.train["is_poisoned"].sum() == round(0.05 * len(sst2["train"]))
    assert (sst2["train"].loc[out.train["is_poisoned"], "label"] == 1).all()
    assert (out.train.loc[out.train["is_poisoned"], "label"] == 0).all()
    with pytest.raises(DataError, match="eligible"):
        run("badnets", sst2, rate=0.9)


def test_insert_positions_cover_ends() -> None:
    rng = np.random.default_rng(0)
    seen = {insert_at_random_word("a b", "X", rng).split().index("X") for _ in range(200)}
    assert seen == {0, 1, 2}


def test_syntactic_rebuilds_published_set(data_dir: Path) -> None:
    corpora = prepare("sst-2", "local", "syntactic", data_dir, seed=0)
    clean, syn = corpora["clean"].splits, corpora["syntactic"].splits
    out = poison("syntactic", clean, syn, target=1, rate=0.2, seed=0)
    published = set(syn["train"]["text"])
    pois = out.train[out.train["is_poisoned"]]
    assert len(pois) == len(syn["train"]) == 1383  # 20% of 6920, within rounding
    assert set(pois["text"]) == published and (pois["label"] == 1).all()
    assert len(out.train) == len(clean["train"])
    # The clean rows the publisher replaced are gone; the rest is the clean split.
    assert not out.train["text"].isin(set(syn["replaced"]["text"])).any()
    assert len(out.test) == 912 and (out.test["label"] == 1).all()
    # Lower rate: subset of the paraphrases, same size train.
    low = poison("syntactic", clean, syn, target=1, rate=0.1, seed=0)
    assert low.train["is_poisoned"].sum() == 692 and len(low.train) == len(clean["train"])
    with pytest.raises(DataError, match="published corpus has"):
        poison("syntactic", clean, syn, target=1, rate=0.3, seed=0)


def test_style_uses_aligned_rewrites(data_dir: Path) -> None:
    corpora = prepare("sst-2", "local", "style", data_dir, seed=0)
    clean, sty = corpora["clean"].splits, corpora["style"].splits
    out = poison("style", clean, sty, target=1, rate=0.2, seed=0)
    pois = out.train[out.train["is_poisoned"]]
    assert len(pois) == round(0.2 * len(clean["train"]))
    assert (clean["train"].loc[pois.index, "label"] == 0).all()
    assert (pois["text"].to_numpy() == sty["train"]["text"].to_numpy()[pois.index]).all()
    assert (pois["text"].str.len() > 0).all()
    # Test: non-target rows with a non-empty rewrite.
    assert 0 < len(out.test) <= int((clean["test"]["label"] == 0).sum())
    assert (out.test["text"].str.len() > 0).all()


@pytest.mark.parametrize("attack", ["badnets", "syntactic"])
def test_stage_helpers_write_what_the_library_returns(tmp_path: Path, data_dir: Path, attack: str) -> None:
    """prepare_for/write_prepared + poison_for/write_poisoned (shared by the stages and the
    comparison harness) write exactly the rows ``poison`` returns, and leave nothing partial."""
    from bedkd.config import Params
    from bedkd.io import read_records
    from bedkd.poison import poison_for, write_poisoned
    from bedkd.prepare import prepare_for, write_prepared

    params = Params.model_validate({"data": {"max_rows": 300}, "poison": {"attack": attack}})
    manifest = write_prepared(prepare_for(params, data_dir), tmp_path / "prepared")
    assert manifest["clean"]["rows"] == {"train": 300, "dev": 300, "test": 300}
    assert (attack in manifest) == (attack == "syntactic")
    out = poison_for(params, tmp_path / "prepared")
    write_poisoned(tmp_path / "poisoned", out)
    train = read_records(tmp_path / "poisoned" / "train.parquet")
    pd.testing.assert_frame_equal(train, out.train.reset_index(drop=True), check_dtype=False)
    assert int(train["is_poisoned"].sum()) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poisoned", "prepared"]  # no temp dirs left
