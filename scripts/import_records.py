"""Put finished comparison runs into the record store (``pipelines.compare --records``).

The harness writes one JSON record per run; runs made before the store existed survive as lists
of those records: ``reports/compare/runs.json`` (the table's runs) and the ``runs*`` keys of the
research records. This files each record under the run key of the defense it was run as, given
the params file it was run with, so ``python -m pipelines.compare --cached-only`` tabulates it and
a resumed grid does not run it again.

    python scripts/import_records.py --source reports/compare/runs.json
    python scripts/import_records.py --defense bedkd-shift \\
        --source reports/compare/research-four-knobs-badnets-addsent.json:runs_badnets

A record is filed only where the params' cells list its dataset/attack and its defense is the one
named (a variant takes records of the ``bedkd`` runs it describes). A record already in the store
must agree on every result (wall time and machine aside: a rerun on another box), else nothing is
written and the command fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

from bedkd.compare import RunRecord, cell_params, method_of, record_path, store_record
from bedkd.config import Params, load_params
from bedkd.tune import victim_key

# Fields a rerun of the same run may change: where and how fast it ran.
RUN_ONLY = frozenset({"wall_s", "machine"})


def read_source(spec: str) -> list[dict[str, object]]:
    """``FILE`` (a JSON list of records) or ``FILE:KEY`` (the list under KEY of a JSON object)."""
    path, _, key = spec.partition(":")
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = data[key] if key else data
    if not isinstance(rows, list):
        raise ValueError(f"{spec}: not a list of run records")
    return rows


def _results(rec: RunRecord) -> dict[str, object]:
    return {k: v for k, v in asdict(rec).items() if k not in RUN_ONLY}


def plan(params: Params, defense: str | None, rows: list[dict[str, object]], records: Path, where: str) -> list[tuple[Path, RunRecord, Params, str]]:
    """Check every row and work out where it goes; raises on the first row that cannot be filed."""
    names = {f.name for f in fields(RunRecord)}
    out: list[tuple[Path, RunRecord, Params, str]] = []
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise ValueError(f"{where}[{i}]: not a run record (unknown fields {sorted(extra)})")
        rec = RunRecord(**row)  # type: ignore[arg-type]
        name = defense or rec.defense
        if name not in params.compare.seeds:
            raise ValueError(f"{where}[{i}]: defense {name!r} is not in compare.seeds of the params")
        if rec.defense not in (name, method_of(params, name)):
            raise ValueError(f"{where}[{i}]: a {rec.defense} run cannot be filed as {name}")
        cell = f"{rec.dataset}/{rec.attack}"
        if cell not in params.compare.cells:
            raise ValueError(f"{where}[{i}]: cell {cell} is not in compare.cells")
        cp = cell_params(params, cell)
        rec = replace(rec, defense=name)
        vkey = victim_key(cp)
        path = record_path(records, cp, name, rec.seed, vkey)
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            diff = sorted(k for k, v in _results(rec).items() if k != "defense" and old.get(k) != v)
            if diff:
                raise ValueError(f"{where}[{i}]: {path.name} already holds this run with other results ({', '.join(diff)})")
            continue
        out.append((path, rec, cp, vkey))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params the runs were made with")
    ap.add_argument("--defense", default=None, help="file the records as this defense or compare.variants name (default: each record's own)")
    ap.add_argument("--source", action="append", required=True, help="FILE or FILE:KEY holding a list of run records; repeatable")
    ap.add_argument("--records", type=Path, default=Path("reports/compare/records"))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    todo: dict[Path, tuple[RunRecord, Params, str]] = {}
    try:
        for spec in args.source:
            for path, rec, cp, vkey in plan(params, args.defense, read_source(spec), args.records, spec):
                if path in todo and _results(todo[path][0]) != _results(rec):
                    raise ValueError(f"{spec}: {path.name} comes twice with other results")
                todo.setdefault(path, (rec, cp, vkey))
    except (ValueError, KeyError, TypeError, OSError) as e:  # bad input: one line, nothing written
        print(f"import_records: {e}", file=sys.stderr)
        return 2
    for path, (rec, cp, vkey) in todo.items():
        written = store_record(args.records, cp, rec, vkey)
        assert written == path
        print(f"{rec.dataset}/{rec.attack} {rec.defense} seed {rec.seed} -> {path}")
    print(f"{len(todo)} records filed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
