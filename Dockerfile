# Container image for the Legiti forwarder.
#
#   docker build -t legiti/forwarder:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp legiti/forwarder:0.1.0 --help
#   docker run --rm --read-only --tmpfs /tmp legiti/forwarder:0.1.0 demo
#
# Two stages: `builder` turns the source tree into a wheel and installs that
# wheel (with the `demo` extra, so `docker run IMAGE demo` works) into a virtual
# environment at /opt/forwarder; the final stage copies only that environment.
# No compiler, pip cache, wheel or source file reaches the final image.
#
# Base image: pinned to a patch-level tag. Pin it to a digest as well when you
# release (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`), e.g.
# FROM python:3.11.14-slim-bookworm@sha256:<digest>; both stages must use the
# same image, because the virtual environment links to its interpreter.
# tests/deploy/test_deploy_image.py replays these steps without a container engine.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Keep in step with forwarder/__init__.py (a test checks it).
ARG VERSION=0.1.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what .dockerignore lets through: pyproject.toml, README.md, LICENSE, forwarder/.
COPY . .

# 1. The wheel, exactly as CI builds it.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# 2. Install that wheel file (never a same-named package from an index) with its
#    dependencies into a self-contained venv, then drop the installer from it.
#    pip compiles every module to .pyc here, so nothing is written at run time.
RUN python -m venv /opt/forwarder \
 && /opt/forwarder/bin/pip install --no-cache-dir \
      "/wheels/legiti_forwarder-${VERSION}-py3-none-any.whl[demo]" \
 && /opt/forwarder/bin/pip uninstall --yes pip setuptools \
 && /opt/forwarder/bin/forwarder --help >/dev/null


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="legiti-forwarder" \
      org.opencontainers.image.description="Forwards login/logout events from Kafka to Legiti's track_auth API" \
      org.opencontainers.image.source="https://github.com/legiti/forwarder" \
      org.opencontainers.image.url="https://github.com/legiti/forwarder" \
      org.opencontainers.image.documentation="https://github.com/legiti/forwarder/blob/main/README.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/forwarder/bin:${PATH}" \
    HOME=/tmp

# Fixed, unprivileged identity; the Kubernetes manifests use the same numbers.
RUN groupadd --system --gid 10001 forwarder \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin forwarder

# Owned by root and read-only for the runtime user.
COPY --from=builder /opt/forwarder /opt/forwarder

# Numeric, so Kubernetes' runAsNonRoot can verify it. The root filesystem may be
# read-only: the only place written to is /tmp (mount a tmpfs/emptyDir there).
USER 10001:10001
WORKDIR /tmp

# /metrics, /healthz, /readyz (FORWARDER_METRICS_PORT).
EXPOSE 9102

# For plain Docker; Kubernetes ignores it and uses the Deployment's probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FORWARDER_METRICS_PORT', '9102'), timeout=4)"]

# Exec form: the forwarder is PID 1 and receives SIGTERM itself, drains, exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["forwarder"]
CMD ["run"]
