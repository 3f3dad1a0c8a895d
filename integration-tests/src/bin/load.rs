//! `cargo run --release -p integration-tests --bin load -- [PODS] [IN_FLIGHT] [MODE]`: creates `PODS`
//! pods (default 500) through the real API server, `IN_FLIGHT` at a time (default 16), each injected
//! by the sidecar injector in `MODE`: `webhook` (the injector serving its webhook), `policy` (the
//! `MutatingAdmissionPolicy` and `ValidatingAdmissionPolicy` that `sidecar-injector policy` renders
//! from the same configuration, no webhook registered) or `both` (the default: webhook mode, then
//! policy mode, on one control plane, each in its own namespace). `noop` is the control: a webhook
//! built with admission-kit that admits every pod unchanged, registered with the injector's selection
//! (so the same pods are sent to it), which gives the part of webhook mode's figures that is not the
//! injector's (the API server's webhook client, TLS, the machine); `annotate` is the same control
//! adding one annotation, which gives what the API server spends on any webhook's patch (applying
//! it, and running its mutating plugins again on the changed pod). `all` runs webhook, noop,
//! annotate and policy; modes may also be listed with commas (`webhook,noop`).
//!
//! It reports pods/s and the API server's own view of each run, read from its `/metrics` before and
//! after the run (the difference, so that both modes can share a control plane): the mutating
//! admission step of pod creation (`apiserver_admission_step_admission_duration_seconds`), the webhook
//! call (`apiserver_admission_webhook_admission_duration_seconds`), each admission plugin, and every
//! policy series the API server has. For the two webhook modes it also reads the webhook server's own
//! metrics: reviews answered, their mean time in the server, and the TLS handshakes (new connections
//! the API server opened). Each mode first creates 50 pods it does not measure. See
//! <https://kubernetes.io/docs/reference/instrumentation/metrics/>.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use admission_kit::reexports::async_trait;
use admission_kit::reexports::kube::{
    self, Api,
    api::{DeleteParams, PostParams},
};
use admission_kit::server::RunningServer;
use admission_kit::{Context, MutationResult, Mutator};
use admission_kit::{Pipeline, Step};
use futures::StreamExt as _;
use integration_tests::scenarios::{eventually, namespace};
use integration_tests::webhook::{client, install_policies, serve_and_register, start_injector};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use sidecar_injector::config::Config;

/// The first bucket of the API server's admission histograms: 5 ms.
const FIRST_BUCKET: &str = "0.005";

/// Pods created in each mode before its measured run.
const WARM_UP: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Webhook,
    Noop,
    Annotate,
    Policy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Webhook => "webhook",
            Mode::Noop => "noop",
            Mode::Annotate => "annotate",
            Mode::Policy => "policy",
        }
    }

    fn parse_list(arg: &str) -> anyhow::Result<Vec<Self>> {
        let mut modes = Vec::new();
        for name in arg.split(',') {
            modes.extend(match name {
                "webhook" => vec![Mode::Webhook],
                "policy" => vec![Mode::Policy],
                "noop" => vec![Mode::Noop],
                "annotate" => vec![Mode::Annotate],
                "both" => vec![Mode::Webhook, Mode::Policy],
                "all" => vec![Mode::Webhook, Mode::Noop, Mode::Annotate, Mode::Policy],
                other => anyhow::bail!("unknown mode `{other}`; known: webhook, noop, annotate, policy, both, all"),
            });
        }
        Ok(modes)
    }

    /// The injector's configuration in this mode: its own namespace label value, so that neither
    /// mechanism acts in the other mode's namespace, and its own object names.
    fn config(self) -> anyhow::Result<Config> {
        let overrides = [
            ("namespaceLabelValue".to_owned(), json!(format!("load-{}", self.name()))),
            ("webhookName".to_owned(), json!(format!("{}.sidecar-injector.expedia.com", self.name()))),
        ];
        Ok(Config::load(None, &overrides)?)
    }
}

/// What one mode's run measured.
struct Row {
    mode: Mode,
    pods: usize,
    in_flight: usize,
    rate: f64,
    admit: Histogram,
    validate: Histogram,
    webhook: Option<Histogram>,
    server: Option<ServerView>,
}

/// What the webhook server itself counted during a run.
struct ServerView {
    reviews: f64,
    mean_ms: f64,
    handshakes: f64,
    resumed: f64,
}

/// The controls' webhook: admits every pod unchanged, or with one annotation added.
struct Control {
    annotate: bool,
}

#[async_trait::async_trait]
impl Mutator<Pod> for Control {
    async fn mutate(&self, pod: &mut Pod, _: &mut Context<'_>) -> MutationResult {
        if self.annotate {
            pod.metadata.annotations.get_or_insert_default().insert("load.example.com/seen".into(), "yes".into());
        }
        Ok(())
    }
}

/// A control's pipeline: the injector's selection (namespace label and `inject` annotation), and
/// its reinvocation policy.
fn control_pipeline(config: &Config, annotate: bool) -> anyhow::Result<Pipeline> {
    Ok(Pipeline::builder(&config.webhook_name)
        .step(Step::new("control", Control { annotate }).when(sidecar_injector::selection(config)))
        .leave_alone(admission_kit::matcher::has_annotation("load.example.com/seen"))
        .reinvocation(config.reinvocation_policy)
        .build()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let in_flight: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let modes = Mode::parse_list(&args.next().unwrap_or_else(|| "both".to_owned()))?;
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    let mut rows = Vec::new();
    for mode in modes {
        let config = mode.config()?;
        let ns = format!("load-{}", mode.name());
        namespace(&client, &ns, &[("kubernetes-sidecar-injector", &config.namespace_label_value)]).await?;
        let configuration = format!("load-{}", mode.name());
        let server = match mode {
            Mode::Webhook => Some(start_injector(&client, &config, &configuration).await?.server),
            Mode::Noop | Mode::Annotate => Some(
                serve_and_register(&client, &[control_pipeline(&config, mode == Mode::Annotate)?], &configuration)
                    .await?,
            ),
            Mode::Policy => {
                install_policies(&client, &config).await?;
                None
            }
        };
        wait_until_serving(&client, mode, &ns).await?;
        rows.push(measure(&client, mode, &ns, pods, in_flight, server.as_ref()).await?);
        if let Some(server) = server {
            // Each mode runs with no other webhook registered.
            let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            configurations.delete(&configuration, &DeleteParams::default()).await?;
            server.shutdown_and_wait().await?;
        }
    }
    print_table(&rows);
    drop(plane);
    Ok(())
}

/// Creates the pods of one mode's run and reads the API server's metrics around it.
async fn measure(
    client: &kube::Client,
    mode: Mode,
    ns: &str,
    pods: usize,
    in_flight: usize,
    server: Option<&RunningServer>,
) -> anyhow::Result<Row> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // Unmeasured, so that neither mode pays for the API server's first pods.
    create_pods(&api, "warm-up", WARM_UP, in_flight).await;
    let before = Metrics::read(client).await?;
    let server_before = match server {
        Some(server) => Some(Metrics::read_server(server).await?),
        None => None,
    };
    let started = Instant::now();
    let results = create_pods(&api, "p", pods, in_flight).await;
    let elapsed = started.elapsed();
    let after = Metrics::read(client).await?;
    let server = match (server, server_before) {
        (Some(server), Some(before)) => Some(Metrics::read_server(server).await?.minus(&before).server_view()),
        _ => None,
    };
    let failed = results.iter().filter(|r| r.is_err()).count();
    let injected = results.iter().filter(|r| matches!(r, Ok(2))).count();
    #[allow(clippy::cast_precision_loss, reason = "pod counts are small")]
    let rate = pods as f64 / elapsed.as_secs_f64();
    println!(
        "{}: created {pods} pods in {elapsed:.2?} ({rate:.0} pods/s, {in_flight} in flight): {injected} injected, {failed} failed",
        mode.name()
    );
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        println!("  first failure: {e:#}");
    }
    let expected = if matches!(mode, Mode::Noop | Mode::Annotate) { 0 } else { pods };
    anyhow::ensure!(failed == 0 && injected == expected, "not every pod was created and handled as this mode does");
    let delta = after.minus(&before);
    // The 1.36 API server labels these series by operation, not by resource: during the run, the
    // pods are what is created (the count is checked).
    let pod_create = |s: &Sample| s.is_or_absent("resource", "pods") && s.is("operation", "CREATE");
    let step = "apiserver_admission_step_admission_duration_seconds";
    let admit = delta.histogram(step, |s| pod_create(s) && s.is("type", "admit"));
    let validate = delta.histogram(step, |s| pod_create(s) && s.is("type", "validate"));
    #[allow(clippy::cast_precision_loss, reason = "pod counts are small")]
    if (admit.count - pods as f64).abs() > 0.5 {
        println!("  note: {} mutating admission steps of a CREATE during the run, for {pods} pods", admit.count);
    }
    let webhook = (mode != Mode::Policy)
        .then(|| delta.histogram("apiserver_admission_webhook_admission_duration_seconds", pod_create));
    delta.print_details(mode, pod_create);
    if mode == Mode::Policy {
        after.print_policy_series();
    }
    Ok(Row { mode, pods, in_flight, rate, admit, validate, webhook, server })
}

/// Creates `count` pods, `in_flight` at a time: how many containers each has, or the failure.
async fn create_pods(api: &Api<Pod>, prefix: &str, count: usize, in_flight: usize) -> Vec<anyhow::Result<usize>> {
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let created = api.create(&PostParams::default(), &pod(&format!("{prefix}-{i}"))?).await?;
                Ok(created.spec.map_or(0, |s| s.containers.len()))
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}

/// Waits until a dry-run pod in `ns` is injected and one asking for an unknown sidecar is refused
/// (for the control: until a dry-run pod in `ns` reaches its webhook): webhook configurations and
/// policies take effect once the API server's informers have them.
async fn wait_until_serving(client: &kube::Client, mode: Mode, ns: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    if matches!(mode, Mode::Noop | Mode::Annotate) {
        // A control changes nothing a dry run would show reliably: that its webhook is called at
        // all is read from the API server's metrics.
        return eventually("the control webhook to be called", Duration::from_secs(60), || {
            let (pods, dry) = (pods.clone(), dry.clone());
            async move {
                let before = Metrics::read(client).await?;
                pods.create(&dry, &pod("warm-up")?).await?;
                let after = Metrics::read(client).await?.minus(&before);
                let calls = after.histogram("apiserver_admission_webhook_admission_duration_seconds", |_| true);
                Ok((calls.count > 0.0).then_some(()))
            }
        })
        .await;
    }
    eventually("the injector to act on a dry-run pod", Duration::from_secs(60), || {
        let (pods, dry) = (pods.clone(), dry.clone());
        async move {
            let created = pods.create(&dry, &pod("warm-up")?).await?;
            Ok((created.spec.map_or(0, |s| s.containers.len()) == 2).then_some(()))
        }
    })
    .await?;
    let mut unknown = pod("unknown")?;
    unknown.metadata.annotations =
        Some([("sidecar-injector.expedia.com/inject".to_owned(), "no-such-sidecar".to_owned())].into());
    eventually("the injector to refuse a dry-run pod", Duration::from_secs(60), || {
        let (pods, dry, unknown) = (pods.clone(), dry.clone(), unknown.clone());
        async move {
            match pods.create(&dry, &unknown).await {
                Err(kube::Error::Api(e)) if e.message.contains("no-such-sidecar") => Ok(Some(())),
                _ => Ok(None),
            }
        }
    })
    .await
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "sidecar-injector.expedia.com/inject": "haystack-agent",
            "sidecar-injector.expedia.com/api-key": name,
        }},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?)
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| mode | pods | in flight | pods/s | mean mutating-admission step (ms) | share ≤ 5 ms | mean validating-admission step (ms) | webhook calls per pod | mean webhook call (ms) | calls ≤ 5 ms | reviews per pod, server's count | mean review in the server (ms) | new TLS connections (resumed) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        #[allow(clippy::cast_precision_loss, reason = "pod counts are small")]
        let (calls, webhook, fast) = row.webhook.as_ref().map_or_else(
            || ("–".to_owned(), "–".to_owned(), "–".to_owned()),
            |h| {
                (
                    format!("{:.2}", h.count / row.pods as f64),
                    format!("{:.2}", h.mean_ms()),
                    format!("{:.1} %", h.share_in_first_bucket() * 100.0),
                )
            },
        );
        #[allow(clippy::cast_precision_loss, reason = "pod counts are small")]
        let (reviews, in_server, connections) = row.server.as_ref().map_or_else(
            || ("–".to_owned(), "–".to_owned(), "–".to_owned()),
            |v| {
                (
                    format!("{:.2}", v.reviews / row.pods as f64),
                    format!("{:.3}", v.mean_ms),
                    format!("{:.0} ({:.0})", v.handshakes, v.resumed.abs()),
                )
            },
        );
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.1} % | {:.2} | {calls} | {webhook} | {fast} | {reviews} | {in_server} | {connections} |",
            row.mode.name(),
            row.pods,
            row.in_flight,
            row.rate,
            row.admit.mean_ms(),
            row.admit.share_in_first_bucket() * 100.0,
            row.validate.mean_ms(),
        );
    }
}

/// One sample of the Prometheus text format: `name{labels} value`.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn is(&self, label: &str, value: &str) -> bool {
        self.labels.get(label).is_some_and(|v| v == value)
    }

    fn is_or_absent(&self, label: &str, value: &str) -> bool {
        self.labels.get(label).is_none_or(|v| v == value)
    }

    fn parse(line: &str) -> Option<Self> {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        let Some((name, rest)) = series.split_once('{') else {
            return Some(Self { name: series.to_owned(), labels: BTreeMap::new(), value });
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest.strip_suffix('}')?;
        while let Some((key, after)) = rest.split_once("=\"") {
            // A value ends at the first quote not escaped by a backslash.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            labels.insert(key.trim_start_matches(',').to_owned(), after[..end].replace("\\\"", "\""));
            rest = &after[end + 1..];
        }
        Some(Self { name: name.to_owned(), labels, value })
    }
}

/// The API server's metrics at one moment, or the difference between two moments.
struct Metrics(Vec<Sample>);

impl Metrics {
    async fn read(client: &kube::Client) -> anyhow::Result<Self> {
        let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
        Ok(Self::parse(&text))
    }

    /// The webhook server's own metrics, from its admin port.
    async fn read_server(server: &RunningServer) -> anyhow::Result<Self> {
        let text = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await?.text().await?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        Self(text.lines().filter(|l| !l.starts_with('#')).filter_map(Sample::parse).collect())
    }

    /// Reviews answered, their mean time in the server, and completed TLS handshakes, from a
    /// difference of the webhook server's metrics.
    fn server_view(&self) -> ServerView {
        let reviews = self.histogram("admission_kit_request_duration_seconds", |_| true);
        let handshakes = self.histogram("admission_kit_tls_handshake_duration_seconds", |_| true);
        let resumed = self.histogram("admission_kit_tls_handshake_duration_seconds", |s| s.is("kind", "resumed"));
        ServerView {
            reviews: reviews.count,
            mean_ms: reviews.mean_ms(),
            handshakes: handshakes.count,
            resumed: resumed.count,
        }
    }

    /// Counters and histograms grown since `before` (a series absent before counts from zero).
    fn minus(&self, before: &Self) -> Self {
        let key = |s: &Sample| (s.name.clone(), s.labels.clone());
        let earlier: BTreeMap<_, f64> = before.0.iter().map(|s| (key(s), s.value)).collect();
        Self(
            self.0
                .iter()
                .map(|s| Sample { value: s.value - earlier.get(&key(s)).copied().unwrap_or(0.0), ..s.clone() })
                .collect(),
        )
    }

    /// The histogram `name` summed over the series `select` keeps.
    fn histogram(&self, name: &str, select: impl Fn(&Sample) -> bool) -> Histogram {
        let total = |suffix: &str, extra: &dyn Fn(&Sample) -> bool| {
            self.0
                .iter()
                .filter(|s| s.name == format!("{name}{suffix}") && select(s) && extra(s))
                .map(|s| s.value)
                .sum()
        };
        Histogram {
            sum: total("_sum", &|_| true),
            count: total("_count", &|_| true),
            first_bucket: total("_bucket", &|s| s.is("le", FIRST_BUCKET)),
        }
    }

    /// Each admission plugin's mean on pod creation, and every policy series that moved.
    fn print_details(&self, mode: Mode, pod_create: impl Fn(&Sample) -> bool) {
        let plugins = "apiserver_admission_controller_admission_duration_seconds";
        let mut names: Vec<(&str, &str)> = self
            .0
            .iter()
            .filter(|s| s.name == format!("{plugins}_count") && pod_create(s) && s.value > 0.0)
            .filter_map(|s| Some((s.labels.get("name")?.as_str(), s.labels.get("type")?.as_str())))
            .collect();
        names.sort_unstable();
        names.dedup();
        println!("  {plugins} on pod CREATE ({}):", mode.name());
        for (plugin, kind) in names {
            let h = self.histogram(plugins, |s| pod_create(s) && s.is("name", plugin) && s.is("type", kind));
            // The admission plugins this compares, and any other that takes time.
            if plugin.contains("Admission") || h.mean_ms() >= 0.05 {
                println!("    {plugin} ({kind}): mean {:.3} ms over {} calls", h.mean_ms(), h.count);
            }
        }
        println!("  policy series that moved ({}):", mode.name());
        for s in self.0.iter().filter(|s| {
            ["admission_policy", "cel", "match_condition"].iter().any(|n| s.name.contains(n))
                && !s.name.ends_with("_bucket")
                && s.value != 0.0
        }) {
            println!("    {}{:?} +{}", s.name, s.labels, s.value);
        }
    }

    /// The names of every series about policies or CEL the API server has, moved or not.
    fn print_policy_series(&self) {
        let mut names: Vec<&str> = self
            .0
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| ["admission_policy", "cel", "match_condition"].iter().any(|x| n.contains(x)))
            .map(|n| ["_bucket", "_sum", "_count"].iter().find_map(|x| n.strip_suffix(x)).unwrap_or(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        println!("  the API server's series about policies and CEL: {}", names.join(", "));
    }
}

/// The sum, count and first bucket of a histogram.
struct Histogram {
    sum: f64,
    count: f64,
    first_bucket: f64,
}

impl Histogram {
    fn mean_ms(&self) -> f64 {
        if self.count == 0.0 { f64::NAN } else { self.sum / self.count * 1000.0 }
    }

    fn share_in_first_bucket(&self) -> f64 {
        if self.count == 0.0 { f64::NAN } else { self.first_bucket / self.count }
    }
}
