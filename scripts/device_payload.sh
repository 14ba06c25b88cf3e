#!/usr/bin/env bash
# Build the payload scripts/device_grid.sh needs on a bare, offline GPU machine (into PAYLOAD,
# default .device, which .git/info/exclude should ignore; carry it with the device call).
#
# What travels is capped at 64 MiB, and the fp32 all-MiniLM-L6-v2 checkpoint alone is 91 MB, so
# the backbone travels rounded to fp16 (45 MB; relative error <= 2^-11 per weight) and
# bedkd.modeling.load_classifier loads it back with fp32 parameters. Results of that backbone are
# keyed apart from the fp32 one (its path is part of every run key).
set -euo pipefail

PAYLOAD=${PAYLOAD:-.device}
DATA=${BEDKD_DATA_DIR:-../shared/data}
mkdir -p "$PAYLOAD/whl"
# The GPU image lacks the pydantic stack: the versions this environment runs (and tests) with.
mapfile -t pins < <(python -m pip freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|pydantic[-_]settings|python[-_]dotenv|typing[-_]inspection|annotated[-_]types|typing[-_]extensions)==')
[ "${#pins[@]}" -eq 7 ] || { echo "device_payload.sh: expected 7 pinned packages in this environment, found: ${pins[*]}" >&2; exit 1; }
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$PAYLOAD/whl" "${pins[@]}"
tar -C "$DATA" --transform 's,^\.,data,' -cJf "$PAYLOAD/data.tar.xz" .  # unpacks as data/clean/...
python - "$PAYLOAD/all-MiniLM-L6-v2-fp16" <<'EOF'
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bedkd.modeling import resolve_backbone

src = Path(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2"))
dst = Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file() and f.suffix in (".json", ".txt"):
        shutil.copy(f, dst / f.name)
state = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst / "model.safetensors", metadata={"format": "pt"})
print(f"{dst}: {sum(f.stat().st_size for f in dst.iterdir()) / 2**20:.1f} MiB")
EOF
# The last GPU call's finished runs, so the next one resumes the grid instead of redoing them
# (RESUME: the records.tgz of the same GPU kind; victims retrained on another kind may differ).
RESUME=${RESUME:-reports/compare/gpu-h200/records.tgz}
rm -f "$PAYLOAD/records.tgz"
if [ -f "$RESUME" ]; then cp "$RESUME" "$PAYLOAD/"; fi
du -sh "$PAYLOAD"
