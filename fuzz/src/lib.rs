//! What the fuzz targets share: the fixed catalog and sidecar-injector pipelines they drive, the
//! invariants every answer must keep, and a structure-aware pod generator for inputs that do not
//! decode as an `AdmissionReview`.
//!
//! A finding is a panic, an abort, a timeout or running out of memory (libFuzzer's panic hook
//! aborts on every panic, including those the pipeline would catch). The invariants are the
//! response contract, idempotence and patch hygiene every mutating webhook owes the API server,
//! checked by admission-kit's testing kit (`Harness::try_check`): the uid is echoed, the answer
//! encodes, the patch applies with an independent RFC 6902 implementation and gives the pipeline's
//! own result, a second run on the result changes nothing, and nothing of the original is lost.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use admission_kit::Pipeline;
use admission_kit::matcher::NamespaceView;
use admission_kit::pipeline::{ResourceTarget, StepResult};
use admission_kit::prelude::Operation;
use admission_kit::review::Review;
use admission_kit::testing::{Harness, review_json};
use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Map, Value, json};
use sidecar_injector::catalog::{Catalog, CatalogStore, parse_catalog};
use sidecar_injector::config::Config;
use sidecar_injector::settings::{CollisionPolicy, EnvNames, NativePlacement, UnknownSidecarPolicy};

/// The namespace label that opts a namespace in (the injector's default configuration).
pub const OPT_IN: (&str, &str) = ("kubernetes-sidecar-injector", "enabled");
/// The annotation prefix of the default configuration.
pub const PREFIX: &str = "sidecar-injector.expedia.com";

/// The catalog every pipeline serves: both Expedia fixtures' entries plus entries that reach each
/// branch of the injector (native sidecar, init containers, namespace allow-list, a name clash with
/// a common pod container, annotations under the injector's own prefix, labels).
const EXTRA_CATALOG: &str = r#"
- name: agent
  containers:
    - name: agent
      image: agent:1
      env: [{name: MODE, value: catalog}, {name: keep, value: "1"}, {name: FROM, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
      futureContainerField: {x: 1}
  volumes: [{name: agent-data, emptyDir: {}}]
  imagePullSecrets: [{name: regcred}]
  annotations: {agent.example.com/scrape: "true", shared: catalog}
  labels: {agent: "yes", app: catalog}
- name: logger
  containers: [{name: logger, image: logger:1}]
  initContainers: [{name: logger-init, image: logger:1}]
  volumes: [{name: logs, emptyDir: {}}]
  imagePullSecrets: [{name: regcred}]
- name: proxy
  nativeSidecar: true
  containers: [{name: proxy, image: proxy:1, restartPolicy: Never}]
  volumes: [{name: agent-data, emptyDir: {}}]
- name: privileged
  namespaces: [trusted]
  containers: [{name: privileged, image: p:1}]
- name: clash
  containers: [{name: app, image: clash:1}]
- name: annotator
  annotations: {sidecar-injector.expedia.com/from-catalog: "x$(y)", "sidecar-injector.expedia.com/": "empty key"}
  initContainers: [{name: "a/b~c", image: "weird:1"}]
- name: empty
"#;

/// Names the structured generator picks from: every catalog entry, container and volume name, and
/// a few that are in none of them.
pub const KNOWN_NAMES: &[&str] = &[
    "haystack-agent",
    "busybox",
    "busybox-init",
    "agent",
    "logger",
    "logger-init",
    "proxy",
    "privileged",
    "clash",
    "annotator",
    "empty",
    "app",
    "a/b~c",
    "agent-data",
    "agent-config",
    "logs",
    "regcred",
    "registry-credentials",
    "unknown",
    "",
    " agent ",
];

/// The fixed catalog (built once).
///
/// # Panics
/// If the embedded catalog texts do not parse (a bug in this crate, caught on first use).
#[must_use]
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    let fixture = include_str!("../../sidecar-injector/tests/data/catalog-2022.yaml");
    catalog.extend(parse_catalog(fixture, "catalog-2022.yaml").expect("the 2022 fixture parses"), "fixture").unwrap();
    catalog.extend(parse_catalog(EXTRA_CATALOG, "extra").expect("the extra catalog parses"), "extra").unwrap();
    catalog
}

/// One combination of the injector's knobs; bit `i` of the index flips knob `i` from its default,
/// so index 0 is the default configuration.
#[must_use]
pub fn config(knobs: u8) -> Config {
    let bit = |i: u8| knobs & (1 << i) != 0;
    let mut config = Config::default();
    config.unknown_sidecar = if bit(0) { UnknownSidecarPolicy::Warn } else { UnknownSidecarPolicy::Deny };
    config.on_collision = if bit(1) { CollisionPolicy::Skip } else { CollisionPolicy::Deny };
    config.override_pod_metadata = bit(2);
    config.env_names = if bit(3) { EnvNames::CIdentifier } else { EnvNames::AsIs };
    config.native_sidecar_placement = if bit(4) { NativePlacement::Last } else { NativePlacement::First };
    config.literal_env_values = !bit(5);
    config
}

/// How many knob combinations [`pipeline`] serves.
pub const KNOB_COMBINATIONS: u8 = 64;

static PIPELINES: LazyLock<Vec<Pipeline>> = LazyLock::new(|| {
    let store = Arc::new(CatalogStore::fixed(catalog()));
    (0..KNOB_COMBINATIONS)
        .map(|knobs| sidecar_injector::pipeline(&config(knobs), store.clone(), None).expect("the pipeline builds"))
        .collect()
});

/// The sidecar-injector pipeline for a knob combination (any `u8`, taken modulo
/// [`KNOB_COMBINATIONS`]).
#[must_use]
pub fn pipeline(knobs: u8) -> &'static Pipeline {
    &PIPELINES[usize::from(knobs % KNOB_COMBINATIONS)]
}

/// Labels of an opted-in namespace; the pipeline target gives them to every namespace.
#[must_use]
pub fn opted_in() -> BTreeMap<String, String> {
    BTreeMap::from([(OPT_IN.0.to_owned(), OPT_IN.1.to_owned())])
}

/// A current-thread tokio runtime with timers, for the router (its timeout layer needs one).
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a tokio runtime builds")
});

fn has_status(object: &Value) -> bool {
    object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(&format!("{PREFIX}/status")))
}

/// Runs `pipeline` on `review` in an opted-in namespace and checks every invariant with the
/// testing kit's [`Harness::try_check`], panicking (a finding) on a breach or on a step that
/// panicked. Also runs it with unknown namespace labels, as a server without cluster access does,
/// which must not panic either.
///
/// # Panics
/// On a breach: that is the point.
pub fn check_pipeline(pipeline: &Pipeline, review: &Review) {
    // No deadline: the pipeline needs no runtime, and a plain executor keeps each run cheap.
    let _unknown_labels = futures::executor::block_on(pipeline.review(review, NamespaceView::unknown()));
    let namespace = review.request.namespace.as_deref().unwrap_or_default();
    let mut harness = Harness::new(pipeline.clone()).namespace(namespace, [OPT_IN]);
    // A pod that already carries a status annotation is a reinvocation: the env step may then
    // replace env vars of the containers the status names (by design), so only a fresh injection
    // must keep every path of the original.
    if review.request.object.as_ref().is_some_and(has_status) {
        harness = harness.allow_removals();
    }
    let checked =
        futures::executor::block_on(harness.try_check(review)).unwrap_or_else(|violation| panic!("{violation}"));
    for step in &checked.outcome.steps {
        assert!(!matches!(step.result, StepResult::Panicked(_)), "step {} panicked: {:?}", step.step, step.result);
    }
}

/// A JSON value of bounded depth and size.
#[derive(Debug, Clone)]
pub struct Json(pub Value);

impl Json {
    fn build(u: &mut Unstructured<'_>, depth: u8) -> arbitrary::Result<Value> {
        let leaf_only = depth == 0;
        Ok(match u.int_in_range(0..=if leaf_only { 4 } else { 6 })? {
            0 => Value::Null,
            1 => Value::Bool(u.arbitrary()?),
            2 => Value::from(u.arbitrary::<i64>()?),
            3 => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
            4 => Value::String(Text::arbitrary(u)?.0),
            5 => {
                let len = u.int_in_range(0..=3)?;
                Value::Array((0..len).map(|_| Self::build(u, depth - 1)).collect::<arbitrary::Result<_>>()?)
            }
            _ => {
                let len = u.int_in_range(0..=3)?;
                let mut map = Map::new();
                for _ in 0..len {
                    map.insert(Text::arbitrary(u)?.0, Self::build(u, depth - 1)?);
                }
                Value::Object(map)
            }
        })
    }
}

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(Self::build(u, 3)?))
    }
}

/// Text that often carries what breaks webhooks: JSON pointer escapes, quotes, newlines, template
/// and shell syntax, `$` for kubelet's expansion, non-ASCII.
#[derive(Debug, Clone)]
pub struct Text(pub String);

const PIECES: &[&str] = &[
    "~",
    "~0",
    "~1",
    "/",
    "\"",
    "\\",
    "\n",
    "{{ .Values }}",
    "$(HOME)",
    "$$",
    "$",
    "`id`",
    "'",
    ",",
    " ",
    "-",
    ".",
    "_",
    "é",
    "\u{0}",
    "sidecar-injector.expedia.com/",
    "inject",
    "status",
    "a",
    "1",
];

impl<'a> Arbitrary<'a> for Text {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut out = String::new();
        for _ in 0..u.int_in_range(0..=4)? {
            if u.ratio(1, 3)? {
                out.push_str(u.arbitrary::<&str>()?);
            } else {
                out.push_str(u.choose(PIECES)?);
            }
        }
        Ok(Self(out))
    }
}

/// A name: usually one the catalog or the pod uses, sometimes any text.
#[derive(Debug, Clone)]
pub struct Name(pub String);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(if u.ratio(4, 5)? { (*u.choose(KNOWN_NAMES)?).to_owned() } else { Text::arbitrary(u)?.0 }))
    }
}

/// A field that may be missing, `null`, the expected list, or some other JSON.
#[derive(Debug, Arbitrary)]
pub enum Field<T> {
    /// Absent.
    Missing,
    /// `null`.
    Null,
    /// The expected shape.
    List(Vec<T>),
    /// Anything else.
    Other(Json),
}

impl<T> Field<T> {
    fn insert(&self, map: &mut Map<String, Value>, key: &str, item: impl Fn(&T) -> Value) {
        match self {
            Self::Missing => {}
            Self::Null => {
                map.insert(key.to_owned(), Value::Null);
            }
            Self::List(items) => {
                map.insert(key.to_owned(), Value::Array(items.iter().map(item).collect()));
            }
            Self::Other(json) => {
                map.insert(key.to_owned(), json.0.clone());
            }
        }
    }
}

/// An env var of a pod's container.
#[derive(Debug, Arbitrary)]
pub enum EnvVar {
    /// `{name, value}`.
    Value(Name, Text),
    /// `{name, valueFrom}`.
    ValueFrom(Name),
    /// Anything.
    Other(Json),
}

/// A container (or init container) of the pod.
#[derive(Debug, Arbitrary)]
pub struct Container {
    name: Option<Name>,
    image: Option<Text>,
    env: Field<EnvVar>,
    extra: Option<(Text, Json)>,
}

/// An item of `volumes` or `imagePullSecrets`.
#[derive(Debug, Arbitrary)]
pub struct Named {
    name: Option<Name>,
    extra: Option<(Text, Json)>,
}

/// The pod's `spec`.
#[derive(Debug, Arbitrary)]
pub enum Spec {
    /// No spec.
    Missing,
    /// A spec that is not a map.
    NotObject(Json),
    /// A map with the lists the injector touches.
    Object {
        /// `containers`.
        containers: Field<Container>,
        /// `initContainers`.
        init_containers: Field<Container>,
        /// `volumes`.
        volumes: Field<Named>,
        /// `imagePullSecrets`.
        image_pull_secrets: Field<Named>,
        /// Fields the injector does not know.
        extra: Vec<(Text, Json)>,
    },
}

/// The `inject` annotation.
#[derive(Debug, Arbitrary)]
pub enum Inject {
    /// Names joined by a separator.
    Names(Vec<Name>, u8),
    /// Any text.
    Raw(Text),
    /// Not a string at all.
    NotAString(Json),
}

/// The `status` annotation, the idempotence marker.
#[derive(Debug, Arbitrary)]
pub enum StatusAnnotation {
    /// A status as the injector writes it.
    Valid {
        /// Sidecar names.
        sidecars: Vec<Name>,
        /// Container names that receive env.
        containers: Vec<Name>,
    },
    /// Any text.
    Raw(Text),
    /// Not a string.
    NotAString(Json),
}

/// The request's namespace.
#[derive(Debug, Arbitrary)]
pub enum Namespace {
    /// An ordinary namespace (opted in, like every namespace in [`check_pipeline`]).
    Apps,
    /// The namespace the `privileged` sidecar is allowed in.
    Trusted,
    /// An excluded namespace.
    KubeSystem,
    /// A cluster-scoped request (no namespace).
    None,
    /// Any name.
    Named(Text),
}

/// The operation, CREATE most of the time.
#[derive(Debug, Arbitrary)]
pub enum Op {
    /// CREATE (three variants of four, so the injector usually runs).
    Create,
    /// CREATE.
    Create2,
    /// CREATE.
    Create3,
    /// Anything else.
    Other(u8),
}

/// A whole admission request, built from structure rather than bytes, so the fuzzer reaches the
/// injector's branches without first learning JSON.
#[derive(Debug, Arbitrary)]
pub struct PodCase {
    /// The knob combination (see [`config`]).
    pub knobs: u8,
    namespace: Namespace,
    operation: Op,
    uid: Option<Text>,
    not_a_pod: bool,
    sub_resource: Option<Text>,
    dry_run: bool,
    annotations_missing: bool,
    inject: Option<Inject>,
    status: Option<StatusAnnotation>,
    env: Vec<(Text, Text)>,
    annotations: Vec<(Text, Json)>,
    labels: Field<(Text, Text)>,
    metadata_extra: Option<(Text, Json)>,
    spec: Spec,
    extra: Vec<(Text, Json)>,
}

const SEPARATORS: &[&str] = &[",", ", ", " ,", ",,", " ", ";"];

impl PodCase {
    /// The pod's JSON.
    #[must_use]
    pub fn pod(&self) -> Value {
        let mut annotations = Map::new();
        for (k, v) in &self.annotations {
            annotations.insert(k.0.clone(), v.0.clone());
        }
        for (k, v) in &self.env {
            annotations.insert(format!("{PREFIX}/{}", k.0), Value::String(v.0.clone()));
        }
        match &self.inject {
            None => {}
            Some(Inject::Names(names, sep)) => {
                let sep = SEPARATORS[usize::from(*sep) % SEPARATORS.len()];
                let joined = names.iter().map(|n| n.0.as_str()).collect::<Vec<_>>().join(sep);
                annotations.insert(format!("{PREFIX}/inject"), Value::String(joined));
            }
            Some(Inject::Raw(text)) => {
                annotations.insert(format!("{PREFIX}/inject"), Value::String(text.0.clone()));
            }
            Some(Inject::NotAString(json)) => {
                annotations.insert(format!("{PREFIX}/inject"), json.0.clone());
            }
        }
        match &self.status {
            None => {}
            Some(StatusAnnotation::Valid { sidecars, containers }) => {
                let names = |v: &[Name]| v.iter().map(|n| n.0.clone()).collect::<Vec<_>>();
                let status = json!({"sidecars": names(sidecars), "containers": names(containers)});
                annotations.insert(format!("{PREFIX}/status"), Value::String(status.to_string()));
            }
            Some(StatusAnnotation::Raw(text)) => {
                annotations.insert(format!("{PREFIX}/status"), Value::String(text.0.clone()));
            }
            Some(StatusAnnotation::NotAString(json)) => {
                annotations.insert(format!("{PREFIX}/status"), json.0.clone());
            }
        }
        let mut metadata = Map::new();
        metadata.insert("name".to_owned(), json!("p"));
        if !self.annotations_missing {
            metadata.insert("annotations".to_owned(), Value::Object(annotations));
        }
        self.labels.insert(&mut metadata, "labels", |(k, v)| json!({ k.0.clone(): v.0.clone() }));
        if let Some((k, v)) = &self.metadata_extra {
            metadata.insert(k.0.clone(), v.0.clone());
        }
        let mut pod = Map::new();
        pod.insert("apiVersion".to_owned(), json!("v1"));
        pod.insert("kind".to_owned(), json!("Pod"));
        for (k, v) in &self.extra {
            pod.insert(k.0.clone(), v.0.clone());
        }
        pod.insert("metadata".to_owned(), Value::Object(metadata));
        match &self.spec {
            Spec::Missing => {}
            Spec::NotObject(json) => {
                pod.insert("spec".to_owned(), json.0.clone());
            }
            Spec::Object { containers, init_containers, volumes, image_pull_secrets, extra } => {
                let mut spec = Map::new();
                for (k, v) in extra {
                    spec.insert(k.0.clone(), v.0.clone());
                }
                containers.insert(&mut spec, "containers", container);
                init_containers.insert(&mut spec, "initContainers", container);
                volumes.insert(&mut spec, "volumes", named);
                image_pull_secrets.insert(&mut spec, "imagePullSecrets", named);
                pod.insert("spec".to_owned(), Value::Object(spec));
            }
        }
        Value::Object(pod)
    }

    /// The review of [`PodCase::pod`].
    #[must_use]
    pub fn review(&self) -> Review {
        let target = if self.not_a_pod {
            ResourceTarget::new("apps", "v1", "Deployment", "deployments")
        } else {
            ResourceTarget::new("", "v1", "Pod", "pods")
        };
        let mut builder = review_json(self.pod(), &target).dry_run(self.dry_run);
        builder = match &self.namespace {
            Namespace::Apps => builder.namespace("apps"),
            Namespace::Trusted => builder.namespace("trusted"),
            Namespace::KubeSystem => builder.namespace("kube-system"),
            Namespace::None => builder.cluster_scoped(),
            Namespace::Named(name) => builder.namespace(name.0.clone()),
        };
        builder = builder.operation(match self.operation {
            Op::Create | Op::Create2 | Op::Create3 => Operation::Create,
            Op::Other(n) => [Operation::Update, Operation::Delete, Operation::Connect][usize::from(n) % 3].clone(),
        });
        if let Some(uid) = &self.uid {
            builder = builder.uid(uid.0.clone());
        }
        if let Some(sub) = &self.sub_resource {
            builder = builder.sub_resource(sub.0.clone());
        }
        builder.build()
    }
}

fn container(c: &Container) -> Value {
    let mut map = Map::new();
    if let Some(name) = &c.name {
        map.insert("name".to_owned(), Value::String(name.0.clone()));
    }
    if let Some(image) = &c.image {
        map.insert("image".to_owned(), Value::String(image.0.clone()));
    }
    c.env.insert(&mut map, "env", |e| match e {
        EnvVar::Value(name, value) => json!({"name": name.0, "value": value.0}),
        EnvVar::ValueFrom(name) => json!({"name": name.0, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        EnvVar::Other(json) => json.0.clone(),
    });
    if let Some((k, v)) = &c.extra {
        map.insert(k.0.clone(), v.0.clone());
    }
    Value::Object(map)
}

fn named(n: &Named) -> Value {
    let mut map = Map::new();
    if let Some(name) = &n.name {
        map.insert("name".to_owned(), Value::String(name.0.clone()));
    }
    if let Some((k, v)) = &n.extra {
        map.insert(k.0.clone(), v.0.clone());
    }
    Value::Object(map)
}
