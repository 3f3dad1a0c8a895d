use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser as _;
use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::mutator::{self, Context};
use crate::pipeline::{ResourceTarget, Step};

#[derive(Debug, clap::Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeSettings,
}

fn settings_from(value: serde_json::Value) -> Result<ServeSettings, serde_json::Error> {
    serde_json::from_value(value)
}

#[test]
fn flags_and_configuration_have_the_same_defaults() {
    let flags = Flags::try_parse_from(["webhook"]).expect("no flags parse");
    assert_eq!(flags.serve, ServeSettings::default());
    assert_eq!(settings_from(serde_json::json!({})).expect("an empty section"), ServeSettings::default());
}

#[test]
fn every_setting_reads_from_configuration_with_typed_values() {
    let settings = settings_from(serde_json::json!({
        "webhookAddr": "127.0.0.1:9443",
        "adminAddr": "127.0.0.1:9080",
        "tlsCertFile": "cert.pem",
        "tlsKeyFile": "key.pem",
        "certReloadInterval": "1m30s",
        "selfSignedNames": ["webhook.example"],
        "writeCa": "-",
        "maxBodyBytes": 1024,
        "maxConnections": 7,
        "handshakeTimeout": "2s",
        "headerReadTimeout": "3s",
        "requestTimeout": "4s",
        "idleTimeout": "5s",
        "drainDelay": "250ms",
        "shutdownTimeout": "6s",
        "namespaceCache": "never",
        "cacheMaxStaleness": "never",
        "logFormat": "json",
        "log": "debug",
    }))
    .expect("every key");
    assert_eq!(settings.cert_reload_interval, Duration::from_secs(90));
    assert_eq!(settings.namespace_cache, NamespaceCacheMode::Never);
    assert_eq!(settings.log_format, crate::telemetry::LogFormat::Json);
    assert_eq!(settings.cache_max_staleness, MaxStaleness(None));
    let config = settings.server_config().expect("valid");
    assert_eq!(config.handshake_timeout, Duration::from_secs(2));
    assert_eq!(config.header_read_timeout, Duration::from_secs(3));
    assert_eq!(config.request_timeout, Duration::from_secs(4));
    assert_eq!(config.idle_timeout, Duration::from_secs(5));
    assert_eq!(config.drain_delay, Duration::from_millis(250));
    assert_eq!(config.max_connections, 7);
    assert_eq!(config.cache_max_staleness, None);
    assert!(matches!(config.tls, crate::tls::TlsSource::Files { .. }));
    // What serialises reads back the same: a plugin can print its effective configuration.
    let again = settings_from(serde_json::to_value(&settings).expect("serialises")).expect("reads back");
    assert_eq!(again, settings);
}

#[test]
fn bad_values_are_refused_naming_what_is_wrong() {
    for (value, expected) in [
        (serde_json::json!({"handshakeTimeout": "soon"}), "`soon` is not a duration"),
        (serde_json::json!({"drainDelay": 5}), "`5` needs a unit, like 5s"),
        (serde_json::json!({"namespaceCache": "sometimes"}), "unknown variant `sometimes`"),
        (serde_json::json!({"cacheMaxStaleness": "forever"}), "`forever` is neither `never` nor a duration"),
        (serde_json::json!({"handshakeTimout": "1s"}), "unknown field `handshakeTimout`"),
        (serde_json::json!({"logFormat": "xml"}), "unknown variant `xml`"),
    ] {
        let error = settings_from(value.clone()).expect_err(&value.to_string()).to_string();
        assert!(error.contains(expected), "{value}: {error}");
    }
    // A zero written as a number (environment variables and --set deliver `0` so) means zero.
    let zero = settings_from(serde_json::json!({"drainDelay": 0, "cacheMaxStaleness": 0})).expect("zeros");
    assert_eq!(zero.drain_delay, Duration::ZERO);
    assert_eq!(zero.cache_max_staleness, MaxStaleness(None));
    let half = settings_from(serde_json::json!({"tlsCertFile": "cert.pem"})).expect("types are fine");
    assert_eq!(
        half.server_config().expect_err("no key").to_string(),
        "`tlsCertFile` is set without the key file: set both, or neither for a self-signed certificate"
    );
    let none = settings_from(serde_json::json!({"maxConnections": 0})).expect("types are fine");
    assert_eq!(none.server_config().expect_err("zero").to_string(), "`maxConnections` must be at least 1");
}

#[test]
fn durations_print_as_they_parse() {
    for (text, duration) in [
        ("10s", Duration::from_secs(10)),
        ("2m", Duration::from_secs(120)),
        ("1m30s", Duration::from_secs(90)),
        ("1h1m1s", Duration::from_secs(3661)),
        ("250ms", Duration::from_millis(250)),
        ("0s", Duration::ZERO),
    ] {
        assert_eq!(format_duration(duration), text);
        assert_eq!(parse_duration(text), Ok(duration), "{text}");
    }
    assert_eq!(parse_duration(&format_duration(Duration::from_nanos(1_500))), Ok(Duration::from_nanos(1_500)));
}

/// A plugin with a subcommand of its own and settings from its flags.
struct Probe {
    serve: ServeSettings,
    setups: Arc<AtomicUsize>,
}

#[derive(Debug, clap::Args)]
struct ProbeFlags {
    #[command(flatten)]
    serve: ServeSettings,
}

#[derive(Debug, clap::Subcommand)]
enum ProbeCommand {
    /// Say hello.
    Hello {
        #[arg(long)]
        to: String,
    },
}

#[async_trait]
impl Plugin for Probe {
    type Flags = ProbeFlags;
    type Command = ProbeCommand;

    fn settings(&self) -> &ServeSettings {
        &self.serve
    }

    fn pipelines(&self) -> anyhow::Result<Vec<Pipeline>> {
        let label = mutator::from_fn(|pod: &mut serde_json::Value, _ctx: &mut Context<'_>| {
            pod["metadata"]["labels"]["probed"] = "true".into();
            Ok(())
        });
        Ok(vec![
            Pipeline::builder("probe.example.com")
                .step(Step::dynamic("probe", ResourceTarget::of::<Pod>(), label))
                .build()?,
        ])
    }

    async fn setup(&self, runtime: &mut Runtime) -> anyhow::Result<Vec<Pipeline>> {
        self.setups.fetch_add(1, Ordering::SeqCst);
        runtime.on_started(|server| assert_ne!(server.webhook_addr().port(), 0));
        self.pipelines()
    }

    async fn command(&self, command: ProbeCommand) -> anyhow::Result<()> {
        let ProbeCommand::Hello { to } = command;
        anyhow::ensure!(to == "world", "hello to `{to}`?");
        Ok(())
    }
}

#[test]
fn the_command_line_has_the_standard_and_the_plugins_commands() {
    let command = App::new("probe").default_service("ns/probe:8443").command::<Probe>();
    let mut names: Vec<&str> = command.get_subcommands().map(clap::Command::get_name).collect();
    names.sort_unstable();
    assert_eq!(names, ["hello", "policy", "serve", "webhook-config"]);
    let matches = command.clone().try_get_matches_from(["probe", "webhook-config"]).expect("parses");
    let cli = Cli::<ProbeFlags, ProbeCommand>::from_arg_matches(&matches).expect("parses");
    let Some(ShellCommand::WebhookConfig(args)) = cli.command else { panic!("webhook-config") };
    // The configuration's name defaults to the application's, the Service to the one it gave.
    assert_eq!(args.name, "probe");
    assert_eq!(args.service.as_deref(), Some("ns/probe:8443"));
    let pipelines = Probe { serve: ServeSettings::default(), setups: Arc::default() }.pipelines().expect("valid");
    let rendered = args.render(&pipelines).expect("renders");
    assert!(rendered.contains("\"name\": \"probe\""), "{rendered}");
    assert!(rendered.contains("\"namespace\": \"ns\""), "{rendered}");
    // An explicit URL wins over the default Service.
    let matches = command
        .clone()
        .try_get_matches_from(["probe", "webhook-config", "--url", "https://127.0.0.1:1"])
        .expect("parses");
    let cli = Cli::<ProbeFlags, ProbeCommand>::from_arg_matches(&matches).expect("parses");
    let Some(ShellCommand::WebhookConfig(args)) = cli.command else { panic!("webhook-config") };
    let rendered = args.render(&pipelines).expect("renders");
    assert!(rendered.contains("https://127.0.0.1:1/") && !rendered.contains("\"service\""), "{rendered}");
    // `policy` names every step that cannot be a policy: the probe's mutator is Rust code.
    let matches = command.try_get_matches_from(["probe", "policy"]).expect("parses");
    let cli = Cli::<ProbeFlags, ProbeCommand>::from_arg_matches(&matches).expect("parses");
    let Some(ShellCommand::Policy(args)) = cli.command else { panic!("policy") };
    let error = args.render(&pipelines).expect_err("a Rust mutator has no policy form").to_string();
    assert!(error.contains("cannot run as a policy") && error.contains("Rust code"), "{error}");
}

#[tokio::test]
async fn run_from_dispatches_to_the_plugins_command_and_reports_its_error() {
    let setups = Arc::new(AtomicUsize::new(0));
    let make = |setups: Arc<AtomicUsize>| move |flags: ProbeFlags| Ok(Probe { serve: flags.serve, setups });
    App::new("probe").run_from(["probe", "hello", "--to", "world"], make(setups.clone())).await.expect("hello world");
    let error = App::new("probe")
        .run_from(["probe", "hello", "--to", "moon"], make(setups.clone()))
        .await
        .expect_err("the command's error");
    assert_eq!(error.to_string(), "hello to `moon`?");
    let error = App::new("probe")
        .run_from(["probe", "--namespace-cache", "never"], |_: ProbeFlags| -> anyhow::Result<Probe> {
            anyhow::bail!("configuration broken")
        })
        .await
        .expect_err("configure's error");
    assert_eq!(error.to_string(), "configuration broken");
    assert_eq!(setups.load(Ordering::SeqCst), 0, "no command ran the serving set-up");
}

#[tokio::test]
async fn the_runtime_serves_what_setup_built_and_runs_the_started_hooks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    let settings = ServeSettings {
        webhook_addr: "127.0.0.1:0".parse().expect("address"),
        admin_addr: "127.0.0.1:0".parse().expect("address"),
        namespace_cache: NamespaceCacheMode::Never,
        write_ca: Some(ca.clone()),
        handshake_timeout: Duration::from_millis(1500),
        ..ServeSettings::default()
    };
    let setups = Arc::new(AtomicUsize::new(0));
    let plugin = Probe { serve: settings.clone(), setups: setups.clone() };
    let mut runtime = Runtime::new(settings);
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    runtime.on_started(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let pipelines = plugin.setup(&mut runtime).await.expect("set up");
    let running = runtime.start(pipelines).await.expect("starts");
    assert_eq!(setups.load(Ordering::SeqCst), 1);
    assert_eq!(started.load(Ordering::SeqCst), 1, "the hook ran once the server listened");
    let written = std::fs::read_to_string(&ca).expect("the CA was written");
    assert_eq!(Some(written.as_str()), running.ca_pem());
    let health = reqwest::get(format!("http://{}/livez", running.admin_addr())).await.expect("admin answers");
    assert!(health.status().is_success());
    running.shutdown_and_wait().await.expect("drains");
}

#[tokio::test]
async fn an_always_namespace_cache_without_a_cluster_refuses_to_start() {
    // The runtime's client is given, not discovered, so the test does not depend on the machine's
    // kubeconfig: a client for an address where nothing listens is a client all the same, so
    // instead the failure is the one remembered for every caller.
    let mut runtime = Runtime::new(ServeSettings::default());
    runtime.client = Some(Err("no cluster here".to_owned()));
    runtime.settings.namespace_cache = NamespaceCacheMode::Always;
    let Err(first) = runtime.client().await else { panic!("the remembered failure") };
    let first = first.to_string();
    assert!(first.contains("no cluster here"), "{first}");
    let error = runtime.start(Vec::new()).await.expect_err("always needs a cluster").to_string();
    assert!(error.contains("the namespace cache is `always`") && error.contains("no cluster here"), "{error}");
}
