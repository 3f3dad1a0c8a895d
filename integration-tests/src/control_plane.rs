//! Starting and stopping the control plane.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths of the programs: the control plane's, and the node's (see [`crate::node`]).
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `kube-scheduler`.
    pub kube_scheduler: PathBuf,
    /// `kubelet`.
    pub kubelet: PathBuf,
    /// `kube-proxy`.
    pub kube_proxy: PathBuf,
    /// `kubectl`, when found next to `kube-apiserver` (for people using the dev cluster).
    pub kubectl: Option<PathBuf>,
}

const NAMES: [(&str, &str); 6] = [
    ("etcd", "TEST_ASSET_ETCD"),
    ("kube-apiserver", "TEST_ASSET_KUBE_APISERVER"),
    ("kube-controller-manager", "TEST_ASSET_KUBE_CONTROLLER_MANAGER"),
    ("kube-scheduler", "TEST_ASSET_KUBE_SCHEDULER"),
    ("kubelet", "TEST_ASSET_KUBELET"),
    ("kube-proxy", "TEST_ASSET_KUBE_PROXY"),
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
        let found: Vec<PathBuf> = found.into_iter().map(Option::unwrap_or_default).collect();
        for p in &found {
            if !p.is_file() {
                bail!("control-plane binary {} does not exist", p.display());
            }
        }
        let [etcd, kube_apiserver, kube_controller_manager, kube_scheduler, kubelet, kube_proxy]: [PathBuf; 6] =
            found.try_into().map_err(|_| anyhow::anyhow!("one path per binary"))?;
        let kubectl = kube_apiserver.parent().map(|d| d.join("kubectl")).filter(|p| p.is_file());
        Ok(Self { etcd, kube_apiserver, kube_controller_manager, kube_scheduler, kubelet, kube_proxy, kubectl })
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

/// The Kubernetes minor release the harness was asked for (`ADMISSION_KIT_KUBERNETES=1.30`), if any;
/// unset, the newest pinned one (what CI runs).
#[must_use]
pub fn requested_kubernetes() -> Option<String> {
    std::env::var("ADMISSION_KIT_KUBERNETES").ok().filter(|v| !v.is_empty())
}

/// Prints the API server's version, and fails unless it is the release asked for: a run meant for
/// Kubernetes 1.30 must not pass on another one unnoticed. Returns `v<major>.<minor>.<patch>`.
pub async fn check_kubernetes_version(client: &admission_kit::reexports::kube::Client) -> anyhow::Result<String> {
    let info = client.apiserver_version().await.context("failed to read the API server's version")?;
    eprintln!("integration-tests: API server {} (Kubernetes {}.{})", info.git_version, info.major, info.minor);
    if let Some(wanted) = requested_kubernetes() {
        let minor = info.minor.trim_end_matches('+');
        anyhow::ensure!(
            format!("{}.{minor}", info.major) == wanted,
            "ADMISSION_KIT_KUBERNETES={wanted}, but the API server is {}",
            info.git_version
        );
    }
    Ok(info.git_version)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start a [`ControlPlane`]; the default is what [`ControlPlane::start`] does (loopback,
/// no scheduler).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ControlPlaneOptions {
    /// Run every process inside this network namespace, serving the API on `address`.
    pub network: Option<(String, Ipv4Addr)>,
    /// Also start `kube-scheduler` (pods are only bound to nodes by it).
    pub scheduler: bool,
}

impl ControlPlaneOptions {
    /// Runs every process inside the existing network namespace `name` (as `ip netns exec`),
    /// with the API server bound to all of that namespace's addresses and advertising `address`:
    /// the `kubernetes` Service's endpoint, so pods reach it, and kubelets are called on their
    /// `InternalIP` with a client certificate.
    #[must_use]
    pub fn network_namespace(mut self, name: &str, address: Ipv4Addr) -> Self {
        self.network = Some((name.to_owned(), address));
        self
    }

    /// Also starts `kube-scheduler`.
    #[must_use]
    pub fn scheduler(mut self) -> Self {
        self.scheduler = true;
        self
    }
}

/// A started control plane. Dropping it stops every process (and prints their logs if the thread
/// is panicking, i.e. a test failed).
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    processes: Vec<(String, Child)>,
    /// What every process is started through (`ip netns exec <ns>`, or nothing).
    prefix: Vec<String>,
    pki: Pki,
    /// How the API server was started, to start it again the same way ([`Self::restart_api_server`]).
    api_server_command: (PathBuf, Vec<String>),
    /// The API server's URL, `https://127.0.0.1:<port>` (or the network namespace's address).
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

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
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

/// Starts `program` through `prefix` (e.g. `ip netns exec <ns>`, which execs it: the child is the
/// program itself), logging to `<dir>/<name>.log`.
pub(crate) fn spawn(
    dir: &Path,
    name: &str,
    prefix: &[String],
    program: &Path,
    args: &[String],
) -> anyhow::Result<Child> {
    // Appended to: a restarted process adds to its log.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?;
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    command
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
        Self::start_with(binaries, &ControlPlaneOptions::default())
    }

    /// [`Self::start`] with options: inside a network namespace, with a scheduler.
    pub fn start_with(binaries: &Binaries, options: &ControlPlaneOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("admission-kit-cp-").tempdir()?;
        let path = dir.path().to_owned();
        let pki = Pki::new()?;
        let ca = write(&path, "ca.crt", &pki.ca_pem)?;
        let (prefix, host, serving_names) = match &options.network {
            // 10.0.0.1 is the `kubernetes` Service, which pods call.
            Some((netns, address)) => (
                vec!["ip".to_owned(), "netns".to_owned(), "exec".to_owned(), netns.clone()],
                address.to_string(),
                vec![address.to_string(), "10.0.0.1".to_owned(), "kubernetes.default.svc".to_owned()],
            ),
            None => (Vec::new(), "127.0.0.1".to_owned(), Vec::new()),
        };
        let mut names: Vec<&str> = vec!["127.0.0.1", "localhost"];
        names.extend(serving_names.iter().map(String::as_str));
        let (serving_cert, serving_key) = pki.leaf(&names, "kube-apiserver", None, false)?;
        let (admin_cert, admin_key) = pki.leaf(&[], "admin", Some("system:masters"), true)?;
        let (cm_cert, cm_key) = pki.leaf(&[], "system:kube-controller-manager", None, true)?;
        let sa = KeyPair::generate()?;
        let serving_cert = write(&path, "apiserver.crt", &serving_cert)?;
        let serving_key = write(&path, "apiserver.key", &serving_key)?;
        let sa_key = write(&path, "sa.key", &sa.serialize_pem())?;
        let sa_pub = write(&path, "sa.pub", &sa.public_key_pem())?;

        // Inside a fresh network namespace every port is free; these are free on the host too.
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let server = format!("https://{host}:{api_port}");
        let mut plane = Self {
            dir,
            processes: Vec::new(),
            prefix,
            pki,
            api_server_command: (binaries.kube_apiserver.clone(), Vec::new()),
            server: server.clone(),
            kubeconfig: path.join("admin.kubeconfig"),
            ca_pem: String::new(),
        };
        plane.ca_pem.clone_from(&plane.pki.ca_pem);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        plane.spawn(
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
        plane.wait_http("etcd", &format!("{etcd_url}/health"), Duration::from_secs(30))?;

        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            format!("--client-ca-file={}", ca.display()),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
        ];
        if options.network.is_some() {
            let (kubelet_cert, kubelet_key) =
                plane.pki.leaf(&[], "kube-apiserver-kubelet-client", Some("system:masters"), true)?;
            apiserver_args.extend([
                // Only the namespace's own addresses exist in there.
                "--bind-address=0.0.0.0".to_owned(),
                format!("--advertise-address={host}"),
                // The `kubernetes` Service's endpoint is this server's namespace address.
                "--endpoint-reconciler-type=lease".to_owned(),
                // Kubelets authenticate with `system:node:<name>` certificates.
                "--authorization-mode=Node,RBAC".to_owned(),
                // Logs and exec go to the kubelet on its node IP, as a client it trusts.
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                format!(
                    "--kubelet-client-certificate={}",
                    write(&path, "kubelet-client.crt", &kubelet_cert)?.display()
                ),
                format!("--kubelet-client-key={}", write(&path, "kubelet-client.key", &kubelet_key)?.display()),
            ]);
        } else {
            apiserver_args.extend([
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                // The `kubernetes` Service's endpoints cannot be a loopback address; nothing here needs them.
                "--endpoint-reconciler-type=none".to_owned(),
                "--authorization-mode=RBAC".to_owned(),
            ]);
        }
        plane.spawn("kube-apiserver", &binaries.kube_apiserver, &apiserver_args)?;
        plane.api_server_command.1 = apiserver_args;
        plane.write_kubeconfig(&admin_cert, &admin_key)?;
        let cm_kubeconfig = plane.kubeconfig_for(&path, "controller-manager.kubeconfig", &cm_cert, &cm_key)?;
        plane.wait_ready(Duration::from_secs(180))?;

        plane.start_controllers(binaries, options.scheduler, &cm_kubeconfig, &sa_key, &ca)?;
        Ok(plane)
    }

    /// The controller manager, and the scheduler if asked for.
    fn start_controllers(
        &mut self,
        binaries: &Binaries,
        scheduler: bool,
        cm_kubeconfig: &Path,
        sa_key: &Path,
        ca: &Path,
    ) -> anyhow::Result<()> {
        self.spawn(
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
                // Its default is under /usr/libexec, which it would create.
                format!("--flex-volume-plugin-dir={}", self.dir.path().join("flex-volume-plugins").display()),
            ],
        )?;
        if scheduler {
            let kubeconfig = self.client_kubeconfig("scheduler.kubeconfig", "system:kube-scheduler", None)?;
            self.spawn(
                "kube-scheduler",
                &binaries.kube_scheduler,
                &[
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--authentication-kubeconfig={}", kubeconfig.display()),
                    format!("--authorization-kubeconfig={}", kubeconfig.display()),
                    "--bind-address=127.0.0.1".to_owned(),
                    format!("--secure-port={}", free_port()?),
                    "--leader-elect=false".to_owned(),
                ],
            )?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let child = spawn(self.dir.path(), name, &self.prefix, program, args)?;
        self.processes.push((name.to_owned(), child));
        Ok(())
    }

    /// Writes a kubeconfig `<dir>/<file>` for a client certificate with `common_name` (the user)
    /// and `organization` (its group), signed by the cluster's CA.
    pub fn client_kubeconfig(
        &self,
        file: &str,
        common_name: &str,
        organization: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        let (cert, key) = self.pki.leaf(&[], common_name, organization, true)?;
        self.kubeconfig_for(self.dir.path(), file, &cert, &key)
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
        self.spawn("kube-apiserver", &program, &args)?;
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
        log_tail(self.dir.path(), name)
    }

    fn wait_http(&mut self, what: &str, url: &str, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            // Through the prefix: etcd listens on the loopback of its network namespace.
            let mut command: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
            command.extend(["curl", "-sf", "-o", "/dev/null", url]);
            let ok = Command::new(command[0]).args(&command[1..]).status().is_ok_and(|s| s.success());
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
            for name in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
                if !self.dir.path().join(format!("{name}.log")).exists() {
                    continue;
                }
                eprintln!("---- {name} log (last 40 lines) ----\n{}", self.log_tail(name));
            }
        }
    }
}

/// The last 40 lines of `<dir>/<name>.log`.
pub(crate) fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
