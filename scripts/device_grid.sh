#!/usr/bin/env bash
# The comparison grid (python -m pipelines.compare) on one lent GPU machine, inside a time budget.
#
# The machine is bare and offline, so everything it lacks travels in one payload folder
# (PAYLOAD, made by scripts/device_payload.sh): cp312 wheels of the pydantic stack, the corpora as
# data.tar.xz, the backbone and, when there is one, the last call's records.tgz (the grid resumes
# from it). Phases run most-wanted first, each under what is left of
# BUDGET_S; every finished run is a JSON record (here in $BEDKD_CACHE_DIR/compare, its own store:
# GPU victims are keyed apart from the CPU table's) the moment it ends, so a phase cut off by the
# budget loses only the run in flight. Whatever finished is then tabulated with --cached-only
# (the missing runs are listed in the log) and written under OUT:
#   comparison.{json,md}, runs.json        the default params.yaml grid
#   probe-comparison.{json,md}, probe-runs.json   agnews/addsent with detect.label_filter probe
#   records.tgz                            every finished run's cache file (commit it as
#                                          reports/compare/gpu-h100/records.tgz: the next call resumes)
#   log.txt                                versions, timings, one line per finished run
#
# Usage on the device machine, from the repository root:  OUT=... BUDGET_S=520 scripts/device_grid.sh
# (PYTHON, PAYLOAD, WORK override the interpreter, the payload folder and the scratch folder).
set -uo pipefail

: "${OUT:?set OUT to the folder that comes back}"
PAYLOAD=${PAYLOAD:-.device}
PYTHON=${PYTHON:-python3}  # the GPU image's python3 holds torch
BUDGET_S=${BUDGET_S:-530}
START=$(date +%s)
exec > >(tee "$OUT/log.txt") 2>&1

# The GPU image has torch/transformers/sklearn/pandas but not the pydantic stack.
if ! "$PYTHON" -c "import pydantic_settings" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PAYLOAD"/whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/device-grid}
mkdir -p "$WORK" && tar -C "$WORK" -xJf "$PAYLOAD/data.tar.xz" || exit 1
export BEDKD_DATA_DIR="$WORK/data" BEDKD_CACHE_DIR="$WORK/cache" BEDKD_TRACKING=false BEDKD_PROGRESS=false
# Runs an earlier call finished (its records.tgz, the exact cache files: run keys included) are
# not run again: each call extends the grid (the victims are retrained, ~50 s per cell on an H100).
if [ -f "$PAYLOAD/records.tgz" ]; then
    mkdir -p "$BEDKD_CACHE_DIR" && tar -C "$BEDKD_CACHE_DIR" -xzf "$PAYLOAD/records.tgz" || exit 1
    echo "resumed: $(ls "$BEDKD_CACHE_DIR/compare" | wc -l) finished runs from $PAYLOAD/records.tgz"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true

"$PYTHON" - <<'EOF' || exit 1
import numpy, pandas, pydantic, sklearn, torch, transformers
print("versions: torch", torch.__version__, "transformers", transformers.__version__, "pandas", pandas.__version__,
      "numpy", numpy.__version__, "sklearn", sklearn.__version__, "pydantic", pydantic.__version__)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
else:
    print("device: no CUDA, the grid runs on the CPU")
EOF

# One params file per phase: params.yaml with the carried backbone and the phase's cells/seeds.
mkdir -p "$WORK/params"
"$PYTHON" - "$PAYLOAD" "$WORK/params" <<'EOF' || exit 1
import sys
from pathlib import Path

import yaml

base = yaml.safe_load(Path("params.yaml").read_text())
base["model"]["backbone"] = f"{sys.argv[1]}/all-MiniLM-L6-v2-fp16"
agnews = ["agnews/addsent", "agnews/badnets", "agnews/style"]
rest = ["olid/badnets", "olid/syntactic", "olid/addsent", "sst-2/syntactic", "sst-2/style", "sst-2/badnets", "sst-2/addsent"]
none = {"clean": [], "bedkd": [], "finetune": [], "kd": [], "released": []}
one = {"clean": [0], "bedkd": [0, 1, 2], "finetune": [0], "kd": [0], "released": [0]}
full = {"clean": [0], "bedkd": [0, 1, 2], "finetune": [0, 1, 2], "kd": [0, 1, 2], "released": [0, 1, 2]}
probe = (["agnews/addsent"], {**none, "bedkd": [0, 1, 2]}, {"label_filter": "probe", "reference_quantile": 0.1})
phases = {
    "1-agnews-probe": probe,
    "2-agnews-bedkd": (agnews, {**none, "clean": [0], "bedkd": [0, 1, 2]}, {}),
    "3-agnews-baselines": (agnews, one, {}),
    "4-rest": (rest, one, {}),
    "5-seeds": (agnews + rest, full, {}),
    "grid": (agnews + rest, full, {}),
    "probe": probe,
}
for name, (cells, seeds, detect) in phases.items():
    p = yaml.safe_load(yaml.safe_dump(base))
    p["compare"]["cells"], p["compare"]["seeds"] = cells, seeds
    p["detect"].update(detect)
    Path(sys.argv[2], f"{name}.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
print("phases:", ", ".join(phases))
EOF

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
for phase in 1-agnews-probe 2-agnews-bedkd 3-agnews-baselines 4-rest 5-seeds; do
    budget=$(left)
    if [ "$budget" -le 20 ]; then echo "phase $phase: skipped, budget spent"; continue; fi
    echo "phase $phase: start at +$(( $(date +%s) - START )) s, $budget s left"
    timeout --signal=TERM "$budget" "$PYTHON" -m pipelines.compare --params "$WORK/params/$phase.yaml" \
        --records "$BEDKD_CACHE_DIR/compare" --out "$WORK/$phase.json" --runs "$WORK/$phase-runs.json" --table "$WORK/$phase.md"
    echo "phase $phase: rc $? at +$(( $(date +%s) - START )) s"
done

"$PYTHON" -m pipelines.compare --params "$WORK/params/grid.yaml" --cached-only --records "$BEDKD_CACHE_DIR/compare" \
    --out "$OUT/comparison.json" --runs "$OUT/runs.json" --table "$OUT/comparison.md"
"$PYTHON" -m pipelines.compare --params "$WORK/params/probe.yaml" --cached-only --records "$BEDKD_CACHE_DIR/compare" \
    --out "$OUT/probe-comparison.json" --runs "$OUT/probe-runs.json" --table "$OUT/probe-comparison.md"
mkdir -p "$BEDKD_CACHE_DIR/compare"
tar -C "$BEDKD_CACHE_DIR" -czf "$OUT/records.tgz" compare
cat "$OUT/comparison.md" "$OUT/probe-comparison.md"
echo "done at +$(( $(date +%s) - START )) s"
