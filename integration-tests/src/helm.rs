//! Helm, for testing `charts/sidecar-injector`: the binaries come from `ADMISSION_KIT_HELM3` /
//! `ADMISSION_KIT_HELM4` when set, else `scripts/build-helm.sh` builds them from the Go module
//! proxy (once; they are cached). Every run gets its own Helm home directories, so a person's
//! repositories and plugins never leak into a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context as _;
use serde_json::Value;

/// The repository root (`integration-tests` is one level down).
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory.
#[must_use]
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/sidecar-injector")
}

/// A Helm binary with private home directories.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

/// What a Helm command did.
#[derive(Debug)]
pub struct Run {
    /// Whether it exited 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(output: &Output) -> Self {
        Self {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The run's output, or an error with both streams when it failed.
    pub fn success(self) -> anyhow::Result<Self> {
        anyhow::ensure!(self.ok, "helm failed:\n{}\n{}", self.stdout, self.stderr);
        Ok(self)
    }
}

impl Helm {
    /// Helm `major` (3 or 4).
    pub fn locate(major: u8) -> anyhow::Result<Self> {
        let binary = if let Some(path) = std::env::var_os(format!("ADMISSION_KIT_HELM{major}")) {
            PathBuf::from(path)
        } else {
            {
                let script = repo_root().join("scripts/build-helm.sh");
                let output = Command::new("bash")
                    .arg(&script)
                    .arg(format!("v{major}"))
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .with_context(|| format!("failed to run {}", script.display()))?;
                anyhow::ensure!(output.status.success(), "{} failed", script.display());
                let stdout = String::from_utf8(output.stdout)?;
                PathBuf::from(stdout.lines().last().context("build-helm.sh printed no path")?.trim())
            }
        };
        anyhow::ensure!(binary.is_file(), "no helm binary at {}", binary.display());
        Ok(Self { binary, home: tempfile::Builder::new().prefix("admission-kit-helm-").tempdir()?, kubeconfig: None })
    }

    /// Points Helm at a cluster.
    #[must_use]
    pub fn kubeconfig(mut self, path: &Path) -> Self {
        self.kubeconfig = Some(path.to_owned());
        self
    }

    /// Runs `helm <args>`.
    pub fn run<I, S>(&self, args: I) -> anyhow::Result<Run>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT");
        match &self.kubeconfig {
            Some(path) => command.env("KUBECONFIG", path),
            // Offline commands must not read a person's cluster.
            None => command.env("KUBECONFIG", self.home.path().join("no-cluster")),
        };
        let output = command.output().with_context(|| format!("failed to run {}", self.binary.display()))?;
        Ok(Run::from(&output))
    }

    /// `helm version --short`.
    pub fn version(&self) -> anyhow::Result<String> {
        Ok(self.run(["version", "--short"])?.success()?.stdout.trim().to_owned())
    }

    /// Renders the chart (`helm template`) with `--set`/`--values` style arguments and returns
    /// every document.
    pub fn template(&self, release: &str, namespace: &str, args: &[&str]) -> anyhow::Result<Rendered> {
        let chart = chart_dir();
        let mut all =
            vec!["template", release, chart.to_str().context("chart path is UTF-8")?, "--namespace", namespace];
        all.extend_from_slice(args);
        let run = self.run(&all)?.success()?;
        Rendered::parse(&run.stdout)
    }
}

/// The documents of a rendered chart.
#[derive(Debug)]
pub struct Rendered {
    /// Every non-empty document, in order.
    pub documents: Vec<Value>,
}

impl Rendered {
    /// Parses a multi-document YAML stream.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let documents: Vec<Value> = serde_saphyr::from_multiple(text).context("rendered chart is not YAML")?;
        Ok(Self { documents: documents.into_iter().filter(|d| !d.is_null()).collect() })
    }

    /// Every document of `kind`.
    #[must_use]
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.documents.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// The one document of `kind` (named `name` when several are).
    pub fn one(&self, kind: &str, name: Option<&str>) -> anyhow::Result<&Value> {
        let found: Vec<&Value> =
            self.all(kind).into_iter().filter(|d| name.is_none_or(|n| d["metadata"]["name"] == n)).collect();
        anyhow::ensure!(found.len() == 1, "expected one {kind} {name:?}, found {}", found.len());
        Ok(found[0])
    }

    /// The injector's configuration as the chart renders it for its pods: the configuration file and
    /// the catalog (values `sidecars`), written to `dir`, the catalog file in `catalogPaths`.
    pub fn injector_config(&self, dir: &Path) -> anyhow::Result<sidecar_injector::config::Config> {
        let config_map = self.all("ConfigMap").into_iter().find(|c| c["data"]["config.yaml"].is_string());
        let text = config_map.and_then(|c| c["data"]["config.yaml"].as_str()).context("no configuration rendered")?;
        let config_file = dir.join("config.yaml");
        std::fs::write(&config_file, text)?;
        let mut config = sidecar_injector::config::Config::load(Some(&config_file), &[])?;
        if let Some(catalog) = self.all("ConfigMap").into_iter().find_map(|c| c["data"]["sidecars.yaml"].as_str()) {
            let catalog_file = dir.join("sidecars.yaml");
            std::fs::write(&catalog_file, catalog)?;
            config.catalog_paths = vec![catalog_file];
        }
        Ok(config)
    }

    /// The kinds rendered, sorted.
    #[must_use]
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> =
            self.documents.iter().filter_map(|d| d["kind"].as_str().map(str::to_owned)).collect();
        kinds.sort();
        kinds
    }
}

/// What `sidecar-injector policy` prints for `config` (the same rendering, run in-process): the
/// value the chart takes as `policy` in policy mode.
pub fn policy_list(config: &sidecar_injector::config::Config) -> anyhow::Result<String> {
    use admission_kit::app::Plugin as _;
    let pipelines = sidecar_injector::plugin::Injector::new(config.clone()).pipelines()?;
    let items = admission_kit::policy::render_policies(&pipelines, &admission_kit::policy::PolicyOptions::new())?;
    Ok(serde_json::to_string(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))?)
}

/// Checks with OpenSSL (an implementation independent of Helm's and of rustls) that `cert`
/// chains to `ca` for TLS serving as `host`; the error is OpenSSL's own message.
pub fn verify_chain(ca: &str, cert: &str, host: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("ca.crt"), ca)?;
    std::fs::write(dir.path().join("tls.crt"), cert)?;
    let out = Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-verify_hostname", host, "-CAfile"])
        .arg(dir.path().join("ca.crt"))
        .arg(dir.path().join("tls.crt"))
        .output()
        .context("failed to run openssl")?;
    anyhow::ensure!(out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
