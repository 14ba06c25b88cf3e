"""Machine settings: where things are and what hardware to use, never hyper-parameters.

Read once from ``BEDKD_*`` environment variables (and an optional ``.env`` file).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BEDKD_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Corpus folder laid out like ../shared/data (clean/, syntactic/, style-bible/).
    data_dir: Path = Field(default=Path("../shared/data"))
    # "auto" picks cuda when available, else cpu.
    device: str = "auto"
    # Mixed precision: "auto" uses bf16 autocast where the hardware runs it natively.
    amp: Literal["auto", "bf16", "fp32"] = "auto"
    # Threads for torch on CPU; 0 keeps torch's default.
    num_threads: int = Field(default=0, ge=0)
    # MLflow tracking on/off; the URI itself comes from MLFLOW_TRACKING_URI.
    tracking: bool = True
    # Show tqdm progress bars; off by default when CI is set.
    progress: bool | None = None
    # Content-addressed cache of tuning artefacts (victims, DMM scores); relative to the project.
    cache_dir: Path = Field(default=Path(".cache/bedkd"))
    # Optuna storage URL; None = sqlite file optuna.db in the project.
    optuna_storage: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
