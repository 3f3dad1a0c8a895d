//! Starting and stopping the control plane.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths of the three programs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `kubectl`, when found next to `kube-apiserver` (for people using the dev cluster).
    pub kubectl: Option<PathBuf>,
}

const NAMES: [(&str, &str); 3] = [
    ("etcd", "TEST_ASSET_ETCD"),
    ("kube-apiserver", "TEST_ASSET_KUBE_APISERVER"),
    ("kube-controller-manager", "TEST_ASSET_KUBE_CONTROLLER_MANAGER"),
];

impl Binaries {
    /// Finds (or builds) the binaries: `TEST_ASSET_*`, then `$KUBEBUILDER_ASSETS`, then the cache,
    /// else `build-control-plane.sh` (which fills the cache from the Go module proxy).
    pub fn locate() -> anyhow::Result<Self> {
        let mut found: Vec<Option<PathBuf>> = NAMES
            .iter()
            .map(|(name, var)| {
                std::env::var_os(var)
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("KUBEBUILDER_ASSETS").map(|d| PathBuf::from(d).join(name)))
                    .filter(|p| p.is_file())
            })
            .collect();
        if found.iter().any(Option::is_none) {
            let dir = build_or_cached()?;
            for (slot, (name, _)) in found.iter_mut().zip(NAMES) {
                if slot.is_none() {
                    *slot = Some(dir.join(name));
                }
            }
        }
        let mut it = found.into_iter().map(std::option::Option::unwrap_or_default);
        let (etcd, kube_apiserver, kube_controller_manager) =
            (it.next().unwrap_or_default(), it.next().unwrap_or_default(), it.next().unwrap_or_default());
        for p in [&etcd, &kube_apiserver, &kube_controller_manager] {
            if !p.is_file() {
                bail!("control-plane binary {} does not exist", p.display());
            }
        }
        let kubectl = kube_apiserver.parent().map(|d| d.join("kubectl")).filter(|p| p.is_file());
        Ok(Self { etcd, kube_apiserver, kube_controller_manager, kubectl })
    }
}

/// Runs `build-control-plane.sh`, which prints the cache directory on its last line (and returns at
/// once when the binaries are cached).
fn build_or_cached() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-control-plane.sh");
    eprintln!(
        "integration-tests: locating control-plane binaries with {} (a cold build takes about 6-8 minutes on 2 cores)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run build-control-plane.sh")?;
    if !out.status.success() {
        bail!("build-control-plane.sh failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().context("build-control-plane.sh printed no directory")?;
    Ok(PathBuf::from(dir.trim()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started control plane. Dropping it stops every process (and prints their logs if the thread
/// is panicking, i.e. a test failed).
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    processes: Vec<(String, Child)>,
    /// How the API server was started, to start it again the same way ([`Self::restart_api_server`]).
    api_server_command: (PathBuf, Vec<String>),
    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub server: String,
    /// The admin kubeconfig's path.
    pub kubeconfig: PathBuf,
    /// The PEM of the CA that signed the API server's certificate (and its clients').
    pub ca_pem: String,
}

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "integration-tests CA");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Ok(Self { ca_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A leaf certificate and key (PEM) for `names`, with `common_name` and `organization`.
    fn leaf(
        &self,
        names: &[&str],
        common_name: &str,
        organization: Option<&str>,
        client: bool,
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> anyhow::Result<Child> {
    // Appended to: a restarted process adds to its log.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {}", program.display()))
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API server is
    /// ready (up to 3 minutes: a cold start on 2 cores takes tens of seconds).
    pub fn start(binaries: &Binaries) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("admission-kit-cp-").tempdir()?;
        let path = dir.path().to_owned();
        let pki = Pki::new()?;
        let ca = write(&path, "ca.crt", &pki.ca_pem)?;
        let (serving_cert, serving_key) = pki.leaf(&["127.0.0.1", "localhost"], "kube-apiserver", None, false)?;
        let (admin_cert, admin_key) = pki.leaf(&[], "admin", Some("system:masters"), true)?;
        let (cm_cert, cm_key) = pki.leaf(&[], "system:kube-controller-manager", None, true)?;
        let sa = KeyPair::generate()?;
        let serving_cert = write(&path, "apiserver.crt", &serving_cert)?;
        let serving_key = write(&path, "apiserver.key", &serving_key)?;
        let sa_key = write(&path, "sa.key", &sa.serialize_pem())?;
        let sa_pub = write(&path, "sa.pub", &sa.public_key_pem())?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let server = format!("https://127.0.0.1:{api_port}");
        let mut plane = Self {
            dir,
            processes: Vec::new(),
            api_server_command: (binaries.kube_apiserver.clone(), Vec::new()),
            server: server.clone(),
            kubeconfig: path.join("admin.kubeconfig"),
            ca_pem: pki.ca_pem.clone(),
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = spawn(
            &path,
            "etcd",
            &binaries.etcd,
            &[
                format!("--data-dir={}", path.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync=true".to_owned(),
            ],
        )?;
        plane.processes.push(("etcd".to_owned(), etcd));
        plane.wait_http("etcd", &format!("{etcd_url}/health"), Duration::from_secs(30))?;

        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            // The `kubernetes` Service's endpoints cannot be a loopback address; nothing here needs them.
            "--endpoint-reconciler-type=none".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            format!("--client-ca-file={}", ca.display()),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
        ];
        let apiserver = spawn(&path, "kube-apiserver", &binaries.kube_apiserver, &apiserver_args)?;
        plane.api_server_command.1 = apiserver_args;
        plane.processes.push(("kube-apiserver".to_owned(), apiserver));
        plane.write_kubeconfig(&admin_cert, &admin_key)?;
        let cm_kubeconfig = plane.kubeconfig_for(&path, "controller-manager.kubeconfig", &cm_cert, &cm_key)?;
        plane.wait_ready(Duration::from_secs(180))?;

        let controller_manager = spawn(
            &path,
            "kube-controller-manager",
            &binaries.kube_controller_manager,
            &[
                format!("--kubeconfig={}", cm_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", cm_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", cm_kubeconfig.display()),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={}", free_port()?),
                "--leader-elect=false".to_owned(),
                "--use-service-account-credentials=true".to_owned(),
                format!("--service-account-private-key-file={}", sa_key.display()),
                format!("--root-ca-file={}", ca.display()),
                "--controllers=*".to_owned(),
            ],
        )?;
        plane.processes.push(("kube-controller-manager".to_owned(), controller_manager));
        Ok(plane)
    }

    fn api_server(&mut self) -> anyhow::Result<&mut Child> {
        self.processes
            .iter_mut()
            .find_map(|(name, child)| (name == "kube-apiserver").then_some(child))
            .context("the API server is not running")
    }

    fn signal_api_server(&mut self, signal: &str) -> anyhow::Result<()> {
        let pid = self.api_server()?.id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed ({status})");
        Ok(())
    }

    /// Freezes the API server (SIGSTOP): its port and connections stay open and nothing answers,
    /// as with a hung API server or a network that drops packets.
    pub fn pause_api_server(&mut self) -> anyhow::Result<()> {
        self.signal_api_server("-STOP")
    }

    /// Lets a paused API server run again (SIGCONT).
    pub fn resume_api_server(&mut self) -> anyhow::Result<()> {
        self.signal_api_server("-CONT")
    }

    /// Kills the API server (paused or not): connections to its port are refused until
    /// [`Self::restart_api_server`]. etcd and the controller manager keep running.
    pub fn kill_api_server(&mut self) -> anyhow::Result<()> {
        let child = self.api_server()?;
        child.kill()?;
        child.wait()?;
        self.processes.retain(|(name, _)| name != "kube-apiserver");
        Ok(())
    }

    /// Starts the API server again as it was first started: same port, certificates and etcd (so
    /// the same objects), and waits until it is ready.
    pub fn restart_api_server(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.api_server().is_err(), "the API server is still running; kill it first");
        let (program, args) = self.api_server_command.clone();
        let apiserver = spawn(self.dir.path(), "kube-apiserver", &program, &args)?;
        self.processes.push(("kube-apiserver".to_owned(), apiserver));
        self.wait_ready(Duration::from_secs(180))
    }

    /// The directory holding certificates, kubeconfigs and logs.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn kubeconfig_for(&self, dir: &Path, name: &str, cert: &str, key: &str) -> anyhow::Result<PathBuf> {
        let b64 = |s: &str| -> String {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\ncurrent-context: local\n",
            self.server,
            b64(&self.ca_pem),
            b64(cert),
            b64(key)
        );
        write(dir, name, &text)
    }

    fn write_kubeconfig(&self, cert: &str, key: &str) -> anyhow::Result<()> {
        self.kubeconfig_for(self.dir.path(), "admin.kubeconfig", cert, key)?;
        Ok(())
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut exited = None;
        for (name, child) in &mut self.processes {
            if let Some(status) = child.try_wait()? {
                exited = Some((name.clone(), status));
                break;
            }
        }
        match exited {
            Some((name, status)) => bail!("{name} exited early ({status}); its log:\n{}", self.log_tail(&name)),
            None => Ok(()),
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait_http(&mut self, what: &str, url: &str, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            let ok = Command::new("curl").args(["-sf", "-o", "/dev/null", url]).status().is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("{what} not healthy after {limit:?}; its log:\n{}", self.log_tail(what));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let ca = self.dir.path().join("ca.crt");
        loop {
            self.check_alive()?;
            // /readyz is open to anonymous users by default (system:public-info-viewer).
            let code = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&ca)
                .arg(format!("{}/readyz", self.server))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if code == "200" {
                eprintln!("integration-tests: kube-apiserver ready after {:?}", started.elapsed());
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "kube-apiserver not ready after {limit:?} (last /readyz: {code}); its log:\n{}",
                    self.log_tail("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if failed {
            // Every process's log, including an API server killed by a test.
            for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
                eprintln!("---- {name} log (last 40 lines) ----\n{}", self.log_tail(name));
            }
        }
    }
}
