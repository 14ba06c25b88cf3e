"""poison: build the poisoned train set (with ground truth) and the triggered dev/test sets."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.io import atomic_dir, read_records, write_json, write_records
from bedkd.poison import poison
from bedkd.prepare import ATTACK_CORPUS
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.poison")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("poison", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--out", type=Path, default=Path("data/poisoned"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    attack = params.poison.attack
    with stage_run(params, "poison", args.params) as tracker:
        clean = {s: read_records(args.prepared / "clean" / f"{s}.parquet") for s in ("train", "dev", "test")}
        corpus = None
        if attack in ATTACK_CORPUS:
            names = ("train", "dev", "test", "replaced") if attack == "syntactic" else ("train", "dev", "test")
            corpus = {s: read_records(args.prepared / attack / f"{s}.parquet") for s in names}
        out = poison(
            attack,
            clean,
            corpus,
            target=params.target_label,
            rate=params.poison_rate,
            seed=params.seed,
            triggers=params.poison.badnets_triggers,
            sentence=params.poison.addsent_sentence,
            max_rows=params.data.max_rows,
        )
        with atomic_dir(args.out) as tmp:
            write_records(tmp / "train.parquet", out.train)
            write_records(tmp / "dev.parquet", out.dev)
            write_records(tmp / "test.parquet", out.test)
            write_json(tmp / "stats.json", out.stats)
        tracker.log_metrics({f"poison/{k}": v for k, v in out.stats.items()})
    log.info("poisoned %s", out.stats)


if __name__ == "__main__":
    cli.run(main)
