# syntax=docker/dockerfile:1
# dicom-gateway container image.
#
#   docker build -t dicom-gateway:0.1.0 .                       # CPU (python:3.11-slim, CPU torch)
#   docker build -t dicom-gateway:0.1.0-cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run -v ./gateway.yaml:/etc/dicom-gateway/gateway.yaml:ro \
#       -v dicom-spool:/var/lib/dicom-gateway -p 11112:11112 -p 9108:9108 dicom-gateway:0.1.0
#
# The configuration is mounted at /etc/dicom-gateway/gateway.yaml (keys beside it, e.g.
# /etc/dicom-gateway/keys/); it must listen on 0.0.0.0 (gateway.listen, metrics.listen),
# put the spool at /var/lib/dicom-gateway and serve metrics on port 9108 (or set
# DICOM_GATEWAY_HEALTHZ). Other commands: docker run --entrypoint dicom-gateway IMAGE --help.
# deploy/README.md describes the image, the compose stack and the Kubernetes manifests.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# torch for the protection methods (the `protect` extra): the version scripts/setup.sh pins; the
# CPU build by default.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DICOM_GATEWAY_HEALTHZ=http://127.0.0.1:9108/healthz

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A CUDA base image (Ubuntu) has no Python of its own: install the distribution's (>= 3.11).
# Its version is whatever that base ships, so it is not pinned here.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         python3 python3-venv \
      && rm -rf /var/lib/apt/lists/* \
      && python3 -c 'import sys; sys.exit("dicom-gateway needs Python >= 3.11: use a base image that has it" if sys.version_info < (3, 11) else 0)'; \
    fi

# The same layout as the systemd unit: a venv in /opt/dicom-gateway/.venv.
RUN python3 -m venv /opt/dicom-gateway/.venv
ENV PATH=/opt/dicom-gateway/.venv/bin:${PATH}
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /tmp/dicom-gateway-src
COPY pyproject.toml README.md ./
COPY dicom_gateway ./dicom_gateway
RUN pip install "./[protect]" && rm -rf /tmp/dicom-gateway-src
COPY config/gateway.example.yaml /etc/dicom-gateway/gateway.example.yaml

# A dedicated unprivileged user (uid/gid 10001, as in deploy/kubernetes/statefulset.yaml) owns
# the spool, which only it may read (the spool holds patient data).
RUN groupadd --system --gid 10001 dicom-gateway \
    && useradd --system --uid 10001 --gid dicom-gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dicom-gateway \
    && install -d -o dicom-gateway -g dicom-gateway -m 0700 /var/lib/dicom-gateway

WORKDIR /var/lib/dicom-gateway
VOLUME ["/var/lib/dicom-gateway"]
# DICOM (gateway.listen.port) and /metrics, /healthz, /readyz (metrics.listen.port)
EXPOSE 11112 9108
USER 10001:10001

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['DICOM_GATEWAY_HEALTHZ'], timeout=4)"]

# SIGTERM (docker stop) stops accepting, then drains; give it the partners' DIMSE timeout + 10 s
# (docker stop --time / stop_grace_period).
ENTRYPOINT ["dicom-gateway", "serve", "--config", "/etc/dicom-gateway/gateway.yaml"]
