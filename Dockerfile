# Multi-stage build of the worker: the runtime image holds only the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin compute-worker && strip target/release/compute-worker

FROM debian:bookworm-slim
RUN useradd --system --create-home compute && mkdir -p /home/compute/data && chown compute /home/compute/data
COPY --from=build /src/target/release/compute-worker /usr/local/bin/compute-worker
USER compute
WORKDIR /home/compute
ENTRYPOINT ["compute-worker"]
CMD ["run"]
