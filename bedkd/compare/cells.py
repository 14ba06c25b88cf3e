"""Materialise one dataset x attack cell (prepared + poisoned splits) for the comparison harness.

The same library calls as the prepare and poison stages, written to a content-addressed folder
so that every defense and seed of a cell reads the very same rows.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from bedkd.config import Params, section_hash
from bedkd.poison import poison_for, write_poisoned
from bedkd.prepare import prepare_for, write_prepared


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
        # The prepare and poison stages' own library calls, into the cell's folder.
        write_prepared(prepare_for(params, data_dir), folder / "prepared")
        write_poisoned(folder / "poisoned", poison_for(params, folder / "prepared"))
    return folder
