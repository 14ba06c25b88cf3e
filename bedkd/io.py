"""File I/O shared by the stages: atomic outputs, records, JSON metrics."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bedkd.errors import DataError

RECORD_COLUMNS = ("text", "label")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on error it vanishes.

    A stage that fails half-way therefore leaves no partial output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """JSON with sorted keys (stable diffs for DVC metrics)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_records(path: str | Path, df: pd.DataFrame) -> None:
    """Parquet via a temporary file in the same folder: a killed writer leaves no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        df.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_records(path: str | Path, required: tuple[str, ...] = RECORD_COLUMNS) -> pd.DataFrame:
    """Read a parquet split and check its columns and dtypes (files may be hostile)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types on corrupt files
        raise DataError(f"{path}: not a readable parquet file ({e.__class__.__name__})") from e
    for col in required:
        if col not in df.columns:
            raise DataError(f"{path}: missing column {col!r}")
    if "label" in df.columns and not pd.api.types.is_integer_dtype(df["label"]):
        raise DataError(f"{path}: column 'label' must be integer, got {df['label'].dtype}")
    if "text" in df.columns:
        df["text"] = df["text"].astype(str)
    return df


def drop_ground_truth(df: pd.DataFrame) -> pd.DataFrame:
    """What a defender sees: the poisoned training set without the ``is_poisoned`` column."""
    return df.drop(columns=["is_poisoned"], errors="ignore")


def write_metrics(path: str | Path, metrics: Mapping[str, float]) -> None:
    write_json(path, {k: float(v) for k, v in metrics.items()})


def read_scores(path: str | Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a detect CSV (scores.csv / selected.csv); text stays text ("NA" is not NaN)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"text": str})
    except Exception as e:
        raise DataError(f"{path}: not a readable CSV ({e.__class__.__name__})") from e
    for col in ("index", "text", "label", "score", *required):
        if col not in df.columns:
            raise DataError(f"{path}: missing column {col!r}")
    if df.empty:  # nothing selected: pandas cannot infer dtypes from a header alone
        df = df.astype({"index": "int64", "label": "int64", "score": "float64"})
    if not pd.api.types.is_integer_dtype(df["label"]):
        raise DataError(f"{path}: column 'label' must be integer")
    return df
