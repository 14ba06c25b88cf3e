"""poison: build the poisoned train set (with ground truth) and the triggered dev/test sets."""

from __future__ import annotations

import logging
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.poison import poison_for, write_poisoned
from bedkd.tracking import stage_run

log = logging.getLogger("bedkd.poison")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("poison", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--out", type=Path, default=Path("data/poisoned"))
    args = p.parse_args(argv)
    params = load_params(args.params)
    with stage_run(params, "poison", args.params) as tracker:
        out = poison_for(params, args.prepared)
        write_poisoned(args.out, out)
        tracker.log_metrics({f"poison/{k}": v for k, v in out.stats.items()})
    log.info("poisoned %s", out.stats)


if __name__ == "__main__":
    cli.run(main)
