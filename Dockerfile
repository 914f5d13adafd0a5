# syntax=docker/dockerfile:1
# The compute-worker image: built in a Rust image, run from a small Debian one that holds only
# the binary, CA certificates and tini, as a non-root user.
#
#   docker build -t compute-worker .
#   docker run --rm -e TEMPORAL_ADDRESS=host.docker.internal:7233 compute-worker
#
# Every setting is a flag or its environment variable (`compute-worker run --help`); the
# defaults below keep the SQLite store and the local provider's state in /home/compute/data.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# The registry and the target directory are build caches (BuildKit): a rebuild after a source
# change recompiles only the workspace. The binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin compute-worker \
    && install -D -m 0755 target/release/compute-worker /out/compute-worker \
    && strip /out/compute-worker

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: TLS to Temporal Cloud, AWS and Kubernetes API servers. tini runs as PID 1:
# it forwards SIGTERM to the worker (graceful shutdown) and reaps the orphans of the local
# provider's workloads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 compute \
    && useradd --system --uid 10001 --gid compute --home-dir /home/compute --create-home compute \
    && install -d -o compute -g compute /home/compute/data
COPY --from=builder /out/compute-worker /usr/local/bin/compute-worker
ENV COMPUTE_DATABASE_URL=sqlite:///home/compute/data/compute-worker.db \
    COMPUTE_LOCAL_STATE_DIR=/home/compute/data/local \
    COMPUTE_LOG_FORMAT=json \
    RUST_LOG=info
VOLUME ["/home/compute/data"]
WORKDIR /home/compute
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/compute-worker"]
CMD ["run"]
