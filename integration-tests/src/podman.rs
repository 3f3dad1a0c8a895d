//! Podman's Docker-compatible API for the `testcontainers` tests: `podman system service` on a
//! socket of the test's own, started and stopped here, with the project's `containers.conf`.
//!
//! testcontainers finds its engine through `DOCKER_HOST`, read from the environment. A test cannot
//! set it for itself (changing the environment of a running multi-threaded process is unsound), so
//! [`run_under_service`] starts the service and runs the test again in a child process of the same
//! test binary with `DOCKER_HOST` pointing at it; the child runs the test's body.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::images::containers_conf;

/// Set in the child process that runs a test's body under the service.
const CHILD: &str = "ADMISSION_KIT_UNDER_PODMAN_SERVICE";

/// A running `podman system service`; dropping it stops the service.
#[derive(Debug)]
pub struct PodmanService {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    /// Starts the service and waits until its API answers `/_ping` (up to 30 s).
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("admission-kit-podman-").tempdir()?;
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start `podman system service` (apt-get install podman runc)")?;
        let mut service = Self { child, socket, _dir: dir };
        let started = Instant::now();
        loop {
            if let Some(status) = service.child.try_wait()? {
                bail!("podman system service exited at start ({status})");
            }
            let ping = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--unix-socket"])
                .arg(&service.socket)
                .arg("http://podman/_ping")
                .status()
                .is_ok_and(|s| s.success());
            if ping {
                return Ok(service);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("podman system service did not answer on {} within 30 s", service.socket.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `DOCKER_HOST` for this service.
    #[must_use]
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the test process: starts a podman service, runs `test` (a test of this test binary, by its
/// exact name) in a child process with `DOCKER_HOST` set to the service, fails if the child
/// failed, and returns `false`. In that child: returns `true`, and the caller runs the test's body.
pub fn run_under_service(test: &str) -> anyhow::Result<bool> {
    if std::env::var_os(CHILD).is_some() {
        return Ok(true);
    }
    let service = PodmanService::start()?;
    let output = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("DOCKER_HOST", service.docker_host())
        // Ryuk, testcontainers' reaper, is an image from a registry: containers are removed by
        // their handles' Drop instead.
        .env("TESTCONTAINERS_RYUK_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {test} under the podman service"))?;
    // Through the test harness's capture: shown when the test fails or with --nocapture.
    print!("{}", String::from_utf8_lossy(&output.stdout).replace("test result:", "child test result:"));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    drop(service);
    if !output.status.success() {
        bail!("{test} failed under the podman service ({})", output.status);
    }
    // A filter that matched nothing would pass silently: make sure the body ran.
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.contains("1 passed") {
        bail!("{test} did not run in the child process (its output: {stdout})");
    }
    Ok(false)
}
