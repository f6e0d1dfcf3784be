# syntax=docker/dockerfile:1.7
#
# tickmesh container image: a release build of the `tickmesh` binary on a distroless
# runtime (glibc, CA certificates, no shell, no package manager), running as non-root.
#
#   docker build -t tickmesh:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/tickmesh:0.1.0 --push .
#
# scripts/deploy-check.sh builds it when a container engine answers (`docker info`).

ARG RUST_VERSION=1.95

# The dashboard's chart library (chart.js, pinned by gateway/dashboard/package-lock.json);
# gateway/build.rs embeds it in the binary, which serves it itself (no CDN).
FROM node:20-bookworm-slim AS dashboard
WORKDIR /dashboard
COPY gateway/dashboard/package.json gateway/dashboard/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Keep symbols (useful in profiles), drop DWARF: the image stays small.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never
COPY . .
COPY --from=dashboard /dashboard/node_modules gateway/dashboard/node_modules
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tickmesh \
 && install -D -m 0755 target/release/tickmesh /out/tickmesh \
 && /out/tickmesh --version

# Debian 12 base, as the build stage: the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tickmesh" \
      org.opencontainers.image.description="Multi-region market-data fan-out: ingest, QUIC mesh replication, pinned-core WebSocket gateways" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tickmesh /usr/local/bin/tickmesh
# distroless "nonroot": uid/gid 65532, as the Kubernetes manifests expect.
USER 65532:65532
# gateway.listen (HTTP + WebSocket) and mesh.listen (QUIC).
EXPOSE 8080/tcp 4433/udp
# Liveness is checked by the orchestrator over HTTP (/healthz): the image has no shell
# or HTTP client for a Docker HEALTHCHECK, and the binary has no probe command yet.
ENTRYPOINT ["/usr/local/bin/tickmesh"]
CMD ["node", "--config", "/etc/tickmesh/config/node.toml"]
