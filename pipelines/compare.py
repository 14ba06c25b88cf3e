"""compare: finetune / kd / released / bedkd on the same victims, clean budget and test rows.

Writes reports/comparison.json (one row per dataset x attack x defense, means over seeds),
the per-seed runs and a Markdown table; logs one MLflow run per defense x seed under the
experiment ``bedkd/compare``. Finished runs are JSON records in a record store (``--records``,
reports/compare/records, tracked by git): re-running after an interruption, or on another machine
from a clone, resumes; victims and clean models are cached in BEDKD_CACHE_DIR.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from bedkd import cli
from bedkd.compare import RunRecord, aggregate, cell_victim, render_markdown, run_grid
from bedkd.config import Params, load_params
from bedkd.io import write_json, write_text_atomic
from bedkd.modeling import Classifier
from bedkd.runtime import resolve_runtime
from bedkd.settings import get_settings
from bedkd.tracking import base_tags, git_commit, nested_run, project_root

log = logging.getLogger("bedkd.compare")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("compare", __doc__)
    p.add_argument("--out", type=Path, default=Path("reports/comparison.json"))
    p.add_argument("--runs", type=Path, default=Path("reports/compare/runs.json"))
    p.add_argument("--table", type=Path, default=Path("reports/compare/comparison.md"))
    p.add_argument(
        "--records", type=Path, default=Path("reports/compare/records"),
        help="record store: one JSON record per finished run, kept in git so a grid resumes on any machine",
    )
    p.add_argument("--cached-only", action="store_true", help="train nothing: tabulate the finished runs, list the missing ones")
    args = p.parse_args(argv)
    params = load_params(args.params)
    settings = get_settings()
    runtime = resolve_runtime()
    cache = settings.cache_dir if settings.cache_dir.is_absolute() else project_root() / settings.cache_dir
    commit = git_commit()

    def victim_for(cp: Params, folder: Path) -> Classifier:
        return cell_victim(cp, folder, runtime, cache)

    def on_record(r: RunRecord) -> None:
        log.info(
            "%s/%s %s seed %d: CACC %.4f ASR %.4f (victim %.4f / %.4f) AUROC %s precision %s punished label %s cycle %s %.0f s",
            r.dataset, r.attack, r.defense, r.seed, r.student_cacc, r.student_asr, r.victim_cacc, r.victim_asr,
            "-" if r.detect_auroc is None else f"{r.detect_auroc:.3f}",
            "-" if r.detect_precision is None else f"{r.detect_precision:.3f}", r.punished_label, r.chosen_cycle, r.wall_s,
        )
        tags = {"git_commit": commit, "dataset": r.dataset, "attack": r.attack, "defense": r.defense, "bedkd.role": "compare"}
        with nested_run("bedkd/compare", f"{r.dataset}-{r.attack}-{r.defense}-s{r.seed}", tags, {"seed": r.seed}) as tr:
            tr.log_metrics({k: float(v) for k, v in asdict(r).items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"})

    missing: list[str] = []
    records = run_grid(
        params, settings.data_dir, cache, runtime, victim_for, None if args.cached_only else on_record,
        records=args.records, cached_only=args.cached_only, on_missing=missing.append,
    )
    for m in missing:
        log.warning("not run (left out of the table): %s", m)
    rows = aggregate(records)
    write_json(args.out, rows)
    write_json(args.runs, [asdict(r) for r in records])
    write_text_atomic(args.table, render_markdown(rows))
    log.info("comparison: %d rows -> %s", len(rows), args.out)


if __name__ == "__main__":
    cli.run(main)
