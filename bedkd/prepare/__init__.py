"""prepare: read a corpus's train/dev/test splits into normalised records (text, label).

Local corpora are TSV files laid out like ``../shared/data``; their known quirks (three header
spellings, spaces around the tab, CRLF endings) are handled here. Anything else is an error that
names the file and the line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bedkd.config import NUM_CLASSES, Params
from bedkd.errors import ConfigError, DataError
from bedkd.io import atomic_dir, write_json, write_records

SPLITS = ("train", "dev", "test")
# Accepted header spellings (after stripping spaces around each field).
HEADERS = {("sentence", "label"), ("sentences", "labels"), ("text", "label")}
# Folder of each attack's published poisoned corpus, when it has one.
ATTACK_CORPUS = {"syntactic": "syntactic", "style": "style-bible"}
# Hugging Face hub sources of the clean corpora: (path, config, text field).
HUB_SOURCES: dict[str, tuple[str, str | None, str]] = {
    "sst-2": ("glue", "sst2", "sentence"),
    "olid": ("tweet_eval", "offensive", "text"),
    "agnews": ("ag_news", None, "text"),
}


@dataclass(frozen=True)
class PreparedCorpus:
    """Normalised splits plus where they came from."""

    splits: dict[str, pd.DataFrame]
    sources: dict[str, str]  # split -> "path sha256" or hub id


def parse_tsv(path: str | Path, num_classes: int, *, allow_empty_text: bool = False) -> pd.DataFrame:
    """Parse one corpus TSV into a DataFrame with columns text (str), label (int64).

    Raises DataError("<file>:<line>: <what>") on anything unexpected.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes are not valid UTF-8 (offset {e.start})") from e
    # Split on \n only: str.splitlines() would also split on \x0b, \u2028 etc. inside text.
    lines = content.split("\n")
    if lines and lines[-1].strip() == "":
        lines.pop()
    if not lines:
        raise DataError(f"{path}:1: empty file (no header)")
    header = tuple(f.strip().lower() for f in lines[0].lstrip("\ufeff").rstrip("\r").split("\t"))
    if header not in HEADERS:
        raise DataError(
            f"{path}:1: unknown column layout {lines[0].strip()!r} "
            f"(expected 'sentence<TAB>label' or 'sentences<TAB>labels')"
        )
    texts: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue  # blank lines carry no row
        if "\t" not in line:
            raise DataError(f"{path}:{lineno}: expected 2 tab-separated fields, found no tab")
        text, label_s = line.rsplit("\t", 1)
        text = text.strip()
        label_s = label_s.strip()
        try:
            label = int(label_s)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {label_s!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{lineno}: label {label} out of range [0, {num_classes})")
        if not text and not allow_empty_text:
            raise DataError(f"{path}:{lineno}: empty text")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: split is empty (header only)")
    # ``row`` keeps the 0-based position in the file: style rewrites are aligned to it.
    return pd.DataFrame(
        {"text": texts, "label": np.asarray(labels, dtype=np.int64), "row": np.arange(len(texts), dtype=np.int64)}
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subsample(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or len(df) <= max_rows:
        return df
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(df), size=max_rows, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def read_local(data_dir: Path, folder: str, dataset: str, *, allow_empty_text: bool = False) -> PreparedCorpus:
    """Read ``<data_dir>/<folder>/<dataset>/{train,dev,test}.tsv``."""
    k = NUM_CLASSES[dataset]
    base = Path(data_dir) / folder / dataset
    if not base.is_dir():
        raise DataError(f"{base}: corpus folder not found (set BEDKD_DATA_DIR to the data folder)")
    splits: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    for split in SPLITS:
        path = base / f"{split}.tsv"
        splits[split] = parse_tsv(path, k, allow_empty_text=allow_empty_text)
        sources[split] = f"{folder}/{dataset}/{split}.tsv sha256:{_sha256(path)}"
    return PreparedCorpus(splits, sources)


def split_hub_corpus(dataset: str, hub: Any, seed: int, dev_fraction: float = 0.1) -> PreparedCorpus:
    """Map a hub DatasetDict onto train/dev/test.

    glue/sst2 hides its test labels and ag_news has no validation split, so for those the labelled
    validation (sst-2) or test (agnews) split is the test split and dev is a seeded held-out share
    of train. tweet_eval/offensive has all three.
    """
    path, config, field = HUB_SOURCES[dataset]
    k = NUM_CLASSES[dataset]

    def frame(split: str) -> pd.DataFrame:
        ds = hub[split]
        labels = np.asarray(ds["label"], dtype=np.int64)
        df = pd.DataFrame(
            {"text": [str(t).strip() for t in ds[field]], "label": labels, "row": np.arange(len(labels), dtype=np.int64)}
        )
        bad = df[(df["label"] < 0) | (df["label"] >= k)]
        if len(bad):
            raise DataError(f"hub:{path}/{config or ''}:{split}: row {int(bad.index[0])}: label out of range [0, {k})")
        if df.empty:
            raise DataError(f"hub:{path}/{config or ''}:{split}: split is empty")
        return df

    if dataset == "olid":
        train, dev, test = frame("train"), frame("validation"), frame("test")
    else:
        full = frame("train")
        test = frame("validation" if dataset == "sst-2" else "test")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(full))
        n_dev = max(1, int(round(dev_fraction * len(full))))
        dev = full.iloc[np.sort(perm[:n_dev])].reset_index(drop=True)
        train = full.iloc[np.sort(perm[n_dev:])].reset_index(drop=True)
    hub_id = f"hub:{path}" + (f"/{config}" if config else "")
    return PreparedCorpus({"train": train, "dev": dev, "test": test}, {s: hub_id for s in SPLITS})


def read_hub(dataset: str, seed: int) -> PreparedCorpus:
    if dataset not in HUB_SOURCES:
        raise ConfigError(f"data.source=hub: no hub source for {dataset!r}; use data.source=local")
    import datasets  # imported here: heavy, and only needed online

    path, config, _ = HUB_SOURCES[dataset]
    hub = datasets.load_dataset(path, config) if config else datasets.load_dataset(path)
    return split_hub_corpus(dataset, hub, seed)


def prepare(
    dataset: str,
    source: str,
    attack: str,
    data_dir: Path,
    seed: int,
    max_rows: int | None = None,
) -> dict[str, PreparedCorpus]:
    """Return {"clean": corpus} plus {attack: corpus} for attacks that ship a poisoned corpus.

    ``max_rows`` subsamples every clean split (seeded); the attack corpus is kept whole because
    it is matched to the clean rows by text (syntactic) or by row (style) in the poison stage.
    """
    clean = read_hub(dataset, seed) if source == "hub" else read_local(data_dir, "clean", dataset)
    out: dict[str, PreparedCorpus] = {}
    if attack in ATTACK_CORPUS:
        folder = ATTACK_CORPUS[attack]
        # Style rewrites are row-aligned with the clean split; some rewrites came out empty.
        corpus = read_local(data_dir, folder, dataset, allow_empty_text=(attack == "style"))
        if attack == "syntactic":
            corpus = split_syntactic_train(clean.splits["train"], corpus)
        out[attack] = corpus
    if max_rows is not None:
        clean = PreparedCorpus(
            {s: _subsample(df, max_rows, seed + i) for i, (s, df) in enumerate(clean.splits.items())},
            clean.sources,
        )
    out["clean"] = clean
    return out


def prepare_for(params: Params, data_dir: Path) -> dict[str, PreparedCorpus]:
    """``prepare`` with the params file's data/poison settings (the prepare stage and the harness)."""
    return prepare(
        dataset=params.data.dataset,
        source=params.data.source,
        attack=params.poison.attack,
        data_dir=data_dir,
        seed=params.seed,
        max_rows=params.data.max_rows,
    )


def write_prepared(corpora: dict[str, PreparedCorpus], out: Path) -> dict[str, Any]:
    """Write ``<out>/<corpus>/<split>.parquet`` and ``manifest.json`` atomically; return the manifest."""
    manifest = {
        name: {"sources": c.sources, "rows": {s: len(df) for s, df in c.splits.items()}} for name, c in corpora.items()
    }
    with atomic_dir(out) as tmp:
        for name, corpus in corpora.items():
            for split, df in corpus.splits.items():
                write_records(tmp / name / f"{split}.parquet", df)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def match_key(text: str) -> str:
    """Text as compared across files: CSV-style outer quotes undone, whitespace collapsed.

    syntactic/olid/train.tsv writes some clean rows as ``"...""..."  `` (quoted, inner quotes
    doubled, trailing spaces) where clean/olid has them bare.
    """
    t = text.strip()
    if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
        t = t[1:-1].replace('""', '"')
    return " ".join(t.split())


def split_syntactic_train(clean_train: pd.DataFrame, corpus: PreparedCorpus) -> PreparedCorpus:
    """Split the published HiddenKiller train file by text against the FULL clean train.

    Rows are not aligned (olid has one extra row), so: ``train`` keeps the published rows whose
    text is not in the clean split (the relabelled paraphrases), ``replaced`` the clean rows whose
    text is not in the published file (the originals the publisher swapped out).
    """
    pub = corpus.splits["train"]
    pub_keys = pub["text"].map(match_key)
    clean_keys = clean_train["text"].map(match_key)
    paraphrases = pub[~pub_keys.isin(set(clean_keys))].reset_index(drop=True)
    replaced = clean_train[~clean_keys.isin(set(pub_keys))][["text", "label"]].reset_index(drop=True)
    splits = dict(corpus.splits, train=paraphrases, replaced=replaced)
    return PreparedCorpus(splits, dict(corpus.sources, replaced=corpus.sources["train"]))
