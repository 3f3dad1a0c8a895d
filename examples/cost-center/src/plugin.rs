//! The webhook as an admission-kit [`Plugin`]: flags of its own next to the standard serving
//! settings, an asynchronous set-up that watches the cost-center `ConfigMap` on the shell's shared
//! client, and the `lint` subcommand.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use admission_kit::app::{App, Plugin, Runtime, ServeSettings};
use admission_kit::prelude::*;
use admission_kit::reexports::kube::Api;
use admission_kit::reexports::kube::runtime::reflector::{ObjectRef, Store};
use admission_kit::reexports::kube::runtime::watcher;
use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::{CostCenters, lint, pipeline};

/// The application: its name and version on admission-kit's shell.
pub fn app() -> App {
    App::new("cost-center").version(env!("CARGO_PKG_VERSION"))
}

// ANCHOR: flags
/// The flags: where the table lives, and the standard serving settings.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// The `ConfigMap` holding the table (each data key a namespace, each value its cost center).
    #[arg(long, global = true, env = "COST_CENTER_CONFIGMAP", default_value = "cost-centers")]
    pub configmap: String,
    /// Its namespace.
    #[arg(long, global = true, env = "COST_CENTER_NAMESPACE", default_value = "cost-center")]
    pub configmap_namespace: String,
    /// The server's settings.
    #[command(flatten)]
    pub serve: ServeSettings,
}

/// The webhook's own subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a cost-center `ConfigMap` manifest (YAML) before applying it: every key a namespace
    /// name, every value a label value. Exits non-zero, naming each bad entry, when it is not.
    Lint {
        /// The manifest (`-` for stdin).
        file: PathBuf,
    },
}
// ANCHOR_END: flags

/// The plugin.
#[derive(Debug)]
pub struct CostCenterWebhook {
    flags: Flags,
}

impl CostCenterWebhook {
    /// The plugin for `flags`.
    #[must_use]
    pub fn new(flags: Flags) -> Self {
        Self { flags }
    }
}

/// The table as the watch cache holds it: the one `ConfigMap`, looked up at each review.
struct Watched {
    store: Store<ConfigMap>,
    key: ObjectRef<ConfigMap>,
}

impl CostCenters for Watched {
    fn of(&self, namespace: &str) -> Option<String> {
        self.store.get(&self.key)?.data.as_ref()?.get(namespace).cloned()
    }
}

// ANCHOR: plugin
#[async_trait]
impl Plugin for CostCenterWebhook {
    type Flags = Flags;
    type Command = Command;

    fn settings(&self) -> &ServeSettings {
        &self.flags.serve
    }

    /// The definition (what `webhook-config` renders): the table does not change it.
    fn pipelines(&self) -> anyhow::Result<Vec<Pipeline>> {
        Ok(vec![pipeline(Arc::new(BTreeMap::new()))?])
    }

    /// Watches the `ConfigMap` (only that one object) on the shared client; the server is unready
    /// until the watch has listed it once, and its health is in `/readyz` and the metrics.
    async fn setup(&self, runtime: &mut Runtime) -> anyhow::Result<Vec<Pipeline>> {
        let client = runtime.client().await.context("the cost-center table is a ConfigMap in the cluster")?;
        let api = Api::<ConfigMap>::namespaced(client, &self.flags.configmap_namespace);
        let only_it = watcher::Config::default().fields(&format!("metadata.name={}", self.flags.configmap));
        let (store, health) = admission_kit::cache::watch(api, only_it, "cost-centers");
        runtime.cache(health);
        let key = ObjectRef::new(&self.flags.configmap).within(&self.flags.configmap_namespace);
        Ok(vec![pipeline(Arc::new(Watched { store, key }))?])
    }

    async fn command(&self, command: Command) -> anyhow::Result<()> {
        let Command::Lint { file } = command;
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("failed to read stdin")?
        } else {
            std::fs::read_to_string(&file).with_context(|| format!("failed to read {}", file.display()))?
        };
        let configmap: ConfigMap =
            serde_saphyr::from_str(&text).with_context(|| format!("{} is not a ConfigMap", file.display()))?;
        let table = configmap.data.unwrap_or_default();
        let problems = lint(&table);
        anyhow::ensure!(problems.is_empty(), "{}: {}", file.display(), problems.join("; "));
        println!("{}: {} namespace(s) with a cost center", file.display(), table.len());
        Ok(())
    }
}
// ANCHOR_END: plugin
