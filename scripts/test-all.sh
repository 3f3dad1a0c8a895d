#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script) and as a developer runs it before
# pushing. Installs what it needs that a fresh machine may lack; needs only the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

# The TLS tests use the openssl CLI as an independent TLS client (TLS 1.1 must be refused).
if ! command -v openssl >/dev/null 2>&1; then
  echo "== installing openssl (Debian package)"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

echo "== rustfmt"
cargo fmt --all --check
echo "== clippy (pedantic, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== tests (unit, property tests at >= 1000 cases each, TLS round trips, SIGTERM, examples, doctests)"
cargo test --workspace --all-features --locked
