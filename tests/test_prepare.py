from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bedkd.errors import ConfigError, DataError
from bedkd.prepare import parse_tsv, prepare, read_local, split_hub_corpus

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    "header",
    ["sentence\tlabel", "sentence \t label", "sentences \t labels", "\ufeffsentence\tlabel"],
)
def test_header_spellings(tmp_path: Path, header: str) -> None:
    f = write(tmp_path / "a.tsv", f"{header}\nhello world\t1\n")
    df = parse_tsv(f, 2)
    assert df["text"].tolist() == ["hello world"]
    assert df["label"].tolist() == [1]


def test_spaces_crlf_and_odd_text(tmp_path: Path) -> None:
    content = (
        "sentence \t label\r\n"
        "@USER #MAGA \"quoted\" text  \t 1\r\n"
        "price #36;10 million \t 0\r\n"
        "tab\tinside text\t1\r\n"
        "\n"
    )
    df = parse_tsv(write(tmp_path / "a.tsv", content), 2)
    assert df["text"].tolist() == ['@USER #MAGA "quoted" text', "price #36;10 million", "tab\tinside text"]
    assert df["label"].tolist() == [1, 0, 1]
    assert df["row"].tolist() == [0, 1, 2]
    assert df["label"].dtype == "int64"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text\tscore\nx\t1\n", "a.tsv:1: unknown column layout"),
        (b"sentence\tlabel\nx\tone\n", "a.tsv:2: label 'one' is not an integer"),
        (b"sentence\tlabel\nx\t1\ny\t7\n", "a.tsv:3: label 7 out of range"),
        (b"sentence\tlabel\nx\t-1\n", "a.tsv:2: label -1 out of range"),
        (b"sentence\tlabel\n", "split is empty"),
        (b"", "a.tsv:1: empty file"),
        (b"sentence\tlabel\nok\t1\nbad \xff\xfe bytes\t0\n", "a.tsv:3: bytes are not valid UTF-8"),
        (b"sentence\tlabel\nno tab here\n", "a.tsv:2: expected 2 tab-separated fields"),
        (b"sentence\tlabel\n \t1\n", "a.tsv:2: empty text"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    f = write(tmp_path / "a.tsv", content)
    with pytest.raises(DataError) as e:
        parse_tsv(f, 2)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        parse_tsv(tmp_path / "nope.tsv", 2)


def test_real_corpora_parse(data_dir: Path) -> None:
    expected = {"sst-2": (6920, 872, 1821), "olid": (11915, 1323, 859), "agnews": (11106, 10000, 7600), "hate-speech": (7074, 1000, 2000)}
    for dataset, sizes in expected.items():
        corpus = read_local(data_dir, "clean", dataset)
        assert tuple(len(corpus.splits[s]) for s in ("train", "dev", "test")) == sizes
        assert "sha256:" in corpus.sources["train"]


def test_syntactic_split_by_text(data_dir: Path) -> None:
    out = prepare("olid", "local", "syntactic", data_dir, seed=0)
    syn = out["syntactic"].splits
    clean_texts = set(out["clean"].splits["train"]["text"])
    assert not syn["train"]["text"].isin(clean_texts).any()  # only paraphrases
    assert (syn["train"]["label"] == 1).all()
    # Quoted/space-padded copies of clean rows are matched, not taken for paraphrases.
    assert 0.19 < len(syn["train"]) / len(out["clean"].splits["train"]) < 0.21
    assert abs(len(syn["replaced"]) - len(syn["train"])) <= 15


def test_max_rows_subsamples(data_dir: Path) -> None:
    out = prepare("sst-2", "local", "badnets", data_dir, seed=3, max_rows=50)
    assert all(len(df) == 50 for df in out["clean"].splits.values())
    again = prepare("sst-2", "local", "badnets", data_dir, seed=3, max_rows=50)
    pd.testing.assert_frame_equal(out["clean"].splits["train"], again["clean"].splits["train"])


def test_hub_split_mapping() -> None:
    datasets = pytest.importorskip("datasets")
    hub = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}),
        validation=datasets.Dataset.from_dict({"sentence": ["v0", "v1"], "label": [0, 1]}),
        test=datasets.Dataset.from_dict({"sentence": ["t0"], "label": [-1]}),  # glue hides test labels
    )
    corpus = split_hub_corpus("sst-2", hub, seed=0)
    assert corpus.splits["test"]["text"].tolist() == ["v0", "v1"]
    assert len(corpus.splits["dev"]) == 2 and len(corpus.splits["train"]) == 18
    assert not set(corpus.splits["dev"]["text"]) & set(corpus.splits["train"]["text"])
    assert corpus.sources["train"] == "hub:glue/sst2"


def test_hub_has_no_hate_speech() -> None:
    with pytest.raises(ConfigError, match="no hub source"):
        prepare("hate-speech", "hub", "badnets", Path("."), seed=0)


def test_stage_error_leaves_no_output(tmp_path: Path) -> None:
    """A bad corpus: one-line error naming file and line, exit 2, nothing written."""
    corpus = tmp_path / "corpus" / "clean" / "sst-2"
    corpus.mkdir(parents=True)
    write(corpus / "train.tsv", "sentence\tlabel\ngood\t1\n")
    write(corpus / "dev.tsv", "sentence\tlabel\ngood\t0\n")
    write(corpus / "test.tsv", "sentence\tlabel\ngood\t1\nbad\t5\n")
    params = write(tmp_path / "params.yaml", "data: {dataset: sst-2}\n")
    out = tmp_path / "prepared"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--params", str(params), "--out", str(out)],
        cwd=ROOT,
        env={**__import__("os").environ, "BEDKD_DATA_DIR": str(tmp_path / "corpus"), "BEDKD_TRACKING": "false"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and "test.tsv:3: label 5 out of range" in err[-1]
    assert not out.exists()
    assert not any(p.name.startswith(".prepared") for p in tmp_path.iterdir())
