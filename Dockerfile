# syntax=docker/dockerfile:1
# Image of the regional imaging archive: one image for every role (`pacs serve`, `pacs scp`,
# `pacs import`, `pacs db upgrade`; `pacs worker` in a later issue). docker-compose.yml shows the
# production topology (PostgreSQL + MinIO + archive).
#
#   docker build -t regional-pacs .
#   docker run --rm -p 11112:11112 -p 8000:8000 -v pacs-data:/var/lib/pacs regional-pacs
#
# Every dependency ships binary wheels for CPython 3.11 on manylinux, so neither stage needs a
# compiler.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: a self-contained venv
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/pacs
WORKDIR /src
# .dockerignore keeps .venv, var/, tests' data and caches out of the context.
COPY . .
RUN /opt/pacs/bin/pip install --upgrade pip \
    && /opt/pacs/bin/pip install . \
    && /opt/pacs/bin/pacs --help >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

ARG PACS_UID=10001
RUN groupadd --system --gid "${PACS_UID}" pacs \
    && useradd --system --uid "${PACS_UID}" --gid pacs --home-dir /var/lib/pacs \
        --no-create-home --shell /usr/sbin/nologin pacs \
    && install -d -o pacs -g pacs -m 0750 /var/lib/pacs

COPY --from=build /opt/pacs /opt/pacs

# Embedded default inside the container: SQLite + filesystem under /var/lib/pacs (a volume).
# docker-compose.yml points PACS_DATABASE_URL / PACS_STORAGE_URL at PostgreSQL and MinIO; the
# data directory then only holds the Prometheus multiprocess files.
ENV PATH=/opt/pacs/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PACS_DATA_DIR=/var/lib/pacs

# numeric, so that runAsNonRoot (Kubernetes) can verify it
USER ${PACS_UID}:${PACS_UID}
WORKDIR /var/lib/pacs
VOLUME ["/var/lib/pacs"]

# 11112: DICOM (DIMSE); 8000: HTTP (API, /health, /metrics, /docs)
EXPOSE 11112 8000

# /health answers 200 once the database, the object store and the DICOM port are ready.
# The slim image has no curl: Python's urllib does the request (an HTTP 503 raises -> exit 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PACS_HTTP_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["pacs"]
CMD ["serve", "--host", "0.0.0.0"]
