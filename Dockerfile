# bedkd: the BeDKD pipeline in a container.
#   CPU (default):  docker build -t bedkd .
#   CUDA:           docker build -t bedkd:cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Run (corpora mounted read-only, outputs and the MLflow store in the mounted project):
#   docker run --rm -v /path/to/shared/data:/data:ro -v $PWD:/work bedkd
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    BEDKD_DATA_DIR=/data VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# CUDA base images ship no Python; the slim image has it already.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv git && rm -rf /var/lib/apt/lists/*; \
    else apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*; fi \
 && python3 -m venv /opt/venv

WORKDIR /opt/bedkd
COPY requirements.txt pyproject.toml README.md ./
# torch first, from the index that matches the base image (the same pinned version as requirements.txt).
RUN pip install --index-url ${TORCH_INDEX} "$(grep '^torch==' requirements.txt)" \
 && pip install -r requirements.txt
COPY bedkd ./bedkd
COPY pipelines ./pipelines
RUN pip install --no-deps -e .

# The project folder (params.yaml, dvc.yaml, .dvc/, git history) is mounted at /work.
WORKDIR /work
CMD ["dvc", "repro"]
