//! A real Kubernetes node beside the control plane, so pods run: containerd + runc + the CNI
//! plugins (bridge, host-local, loopback), the kubelet and kube-proxy, with `kube-scheduler` in the
//! control plane (see <https://kubernetes.io/docs/concepts/architecture/#node-components>).
//!
//! The machine is shared, so nothing here may change it. The whole cluster runs in a network
//! namespace the harness creates, reached from the host through one veth pair (no default route in
//! there, nothing forwarded): kube-proxy's iptables rules, the CNI bridge and the sysctls they set
//! stay inside it. The node's programs also share a private mount namespace in which `/run`,
//! `/var/lib` and `/var/log` are empty tmpfs (whatever writes to a hard-coded host path writes
//! there), `/sys` shows the network namespace's devices, and the kernel tunables the kubelet checks
//! read as it wants them (it is told not to write them; they are global). Every path a component
//! writes is under the harness's temporary directories, and [`Cluster`] removes everything it
//! made on every exit path: pods, containers and their shims, mounts, the namespaces, the veth and
//! cgroups.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use admission_kit::reexports::kube::{self, Api, api::LogParams};
use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use serde_json::{Value, json};

use crate::control_plane::{log_tail, spawn};
use crate::images::Image;
use crate::{Binaries, ControlPlane, ControlPlaneOptions};

/// The node's name (its kubelet's `--hostname-override`).
pub const NODE_NAME: &str = "ak-node";

const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The Services' network (the API server's `--service-cluster-ip-range`).
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// Programs the node needs from the machine (Debian packages `containerd`, `runc`,
/// `containernetworking-plugins`, `iptables`, `conntrack`, `iproute2`, `util-linux`).
const HOST_PROGRAMS: [&str; 10] =
    ["ip", "nsenter", "unshare", "mount", "umount", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables"];

/// What the kubelet wants these global kernel tunables to be. It is told to check rather than
/// set them (`protectKernelDefaults`), and it reads these values from files bound over them in
/// the node's mount namespace.
const KERNEL_TUNABLES: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

const NODE_PROCESSES: [&str; 3] = ["containerd", "kubelet", "kube-proxy"];

/// A control plane and one node, all inside a network namespace of their own. Dropping it (or
/// [`Cluster::shutdown`]) removes everything it made, printing every component's log tail if the
/// thread is panicking (a failed test).
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    plane: Option<ControlPlane>,
    processes: Vec<(String, Child)>,
    netns: String,
    host_veth: String,
    /// `nsenter` into the node's mount and network namespaces.
    prefix: Vec<String>,
    /// Set once the teardown has run.
    torn_down: bool,
    /// The API server's URL, `https://<node_ip>:<port>`.
    pub server: String,
    /// The node's address (and the API server's), inside the network namespace.
    pub node_ip: Ipv4Addr,
    /// The host's end of the veth pair.
    pub host_ip: Ipv4Addr,
    /// The pods' network (one `/24` on the node's bridge).
    pub pod_cidr: String,
}

/// Counts clusters started by this process, for unique names.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Creates the network namespace, starts the control plane (with a scheduler) inside it, then
    /// containerd (with `pause` imported as its sandbox image), the kubelet and kube-proxy. Fails,
    /// saying why, without root or without the node's programs. Does not wait for the node to be
    /// Ready: [`Self::wait_node_ready`].
    pub fn start(binaries: &Binaries, pause: &Image) -> anyhow::Result<Self> {
        preflight()?;
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let netns = format!("ak-{}-{n}", std::process::id());
        let x = free_subnet(n)?;
        let dir = tempfile::Builder::new().prefix("admission-kit-node-").tempdir()?;
        let mount_ns = dir.path().join("mnt.ns");
        let mut cluster = Self {
            prefix: vec![
                "nsenter".to_owned(),
                format!("--mount={}", mount_ns.display()),
                format!("--net=/run/netns/{netns}"),
                "--".to_owned(),
            ],
            dir,
            plane: None,
            processes: Vec::new(),
            netns,
            host_veth: format!("akh{x}"),
            torn_down: false,
            server: String::new(),
            node_ip: Ipv4Addr::new(10, 251, x, 2),
            host_ip: Ipv4Addr::new(10, 251, x, 1),
            pod_cidr: format!("10.252.{x}.0/24"),
        };
        // From here on, dropping `cluster` undoes whatever was done.
        cluster.create_network(x)?;
        cluster.create_mount_namespace()?;
        cluster.start_containerd(x, &pause.reference)?;
        cluster.import_image(pause)?;

        let options = ControlPlaneOptions::default().network_namespace(&cluster.netns, cluster.node_ip).scheduler();
        let plane = ControlPlane::start_with(binaries, &options)?;
        cluster.server.clone_from(&plane.server);
        cluster.plane = Some(plane);
        cluster.start_kubelet(binaries)?;
        cluster.start_kube_proxy(binaries)?;
        Ok(cluster)
    }

    fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("the control plane runs until teardown")
    }

    /// The control plane (certificates, kubeconfig, logs, restarts).
    #[must_use]
    pub fn control_plane(&self) -> &ControlPlane {
        self.plane()
    }

    /// The admin kubeconfig's path.
    #[must_use]
    pub fn kubeconfig(&self) -> &Path {
        &self.plane().kubeconfig
    }

    /// A kube client with admin credentials.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        crate::webhook::client_from_kubeconfig(self.kubeconfig()).await
    }

    /// The node's directory: containerd, kubelet, CNI state and the node's logs.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The network namespace everything runs in.
    #[must_use]
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's end of the veth pair into the network namespace.
    #[must_use]
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// containerd's socket.
    #[must_use]
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Runs `program args` inside the network namespace (and the node's mount namespace), e.g.
    /// `busybox wget` to reach a Service's cluster IP through kube-proxy's rules.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.prefix[0])
            .args(&self.prefix[1..])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run {program} in {}", self.netns))
    }

    /// Imports an OCI archive into containerd's `k8s.io` namespace (the kubelet's), so pods with
    /// `imagePullPolicy: IfNotPresent` or `Never` use it: nothing is ever pulled.
    pub fn import_image(&self, image: &Image) -> anyhow::Result<()> {
        let out = self.ctr(&["images", "import", &image.archive.display().to_string()])?;
        if !out.status.success() {
            bail!(
                "failed to import {} into containerd: {}",
                image.archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let listed = self.ctr(&["images", "ls", "-q"])?;
        let names = String::from_utf8_lossy(&listed.stdout).into_owned();
        if !names.lines().any(|l| l.trim() == image.reference) {
            bail!("importing {} did not give {}; containerd has: {names}", image.archive.display(), image.reference);
        }
        Ok(())
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("failed to run ctr")
    }

    /// Waits until the node reports `Ready` and the `default` namespace has its `default`
    /// service account (pods are refused until the controller manager makes it), checking that
    /// every node process still runs.
    pub async fn wait_node_ready(&mut self, limit: Duration) -> anyhow::Result<Node> {
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if let Some(node) = nodes.get_opt(NODE_NAME).await?
                && node_ready(&node)
                && accounts.get_opt("default").await?.is_some()
            {
                eprintln!("integration-tests: node {NODE_NAME} Ready after {:?}", started.elapsed());
                return Ok(node);
            }
            if started.elapsed() > limit {
                bail!("node {NODE_NAME} not Ready after {limit:?}; the kubelet's log:\n{}", self.log_tail("kubelet"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The log of `container` (the pod's only one when `None`) of the pod `namespace/name`, read
    /// through the API server (which asks the kubelet).
    pub async fn pod_log(&self, namespace: &str, name: &str, container: Option<&str>) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client().await?, namespace);
        let params = LogParams { container: container.map(str::to_owned), ..LogParams::default() };
        pods.logs(name, &params).await.with_context(|| format!("failed to read the log of pod {namespace}/{name}"))
    }

    /// The last 40 lines of a node component's log (`containerd`, `kubelet`, `kube-proxy`).
    #[must_use]
    pub fn log_tail(&self, name: &str) -> String {
        log_tail(self.dir.path(), name)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.processes {
            if let Some(status) = child.try_wait()? {
                let name = name.clone();
                bail!("{name} exited early ({status}); its log:\n{}", self.log_tail(&name));
            }
        }
        Ok(())
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let child = spawn(self.dir.path(), name, &self.prefix, program, args)?;
        self.processes.push((name.to_owned(), child));
        Ok(())
    }

    /// The namespace, and a veth pair: `<host_ip>/30` on the host, `<node_ip>/30` inside. No
    /// default route inside: nothing leaves the machine.
    fn create_network(&mut self, x: u8) -> anyhow::Result<()> {
        run("ip", &["netns", "add", &self.netns])?;
        let inner = format!("akn{x}");
        run("ip", &["link", "add", &self.host_veth, "type", "veth", "peer", "name", &inner])?;
        run("ip", &["link", "set", &inner, "netns", &self.netns])?;
        run("ip", &["addr", "add", &format!("{}/30", self.host_ip), "dev", &self.host_veth])?;
        run("ip", &["link", "set", &self.host_veth, "up"])?;
        let ns = ["netns", "exec", self.netns.as_str(), "ip"];
        let in_ns = |args: &[&str]| run("ip", &[&ns[..], args].concat());
        in_ns(&["link", "set", "lo", "up"])?;
        in_ns(&["addr", "add", &format!("{}/30", self.node_ip), "dev", &inner])?;
        in_ns(&["link", "set", &inner, "up"])?;
        // The pods' bridge, made before the CNI plugin (which adopts it) so that Service IPs have
        // a route from the namespace itself: the API server calling a webhook's Service, or
        // [`Self::exec`], is translated by kube-proxy only once a route was found.
        let bridge = format!("ak{x}");
        in_ns(&["link", "add", &bridge, "type", "bridge"])?;
        in_ns(&["link", "set", &bridge, "up"])?;
        in_ns(&["route", "add", SERVICE_CIDR, "dev", &bridge])?;
        Ok(())
    }

    /// The node's mount namespace, kept by a bind mount of its file (so no process has to hold it):
    /// see the module's documentation for what differs in it.
    fn create_mount_namespace(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        // A namespace file can only be bound onto a private mount (and this one is unmounted
        // with the rest).
        run("mount", &["--bind", &dir.display().to_string(), &dir.display().to_string()])?;
        run("mount", &["--make-private", &dir.display().to_string()])?;
        let file = dir.join("mnt.ns");
        std::fs::write(&file, "")?;
        run("unshare", &[&format!("--mount={}", file.display()), "--propagation", "private", "true"])?;

        let tunables = dir.join("kernel-tunables");
        std::fs::create_dir_all(&tunables)?;
        let mut script = String::from(
            "set -e\n\
             mkdir -p \"$1/cgroup\"\n\
             mount --rbind /sys/fs/cgroup \"$1/cgroup\"\n\
             umount -l /sys\n\
             mount -t sysfs sysfs /sys\n\
             mount --move \"$1/cgroup\" /sys/fs/cgroup\n\
             for d in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 tmpfs \"$d\"; done\n",
        );
        for (name, value) in KERNEL_TUNABLES {
            let file = tunables.join(name.replace('/', "."));
            std::fs::write(&file, format!("{value}\n"))?;
            let _ = writeln!(script, "mount --bind {} /proc/sys/{name}", file.display());
        }
        let out = self.exec("sh", &["-c", &script, "sh", &dir.display().to_string()])?;
        if !out.status.success() {
            bail!("failed to set up the node's mount namespace: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn start_containerd(&mut self, x: u8, sandbox_image: &str) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let cni_conf = dir.join("cni/net.d");
        std::fs::create_dir_all(&cni_conf)?;
        let network = json!({
            "cniVersion": "0.4.0",
            "name": "ak",
            "plugins": [{
                "type": "bridge",
                "bridge": format!("ak{x}"),
                "isGateway": true,
                // Nothing may leave the namespace, so nothing to masquerade.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("cni/ipam"),
                },
            }],
        });
        std::fs::write(cni_conf.join("10-ak.conflist"), serde_json::to_string_pretty(&network)?)?;
        let d = |p: &str| dir.join(p).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# These try to load kernel modules or need hardware; overlayfs is the snapshotter.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Without CAP_SYS_RESOURCE runc cannot lower a container's OOM score below containerd's.
  restrict_oom_score_adj = true
  netns_mounts_under = "{netns}"
  disable_apparmor = true
  stream_server_address = "127.0.0.1"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = "{runc}"
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{conf}"
  max_conf_num = 1
"#,
            root = d("containerd/root"),
            state = d("containerd/state"),
            socket = self.containerd_socket().display(),
            opt = d("containerd/opt"),
            netns = d("containerd/netns"),
            runc = d("containerd/runc"),
            conf = cni_conf.display(),
        );
        let path = dir.join("containerd.toml");
        std::fs::write(&path, config)?;
        self.spawn("containerd", Path::new("containerd"), &[format!("--config={}", path.display())])?;
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if self.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("containerd did not answer within 30 s; its log:\n{}", self.log_tail("containerd"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_kubelet(&mut self, binaries: &Binaries) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let plane = self.plane();
        let kubeconfig =
            plane.client_kubeconfig("kubelet.kubeconfig", &format!("system:node:{NODE_NAME}"), Some("system:nodes"))?;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // The machine has cgroup v1 (hybrid) and no systemd.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            // Pods must not get the host's nameservers; there is no cluster DNS.
            "resolvConf": "",
            "failSwapOn": false,
            // Global kernel tunables: check, never set.
            "protectKernelDefaults": true,
            "address": self.node_ip.to_string(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": plane.dir().join("ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket().display()),
            "podLogsDir": dir.join("pod-logs"),
            "volumePluginDir": dir.join("kubelet/volume-plugins"),
            // A ConfigMap's new contents reach its volumes at the pod's next sync: every 5 s
            // here, not every minute, so a catalog update is seen within seconds.
            "syncFrequency": "5s",
            // Nothing can be pulled again, so nothing is ever collected or evicted for disk.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
        });
        let config_path = dir.join("kubelet.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let args = [
            format!("--config={}", config_path.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet/pki").display()),
            format!("--node-ip={}", self.node_ip),
            format!("--hostname-override={NODE_NAME}"),
        ];
        self.spawn("kubelet", &binaries.kubelet, &args)
    }

    fn start_kube_proxy(&mut self, binaries: &Binaries) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let kubeconfig = self.plane().client_kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy", None)?;
        let config = json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": self.pod_cidr,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            // Zero leaves the conntrack table size and timeouts alone: the table size is global.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {
                // A pod calling a Service backed by a pod on the same bridge gets its answer back
                // through the node (and its conntrack entry) whatever the bridge netfilter setting.
                "masqueradeAll": true,
                "localhostNodePorts": false,
                "syncPeriod": "5s",
                "minSyncPeriod": "0s",
            },
        });
        let config_path = dir.join("kube-proxy.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        self.spawn("kube-proxy", &binaries.kube_proxy, &[format!("--config={}", config_path.display())])
    }

    /// Tears everything down and says what could not be removed.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        let problems = self.teardown(false);
        if problems.is_empty() { Ok(()) } else { bail!("teardown left things behind:\n{}", problems.join("\n")) }
    }

    /// Every step runs whatever failed before it; returns what is left behind. `print_logs`
    /// prints every node component's log tail (the control plane prints its own when panicking).
    fn teardown(&mut self, print_logs: bool) -> Vec<String> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        if print_logs {
            for name in NODE_PROCESSES {
                if self.dir.path().join(format!("{name}.log")).exists() {
                    eprintln!("---- {name} log (last 40 lines) ----\n{}", self.log_tail(name));
                }
            }
        }
        // Pods first, while the kubelet can still stop them and release their network.
        if self.plane.is_some() && self.processes.iter().any(|(n, _)| n == "kubelet") {
            self.delete_pods(Duration::from_secs(20));
        }
        let containers = self.ctr(&["containers", "ls", "-q"]).map(|o| lines(&o.stdout)).unwrap_or_default();
        self.stop_process("kube-proxy");
        self.stop_process("kubelet");
        self.kill_containers();
        self.stop_process("containerd");
        let mount_ns_inode = std::fs::metadata(self.dir.path().join("mnt.ns")).map(|m| m.ino()).ok();
        kill_matching(|pid, cmdline| {
            cmdline.contains(&self.dir.path().display().to_string())
                || mount_ns_inode.is_some_and(|ino| {
                    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                        .is_ok_and(|l| l.to_string_lossy() == format!("mnt:[{ino}]"))
                })
        });
        kill_cgroups(&containers);
        let mut problems = Vec::new();
        unmount_under(self.dir.path(), &mut problems);
        // The control plane after the node: its directory holds the node's credentials.
        drop(self.plane.take());
        if let Err(e) = run("ip", &["netns", "delete", &self.netns]) {
            problems.push(format!("{e:#}"));
        }
        if Path::new("/sys/class/net").join(&self.host_veth).exists() {
            let _ = run("ip", &["link", "delete", &self.host_veth]);
        }
        remove_cgroups(&containers, &mut problems);

        // What must be gone.
        if Path::new("/run/netns").join(&self.netns).exists() {
            problems.push(format!("network namespace {} still exists", self.netns));
        }
        if Path::new("/sys/class/net").join(&self.host_veth).exists() {
            problems.push(format!("link {} still exists", self.host_veth));
        }
        for mount in mounts_under(self.dir.path()) {
            problems.push(format!("still mounted: {}", mount.display()));
        }
        let dir = self.dir.path().display().to_string();
        for (pid, cmdline) in processes() {
            if cmdline.contains(&dir) {
                problems.push(format!("process {pid} still runs: {cmdline}"));
            }
        }
        problems
    }

    /// Deletes every pod (grace period 1 s) and waits up to `limit` for them to be gone.
    fn delete_pods(&self, limit: Duration) {
        let started = Instant::now();
        let Some(namespaces) = self.api("GET", "/api/v1/namespaces") else { return };
        for ns in items(&namespaces) {
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
                let _ = self.api("DELETE", &format!("/api/v1/namespaces/{name}/pods?gracePeriodSeconds=1"));
            }
        }
        while started.elapsed() < limit {
            match self.api("GET", "/api/v1/pods") {
                Some(pods) if items(&pods).is_empty() => return,
                None => return,
                Some(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        eprintln!("integration-tests: pods still terminating after {limit:?}; killing their containers");
    }

    /// A call to the API server with the kubelet's API client identity (which is `system:masters`),
    /// for teardown, which cannot be async.
    fn api(&self, method: &str, path: &str) -> Option<Value> {
        let plane = self.plane.as_ref()?;
        let out = Command::new("curl")
            .args(["-s", "-f", "-m", "5", "-X", method, "--cacert"])
            .arg(plane.dir().join("ca.crt"))
            .arg("--cert")
            .arg(plane.dir().join("kubelet-client.crt"))
            .arg("--key")
            .arg(plane.dir().join("kubelet-client.key"))
            .arg(format!("{}{path}", plane.server))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    fn stop_process(&mut self, name: &str) {
        let Some(index) = self.processes.iter().position(|(n, _)| n == name) else { return };
        let (_, mut child) = self.processes.remove(index);
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills every container task containerd still has, then the shims that ran them (a shim
    /// outlives containerd).
    fn kill_containers(&self) {
        if let Ok(out) = self.ctr(&["tasks", "ls", "-q"]) {
            for id in lines(&out.stdout) {
                let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", &id]);
            }
        }
        let socket = self.containerd_socket().display().to_string();
        kill_matching(|_, cmdline| cmdline.contains("containerd-shim") && cmdline.contains(&socket));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Dropped rather than shut down: the test failed (a panic or an early `?` return).
        for problem in self.teardown(true) {
            eprintln!("integration-tests: teardown: {problem}");
        }
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Root, and every program the node needs: a clear failure rather than a skipped test.
fn preflight() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
    if uid != Some("0") {
        bail!("a node needs root (network namespaces, mounts, containerd); this process runs as uid {uid:?}");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = |p: &str| std::env::split_paths(&path).any(|d| d.join(p).is_file());
    let mut missing: Vec<String> = HOST_PROGRAMS.iter().filter(|p| !on_path(p)).map(|p| (*p).to_owned()).collect();
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
            missing.push(format!("{CNI_BIN_DIR}/{plugin}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "a node needs {} (apt-get install containerd runc containernetworking-plugins iptables conntrack iproute2)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// An `X` for `10.251.X.0/30` and `10.252.X.0/24` that no host address or link uses.
fn free_subnet(n: u32) -> anyhow::Result<u8> {
    let addresses = String::from_utf8_lossy(&Command::new("ip").args(["-br", "addr"]).output()?.stdout).into_owned();
    let start = std::process::id().wrapping_add(n.wrapping_mul(37));
    for i in 0..250 {
        let x = u8::try_from((start + i) % 250 + 2).unwrap_or(2);
        let used = addresses.contains(&format!("10.251.{x}.")) || addresses.contains(&format!("10.252.{x}."));
        if !used && !Path::new("/sys/class/net").join(format!("akh{x}")).exists() {
            return Ok(x);
        }
    }
    bail!("no free 10.251.X.0/30 network for the node")
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

fn items(list: &Value) -> &[Value] {
    list.get("items").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Every process's pid and command line (arguments joined by spaces).
fn processes() -> Vec<(u32, String)> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .collect()
}

fn kill_matching(matches: impl Fn(u32, &str) -> bool) {
    for (pid, cmdline) in processes() {
        if matches(pid, &cmdline) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// The mount points of every cgroup hierarchy.
fn cgroup_roots() -> Vec<PathBuf> {
    mountinfo().into_iter().filter(|(_, fs)| fs == "cgroup" || fs == "cgroup2").map(|(p, _)| p).collect()
}

/// The cgroups runc made for `containers` (named after their ids; with no cgroup parent, runc puts
/// them below its own cgroup, a few levels down), deepest first.
fn container_cgroups(containers: &[String]) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, ids: &BTreeSet<&str>, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_str().is_some_and(|n| ids.iter().any(|id| n.contains(id))) {
                found.push(path.clone());
            }
            if depth > 0 {
                walk(&path, depth - 1, ids, found);
            }
        }
    }
    if containers.is_empty() {
        return Vec::new();
    }
    let ids: BTreeSet<&str> = containers.iter().map(String::as_str).collect();
    let mut found = Vec::new();
    for root in cgroup_roots() {
        walk(&root, 4, &ids, &mut found);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Kills what still runs in the containers' cgroups (processes a killed shim left behind).
fn kill_cgroups(containers: &[String]) {
    for cgroup in container_cgroups(containers) {
        if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
            }
        }
    }
}

fn remove_cgroups(containers: &[String], problems: &mut Vec<String>) {
    for cgroup in container_cgroups(containers) {
        let mut removed = false;
        // A cgroup whose last process just died is briefly still busy.
        for _ in 0..20 {
            if std::fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !removed {
            problems.push(format!("cgroup {} could not be removed", cgroup.display()));
        }
    }
}

/// Mount points and filesystem types, from `/proc/self/mountinfo`.
fn mountinfo() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?;
            let separator = fields.iter().position(|f| *f == "-")?;
            let fs = fields.get(separator + 1)?;
            Some((PathBuf::from(unescape(point)), (*fs).to_owned()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        if let Some(byte) = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            out.push(char::from(byte));
            rest = &rest[i + 4..];
        } else {
            out.push('\\');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Mounts at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo().into_iter().map(|(p, _)| p).filter(|p| p.starts_with(dir)).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unmount_under(dir: &Path, problems: &mut Vec<String>) {
    // A mount point can be stacked; repeat while anything is left.
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for mount in mounts {
            let point = mount.display().to_string();
            if run("umount", &[&point]).is_err()
                && let Err(e) = run("umount", &["-l", &point])
            {
                problems.push(format!("{e:#}"));
            }
        }
    }
}
