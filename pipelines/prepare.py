"""prepare: normalise a corpus's train/dev/test splits into parquet records (text, label, row)."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.prepare import prepare_for, write_prepared
from bedkd.settings import get_settings
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.prepare")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("prepare", __doc__)
    p.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    with stage_run(params, "prepare", args.params) as tracker:
        manifest = write_prepared(prepare_for(params, get_settings().data_dir), args.out)
        tracker.log_dict(manifest, "prepare/manifest.json")
        tracker.log_metrics(
            {f"prepare/{name}/{s}_rows": n for name, m in manifest.items() for s, n in m["rows"].items()}
        )
    log.info("prepared %s", {name: m["rows"] for name, m in manifest.items()})


if __name__ == "__main__":
    cli.run(main)
