# syntax=docker/dockerfile:1
#
# The sidecar-injector image: one static binary on an empty base, run as UID/GID 65532, no shell.
# The final stage is the shipped image; where its binary comes from is chosen with BINARY:
#
#   BINARY=compile (default): compiled here inside a Rust image, for machines that can pull one.
#       docker build -t sidecar-injector:0.1.0 .
#       docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/sidecar-injector:0.1.0 --push .
#
#   BINARY=prebuilt: the binary the project built on the host, copied in (goreleaser's and ko's
#       convention; no base image to pull, so it works without a registry and without Docker):
#       bash scripts/build-image.sh          # cargo build + podman build + an OCI archive
#
# Both give the same layout: /sidecar-injector, numeric user 65532, entrypoint `serve`, ports
# 8443 and 8080, the same labels. Needs BuildKit (or podman/buildah), which build only the stages
# the chosen BINARY uses.
#
# Why glibc with `crt-static` rather than musl: the binary has no C dependency but ring's and
# mimalloc's own C, so a static build costs nothing in features and leaves the image with no libc
# to patch; the musl target is not installable where the image is built without network beyond the
# package registries, while glibc's static archives come with every C toolchain (libc6-dev). The
# one static-glibc caveat, name lookups through NSS, does not apply: the injector binds IP
# addresses and reaches the API server by the IP in KUBERNETES_SERVICE_HOST.

ARG BINARY=compile
# The toolchain of the workspace's rust-version (Cargo.toml: rust-version = "1.89", edition 2024);
# every locked dependency builds with it.
ARG RUST_VERSION=1.89.0
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS compile
WORKDIR /src
COPY . .
# --target makes RUSTFLAGS apply to the binary only (build scripts and proc macros stay dynamic).
RUN --mount=type=cache,id=admission-kit-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=admission-kit-target,target=/src/target \
    target="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --profile dist --locked -p sidecar-injector --target "$target" \
    && install -D -m 0755 "target/$target/dist/sidecar-injector" /out/sidecar-injector \
    && /out/sidecar-injector --version

# The build context holds just the binary (scripts/build-image.sh makes it).
FROM scratch AS prebuilt
COPY sidecar-injector /out/sidecar-injector

FROM ${BINARY} AS binary

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sidecar-injector" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects sidecars (a drop-in for ExpediaGroup's kubernetes-sidecar-injector), built on admission-kit" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binary /out/sidecar-injector /sidecar-injector
# Numeric, so Kubernetes' runAsNonRoot can check it without an /etc/passwd lookup.
USER 65532:65532
# 8443: the webhook (HTTPS); 8080: /livez, /readyz and /metrics (HTTP).
EXPOSE 8443 8080
ENTRYPOINT ["/sidecar-injector", "serve"]
