//! The servers under test as child processes: started pinned to one core with `taskset`, probed
//! for readiness, measured through `/proc/<pid>`, and killed.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;

use crate::client::{Tls, post_once};

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Kind {
    /// `sidecar-injector serve` (this project).
    Ours,
    /// The controller-runtime baseline (`bench/go-baseline`).
    Go,
}

impl Kind {
    /// The name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "sidecar-injector",
            Self::Go => "go-baseline",
        }
    }
}

/// How to start one server.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Which implementation.
    pub kind: Kind,
    /// Its binary.
    pub binary: PathBuf,
    /// A directory holding `tls.crt` and `tls.key`.
    pub cert_dir: PathBuf,
    /// The CPU the server is pinned to.
    pub core: usize,
    /// Where its stdout and stderr go.
    pub log_dir: PathBuf,
    /// The niceness it runs at (0: as inherited).
    pub nice: i32,
    /// Run under `SCHED_RR` at this real-time priority (`chrt -r`), so that a waking server
    /// preempts other processes on its core at once instead of at their next scheduler tick.
    pub realtime: Option<u8>,
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Which implementation.
    pub kind: Kind,
    child: Child,
    /// The server's pid (`taskset` execs it, so it is the child's).
    pub pid: u32,
    /// Where it serves reviews (HTTPS).
    pub webhook: SocketAddr,
    /// Its plain-HTTP admin address (ours only).
    pub admin: Option<SocketAddr>,
    /// When it was spawned.
    pub spawned: Instant,
    log: PathBuf,
}

/// The arguments that make sidecar-injector serve as the benchmarks measure it: reviews on
/// `webhook` with the certificate in `cert_dir` (`tls.crt`, `tls.key`), admin on `admin`.
#[must_use]
pub fn ours_serve_args(webhook: SocketAddr, admin: SocketAddr, cert_dir: &Path) -> Vec<String> {
    let set = |key: &str, value: String| ["--set".to_owned(), format!("{key}={value}")];
    let mut args = vec!["serve".to_owned()];
    args.extend(set("server.namespaceCache", "never".to_owned()));
    // The corpus's pods set the catalog's own `haystack_env`, as the Expedia injector lets them
    // (the Go baseline too): unlocked, so both do the same work.
    args.extend(set("annotationEnv.locked", "[]".to_owned()));
    args.extend(set("server.webhookAddr", webhook.to_string()));
    args.extend(set("server.adminAddr", admin.to_string()));
    args.extend(set("server.tlsCertFile", cert_dir.join("tls.crt").display().to_string()));
    args.extend(set("server.tlsKeyFile", cert_dir.join("tls.key").display().to_string()));
    args
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Spec {
    /// Spawns the server. Returns at once; see [`Running::wait_ready`].
    pub fn spawn(&self, run: usize) -> anyhow::Result<Running> {
        self.spawn_with(run, &[], "warn")
    }

    /// Spawns the server with `extra` arguments after the usual ones (ours: more `--set key=value`
    /// or `--config FILE`; a later `--set` of a key wins) and `RUST_LOG` at `log_level`.
    pub fn spawn_with(&self, run: usize, extra: &[String], log_level: &str) -> anyhow::Result<Running> {
        let webhook = free_port()?;
        let log = self.log_dir.join(format!("{}-{run}.log", self.kind.name()));
        let out = std::fs::File::create(&log)?;
        // `chrt`, `nice` and `taskset` each exec the next, so the child's pid is the server's, and
        // every thread the server starts inherits all three.
        let mut command = Command::new("chrt");
        match self.realtime {
            Some(priority) => command.arg("-r").arg(priority.to_string()),
            None => command.arg("-o").arg("0"),
        };
        command
            .arg("nice")
            .arg("-n")
            .arg(self.nice.to_string())
            .arg("taskset")
            .arg("-c")
            .arg(self.core.to_string())
            .arg(&self.binary);
        let admin = match self.kind {
            Kind::Ours => {
                let admin = free_port()?;
                command.args(ours_serve_args(webhook, admin, &self.cert_dir)).args(extra).env("RUST_LOG", log_level);
                Some(admin)
            }
            Kind::Go => {
                command
                    .arg("--host")
                    .arg("127.0.0.1")
                    .arg("--port")
                    .arg(webhook.port().to_string())
                    .arg("--cert-dir")
                    .arg(&self.cert_dir);
                None
            }
        };
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let spawned = Instant::now();
        let child = command.spawn().with_context(|| format!("failed to start {}", self.binary.display()))?;
        let pid = child.id();
        Ok(Running { kind: self.kind, child, pid, webhook, admin, spawned, log })
    }
}

impl Running {
    /// Polls `/readyz` until it answers 200 (ours); the time from spawn. `None` for servers with
    /// no readiness endpoint.
    pub fn wait_readyz(&mut self, limit: Duration) -> anyhow::Result<Option<Duration>> {
        let Some(admin) = self.admin else { return Ok(None) };
        loop {
            if readyz(admin) {
                return Ok(Some(self.spawned.elapsed()));
            }
            self.check_alive()?;
            if self.spawned.elapsed() > limit {
                bail!("{} was not ready after {limit:?}; log: {}", self.kind.name(), self.log_tail());
            }
            std::thread::sleep(Duration::from_micros(250));
        }
    }

    /// Posts `body` on new connections until one is admitted; the time from spawn.
    pub async fn wait_first_review(&mut self, tls: &Tls, body: Bytes, limit: Duration) -> anyhow::Result<Duration> {
        loop {
            if let Ok(reply) = post_once(self.webhook, tls, body.clone(), Duration::from_secs(5)).await
                && reply.is_admitted()
            {
                return Ok(self.spawned.elapsed());
            }
            self.check_alive()?;
            if self.spawned.elapsed() > limit {
                bail!("{} never answered a review within {limit:?}; log: {}", self.kind.name(), self.log_tail());
            }
            std::thread::sleep(Duration::from_micros(250));
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); log: {}", self.kind.name(), self.log_tail());
        }
        Ok(())
    }

    /// Sends `signal` (a name such as `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status =
            Command::new("kill").args(["-s", signal, &self.pid.to_string()]).status().context("failed to run kill")?;
        anyhow::ensure!(status.success(), "kill -s {signal} {} failed: {status}", self.pid);
        Ok(())
    }

    /// The exit status, if the server has exited (reaps it).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The file holding the server's stdout and stderr.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the server's log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// CPU time used so far (user + system), from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time(self.pid)
    }

    /// Resident memory now and its peak (`VmRSS`, `VmHWM`), KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
            Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The CPUs the server may run on, as the kernel reports them.
    pub fn allowed_cpus(&self) -> anyhow::Result<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        Ok(status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default())
    }

    /// Kills the server (SIGKILL: a drain would only add its delay to the run) and reaps it.
    /// Returns the CPU time it used in all.
    #[must_use = "the CPU time is the server's total; ignore it with `let _ =`"]
    pub fn stop(mut self) -> Duration {
        let used = self.cpu_time().unwrap_or_default();
        let _ = self.child.kill();
        let _ = self.child.wait();
        used
    }
}

/// Whether the admin server at `admin` answers `GET /readyz` with 200.
#[must_use]
pub fn readyz(admin: SocketAddr) -> bool {
    get_status(admin, "/readyz", Duration::from_millis(500)).is_ok_and(|status| status == 200)
}

/// `GET path` over plain HTTP/1.1 on a connection of its own; the answer's status, read within
/// `timeout` (the connection itself, on loopback, within 100 ms).
pub fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(100))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head)
        .ok()
        .and_then(|head| head.strip_prefix("HTTP/1.1 "))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: not an HTTP/1.1 answer: {:?}", String::from_utf8_lossy(&head)))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// User + system CPU time of a process, from `/proc/<pid>/stat` (fields 14 and 15).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    let ticks = clock_ticks();
    Ok(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// CPU time of this process's children that have ended and been waited for (`cutime` + `cstime`):
/// what a load generator run as a child used, read before and after it.
pub fn children_cpu_time() -> anyhow::Result<Duration> {
    own_stat_cpu(13, "cutime")
}

/// CPU time (user + system) the harness process itself has used: for what its own client costs.
pub fn self_cpu_time() -> anyhow::Result<Duration> {
    own_stat_cpu(11, "utime")
}

/// The sum of the field at `index` (after the command name) of `/proc/self/stat` and the next one.
fn own_stat_cpu(index: usize, name: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: u64 = fields.get(index).with_context(|| format!("no {name}"))?.parse()?;
    let system: u64 = fields.get(index + 1).with_context(|| format!("no {name}'s system time"))?.parse()?;
    Ok(Duration::from_micros((user + system) * 1_000_000 / clock_ticks()))
}

/// Sets the niceness of the calling thread (threads started later inherit it; call before
/// starting any) and of its session's scheduling autogroup. With `sched_autogroup_enabled` (the
/// default on desktop-style kernels, and on this machine) the CPU is first shared between sessions'
/// autogroups, whatever each process's own niceness: only the autogroup's niceness keeps other
/// sessions' work off the pinned cores.
///
/// Returns the autogroup's previous niceness, for [`restore_autogroup`]: the autogroup is the
/// whole session's, and outlives this process.
pub fn renice_self(nice: i32) -> anyhow::Result<Option<i32>> {
    let mut previous = None;
    if let Ok(text) = std::fs::read_to_string("/proc/self/autogroup") {
        // "/autogroup-67 nice 0"
        previous = text.split_whitespace().last().and_then(|n| n.parse().ok());
        std::fs::write("/proc/self/autogroup", nice.to_string())
            .context("failed to set the scheduling autogroup's niceness (/proc/self/autogroup)")?;
    }
    let status = Command::new("renice")
        .arg("-n")
        .arg(nice.to_string())
        .arg("-p")
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .context("failed to run renice (util-linux)")?;
    anyhow::ensure!(status.success(), "renice failed: {status}");
    Ok(previous)
}

/// Gives the session's autogroup back the niceness [`renice_self`] found.
pub fn restore_autogroup(previous: Option<i32>) {
    if let Some(nice) = previous {
        let _ = std::fs::write("/proc/self/autogroup", nice.to_string());
    }
}

/// Pins and prioritises the harness as `bench run` does, and undoes the autogroup part on drop.
#[derive(Debug)]
pub struct Priority {
    /// The niceness in force (0 when it could not be set).
    pub nice: i32,
    previous: Option<i32>,
}

impl Priority {
    /// Pins the harness to `core`, sets `nice` (see [`renice_self`]) and, with `realtime`, puts
    /// it under `SCHED_RR` at that priority (threads started later inherit all of it; so would
    /// child processes: start heavy ones such as builds before this, or through `chrt -o 0`). A
    /// failure to renice or to go real-time is a warning, not an error.
    pub fn take(core: usize, nice: i32, realtime: Option<u8>) -> anyhow::Result<Self> {
        pin_self(core)?;
        if let Some(priority) = realtime {
            let ok = Command::new("chrt")
                .args(["-a", "-r", "-p", &priority.to_string(), &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "bench: WARNING: could not switch the load generator to SCHED_RR; it runs under the normal scheduler"
                );
            }
        }
        if nice == 0 {
            return Ok(Self { nice, previous: None });
        }
        match renice_self(nice) {
            Ok(previous) => Ok(Self { nice, previous }),
            Err(e) => {
                eprintln!("bench: WARNING: could not renice to {nice} ({e:#}); running at the inherited priority");
                Ok(Self { nice: 0, previous: None })
            }
        }
    }
}

impl Drop for Priority {
    fn drop(&mut self) {
        restore_autogroup(self.previous);
    }
}

/// Busy and total CPU time of the whole machine so far, from `/proc/stat`'s `cpu` line.
pub fn machine_cpu() -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    anyhow::ensure!(v.len() >= 8, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    let total = busy + v[3] + v[4];
    let ticks = clock_ticks();
    Ok((Duration::from_micros(busy * 1_000_000 / ticks), Duration::from_micros(total * 1_000_000 / ticks)))
}

/// Pins the calling process (all its threads; later threads inherit it) to `core`.
pub fn pin_self(core: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .arg("-a")
        .arg("-cp")
        .arg(core.to_string())
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .context("failed to run taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed: {status}");
    Ok(())
}

/// Writes a freshly generated CA and a serving certificate for `localhost`/`127.0.0.1` (rcgen,
/// through admission-kit) into `dir` as `tls.crt`/`tls.key`; returns the CA (PEM).
pub fn write_certificates(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let generated = admission_kit::tls::GeneratedCert::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    std::fs::write(dir.join("tls.crt"), &generated.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &generated.key_pem)?;
    std::fs::write(dir.join("ca.crt"), &generated.ca_pem)?;
    Ok(generated.ca_pem)
}
