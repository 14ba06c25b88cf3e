"""promote: move alias ``champion`` to the ``candidate`` version if every gate in params passes."""

from __future__ import annotations

import sys
from pathlib import Path

from bedkd import cli
from bedkd.config import load_params
from bedkd.evaluate import encode_eval_splits, evaluate_classifier
from bedkd.io import read_records
from bedkd.runtime import resolve_runtime
from bedkd.tracking.registry import load_registered, promote


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("promote", __doc__)
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--poisoned", type=Path, default=Path("data/poisoned"))
    args = p.parse_args(argv)
    params = load_params(args.params)

    def evaluate_champion(uri: str) -> dict[str, float]:
        # The champion was graded on another test set: grade it on this one.
        clf = load_registered(uri)
        splits = encode_eval_splits(
            clf,
            read_records(args.prepared / "clean" / "test.parquet"),
            read_records(args.poisoned / "test.parquet"),
            params.target_label,
            params.model.max_length,
        )
        r = evaluate_classifier(clf, splits, resolve_runtime(), params.evaluate.batch_size)
        return {"cacc": r.cacc, "asr": r.asr}

    g = params.promote
    decision = promote(params.model_name, g.max_asr, g.max_cacc_drop, g.champion_tolerance, evaluate_champion)
    for gate in decision.gates:
        print(f"{'PASS' if gate.passed else 'FAIL'} {gate.name}: {gate.detail}")
    if not decision.promoted:
        failed = ", ".join(x.name for x in decision.gates if not x.passed)
        print(f"refused: {decision.name} champion stays at {decision.champion_before or 'none'} (failed: {failed})", file=sys.stderr)
        sys.exit(1)
    print(f"promoted: {decision.name} champion -> version {decision.candidate} (was {decision.champion_before or 'none'})")


if __name__ == "__main__":
    cli.run(main)
