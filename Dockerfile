# syntax=docker/dockerfile:1
#
# The sidecar-injector image: one static binary (musl, no libc needed at run time) on distroless
# `static:nonroot`, run as UID/GID 65532, no shell. Build from the repository root:
#
#   docker build -t sidecar-injector:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/sidecar-injector:0.1.0 --push .
#
# Why musl + static rather than glibc on distroless/cc: the binary has no C dependency but ring's
# own C/assembly, so a static build costs nothing in features and leaves the final image with no
# libc to patch (distroless/static carries only CA certificates, tzdata and /etc/passwd's nonroot
# user). The cost is musl's allocator, slower than glibc's under many threads; the admission path
# allocates little per request, so this is not a bottleneck at webhook request rates.

# The toolchain of the workspace's rust-version (Cargo.toml: rust-version = "1.89", edition 2024);
# every locked dependency builds with it.
ARG RUST_VERSION=1.89.0
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# musl-gcc compiles ring's C and assembly for the musl target; the target's libc and crt objects
# come with rustup's rust-std. Not version-pinned: the Debian release (the base tag) pins it, and
# an exact package version disappears from the mirrors at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
# The host's architecture, so `buildx --platform linux/arm64` builds an aarch64 binary natively.
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=admission-kit-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=admission-kit-target,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
    && cargo build --release --locked -p sidecar-injector --target "$target" \
    && install -D -m 0755 "target/$target/release/sidecar-injector" /out/sidecar-injector \
    && /out/sidecar-injector --version

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sidecar-injector" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects sidecars (a drop-in for ExpediaGroup's kubernetes-sidecar-injector), built on admission-kit" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/admission-kit" \
      org.opencontainers.image.documentation="https://example.invalid/admission-kit/tree/main/deploy"
COPY --from=builder /out/sidecar-injector /sidecar-injector
# Numeric, so Kubernetes' runAsNonRoot can check it without an /etc/passwd lookup.
USER 65532:65532
# 8443: the webhook (HTTPS); 8080: /livez, /readyz and /metrics (HTTP).
EXPOSE 8443 8080
ENTRYPOINT ["/sidecar-injector", "serve"]
