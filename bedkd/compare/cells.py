"""Materialise one dataset x attack cell (prepared + poisoned splits) for the comparison harness.

The same library calls as the prepare and poison stages, written to a content-addressed folder
so that every defense and seed of a cell reads the very same rows.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from bedkd.config import Params, section_hash
from bedkd.io import atomic_dir, read_records, write_json, write_records
from bedkd.poison import poison
from bedkd.prepare import ATTACK_CORPUS, prepare


def cell_key(params: Params) -> str:
    full = params.model_dump(mode="json")
    return section_hash({k: full[k] for k in ("seed", "data", "poison")})


def cell_folder(params: Params, root: Path) -> Path:
    return Path(root) / f"{params.data.dataset}-{params.poison.attack}-{cell_key(params)}"


def materialise_cell(params: Params, data_dir: Path, root: Path) -> Path:
    """Write ``<root>/<dataset>-<attack>-<key>/{prepared,poisoned}`` once; return the folder."""
    folder = cell_folder(params, root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "poisoned" / "stats.json").is_file():
            return folder
        corpora = prepare(
            dataset=params.data.dataset,
            source=params.data.source,
            attack=params.poison.attack,
            data_dir=data_dir,
            seed=params.seed,
            max_rows=params.data.max_rows,
        )
        with atomic_dir(folder / "prepared") as tmp:
            for name, corpus in corpora.items():
                for split, df in corpus.splits.items():
                    write_records(tmp / name / f"{split}.parquet", df)
        prepared = folder / "prepared"
        attack = params.poison.attack
        clean = {s: read_records(prepared / "clean" / f"{s}.parquet") for s in ("train", "dev", "test")}
        corpus = None
        if attack in ATTACK_CORPUS:
            names = ("train", "dev", "test", "replaced") if attack == "syntactic" else ("train", "dev", "test")
            corpus = {s: read_records(prepared / attack / f"{s}.parquet") for s in names}
        out = poison(
            attack, clean, corpus, target=params.target_label, rate=params.poison_rate, seed=params.seed,
            triggers=params.poison.badnets_triggers, sentence=params.poison.addsent_sentence, max_rows=params.data.max_rows,
        )
        with atomic_dir(folder / "poisoned") as tmp:
            write_records(tmp / "train.parquet", out.train)
            write_records(tmp / "dev.parquet", out.dev)
            write_records(tmp / "test.parquet", out.test)
            write_json(tmp / "stats.json", out.stats)
    return folder
