"""Hardware choices (device, mixed precision, progress bars), resolved once from Settings."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from bedkd.settings import Settings, get_settings


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    progress: bool

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def _cpu_has_bf16() -> bool:
    # AVX512-BF16 or AMX run bf16 matmuls natively; elsewhere bf16 autocast is slower than fp32.
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or get_settings()
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    if settings.amp == "fp32":
        amp = None
    elif settings.amp == "bf16":
        amp = torch.bfloat16
    elif device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    else:
        amp = torch.bfloat16 if _cpu_has_bf16() else None
    if settings.progress is None:
        progress = not os.environ.get("CI") and sys.stderr.isatty()
    else:
        progress = settings.progress
    return Runtime(device=device, amp_dtype=amp, progress=progress)
