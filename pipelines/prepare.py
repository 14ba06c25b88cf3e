"""prepare: normalise a corpus's train/dev/test splits into parquet records (text, label, row)."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.io import atomic_dir, write_json, write_records
from bedkd.prepare import prepare
from bedkd.settings import get_settings
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.prepare")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("prepare", __doc__)
    p.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    with stage_run(params, "prepare", args.params) as tracker:
        corpora = prepare(
            dataset=params.data.dataset,
            source=params.data.source,
            attack=params.poison.attack,
            data_dir=get_settings().data_dir,
            seed=params.seed,
            max_rows=params.data.max_rows,
        )
        rows = {name: {s: len(df) for s, df in c.splits.items()} for name, c in corpora.items()}
        manifest = {name: {"sources": c.sources, "rows": rows[name]} for name, c in corpora.items()}
        with atomic_dir(args.out) as tmp:
            for name, corpus in corpora.items():
                for split, df in corpus.splits.items():
                    write_records(tmp / name / f"{split}.parquet", df)
            write_json(tmp / "manifest.json", manifest)
        tracker.log_dict(manifest, "prepare/manifest.json")
        tracker.log_metrics({f"prepare/{name}/{s}_rows": n for name, r in rows.items() for s, n in r.items()})
    log.info("prepared %s", rows)


if __name__ == "__main__":
    cli.run(main)
