"""Events emitted by training loops. Loops never log: callers subscribe with callbacks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """One finished epoch (train_victim, detect) or cycle (distill)."""

    stage: str
    step: int  # 1-based epoch or cycle
    metrics: Mapping[str, float] = field(default_factory=dict)


Callback = Callable[[Event], None]


def emit(callbacks: Sequence[Callback], event: Event) -> None:
    for cb in callbacks:
        cb(event)
