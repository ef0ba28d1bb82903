# syntax=docker/dockerfile:1
# One Dockerfile, two runtime targets: `--target source-connector` and `--target sink-connector`.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependency layer: the manifests and empty crates only, so dependencies (librdkafka above all)
# are rebuilt only when Cargo.toml or Cargo.lock change, not on every source change.
COPY Cargo.toml Cargo.lock ./
COPY schemas/Cargo.toml schemas/
COPY plumbing/Cargo.toml plumbing/
COPY source-connector/Cargo.toml source-connector/
COPY sink-connector/Cargo.toml sink-connector/
# The benchmarks are a workspace member the images never build: their manifest and an empty
# crate only, as cargo needs every member to exist.
COPY bench/Cargo.toml bench/
# Every target a manifest names must exist, or cargo refuses the whole workspace (the stand-in's
# [[bin]] too); plumbing's tests/stack_consistency.rs runs this step against the manifests.
RUN for crate in schemas plumbing source-connector sink-connector bench; do \
      mkdir -p $crate/src && touch $crate/src/lib.rs; done \
 && echo 'fn main() {}' > source-connector/src/main.rs \
 && echo 'fn main() {}' > sink-connector/src/main.rs \
 && mkdir -p source-connector/src/bin \
 && echo 'fn main() {}' > source-connector/src/bin/youtube-standin.rs
RUN cargo build --release --locked -p source-connector -p sink-connector
# The sources: only the workspace's own crates are rebuilt.
COPY schemas schemas
COPY plumbing plumbing
COPY source-connector source-connector
COPY sink-connector sink-connector
COPY migrations migrations
RUN touch schemas/src/lib.rs plumbing/src/lib.rs source-connector/src/*.rs sink-connector/src/*.rs \
 && cargo build --release --locked -p source-connector -p sink-connector

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home connector
USER connector

FROM runtime AS source-connector
COPY --from=build /src/target/release/source-connector /usr/local/bin/source-connector
ENV HTTP_ADDR=0.0.0.0:9101
EXPOSE 9101
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9101/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/source-connector"]

FROM runtime AS sink-connector
COPY --from=build /src/target/release/sink-connector /usr/local/bin/sink-connector
ENV HTTP_ADDR=0.0.0.0:9102
EXPOSE 9102
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9102/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/sink-connector"]
