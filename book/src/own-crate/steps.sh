# ANCHOR: new
# A crate of your own, anywhere outside the admission-kit checkout.
cargo new my-webhook
cd my-webhook
# ANCHOR_END: new
# ANCHOR: dependencies
# admission-kit from your checkout (set ADMISSION_KIT to its path), with the `testing` kit for the
# tests; k8s-openapi at the version admission-kit is built with, and the newest Kubernetes it knows.
cargo add admission-kit --path "$ADMISSION_KIT/admission-kit"
cargo add admission-kit --dev --path "$ADMISSION_KIT/admission-kit" --features testing
cargo add k8s-openapi@0.29 --features latest
cargo add tokio --features macros,rt-multi-thread
cargo add anyhow
# ANCHOR_END: dependencies
# ANCHOR: check
# Write src/lib.rs and src/main.rs as below, then build everything (library, binary, tests) with
# warnings denied, and run the tests:
RUSTFLAGS="-D warnings" cargo test
# ANCHOR_END: check
