//! The container images the tests run, built here by `scripts/build-image.sh` (podman, no registry):
//! the shipped sidecar-injector image, a busybox image for test pods and sidecars, and the test
//! node's pod sandbox (`pause`) image. Each is in podman's local storage under its reference and
//! written as an OCI archive that containerd imports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, bail};

/// A built image: where it is in podman's storage, and its OCI archive.
#[derive(Clone, Debug)]
pub struct Image {
    /// The reference, e.g. `localhost/sidecar-injector:0.1.0`.
    pub reference: String,
    /// The OCI archive (`podman save --format oci-archive`).
    pub archive: PathBuf,
}

impl Image {
    /// The reference's repository (before the last `:`).
    #[must_use]
    pub fn repository(&self) -> &str {
        self.reference.rsplit_once(':').map_or(self.reference.as_str(), |(repo, _)| repo)
    }

    /// The reference's tag (after the last `:`).
    #[must_use]
    pub fn tag(&self) -> &str {
        self.reference.rsplit_once(':').map_or("latest", |(_, tag)| tag)
    }
}

/// The repository's root.
#[must_use]
pub fn repository_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or_else(|| Path::new("."))
}

/// The project's cache directory (`$ADMISSION_KIT_CACHE`, else `~/.cache/admission-kit`).
#[must_use]
pub fn cache_root() -> PathBuf {
    std::env::var_os("ADMISSION_KIT_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/admission-kit"),
        PathBuf::from,
    )
}

/// Removes from `command` the variables cargo sets for the test process itself (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_*`, `OUT_DIR`, …), for a test that runs a build. Some dependencies' build scripts
/// (ring's) ask to be rerun when those change; a build run with the test's values would then
/// rebuild them and everything above them (rustls, kube, …), and so would the next build from a
/// shell, in every run.
pub fn without_cargo_test_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_for_the_test = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"].iter().any(|p| name.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name);
        if set_for_the_test {
            command.env_remove(name);
        }
    }
    command
}

/// The `CONTAINERS_CONF` the project's podman runs use (runc, explicit ulimits, host network):
/// the machine's own configuration is never edited.
#[must_use]
pub fn containers_conf() -> PathBuf {
    repository_root().join("scripts/podman/containers.conf")
}

fn build(what: &str) -> anyhow::Result<Image> {
    let script = repository_root().join("scripts/build-image.sh");
    eprintln!("integration-tests: building the {what} image ({} {what})", script.display());
    // The injector's static release build is cached beside the other release builds, so a warm
    // run only relinks it (the `release` profile: the shipped image is `dist`).
    let out = without_cargo_test_env(&mut Command::new("bash"))
        .arg(&script)
        .arg(what)
        .env("CARGO_TARGET_DIR", cache_root().join("release-target"))
        // Behaviour, not speed: the `release` profile's binary, without `dist`'s whole-program link.
        .env("IMAGE_PROFILE", "release")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {what} failed ({}); is podman installed (apt-get install podman runc busybox-static)?",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().context("build-image.sh printed nothing")?;
    let (reference, archive) =
        last.split_once(' ').context("build-image.sh's last line is not '<reference> <archive>'")?;
    Ok(Image { reference: reference.to_owned(), archive: PathBuf::from(archive) })
}

fn once(cell: &'static OnceLock<Result<Image, String>>, what: &str) -> anyhow::Result<Image> {
    cell.get_or_init(|| build(what).map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

/// The shipped sidecar-injector image, built from this checkout (once per test process).
pub fn injector() -> anyhow::Result<Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    once(&CELL, "injector")
}

/// The busybox image for test pods and sidecars (`sh`, `env`, `sleep`, `wget`, `httpd`, …), user 65532.
pub fn busybox() -> anyhow::Result<Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    once(&CELL, "busybox")
}

/// The pod sandbox image for the test node's containerd.
pub fn pause() -> anyhow::Result<Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    once(&CELL, "pause")
}
