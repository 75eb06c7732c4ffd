# syntax=docker/dockerfile:1
# Fanoni Scheduling sidecar. Build: docker build -t fanoni-scheduling:0.1.0 .
# Run:   docker run -e FHIR_BASE_URL=http://hapi:8080/fhir -p 8090:8090 fanoni-scheduling:0.1.0
# Configuration is environment only (docs/configuration.md); deployment: docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-slim

# ---- admin-ui: the calendar page's third-party code (FullCalendar, Luxon) from the npm lockfile
FROM ${NODE_IMAGE} AS admin-ui
WORKDIR /ui
COPY plugin/admin_ui/package.json plugin/admin_ui/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# ---- builder: the project and its runtime dependencies in a venv (no dev extras) -------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel is built from; README* is optional (the glob may match nothing).
COPY pyproject.toml README* ./
COPY operations/ operations/
COPY plugin/ plugin/
# The wheel's package data takes the few built files the page serves (pyproject.toml).
COPY --from=admin-ui /ui/node_modules plugin/admin_ui/node_modules
# pip compiles .pyc at install time, so the read-only final image needs no writable cache.
RUN pip install --no-cache-dir .

# ---- final: the venv on a clean slim image, run as an unprivileged user ----------------------
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 fanoni \
    && useradd --system --uid 10001 --gid fanoni --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin fanoni

# Same base image and path in both stages, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /tmp
USER 10001:10001

EXPOSE 8090

# /livez answers without consulting the upstream; python because slim has no curl.
# Assumes the default port: change it here too when CMD's --port changes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8090/livez', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["fanoni-scheduling"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8090"]
