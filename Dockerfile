# syntax=docker/dockerfile:1.7
#
# agentmark-gw container images (see docs/deploy.md, "Container image").
#
#   docker build -t agentmark-gw:0.1.0 .                         # the gateway (the default, last stage)
#   docker build --target runner -t agentmark-gw-runner:0.1.0 .  # the reference runner (AgentMark + OpenAI)
#
# Stage 1 builds the wheel with maturin (Rust extension `agentmark_gw._core`
# included) and collects wheels of every dependency; the runtime stages
# install from those wheels only, with no compiler, no Rust and no source tree.
# No secret is baked in: the webhook secret, the alert outbox URL and model
# keys come from the environment at run time.

ARG PYTHON_VERSION=3.12
ARG DEBIAN_RELEASE=trixie
ARG RUST_VERSION=1.95
ARG MATURIN_VERSION=1.16.0

# The Rust toolchain, taken whole from the official image (no curl | sh).
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS rust

# --- stage 1: build ------------------------------------------------------------
# The full Python image: it has the C compiler and linker Rust needs.
FROM python:${PYTHON_VERSION}-${DEBIAN_RELEASE} AS builder
ARG MATURIN_VERSION
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
RUN pip install "maturin==${MATURIN_VERSION}"

WORKDIR /src
# The Cargo workspace (its members examples/runner-rust and
# benchmarks/trivial-runner-rs must be present for Cargo to read the
# workspace, though only rust/ is compiled), then the package.
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust/Cargo.toml rust/Cargo.toml
COPY rust/src rust/src
COPY examples/runner-rust examples/runner-rust
COPY benchmarks/trivial-runner-rs benchmarks/trivial-runner-rs
COPY python python
# --locked: build exactly the crates in Cargo.lock. Cargo's registry and
# target/ are cache mounts, so rebuilds after a Python-only change are quick.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    maturin build --release --locked --out /dist
# The project's wheel and a wheel of every dependency, for an offline install below.
RUN pip wheel --wheel-dir /wheels /dist/agentmark_gw-*.whl

# --- runtime base ----------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/agentmark-gw/bin:$PATH \
    HOME=/var/lib/agentmark-gw \
    XDG_STATE_HOME=/var/lib/agentmark-gw
# A fixed, numeric non-root user, so Kubernetes' runAsNonRoot can check it.
# Its home holds the default SQLite alert outbox when no PostgreSQL URL is set.
RUN groupadd --system --gid 10001 agentmark \
    && useradd --system --uid 10001 --gid agentmark --home-dir /var/lib/agentmark-gw \
        --no-create-home --shell /usr/sbin/nologin agentmark \
    && install -d -o agentmark -g agentmark -m 0750 /var/lib/agentmark-gw \
    && install -d -m 0755 /srv/agentmark
# Only wheels reach this image, through a bind mount (no layer keeps them).
# Importing _core proves the Rust extension, not its pure-Python twin, is installed.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/agentmark-gw \
    && /opt/agentmark-gw/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/agentmark_gw-*.whl \
    && /opt/agentmark-gw/bin/python -c "import agentmark_gw._core" \
    && agentmark-gw --help >/dev/null
WORKDIR /var/lib/agentmark-gw
USER 10001:10001
ENTRYPOINT ["agentmark-gw"]

# --- the reference runner ----------------------------------------------------------
# AgentMark's runtime with the OpenAI executor over gRPC. Needs OPENAI_API_KEY
# (and OPENAI_BASE_URL for another OpenAI-compatible server); datasets are read
# from /srv/agentmark (mount them there).
FROM runtime AS runner
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=3).status; raise SystemExit(s != h.HealthCheckResponse.SERVING)"]
CMD ["runner", "--listen", "0.0.0.0:50051", "--data-dir", "/srv/agentmark"]

# --- the gateway (default target) ----------------------------------------------------
# Listens on every interface of the container (the built-in default,
# 127.0.0.1:8080, would be unreachable from outside it). Every other setting
# comes from AGENTMARK_GW_* variables or `--config FILE` (docs/configuration.md);
# `serve` refuses to start without AGENTMARK_WEBHOOK_SECRET.
FROM runtime AS gateway
ENV AGENTMARK_GW_BIND=0.0.0.0:8080
EXPOSE 8080
# Liveness on /healthz, at the port AGENTMARK_GW_BIND names (plain HTTP: with
# TLS served by the gateway itself, rely on the orchestrator's probes instead).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('AGENTMARK_GW_BIND', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3)"]
CMD ["serve"]
