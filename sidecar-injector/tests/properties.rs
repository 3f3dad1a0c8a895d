//! Property tests of the whole injector: generated pods run through the real pipeline
//! (`sidecar_injector::pipeline`) over generated catalogs and generated policies.
//!
//! Generated pods carry what real pods carry and what naive injectors mishandle: an `inject`
//! annotation naming 0–3 sidecars (known and unknown, repeated, with spaces and empty items between
//! commas), env annotations whose values hold quotes, newlines, `{{ }}` and `$( )`, other annotation
//! and label keys with `/` and `~` (JSON pointer escapes), containers, init containers and volumes
//! present, absent or empty, names that collide with the catalog's, and fields k8s-openapi does not
//! model (`future*`). Generated catalogs have containers (with their own `env`, sometimes named like
//! an env annotation, sometimes with `restartPolicy` or unknown fields), init containers, volumes,
//! image pull secrets, annotations, labels, native sidecars and namespace restrictions; entries are
//! built directly or parsed from either Expedia format.
//!
//! Generated policies include the env rules: the catalog's own vars locked or not, an allow-list
//! narrowed to two keys or not, and refused vars denying the pod or skipped; annotation keys include
//! names on the built-in deny-list (`LD_PRELOAD`, `ld_preload`).
//!
//! Every patch is applied with `admission_kit::testing::apply_patch`, written independently of the
//! `json-patch` crate that derives it.
//!
//! Property 7 holds the injector to a reference model of its verdict, written here from the
//! documented behaviour: the exact denial message (the first violation in the order the injector
//! checks), the exact warnings, and the containers, init containers and status annotation it writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use admission_kit::pipeline::{Outcome, ResourceTarget};
use admission_kit::review::{ManagedFields, Review};
use admission_kit::testing::{Harness, apply_patch, changed_values, lost_paths, review_json};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sidecar_injector::catalog::{Catalog, CatalogStore, SidecarEntry, entries_from_value};
use sidecar_injector::config::Config;
use sidecar_injector::settings::{CollisionPolicy, EnvNames, NativePlacement, UnknownSidecarPolicy};

use admission_kit::testing::MIN_PROPERTY_CASES as MIN_CASES;
use admission_kit::testing::check_property;
use admission_kit::testing::strategies::{maybe_unknown, tricky_key, unknown_value};

/// The namespace every review is in; it is opted in.
const NAMESPACE: &str = "apps";
const PREFIX: &str = "sidecar-injector.expedia.com/";
const INJECT: &str = "sidecar-injector.expedia.com/inject";
const STATUS: &str = "sidecar-injector.expedia.com/status";

/// Object keys starting with this are fields k8s-openapi does not model.
const UNKNOWN_PREFIX: &str = "future";

/// The names a generated catalog may define (each is present or not).
const SIDECARS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
/// Names a pod may ask for that no catalog defines.
const UNKNOWN_SIDECARS: [&str; 3] = ["nope", "Alpha", "al pha"];

/// The pod's own containers, init containers and volumes (disjoint container pools, so that the
/// original pod never has a duplicate name).
const APP_CONTAINERS: [&str; 4] = ["app", "web", "proxy", "agent"];
const APP_INIT_CONTAINERS: [&str; 3] = ["setup", "migrate", "logger"];
const APP_VOLUMES: [&str; 3] = ["data", "config", "cache"];
/// Names catalog items sometimes take instead of a name of their own: they collide with the pod's
/// or with another sidecar's.
const SHARED_CONTAINERS: [&str; 4] = ["proxy", "agent", "logger", "setup"];
const SHARED_VOLUMES: [&str; 3] = ["config", "shared", "data"];

// ---------------------------------------------------------------------------------------------
// Generators: policies
// ---------------------------------------------------------------------------------------------

/// The policy fields of the configuration.
#[derive(Clone, Copy, Debug)]
struct Policy {
    on_collision: CollisionPolicy,
    unknown_sidecar: UnknownSidecarPolicy,
    env_names: EnvNames,
    placement: NativePlacement,
    override_pod_metadata: bool,
    env: EnvPolicy,
}

/// The env rules of the configuration (`annotationEnv`).
#[derive(Clone, Copy, Debug)]
struct EnvPolicy {
    /// `locked: ['*']` (the default) rather than `[]`.
    locked: bool,
    /// `allow: [ALLOWED…]` rather than `['*']`.
    narrow: bool,
    /// `onViolation: skip` rather than `deny`.
    skip: bool,
}

/// The keys a narrowed allow-list lets through.
const ALLOWED: [&str; 2] = ["api-key", "token"];

impl EnvPolicy {
    /// Whether annotation `key`, becoming env var `name`, may not reach a container that `had` a
    /// var of that name in the catalog: written from the documented rules, not from the crate.
    fn refuses(self, key: &str, name: &str, had: bool) -> bool {
        (self.narrow && !ALLOWED.contains(&key)) || name.to_ascii_uppercase().starts_with("LD_") || (self.locked && had)
    }
}

impl Policy {
    fn config(self) -> Config {
        let mut config = Config::default();
        config.on_collision = self.on_collision;
        config.unknown_sidecar = self.unknown_sidecar;
        config.env_names = self.env_names;
        config.native_sidecar_placement = self.placement;
        config.override_pod_metadata = self.override_pod_metadata;
        config.annotation_env = serde_json::from_value(json!({
            "locked": if self.env.locked { vec!["*"] } else { vec![] },
            "allow": if self.env.narrow { ALLOWED.to_vec() } else { vec!["*"] },
            "onViolation": if self.env.skip { "skip" } else { "deny" },
        }))
        .expect("env rules");
        config
    }

    /// The env var name an annotation key becomes.
    fn env_name(self, key: &str) -> String {
        match self.env_names {
            EnvNames::AsIs => key.to_owned(),
            EnvNames::CIdentifier => c_identifier(key),
        }
    }
}

/// `some-api-key` → `SOME_API_KEY`, written here from the documented rule rather than taken from
/// the crate: ASCII letters and digits upper-cased, everything else `_`, `_` before a leading digit.
fn c_identifier(key: &str) -> String {
    let out: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) { format!("_{out}") } else { out }
}

fn policy() -> impl Strategy<Value = Policy> {
    let env = (any::<bool>(), prop::bool::weighted(0.25), any::<bool>()).prop_map(|(locked, narrow, skip)| EnvPolicy {
        locked,
        narrow,
        skip,
    });
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), env).prop_map(
        |(skip, warn, c_names, last, override_pod_metadata, env)| Policy {
            on_collision: if skip { CollisionPolicy::Skip } else { CollisionPolicy::Deny },
            unknown_sidecar: if warn { UnknownSidecarPolicy::Warn } else { UnknownSidecarPolicy::Deny },
            env_names: if c_names { EnvNames::CIdentifier } else { EnvNames::AsIs },
            placement: if last { NativePlacement::Last } else { NativePlacement::First },
            override_pod_metadata,
            env,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Generators: values
// ---------------------------------------------------------------------------------------------

fn set(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object[key] = value;
    }
}

/// An env annotation key (`sidecar-injector.expedia.com/<key>`): mostly valid env var names, some
/// that two keys map to under `cIdentifier` (`api-key`, `API_KEY`), some only `cIdentifier` accepts.
fn env_key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["api-key", "region", "log.level", "API_KEY", "token", "HOME"]),
        1 => prop::sample::select(vec!["1st", "x/y", "with space", "", "inject/", "Region", "LD_PRELOAD", "ld_preload"]),
    ]
    .prop_map(str::to_owned)
}

/// An env value a template engine, a shell or a careless encoder would mangle.
fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "\"quoted\"",
            "it's",
            "line1\nline2\n",
            "{{ .Values.secret }}",
            "{{",
            "$(HOME)",
            "$$(ESCAPED)",
            "${SHELL}",
            "tab\there",
            "ünïcödé ✓",
            "back\\slash",
            "  padded  ",
            "{\"json\": [1, \"two\"]}",
            "a/b~c",
            "nul\u{0}byte",
            "crlf\r\n\u{2028}",
        ])
        .prop_map(str::to_owned),
        "[a-z\"'\\\\\n{}$() ]{0,10}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Generators: catalogs
// ---------------------------------------------------------------------------------------------

/// Env var names catalog containers set themselves (some equal env annotation names).
const CATALOG_ENV: [&str; 5] = ["api-key", "API_KEY", "region", "LOG", "token"];
/// Annotation and label keys catalogs add (some the pod has too, one under the injector's prefix).
const CATALOG_META: [&str; 7] =
    ["team", "a.io/x~1", "sidecar-injector.expedia.com/region", "injected-by", "x/y~", INJECT, STATUS];

/// A catalog container before it is named.
#[derive(Clone, Debug)]
struct ContainerParts {
    /// A shared name (likely to collide), else the container gets a name of its own.
    shared: Option<&'static str>,
    /// The container without its name.
    body: Value,
}

fn catalog_env_var() -> impl Strategy<Value = Value> {
    let source = prop_oneof![
        3 => env_value().prop_map(|v| json!({"value": v})),
        1 => Just(json!({"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})),
    ];
    (prop::sample::select(CATALOG_ENV.to_vec()), source).prop_map(|(name, mut var)| {
        var["name"] = json!(name);
        var
    })
}

prop_compose! {
    fn catalog_container()(
        shared in prop::option::weighted(0.2, prop::sample::select(SHARED_CONTAINERS.to_vec())),
        image in "[a-z]{1,3}:[0-9]",
        env in prop::option::of(prop::collection::vec(catalog_env_var(), 0..3)),
        restart_policy in prop::option::weighted(0.3, prop::sample::select(vec!["Always", "Never"])),
        mount in any::<bool>(),
        unknown in maybe_unknown(),
    ) -> ContainerParts {
        let mut body = json!({"image": image});
        set(&mut body, "env", env.map(|vars| Value::Array(dedup_by_name(vars))));
        set(&mut body, "restartPolicy", restart_policy.map(Value::from));
        if mount {
            body["volumeMounts"] = json!([{"name": "config", "mountPath": "/etc/side"}]);
        }
        set(&mut body, "futureField", unknown);
        ContainerParts { shared, body }
    }
}

/// How an entry reaches the catalog.
#[derive(Clone, Copy, Debug)]
enum Build {
    /// `SidecarEntry::default()` with fields assigned.
    Direct,
    /// Parsed from a 2022-format list.
    List2022,
    /// Parsed from a 2019-format `sidecars:` map.
    Map2019,
}

#[derive(Clone, Debug)]
struct EntryParts {
    containers: Vec<ContainerParts>,
    init_containers: Vec<ContainerParts>,
    volumes: Vec<(Option<&'static str>, Option<Value>)>,
    pull_secrets: Vec<&'static str>,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    native: bool,
    namespaces: Option<Vec<String>>,
    build: Build,
}

prop_compose! {
    fn entry_parts()(
        containers in prop::collection::vec(catalog_container(), 0..3),
        init_containers in prop::collection::vec(catalog_container(), 0..2),
        volumes in prop::collection::vec(
            (prop::option::weighted(0.3, prop::sample::select(SHARED_VOLUMES.to_vec())), maybe_unknown()),
            0..3,
        ),
        pull_secrets in prop::collection::vec(prop::sample::select(vec!["regcred", "mirror"]), 0..3),
        annotations in prop::collection::btree_map(
            prop::sample::select(CATALOG_META.to_vec()).prop_map(str::to_owned), "[a-z]{0,3}", 0..3),
        labels in prop::collection::btree_map(
            prop::sample::select(CATALOG_META.to_vec()).prop_map(str::to_owned), "[a-z]{0,3}", 0..3),
        native in any::<bool>(),
        namespaces in prop::option::weighted(0.1, prop::sample::select(vec![
            vec!["apps".to_owned()],
            vec!["other".to_owned()],
            vec!["other".to_owned(), "apps".to_owned()],
        ])),
        build in prop::sample::select(vec![Build::Direct, Build::List2022, Build::Map2019]),
    ) -> EntryParts {
        EntryParts { containers, init_containers, volumes, pull_secrets, annotations, labels, native, namespaces, build }
    }
}

/// Keeps the first item of each name.
fn dedup_by_name(items: Vec<Value>) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    items.into_iter().filter(|item| seen.insert(item["name"].as_str().unwrap_or_default().to_owned())).collect()
}

/// The catalog entry `name` made of `parts`: container, volume and pull-secret names are unique
/// within the entry (the catalog parser requires it), and may collide with the pod's or another
/// entry's (the loader refuses that across files, but a catalog built in memory, like a namespace
/// `ConfigMap` next to the administrator's catalog, can still meet the pod's names).
fn build_entry(name: &str, parts: EntryParts) -> SidecarEntry {
    let mut names = BTreeSet::new();
    let mut containers = |kind: &str, list: Vec<ContainerParts>| -> Vec<Value> {
        let mut out = Vec::new();
        for (i, c) in list.into_iter().enumerate() {
            let container_name = c.shared.map_or_else(|| format!("{name}-{kind}{i}"), str::to_owned);
            if names.insert(container_name.clone()) {
                let mut body = c.body;
                body["name"] = json!(container_name);
                out.push(body);
            }
        }
        out
    };
    let main = containers("c", parts.containers);
    let init = containers("i", parts.init_containers);
    let volumes = parts.volumes.into_iter().enumerate().map(|(i, (shared, unknown))| {
        let mut volume = json!({"name": shared.map_or_else(|| format!("{name}-v{i}"), str::to_owned), "emptyDir": {}});
        set(&mut volume, "futureVolumeField", unknown);
        volume
    });
    let volumes = dedup_by_name(volumes.collect());
    // Unique within the entry, as the catalog parser requires; shared across entries.
    let pull_secrets = dedup_by_name(parts.pull_secrets.iter().map(|s| json!({"name": s})).collect());
    let mut fields = json!({});
    let mut put = |key: &str, value: Value, empty: bool| {
        if !empty {
            fields[key] = value;
        }
    };
    put("containers", json!(main), main.is_empty());
    put("initContainers", json!(init), init.is_empty());
    put("volumes", json!(volumes), volumes.is_empty());
    put("imagePullSecrets", json!(pull_secrets), pull_secrets.is_empty());
    put("annotations", json!(parts.annotations), parts.annotations.is_empty());
    put("labels", json!(parts.labels), parts.labels.is_empty());
    put("nativeSidecar", json!(parts.native), !parts.native);
    put("namespaces", json!(parts.namespaces), parts.namespaces.is_none());
    match parts.build {
        Build::Direct => {
            let mut entry = SidecarEntry::default();
            name.clone_into(&mut entry.name);
            entry.containers = main;
            entry.init_containers = init;
            entry.volumes = volumes;
            entry.image_pull_secrets = pull_secrets;
            entry.annotations = parts.annotations;
            entry.labels = parts.labels;
            entry.native_sidecar = parts.native;
            entry.namespaces = parts.namespaces;
            entry
        }
        Build::List2022 | Build::Map2019 => {
            let document = if matches!(parts.build, Build::List2022) {
                fields["name"] = json!(name);
                json!([fields])
            } else {
                json!({"sidecars": [{"name": name, "sidecar": fields}]})
            };
            let mut entries = entries_from_value(&document, "generated").expect("a generated catalog parses");
            assert_eq!(entries.len(), 1, "one entry per generated document");
            entries.remove(0)
        }
    }
}

/// A catalog: each known name is defined or not.
fn catalog() -> impl Strategy<Value = Vec<SidecarEntry>> {
    prop::collection::vec(prop::option::weighted(0.85, entry_parts()), SIDECARS.len()).prop_map(|parts| {
        SIDECARS.iter().zip(parts).filter_map(|(name, parts)| parts.map(|p| build_entry(name, p))).collect()
    })
}

/// An entry as catalog JSON, for failure messages.
fn entry_json(entry: &SidecarEntry) -> Value {
    json!({
        "name": entry.name,
        "containers": entry.containers,
        "initContainers": entry.init_containers,
        "volumes": entry.volumes,
        "imagePullSecrets": entry.image_pull_secrets,
        "annotations": entry.annotations,
        "labels": entry.labels,
        "nativeSidecar": entry.native_sidecar,
        "namespaces": entry.namespaces,
    })
}

// ---------------------------------------------------------------------------------------------
// Generators: pods
// ---------------------------------------------------------------------------------------------

/// The `inject` annotation: 0–3 names (known, unknown, repeated) between sloppy separators.
fn inject_value() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        6 => prop::sample::select(SIDECARS.to_vec()),
        1 => prop::sample::select(UNKNOWN_SIDECARS.to_vec()),
    ];
    (
        prop::collection::vec(name, 0..=3),
        prop::collection::vec(prop::sample::select(vec![",", ", ", " , ", " ,", ",,", ",\t"]), 3),
        prop::sample::select(vec!["", " ", ","]),
        prop::sample::select(vec!["", " ", ","]),
    )
        .prop_map(|(names, separators, lead, trail)| {
            let mut value = lead.to_owned();
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    value.push_str(separators[i - 1]);
                }
                value.push_str(name);
            }
            value.push_str(trail);
            value
        })
}

/// A container of the pod: maybe its own env (named like env annotations) and an unknown field.
fn app_container(pool: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(pool),
        "[a-z]{1,3}:[0-9]",
        prop::option::of(prop::collection::vec(
            (prop::sample::select(vec!["region", "api-key", "HOME", "PATH"]), "[a-z$(){}]{0,4}"),
            0..3,
        )),
        maybe_unknown(),
    )
        .prop_map(|(name, image, env, unknown)| {
            let mut container = json!({"name": name, "image": image});
            set(
                &mut container,
                "env",
                env.map(|vars| {
                    Value::Array(dedup_by_name(vars.into_iter().map(|(n, v)| json!({"name": n, "value": v})).collect()))
                }),
            );
            set(&mut container, "futureContainerField", unknown);
            container
        })
}

/// A list of the pod spec: absent, `[]`, or a few uniquely named items.
fn app_list(item: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop::collection::vec(item, 0..3).prop_map(|items| Value::Array(dedup_by_name(items))))
}

fn app_volume() -> impl Strategy<Value = Value> {
    (prop::sample::select(APP_VOLUMES.to_vec()), maybe_unknown()).prop_map(|(name, unknown)| {
        let mut volume = json!({"name": name, "emptyDir": {}});
        set(&mut volume, "futureVolumeField", unknown);
        volume
    })
}

/// A key of the pod's other annotations and labels: tricky, or one a catalog also sets.
fn pod_meta_key() -> impl Strategy<Value = String> {
    let lookalikes =
        vec!["team", "injected-by", "sidecar-injector.expedia.com.x/y", "x.sidecar-injector.expedia.com/z"];
    prop_oneof![3 => tricky_key(), 1 => prop::sample::select(lookalikes).prop_map(str::to_owned)]
}

prop_compose! {
    /// A pod as raw JSON, with unknown fields at the top level, in `metadata`, in `spec` and in
    /// list items.
    fn pod()(
        inject in prop::option::weighted(0.9, inject_value()),
        env in prop::collection::btree_map(env_key(), env_value(), 0..3),
        other in prop::option::of(prop::collection::btree_map(pod_meta_key(), "[a-z0-9]{0,3}", 0..3)),
        labels in prop::option::of(prop::collection::btree_map(pod_meta_key(), "[a-z0-9]{0,2}", 0..3)),
        containers in app_list(app_container(&APP_CONTAINERS)),
        init_containers in app_list(app_container(&APP_INIT_CONTAINERS)),
        volumes in app_list(app_volume()),
        pull_secrets in prop::option::of(prop::collection::btree_set(prop::sample::select(vec!["regcred", "own"]), 0..3)),
        has_spec in prop::bool::weighted(0.95),
        unknown_top in maybe_unknown(),
        unknown_meta in maybe_unknown(),
        unknown_spec in maybe_unknown(),
    ) -> Value {
        let mut annotations: Option<Map<String, Value>> = other.map(|m| m.into_iter().map(|(k, v)| (k, json!(v))).collect());
        if inject.is_some() || !env.is_empty() {
            let map = annotations.get_or_insert_default();
            for (key, value) in env {
                map.insert(format!("{PREFIX}{key}"), json!(value));
            }
            if let Some(inject) = inject {
                map.insert(INJECT.to_owned(), json!(inject));
            }
        }
        let mut metadata = json!({"name": "p", "namespace": NAMESPACE});
        set(&mut metadata, "annotations", annotations.map(Value::Object));
        set(&mut metadata, "labels", labels.map(|m| json!(m)));
        set(&mut metadata, "futureMeta", unknown_meta);
        let mut spec = json!({});
        set(&mut spec, "containers", containers);
        set(&mut spec, "initContainers", init_containers);
        set(&mut spec, "volumes", volumes);
        set(&mut spec, "imagePullSecrets", pull_secrets.map(|s| s.iter().map(|n| json!({"name": n})).collect()));
        set(&mut spec, "futureField", unknown_spec);
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata});
        if has_spec {
            pod["spec"] = spec;
        }
        set(&mut pod, "futureTop", unknown_top);
        pod
    }
}

/// One generated case: a policy, a catalog and a pod.
#[derive(Clone)]
struct Case {
    policy: Policy,
    entries: Vec<SidecarEntry>,
    pod: Value,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let catalog: Vec<Value> = self.entries.iter().map(entry_json).collect();
        write!(f, "\n  policy: {:?}\n  catalog: {}\n  pod: {}\n", self.policy, Value::Array(catalog), self.pod)
    }
}

fn case() -> impl Strategy<Value = Case> {
    (policy(), catalog(), pod()).prop_map(|(policy, entries, pod)| Case { policy, entries, pod })
}

// ---------------------------------------------------------------------------------------------
// Running the pipeline
// ---------------------------------------------------------------------------------------------

fn target() -> ResourceTarget {
    ResourceTarget::of::<Pod>()
}

/// A CREATE review of `pod` in the opted-in namespace.
fn review(pod: &Value) -> Review {
    review_json(pod.clone(), &target()).namespace(NAMESPACE).build()
}

/// The real pipeline over a fixed catalog of `entries`, in a harness that knows the namespace is
/// opted in; also the catalog store, to look at the catalog after the runs.
fn harness(policy: Policy, entries: &[SidecarEntry]) -> (Harness, Arc<CatalogStore>) {
    harness_with(&policy.config(), entries)
}

/// [`harness`] with a whole configuration.
fn harness_with(config: &Config, entries: &[SidecarEntry]) -> (Harness, Arc<CatalogStore>) {
    let mut catalog = Catalog::new();
    catalog.extend(entries.to_vec(), "test").expect("generated entries have distinct names");
    let store = Arc::new(CatalogStore::fixed(catalog));
    let pipeline = sidecar_injector::pipeline(config, store.clone(), None).expect("the pipeline builds");
    (Harness::new(pipeline).namespace(NAMESPACE, [("kubernetes-sidecar-injector", "enabled")]), store)
}

/// The answer's patch applied to `original` by the independent implementation.
fn patched(original: &Value, outcome: &Outcome) -> Result<Value, TestCaseError> {
    let Some(patch) = &outcome.answer.patch else { return Ok(original.clone()) };
    let patch = serde_json::to_value(patch).expect("a patch encodes");
    apply_patch(original, &patch)
        .map_err(|e| TestCaseError::fail(format!("the patch does not apply: {e}\npatch: {patch}")))
}

/// A case's run: the outcome, and for an admitted pod the patched result.
struct Ran {
    outcome: Outcome,
    result: Option<Value>,
}

fn run(runtime: &tokio::runtime::Runtime, harness: &Harness, pod: &Value) -> Result<Ran, TestCaseError> {
    let outcome = runtime.block_on(harness.run(&review(pod)));
    let result = if outcome.answer.allowed { Some(patched(pod, &outcome)?) } else { None };
    Ok(Ran { outcome, result })
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// Counts how many cases exercised what, and fails the test when a property held only vacuously.
#[derive(Debug, Default)]
struct Coverage {
    cases: AtomicUsize,
    injected: AtomicUsize,
    denied: AtomicUsize,
}

impl Coverage {
    fn record(&self, ran: &Ran) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        if !ran.outcome.answer.allowed {
            self.denied.fetch_add(1, Ordering::Relaxed);
        } else if ran.result.as_ref().and_then(status_of).is_some_and(|s| !s.containers.is_empty()) {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn assert_meaningful(&self, test: &str) {
        let (cases, injected, denied) = (
            self.cases.load(Ordering::Relaxed),
            self.injected.load(Ordering::Relaxed),
            self.denied.load(Ordering::Relaxed),
        );
        println!("{test}: {cases} cases, {injected} injected containers, {denied} denied");
        assert!(cases >= MIN_CASES as usize, "{test}: only {cases} cases ran");
        assert!(injected * 4 >= cases, "{test}: too few cases injected anything ({injected} of {cases})");
        assert!(denied * 20 >= cases, "{test}: too few cases were denied ({denied} of {cases})");
    }
}

// ---------------------------------------------------------------------------------------------
// Reading results
// ---------------------------------------------------------------------------------------------

/// The status annotation, parsed here (not with the crate's type).
#[derive(Debug)]
struct StatusView {
    sidecars: Vec<String>,
    containers: Vec<String>,
}

fn status_of(pod: &Value) -> Option<StatusView> {
    let text = pod.pointer("/metadata/annotations")?.get(STATUS)?.as_str()?;
    let status: Value = serde_json::from_str(text).ok()?;
    let strings = |key: &str| -> Vec<String> {
        status[key].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    Some(StatusView { sidecars: strings("sidecars"), containers: strings("containers") })
}

/// The items of `spec.<list>`.
fn items<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn name_of(item: &Value) -> &str {
    item.get("name").and_then(Value::as_str).unwrap_or_default()
}

fn names_in(pod: &Value, list: &str) -> Vec<String> {
    items(pod, list).iter().map(|i| name_of(i).to_owned()).collect()
}

/// The container named `name` in `containers` or `initContainers`, and which list it is in.
fn container<'a>(pod: &'a Value, name: &str) -> Option<(&'static str, &'a Value)> {
    ["containers", "initContainers"]
        .into_iter()
        .find_map(|list| items(pod, list).iter().find(|c| name_of(c) == name).map(|c| (list, c)))
}

fn env_list(container: &Value) -> &[Value] {
    container.get("env").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The env vars the annotations of `pod` ask for: env var name → (annotation key, value).
fn expected_env(pod: &Value, policy: Policy) -> BTreeMap<String, (String, String)> {
    let mut env = BTreeMap::new();
    let Some(annotations) = pod.pointer("/metadata/annotations").and_then(Value::as_object) else { return env };
    for (key, value) in annotations {
        let Some(short) = key.strip_prefix(PREFIX) else { continue };
        if key == INJECT || key == STATUS || short.is_empty() {
            continue;
        }
        // Values are written with `$` doubled so that kubelet's `$(VAR)` expansion gives back
        // exactly the annotation's bytes.
        env.insert(policy.env_name(short), (short.to_owned(), value.as_str().unwrap_or_default().replace('$', "$$")));
    }
    env
}

/// The names requested by the `inject` annotation that the catalog has, in order, first of each.
fn requested_known(pod: &Value, entries: &[SidecarEntry]) -> Vec<String> {
    let request = pod.pointer("/metadata/annotations").and_then(|a| a.get(INJECT)).and_then(Value::as_str);
    let mut out: Vec<String> = Vec::new();
    for name in request.unwrap_or_default().split(',').map(str::trim) {
        if entries.iter().any(|e| e.name == name) && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// One step of a path that follows list items by name, so that it survives insertions.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Named(String),
    Index(usize),
}

/// Every unknown field of `value` as (path, value); list items with a name are addressed by name.
fn unknown_fields(value: &Value) -> Vec<(Vec<Step>, Value)> {
    fn walk(value: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, Value)>) {
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    path.push(Step::Key(k.clone()));
                    if k.starts_with(UNKNOWN_PREFIX) {
                        out.push((path.clone(), v.clone()));
                    } else {
                        walk(v, path, out);
                    }
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let name = v.get("name").and_then(Value::as_str);
                    path.push(name.map_or(Step::Index(i), |n| Step::Named(n.to_owned())));
                    walk(v, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn resolve<'a>(mut value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    for step in path {
        value = match step {
            Step::Key(k) => value.get(k)?,
            Step::Index(i) => value.get(i)?,
            Step::Named(n) => value.as_array()?.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(n))?,
        };
    }
    Some(value)
}

fn show(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => format!("/{}", escape(k)),
            Step::Named(n) => format!("/[name={n}]"),
            Step::Index(i) => format!("/{i}"),
        })
        .collect()
}

/// The catalog item the injector took for the injected `name` in `list`: the first of that name
/// among the injected sidecars' `field` items, in injection order. Returns it with its entry.
fn catalog_item<'a>(
    entries: &'a [SidecarEntry],
    status: &StatusView,
    name: &str,
    fields: &[fn(&SidecarEntry) -> &Vec<Value>],
) -> Option<(&'a SidecarEntry, &'a Value)> {
    status.sidecars.iter().filter_map(|s| entries.iter().find(|e| &e.name == s)).find_map(|entry| {
        fields.iter().find_map(|field| field(entry).iter().find(|c| name_of(c) == name)).map(|item| (entry, item))
    })
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Property 1: the answer is a denial with a message, or its patch applies to the original (with an
/// implementation independent of the one that made it) and gives exactly the pipeline's result.
#[test]
fn patch_applies_and_gives_the_pipelines_result() {
    let runtime = current_thread();
    let coverage = Coverage::default();
    check_property(case(), |case| {
        let (harness, _) = harness(case.policy, &case.entries);
        let ran = run(&runtime, &harness, &case.pod)?;
        coverage.record(&ran);
        let answer = &ran.outcome.answer;
        if !answer.allowed {
            prop_assert!(!answer.message.trim().is_empty(), "a denial without a message");
            prop_assert!(answer.patch.is_none(), "a denial with a patch");
            return Ok(());
        }
        let result = ran.result.expect("admitted");
        prop_assert_eq!(Some(&result), ran.outcome.mutated.as_ref(), "patch: {:?}", answer.patch);
        Ok(())
    });
    coverage.assert_meaningful("property 1");
}

/// Property 2: an admitted pod has unique container names across `containers` and
/// `initContainers`, unique volume names, and unique env names within each container.
#[test]
fn admitted_pods_have_unique_names() {
    let runtime = current_thread();
    let coverage = Coverage::default();
    check_property(case(), |case| {
        let (harness, _) = harness(case.policy, &case.entries);
        let ran = run(&runtime, &harness, &case.pod)?;
        coverage.record(&ran);
        let Some(result) = &ran.result else { return Ok(()) };
        let unique = |names: Vec<String>, what: &str| -> Result<(), TestCaseError> {
            let mut seen = BTreeSet::new();
            for name in names {
                prop_assert!(seen.insert(name.clone()), "{} `{}` twice in {}", what, name, result);
            }
            Ok(())
        };
        let mut containers = names_in(result, "containers");
        containers.extend(names_in(result, "initContainers"));
        unique(containers, "container")?;
        unique(names_in(result, "volumes"), "volume")?;
        unique(names_in(result, "imagePullSecrets"), "image pull secret")?;
        for list in ["containers", "initContainers"] {
            for c in items(result, list) {
                let names = env_list(c).iter().map(|e| name_of(e).to_owned()).collect();
                unique(names, &format!("in container `{}`, env var", name_of(c)))?;
            }
        }
        Ok(())
    });
    coverage.assert_meaningful("property 2");
}

/// Property 3: nothing of the original is lost — no path of the original is missing from the
/// result, every unknown field of the pod is still there (following list items by name), and
/// every injected container and volume carries every field of its catalog item, unknown ones
/// included (`env` as merged with the annotations, `restartPolicy: Always` on native sidecars).
#[test]
fn nothing_of_the_pod_or_the_catalog_is_lost() {
    let runtime = current_thread();
    let coverage = Coverage::default();
    check_property(case(), |case| {
        let (harness, _) = harness(case.policy, &case.entries);
        let ran = run(&runtime, &harness, &case.pod)?;
        coverage.record(&ran);
        let Some(result) = &ran.result else { return Ok(()) };
        let original = &case.pod;
        let lost = lost_paths(original, result);
        prop_assert!(lost.is_empty(), "paths of the original lost: {:?}\nresult: {}", lost, result);
        // Nor does any value of the original change, but the pod's annotations and labels when
        // catalog metadata may override them (`overridePodMetadata`).
        let overridable = |path: &String| {
            case.policy.override_pod_metadata
                && (path.starts_with("/metadata/annotations/") || path.starts_with("/metadata/labels/"))
        };
        let changed: Vec<String> = changed_values(original, result).into_iter().filter(|p| !overridable(p)).collect();
        prop_assert!(changed.is_empty(), "values of the original changed: {:?}\nresult: {}", changed, result);
        for (path, value) in unknown_fields(original) {
            prop_assert_eq!(resolve(result, &path), Some(&value), "unknown field {} changed or lost", show(&path));
        }
        let Some(status) = status_of(result) else { return Ok(()) };
        let env = expected_env(result, case.policy);
        for name in &status.containers {
            let fields: [fn(&SidecarEntry) -> &Vec<Value>; 2] = [|e| &e.containers, |e| &e.init_containers];
            let Some((entry, source)) = catalog_item(&case.entries, &status, name, &fields) else {
                return Err(TestCaseError::fail(format!(
                    "status names container `{name}`, which no injected sidecar has"
                )));
            };
            let Some((placed_in, injected)) = container(result, name) else {
                return Err(TestCaseError::fail(format!("status names container `{name}`, which the pod lacks")));
            };
            let native = entry.native_sidecar && entry.containers.contains(source);
            let expected_list =
                if native || !entry.containers.contains(source) { "initContainers" } else { "containers" };
            prop_assert_eq!(placed_in, expected_list, "container `{}` injected into the wrong list", name);
            for (key, value) in source.as_object().expect("catalog containers are maps") {
                match key.as_str() {
                    "env" => {
                        // Every catalog var no annotation replaced (none set, or refused) is kept.
                        let kept = |v: &&Value| {
                            env.get(name_of(v)).is_none_or(|(key, _)| case.policy.env.refuses(key, name_of(v), true))
                        };
                        for var in value.as_array().into_iter().flatten().filter(kept) {
                            prop_assert!(
                                env_list(injected).contains(var),
                                "catalog env var {} of `{}` lost: {}",
                                var,
                                name,
                                injected
                            );
                        }
                    }
                    "restartPolicy" if native => {
                        prop_assert_eq!(injected.get(key), Some(&json!("Always")), "native sidecar `{}`", name);
                    }
                    _ => prop_assert_eq!(
                        injected.get(key),
                        Some(value),
                        "field `{}` of catalog container `{}`",
                        key,
                        name
                    ),
                }
            }
            if native {
                prop_assert_eq!(injected.get("restartPolicy"), Some(&json!("Always")), "native sidecar `{}`", name);
            }
        }
        let original_volumes = names_in(original, "volumes");
        for volume in items(result, "volumes").iter().filter(|v| !original_volumes.iter().any(|o| o == name_of(v))) {
            let fields: [fn(&SidecarEntry) -> &Vec<Value>; 1] = [|e| &e.volumes];
            let source = catalog_item(&case.entries, &status, name_of(volume), &fields).map(|(_, v)| v);
            prop_assert_eq!(Some(volume), source, "injected volume differs from the catalog's");
        }
        Ok(())
    });
    coverage.assert_meaningful("property 3");
}

/// Property 4: running again on an admitted result (same namespace) admits it without a patch.
#[test]
fn second_pass_changes_nothing() {
    let runtime = current_thread();
    let coverage = Coverage::default();
    check_property(case(), |case| {
        let (harness, _) = harness(case.policy, &case.entries);
        let ran = run(&runtime, &harness, &case.pod)?;
        coverage.record(&ran);
        let Some(result) = &ran.result else { return Ok(()) };
        let second = runtime.block_on(harness.run(&review(result)));
        prop_assert!(
            second.answer.allowed,
            "the second pass was denied: {}\nresult: {}",
            second.answer.message,
            result
        );
        prop_assert!(
            !second.answer.is_patched(),
            "the second pass patched again: {}\nresult: {}",
            serde_json::to_string(&second.answer.patch).unwrap_or_default(),
            result
        );
        Ok(())
    });
    coverage.assert_meaningful("property 4");
}

/// Property 5: the status annotation records exactly the injected sidecars and containers; every
/// injected container carries each env annotation's value byte for byte under its env name, and
/// no container of the original pod changed (so none gained an env var).
#[test]
fn env_from_annotations_reaches_injected_containers_only() {
    let runtime = current_thread();
    let coverage = Coverage::default();
    check_property(case(), |case| {
        let (harness, _) = harness(case.policy, &case.entries);
        let ran = run(&runtime, &harness, &case.pod)?;
        coverage.record(&ran);
        let Some(result) = &ran.result else {
            namespace_denial_is_right(&case, &ran.outcome.answer.message)?;
            return env_denial_is_right(&case, &ran.outcome.answer.message);
        };
        let original = &case.pod;
        for list in ["containers", "initContainers"] {
            for app in items(original, list) {
                let now = items(result, list).iter().find(|c| name_of(c) == name_of(app));
                prop_assert_eq!(now, Some(app), "container `{}` of the pod changed or moved", name_of(app));
            }
        }
        let mut added: Vec<String> = ["containers", "initContainers"]
            .into_iter()
            .flat_map(|list| names_in(result, list))
            .filter(|n| container(original, n).is_none())
            .collect();
        let Some(status) = status_of(result) else {
            prop_assert!(added.is_empty(), "containers {:?} added without a status annotation", added);
            return Ok(());
        };
        prop_assert_eq!(&status.sidecars, &requested_known(original, &case.entries), "status sidecars");
        policy_decisions_hold(&case, original, result, &status)?;
        let mut recorded = status.containers.clone();
        recorded.sort();
        added.sort();
        prop_assert_eq!(recorded, added, "status containers are not the added containers");
        let env = expected_env(result, case.policy);
        let fields: [fn(&SidecarEntry) -> &Vec<Value>; 2] = [|e| &e.containers, |e| &e.init_containers];
        for name in &status.containers {
            let (_, injected) = container(result, name).expect("checked above");
            let (_, source) = catalog_item(&case.entries, &status, name, &fields).expect("an injected sidecar has it");
            for (env_name, (key, value)) in &env {
                let vars: Vec<Value> = env_list(injected).iter().filter(|v| name_of(v) == env_name).cloned().collect();
                let own: Vec<Value> = env_list(source).iter().filter(|v| name_of(v) == env_name).cloned().collect();
                if case.policy.env.refuses(key, env_name, !own.is_empty()) {
                    // Refused: admitted only when refusals skip, and the container keeps its own.
                    prop_assert!(
                        case.policy.env.skip,
                        "`{}` → `{}` refused in `{}`, yet the pod was admitted",
                        key,
                        env_name,
                        name
                    );
                    prop_assert_eq!(vars, own, "container `{}`: refused var `{}` changed", name, env_name);
                    prop_assert!(
                        ran.outcome
                            .answer
                            .warnings
                            .iter()
                            .any(|w| w.contains(&format!("{PREFIX}{key}`")) || w.contains("more env vars")),
                        "no warning names the skipped annotation `{}`: {:?}",
                        key,
                        ran.outcome.answer.warnings
                    );
                    continue;
                }
                prop_assert_eq!(
                    vars,
                    vec![json!({"name": env_name, "value": value})],
                    "container `{}` lacks env var `{}` = {:?}: {}",
                    name,
                    env_name,
                    value,
                    injected
                );
            }
        }
        Ok(())
    });
    coverage.assert_meaningful("property 5");
}

/// The policies' decisions on an admitted pod: under `onCollision: deny` nothing was skipped;
/// catalog metadata is merged as `overridePodMetadata` says; native sidecars are placed as
/// `nativeSidecarPlacement` says; no sidecar restricted to other namespaces got in.
fn policy_decisions_hold(
    case: &Case,
    original: &Value,
    result: &Value,
    status: &StatusView,
) -> Result<(), TestCaseError> {
    // `onCollision: deny`: an admitted pod got every item of every sidecar it got (nothing skipped).
    if matches!(case.policy.on_collision, CollisionPolicy::Deny) {
        for name in &status.sidecars {
            let entry = case.entries.iter().find(|e| &e.name == name).expect("a known sidecar");
            for c in entry.containers.iter().chain(&entry.init_containers) {
                prop_assert!(status.containers.iter().any(|n| n == name_of(c)), "`{}` skipped under deny", name_of(c));
            }
            for v in &entry.volumes {
                prop_assert!(items(result, "volumes").contains(v), "volume `{}` skipped under deny", name_of(v));
            }
        }
    }
    // Catalog metadata: with overridePodMetadata the last injected sidecar's value wins, else the
    // pod's own value, else the first sidecar's (the status annotation is the injector's).
    for field in ["annotations", "labels"] {
        let own = original["metadata"].get(field).and_then(Value::as_object);
        let now = result["metadata"].get(field).and_then(Value::as_object);
        let injected: Vec<&SidecarEntry> =
            status.sidecars.iter().filter_map(|n| case.entries.iter().find(|e| &e.name == n)).collect();
        let values = |e: &&SidecarEntry| if field == "labels" { e.labels.clone() } else { e.annotations.clone() };
        let keys: BTreeSet<String> = injected.iter().flat_map(|e| values(e).into_keys()).collect();
        for key in keys.iter().filter(|k| k.as_str() != STATUS) {
            let from = |e: &&SidecarEntry| values(e).get(key).cloned();
            let expected = if case.policy.override_pod_metadata {
                injected.iter().rev().find_map(from)
            } else {
                own.and_then(|o| o.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| injected.iter().find_map(from))
            };
            let got = now.and_then(|n| n.get(key)).and_then(Value::as_str).map(str::to_owned);
            prop_assert_eq!(got, expected, "{} `{}` (override: {})", field, key, case.policy.override_pod_metadata);
        }
    }
    // Native sidecars go before (`first`) or after (`last`) the pod's own init containers. An init
    // container is known to be a native sidecar by its name: a native entry's container, and no
    // injected entry's init container (with collisions skipped, a name both give is whichever came
    // first, so it tells nothing).
    let own_init: Vec<String> = names_in(original, "initContainers");
    let init = names_in(result, "initContainers");
    let injected_entries = || status.sidecars.iter().filter_map(|s| case.entries.iter().find(|e| &e.name == s));
    let native: Vec<usize> = init
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            status.containers.contains(*n)
                && injected_entries().any(|e| e.native_sidecar && e.containers.iter().any(|c| name_of(c) == n.as_str()))
                && !injected_entries().any(|e| e.init_containers.iter().any(|c| name_of(c) == n.as_str()))
        })
        .map(|(i, _)| i)
        .collect();
    let own: Vec<usize> = init.iter().enumerate().filter(|(_, n)| own_init.contains(*n)).map(|(i, _)| i).collect();
    if let (Some(first_native), Some(last_native), Some(first_own), Some(last_own)) =
        (native.first(), native.last(), own.first(), own.last())
    {
        match case.policy.placement {
            NativePlacement::First => {
                prop_assert!(last_native < first_own, "native sidecars not first: {:?}", init);
            }
            NativePlacement::Last => prop_assert!(first_native > last_own, "native sidecars not last: {:?}", init),
        }
    }
    // Namespace allow-lists: no sidecar restricted to other namespaces reaches a pod here.
    for name in &status.sidecars {
        let entry = case.entries.iter().find(|e| &e.name == name).expect("a known sidecar");
        let allowed = entry.namespaces.as_ref().is_none_or(|ns| ns.iter().any(|n| n == NAMESPACE));
        prop_assert!(
            allowed,
            "sidecar `{}` is restricted to {:?}, yet injected in `{}`",
            name,
            entry.namespaces,
            NAMESPACE
        );
    }
    Ok(())
}

/// A denial for a namespace allow-list names a sidecar whose entry is restricted to namespaces
/// other than the pod's.
fn namespace_denial_is_right(case: &Case, message: &str) -> Result<(), TestCaseError> {
    let Some(rest) = message.strip_prefix("sidecar `") else { return Ok(()) };
    let Some((name, tail)) = rest.split_once('`') else { return Ok(()) };
    if !tail.starts_with(" may not be injected in namespace") {
        return Ok(());
    }
    let entry = case.entries.iter().find(|e| e.name == name);
    let restricted = entry.and_then(|e| e.namespaces.as_ref()).is_some_and(|ns| !ns.iter().any(|n| n == NAMESPACE));
    prop_assert!(
        restricted,
        "denied for its namespace, but `{}` may be injected in `{}`: {}",
        name,
        NAMESPACE,
        message
    );
    Ok(())
}

/// A denial for an env rule names a container, an annotation and its env var; the rules, applied
/// here to the catalog's container, must refuse that var, in a policy whose refusals deny.
fn env_denial_is_right(case: &Case, message: &str) -> Result<(), TestCaseError> {
    let Some(at) = message.find(" may not set env var `") else { return Ok(()) };
    let between = |text: &str, open: &str| -> Option<String> {
        let start = text.find(open)? + open.len();
        Some(text[start..].split('`').next()?.to_owned())
    };
    let (Some(container_name), Some(key), Some(env_name)) = (
        between(&message[..at], "(container `"),
        between(&message[..at], &format!("annotation `{PREFIX}")),
        between(&message[at..], "env var `"),
    ) else {
        return Err(TestCaseError::fail(format!("an env denial that does not name its parts: {message}")));
    };
    prop_assert!(!case.policy.env.skip, "refusals skip, yet the pod was denied: {}", message);
    prop_assert_eq!(case.policy.env_name(&key), env_name.clone(), "{}", message);
    let value_of =
        |c: &Value| c.get("env").and_then(Value::as_array).is_some_and(|l| l.iter().any(|v| name_of(v) == env_name));
    let had = case
        .entries
        .iter()
        .flat_map(|e| e.containers.iter().chain(&e.init_containers))
        .filter(|c| name_of(c) == container_name)
        .any(value_of);
    prop_assert!(
        case.policy.env.refuses(&key, &env_name, had),
        "denied, but the rules let `{}` through: {}",
        key,
        message
    );
    Ok(())
}

/// Two pods that ask for the same sidecar with different values for the same env annotations.
#[derive(Clone)]
struct TwoPods {
    policy: Policy,
    entry: SidecarEntry,
    pods: [Value; 2],
    /// Each pod's env annotations: key → value.
    env: [BTreeMap<String, String>; 2],
}

impl fmt::Debug for TwoPods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n  policy: {:?}\n  entry: {}\n  pod A: {}\n  pod B: {}\n",
            self.policy,
            entry_json(&self.entry),
            self.pods[0],
            self.pods[1]
        )
    }
}

prop_compose! {
    fn two_pods()(
        policy in policy(),
        parts in entry_parts(),
        pod in pod(),
        env in prop::collection::btree_map(
            prop::sample::select(vec!["api-key", "region", "token"]).prop_map(str::to_owned),
            (env_value(), env_value()),
            1..4,
        ),
    ) -> TwoPods {
        // Collisions skip, the sidecar is allowed everywhere, catalog metadata never overrides
        // the pod's: both pods are admitted with the sidecar and only their own values differ.
        // The catalog's own vars are not locked and every key is allowed, so each pod's values arrive.
        let env_rules = EnvPolicy { locked: false, narrow: false, ..policy.env };
        let policy = Policy { on_collision: CollisionPolicy::Skip, override_pod_metadata: false, env: env_rules, ..policy };
        let mut parts = EntryParts { namespaces: None, ..parts };
        if parts.containers.is_empty() && parts.init_containers.is_empty() {
            parts.containers.push(ContainerParts { shared: None, body: json!({"image": "side:1"}) });
        }
        let entry = build_entry("alpha", parts);
        let mut values = [BTreeMap::new(), BTreeMap::new()];
        for (key, (a, b)) in env {
            let b = if a == b { format!("{b} (B)") } else { b };
            values[0].insert(key.clone(), a);
            values[1].insert(key, b);
        }
        let pods = values.clone().map(|values| {
            let mut pod = pod.clone();
            let annotations = admission_kit::mutator::object_at(&mut pod["metadata"], "annotations");
            annotations.retain(|k, _| !k.starts_with(PREFIX));
            annotations.insert(INJECT.to_owned(), json!(" alpha "));
            for (key, value) in values {
                annotations.insert(format!("{PREFIX}{key}"), json!(value));
            }
            pod
        });
        TwoPods { policy, entry, pods, env: values }
    }
}

/// Property 6: nothing is shared between requests. Two pods asking for the same sidecar with
/// different env values, run concurrently (two tasks on two worker threads, and two futures on one
/// task) and sequentially, each get only their own values, every run of a pod gives the same
/// result, and the catalog entry is unchanged afterwards.
#[test]
fn requests_share_no_state() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let injected = AtomicUsize::new(0);
    check_property(two_pods(), |case| {
        let (harness, store) = harness(case.policy, std::slice::from_ref(&case.entry));
        let reviews = case.pods.clone().map(|pod| review(&pod));
        let spawn = |i: usize| {
            let (harness, review) = (harness.clone(), reviews[i].clone());
            tokio::spawn(async move { harness.run(&review).await })
        };
        let (a, b) = runtime.block_on(async { tokio::join!(spawn(0), spawn(1)) });
        let (a, b) = (a.expect("task A"), b.expect("task B"));
        let (c, d) = runtime.block_on(async { tokio::join!(harness.run(&reviews[1]), harness.run(&reviews[0])) });
        let sequential = [runtime.block_on(harness.run(&reviews[0])), runtime.block_on(harness.run(&reviews[1]))];
        let again = runtime.block_on(harness.run(&reviews[0]));
        for (i, outcome) in [(0, &a), (1, &b), (1, &c), (0, &d), (0, &sequential[0]), (1, &sequential[1]), (0, &again)]
        {
            let pod = ["A", "B"][i];
            prop_assert!(outcome.answer.allowed, "pod {} denied: {}", pod, outcome.answer.message);
            let result = patched(&case.pods[i], outcome)?;
            prop_assert_eq!(Some(&result), sequential[i].mutated.as_ref(), "pod {}: runs differ", pod);
            let status = status_of(&result).expect("the sidecar is known, so a status is written");
            if !status.containers.is_empty() {
                injected.fetch_add(1, Ordering::Relaxed);
            }
            for name in &status.containers {
                let (_, injected) = container(&result, name).expect("injected containers are in the pod");
                for (key, value) in &case.env[i] {
                    let env_name = case.policy.env_name(key);
                    let vars: Vec<Value> =
                        env_list(injected).iter().filter(|v| name_of(v) == env_name).cloned().collect();
                    prop_assert_eq!(
                        vars,
                        vec![json!({"name": env_name, "value": value.replace('$', "$$")})],
                        "pod {}, container `{}`: {}",
                        pod,
                        name,
                        injected
                    );
                }
            }
        }
        let after = store.current();
        prop_assert_eq!(after.get("alpha").map(|e| &**e), Some(&case.entry), "the catalog entry changed");
        prop_assert_eq!(after.len(), 1);
        Ok(())
    });
    let injected = injected.load(Ordering::Relaxed);
    println!("property 6: {injected} runs injected containers");
    assert!(injected >= 7 * MIN_CASES as usize / 2, "too few runs injected anything: {injected}");
}

// ---------------------------------------------------------------------------------------------
// A reference model of the verdict
// ---------------------------------------------------------------------------------------------
//
// Written from the documented behaviour, not from the crate: which check comes first, and the
// exact words of each denial and warning. Property 7 compares it with the injector's answer.

/// The env rules of one scope: the configuration's `annotationEnv` (every field set) or a catalog
/// entry's (each field optional; `deny` adds to the configuration's, the others replace it).
#[derive(Clone, Debug, Default)]
struct RuleSet {
    allow: Option<Vec<&'static str>>,
    deny: Option<Vec<&'static str>>,
    exempt: Option<Vec<&'static str>>,
    locked: Option<Vec<&'static str>>,
    max_vars: Option<usize>,
    max_value_bytes: Option<usize>,
    skip: Option<bool>,
}

impl RuleSet {
    /// The rules as `annotationEnv` YAML would give them.
    fn to_json(&self) -> Value {
        let mut out = json!({});
        set(&mut out, "allow", self.allow.as_ref().map(|p| json!(p)));
        set(&mut out, "deny", self.deny.as_ref().map(|p| json!(p)));
        set(&mut out, "exempt", self.exempt.as_ref().map(|p| json!(p)));
        set(&mut out, "locked", self.locked.as_ref().map(|p| json!(p)));
        set(&mut out, "maxVars", self.max_vars.map(Value::from));
        set(&mut out, "maxValueBytes", self.max_value_bytes.map(Value::from));
        set(&mut out, "onViolation", self.skip.map(|skip| json!(if skip { "skip" } else { "deny" })));
        out
    }
}

/// The configuration's `limits`.
#[derive(Clone, Copy, Debug)]
struct Limits {
    names: usize,
    env: usize,
    bytes: usize,
}

/// A case for the model: the generated case, with env rules that use every kind of rule (for
/// the configuration and for some catalog entries) and limits that are sometimes small.
#[derive(Clone)]
struct ModelCase {
    case: Case,
    global: RuleSet,
    /// Catalog entry name → its own `annotationEnv`.
    own: BTreeMap<String, RuleSet>,
    limits: Limits,
}

impl fmt::Debug for ModelCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}  annotationEnv: {:?}\n  entries' annotationEnv: {:?}\n  limits: {:?}\n",
            self.case, self.global, self.own, self.limits
        )
    }
}

impl ModelCase {
    fn config(&self) -> Config {
        let mut config = self.case.policy.config();
        config.annotation_env = serde_json::from_value(self.global.to_json()).expect("generated env rules");
        config.limits = serde_json::from_value(json!({
            "maxInjectNames": self.limits.names,
            "maxEnvAnnotations": self.limits.env,
            "maxAnnotationBytes": self.limits.bytes,
        }))
        .expect("generated limits");
        config
    }
}

/// Env annotation keys the model's cases add: names on the built-in deny-list in one spelling or
/// both, keys two of which become one name under `cIdentifier`, names catalog containers set, and
/// names Kubernetes refuses as they are.
const EXTRA_ENV: [&str; 13] = [
    "https_proxy",
    "PATH",
    "node-options",
    "token",
    "region",
    "Region",
    "HOME",
    "log.level",
    "API_KEY",
    "api-key",
    "LOG",
    "1st",
    "x/y",
];

/// Many env annotations at once, valid names in either form, so that refusals under
/// `onViolation: skip` pass the ten the warnings name.
const CROWD: [&str; 9] =
    ["https_proxy", "PATH", "node-options", "token", "region", "HOME", "log.level", "LOG", "api-key"];

/// A catalog entry's own `annotationEnv`, or none.
fn entry_rules() -> impl Strategy<Value = Option<RuleSet>> {
    let rules = (
        prop::option::of(prop::sample::select(vec![vec!["*"], vec!["region", "API_KEY", "api-key", "https_proxy"]])),
        prop::option::weighted(
            0.75,
            prop::sample::select(vec![
                vec!["region"],
                vec!["LOG*", "home"],
                vec!["tok*"],
                vec!["api?key", "https_proxy"],
            ]),
        ),
        prop::option::weighted(0.3, Just(vec!["LD_PRELOAD", "PATH"])),
        prop::option::weighted(0.4, prop::sample::select(vec![vec![], vec!["*"]])),
        prop::option::weighted(0.2, Just(1_usize)),
        prop::option::weighted(0.2, Just(6_usize)),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(allow, deny, exempt, locked, max_vars, max_value_bytes, skip)| RuleSet {
            allow,
            deny,
            exempt,
            locked,
            max_vars,
            max_value_bytes,
            skip,
        });
    prop::option::weighted(0.6, rules)
}

prop_compose! {
    fn model_case()(
        case in case(),
        deny in prop::sample::select(vec![vec![], vec![], vec!["REGION"], vec!["tok*", "home"]]),
        exempt in prop::sample::select(vec![vec![], vec!["LD_PRELOAD"], vec!["PATH", "https_proxy"]]),
        locked in prop::sample::select(vec![vec![], vec!["API_KEY", "region", "token"]]),
        max_vars in prop::option::weighted(0.35, prop::sample::select(vec![1_usize, 2])),
        max_value_bytes in prop::option::weighted(0.15, Just(5_usize)),
        own in prop::collection::vec(entry_rules(), SIDECARS.len()),
        extra_env in prop::option::weighted(0.5, prop::collection::btree_map(
            prop::sample::select(EXTRA_ENV.to_vec()),
            env_value(),
            1..8,
        )),
        crowd in prop::bool::weighted(0.1),
        bait in prop::option::weighted(0.6, prop::sample::select(vec!["token", "LOG", "region", "API_KEY"])),
        clash in prop::option::weighted(0.4, (
            prop::sample::select(vec!["containers", "initContainers", "volumes"]),
            any::<prop::sample::Index>(),
        )),
        names in prop::option::weighted(0.08, Just(1_usize)),
        env in prop::option::weighted(0.08, Just(1_usize)),
        bytes in prop::option::weighted(0.1, 40_usize..140),
    ) -> ModelCase {
        let mut case = case;
        let env_policy = case.policy.env;
        let global = RuleSet {
            allow: Some(if env_policy.narrow { ALLOWED.to_vec() } else { vec!["*"] }),
            deny: Some(deny),
            exempt: Some(exempt),
            locked: Some(if env_policy.locked { vec!["*"] } else { locked }),
            max_vars: Some(max_vars.unwrap_or(100)),
            max_value_bytes: Some(max_value_bytes.unwrap_or(8 * 1024)),
            skip: Some(env_policy.skip),
        };
        let mut rules = BTreeMap::new();
        for (entry, own) in case.entries.iter_mut().zip(own) {
            if let Some(own) = own {
                entry.annotation_env = Some(serde_json::from_value(own.to_json()).expect("generated entry rules"));
                rules.insert(entry.name.clone(), own);
            }
        }
        let crowd = if crowd { CROWD.iter().map(|k| ((*k).to_owned(), "v".to_owned())).collect() } else { vec![] };
        for (key, value) in extra_env.into_iter().flatten().map(|(k, v)| (k.to_owned(), v)).chain(crowd) {
            let annotations = admission_kit::mutator::object_at(&mut case.pod["metadata"], "annotations");
            annotations.insert(format!("{PREFIX}{key}"), json!(value));
        }
        if let Some(name) = bait {
            add_bait(&mut case.entries, name);
        }
        if let Some((list, pick)) = clash {
            add_clash(&mut case, list, pick);
        }
        let limits = Limits { names: names.unwrap_or(64), env: env.unwrap_or(1000), bytes: bytes.unwrap_or(256 * 1024) };
        ModelCase { case, global, own: rules, limits }
    }
}

/// Gives every catalog container a var `name` of its own (one annotations may set too), so that
/// `locked` has something to keep.
fn add_bait(entries: &mut [SidecarEntry], name: &str) {
    for entry in entries {
        for container in entry.containers.iter_mut().chain(&mut entry.init_containers) {
            let Some(container) = container.as_object_mut() else { continue };
            let Some(vars) = container.entry("env").or_insert_with(|| json!([])).as_array_mut() else { continue };
            if !vars.iter().any(|v| name_of(v) == name) {
                vars.push(json!({"name": name, "value": "catalog"}));
            }
        }
    }
}

/// Gives the pod an item of `list` named like one a catalog entry adds in its `list`, unless the
/// pod already has that name: more collisions than the shared names alone make.
fn add_clash(case: &mut Case, list: &str, pick: prop::sample::Index) {
    let volumes = list == "volumes";
    let names: Vec<String> = case
        .entries
        .iter()
        .flat_map(|e| match list {
            "volumes" => e.volumes.clone(),
            "initContainers" => e.init_containers.clone(),
            _ => e.containers.clone(),
        })
        .map(|item| name_of(&item).to_owned())
        .collect();
    if names.is_empty() {
        return;
    }
    let name = &names[pick.index(names.len())];
    let mut own = names_in(&case.pod, list);
    if !volumes {
        own.extend(names_in(&case.pod, if list == "containers" { "initContainers" } else { "containers" }));
    }
    let Some(spec) = case.pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if own.contains(name) {
        return;
    }
    let item = if volumes { json!({"name": name, "emptyDir": {}}) } else { json!({"name": name, "image": "own:1"}) };
    match spec.entry(list).or_insert_with(|| json!([])).as_array_mut() {
        Some(items) => items.push(item),
        None => unreachable!("generated lists are arrays"),
    }
}

/// The injector's answer, as the model predicts it or as the pipeline gave it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Denied {
        message: String,
        warnings: Vec<String>,
    },
    Admitted {
        warnings: Vec<String>,
        /// Names of `spec.containers`, in order.
        containers: Vec<String>,
        /// Names of `spec.initContainers`, in order.
        init_containers: Vec<String>,
        /// The status annotation, as written.
        status: Option<String>,
    },
}

/// What a run of the model went through (`denied: …`, `warned: …`, `admitted`), for coverage.
type Seen = Vec<String>;

/// The entries of the built-in deny-list that generated env var names can meet, in the list's
/// order, with the reason each denial gives (see the `annotationEnv` documentation).
const BUILT_IN_DENIED: [(&str, &str); 4] = [
    ("LD_*", "dynamic loader: preloaded libraries, library and audit paths"),
    ("NODE_OPTIONS", "Node.js: options including --require and --import"),
    ("PATH", "every program: where commands are found"),
    ("*_PROXY", "HTTP clients: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY (traffic redirected)"),
];

/// Whether glob `pattern` (`*` and `?` only: all the generated patterns use) matches `text`.
fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some((b'?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let fold = |s: &str| if ignore_case { s.to_ascii_lowercase() } else { s.to_owned() };
    go(fold(pattern).as_bytes(), fold(text).as_bytes())
}

/// Kubernetes' `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`, but not `.` nor `..…`.
fn kubernetes_accepts(name: &str) -> bool {
    let usable = |c: u8, first: bool| {
        matches!(c, b'-' | b'.' | b'_') || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
    };
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.iter().enumerate().all(|(i, c)| usable(*c, i == 0))
        && name != "."
        && !name.starts_with("..")
}

/// The rules one injected container follows: its entry's over the configuration's.
struct Effective<'a> {
    global: &'a RuleSet,
    own: Option<&'a RuleSet>,
}

impl Effective<'_> {
    /// A rule's value, and whose it is, for the message.
    fn pick<T>(&self, field: impl Fn(&RuleSet) -> Option<T>) -> (T, &'static str) {
        match self.own.and_then(&field) {
            Some(value) => (value, "the catalog entry's"),
            None => (field(self.global).expect("the configuration sets every rule"), "the configuration's"),
        }
    }

    /// The first rule annotation `key` breaks by setting env var `name` to `value`, `existing`
    /// telling whether the container has a var of that name: (rule, why), in the documented
    /// order — value bytes, allow, deny (configuration, then entry), built-in list, locked.
    fn check(&self, key: &str, name: &str, value: &str, existing: bool) -> Result<(), (&'static str, String)> {
        let (limit, whose) = self.pick(|r| r.max_value_bytes);
        if value.len() > limit {
            let why = format!(
                "its value is {} bytes, over the limit of {limit} ({whose} `annotationEnv.maxValueBytes`)",
                value.len()
            );
            return Err(("maxValueBytes", why));
        }
        let (allow, whose) = self.pick(|r| r.allow.clone());
        if !allow.iter().any(|p| glob(p, key, false)) {
            let patterns: Vec<String> = allow.iter().map(|p| format!("`{p}`")).collect();
            let why = format!("the key matches none of {whose} `annotationEnv.allow` ({})", patterns.join(", "));
            return Err(("allow", why));
        }
        let own_deny = self.own.and_then(|o| o.deny.as_ref());
        for deny in [self.global.deny.as_ref(), own_deny].into_iter().flatten() {
            if let Some(pattern) = deny.iter().find(|p| glob(p, name, true)) {
                let by_entry = own_deny.is_some_and(|d| d.contains(pattern));
                let whose = if by_entry { "the catalog entry's" } else { "the configuration's" };
                let why = format!("it matches `{pattern}` of {whose} `annotationEnv.deny`");
                return Err((if by_entry { "deny (entry)" } else { "deny (configuration)" }, why));
            }
        }
        let (exempt, _) = self.pick(|r| r.exempt.clone());
        if let Some((pattern, reason)) = BUILT_IN_DENIED.iter().find(|(p, _)| glob(p, name, true))
            && !exempt.iter().any(|p| glob(p, name, false))
        {
            let why = format!(
                "it matches `{pattern}` of the built-in deny-list ({reason}); `annotationEnv.exempt` lifts it for the sidecars that must take it"
            );
            return Err(("built-in deny-list", why));
        }
        if existing {
            let (locked, whose) = self.pick(|r| r.locked.clone());
            if let Some(pattern) = locked.iter().find(|p| glob(p, name, false)) {
                let why = format!(
                    "the sidecar sets this var itself and {whose} `annotationEnv.locked` (`{pattern}`) keeps it"
                );
                return Err(("locked", why));
            }
        }
        Ok(())
    }
}

/// The pod's annotations (a map sorted by key, as the injector reads them).
fn annotations_in(pod: &Value) -> Map<String, Value> {
    pod.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default()
}

/// The env annotations: (key after the prefix, value), in key order.
fn env_annotations(annotations: &Map<String, Value>) -> Vec<(String, String)> {
    annotations
        .iter()
        .filter_map(|(k, v)| {
            let short = k.strip_prefix(PREFIX)?;
            (k != INJECT && k != STATUS && !short.is_empty())
                .then(|| (short.to_owned(), v.as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// The limits that do not depend on the catalog: bytes under the prefix (the status annotation
/// aside), then the number of env annotations.
fn check_limits(annotations: &Map<String, Value>, limits: Limits, seen: &mut Seen) -> Result<(), String> {
    let bytes: usize = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k.as_str() != STATUS)
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if bytes > limits.bytes {
        seen.push("denied: limits.maxAnnotationBytes".to_owned());
        return Err(format!(
            "the pod's `inject` and env annotations under `{PREFIX}` hold {bytes} bytes; the limit is {} (configuration key `limits.maxAnnotationBytes`)",
            limits.bytes
        ));
    }
    let env = env_annotations(annotations).len();
    if env > limits.env {
        seen.push("denied: limits.maxEnvAnnotations".to_owned());
        return Err(format!(
            "the pod has {env} env var annotations under `{PREFIX}`; the limit is {} (configuration key `limits.maxEnvAnnotations`)",
            limits.env
        ));
    }
    Ok(())
}

/// What the sidecar step made of the pod.
struct Injection<'a> {
    /// Injected container name → the entry that added it.
    added_by: BTreeMap<String, &'a SidecarEntry>,
    /// Injected containers, in the status annotation's order.
    injected: Vec<String>,
    containers: Vec<String>,
    init_containers: Vec<String>,
    /// The pod's annotations afterwards: catalog annotations merged, the status written.
    annotations: Map<String, Value>,
    status: String,
}

/// The model's run of both steps; warnings gathered in `warnings`, what happened in `seen`.
struct Model<'a> {
    mc: &'a ModelCase,
    seen: Seen,
    warnings: Vec<String>,
}

impl<'a> Model<'a> {
    /// The sidecar step up to injection: limits, number of names, then each name in order
    /// (unknown, or not allowed here). `None`: no known sidecar asked for, the pod is unchanged.
    fn sidecars(&mut self) -> Result<Option<Injection<'a>>, String> {
        let case = &self.mc.case;
        let annotations = annotations_in(&case.pod);
        let Some(request) = annotations.get(INJECT).and_then(Value::as_str) else { return Ok(None) };
        check_limits(&annotations, self.mc.limits, &mut self.seen)?;
        let mut names: Vec<&str> = Vec::new();
        for name in request.split(',').map(str::trim) {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        if names.len() > self.mc.limits.names {
            self.seen.push("denied: limits.maxInjectNames".to_owned());
            return Err(format!(
                "annotation `{INJECT}` names {} sidecars; the limit is {} (configuration key `limits.maxInjectNames`)",
                names.len(),
                self.mc.limits.names
            ));
        }
        let mut entries = Vec::new();
        for name in names {
            let Some(entry) = case.entries.iter().find(|e| e.name == name) else {
                let mut known: Vec<&str> = case.entries.iter().map(|e| e.name.as_str()).collect();
                known.sort_unstable();
                let known = if known.is_empty() { "(empty catalog)".to_owned() } else { known.join(", ") };
                let message = format!("sidecar `{name}` is not in the catalog; known: {known}");
                if matches!(case.policy.unknown_sidecar, UnknownSidecarPolicy::Deny) {
                    self.seen.push("denied: unknown sidecar".to_owned());
                    return Err(message);
                }
                self.seen.push("warned: unknown sidecar".to_owned());
                self.warnings.push(format!("{message}; pod admitted without it"));
                continue;
            };
            if let Some(allowed) = &entry.namespaces
                && !allowed.iter().any(|n| n == NAMESPACE)
            {
                self.seen.push("denied: namespace".to_owned());
                return Err(format!(
                    "sidecar `{name}` may not be injected in namespace `{NAMESPACE}`; it is allowed in: {}",
                    allowed.join(", ")
                ));
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Ok(None);
        }
        self.inject(&entries, annotations).map(Some)
    }

    /// A name the pod already has: a denial, or a warning and `false` (skipped).
    fn collides(&mut self, entry: &SidecarEntry, what: &str, item: &str) -> Result<bool, String> {
        let message =
            format!("sidecar `{}` adds {what} `{item}`, but the pod already has one with that name", entry.name);
        if matches!(self.mc.case.policy.on_collision, CollisionPolicy::Deny) {
            self.seen.push(format!("denied: collision ({what})"));
            return Err(message);
        }
        self.seen.push("warned: collision skipped".to_owned());
        self.warnings.push(format!("{message}; skipped"));
        Ok(false)
    }

    /// Injection: per sidecar in order, its containers, init containers and volumes (pull
    /// secrets never collide); native sidecars placed first or last among init containers; catalog
    /// annotations merged; the status written.
    fn inject(
        &mut self,
        entries: &[&'a SidecarEntry],
        mut annotations: Map<String, Value>,
    ) -> Result<Injection<'a>, String> {
        let pod = &self.mc.case.pod;
        let mut taken: BTreeSet<String> =
            names_in(pod, "containers").into_iter().chain(names_in(pod, "initContainers")).collect();
        let mut volumes: BTreeSet<String> = names_in(pod, "volumes").into_iter().collect();
        let (mut containers, mut native, mut init) = (names_in(pod, "containers"), Vec::new(), Vec::new());
        let mut injected = Vec::new();
        let mut added_by = BTreeMap::new();
        for entry in entries {
            for (list, what) in [(&entry.containers, "container"), (&entry.init_containers, "init container")] {
                for item in list.iter().map(|c| name_of(c).to_owned()) {
                    if !taken.insert(item.clone()) && !self.collides(entry, what, &item)? {
                        continue;
                    }
                    match (what, entry.native_sidecar) {
                        ("container", false) => containers.push(item.clone()),
                        ("container", true) => native.push(item.clone()),
                        _ => init.push(item.clone()),
                    }
                    added_by.insert(item.clone(), *entry);
                    injected.push(item);
                }
            }
            for item in entry.volumes.iter().map(name_of) {
                if !volumes.insert(item.to_owned()) {
                    self.collides(entry, "volume", item)?;
                }
            }
        }
        let own_init = names_in(pod, "initContainers");
        let init_containers = match self.mc.case.policy.placement {
            NativePlacement::First => [native, own_init, init].concat(),
            NativePlacement::Last => [own_init, init, native].concat(),
        };
        for entry in entries {
            for (k, v) in &entry.annotations {
                if self.mc.case.policy.override_pod_metadata || !annotations.contains_key(k) {
                    annotations.insert(k.clone(), json!(v));
                }
            }
        }
        let sidecars: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let status = format!("{{\"sidecars\":{},\"containers\":{}}}", json!(sidecars), json!(injected));
        annotations.insert(STATUS.to_owned(), json!(status));
        Ok(Injection { added_by, injected, containers, init_containers, annotations, status })
    }

    /// The env step: limits again (catalog annotations may have added some), each env annotation
    /// in key order (a name Kubernetes refuses, two values for one name), then each injected
    /// container in pod order (init containers first), each var in name order.
    fn env(&mut self, injection: &Injection<'_>) -> Result<(), String> {
        check_limits(&injection.annotations, self.mc.limits, &mut self.seen)?;
        let mut env: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (key, value) in env_annotations(&injection.annotations) {
            let name = self.mc.case.policy.env_name(&key);
            if !kubernetes_accepts(&name) {
                self.seen.push("denied: env var name".to_owned());
                return Err(format!(
                    "annotation `{PREFIX}{key}` would become env var `{name}`, which Kubernetes rejects; rename it, or set envNames: cIdentifier"
                ));
            }
            if let Some((_, previous)) = env.insert(name.clone(), (key, value.clone()))
                && previous != value
            {
                self.seen.push("denied: two values for one env var".to_owned());
                return Err(format!("two annotations under `{PREFIX}` become env var `{name}` with different values"));
            }
        }
        if env.is_empty() || injection.injected.is_empty() {
            return Ok(());
        }
        let mut skipped = Vec::new();
        for container in injection.init_containers.iter().chain(&injection.containers) {
            let Some(entry) = injection.added_by.get(container) else { continue };
            self.env_in(entry, container, &env, &mut skipped)?;
        }
        let more = skipped.len().saturating_sub(10);
        for message in skipped.into_iter().take(10) {
            self.warnings.push(format!("{message}; not set"));
        }
        if more > 0 {
            self.seen.push("warned: more env vars skipped".to_owned());
            self.warnings
                .push(format!("{more} more env vars from annotations were not set, for the same kinds of reasons"));
        }
        Ok(())
    }

    /// The env annotations in one injected container, as its entry's rules say.
    fn env_in(
        &mut self,
        entry: &SidecarEntry,
        container: &str,
        env: &BTreeMap<String, (String, String)>,
        skipped: &mut Vec<String>,
    ) -> Result<(), String> {
        let rules = Effective { global: &self.mc.global, own: self.mc.own.get(&entry.name) };
        let source = entry.containers.iter().chain(&entry.init_containers).find(|c| name_of(c) == container);
        let existing: BTreeSet<&str> = source.map(env_list).unwrap_or_default().iter().map(name_of).collect();
        let (max_vars, whose) = rules.pick(|r| r.max_vars);
        let (skip, _) = rules.pick(|r| r.skip);
        // The vars set so far: only those count towards `maxVars`, not the refused ones.
        let mut taken = Vec::new();
        for (name, (key, value)) in env {
            let verdict = if taken.len() < max_vars {
                rules.check(key, name, value, existing.contains(name.as_str()))
            } else {
                let why = format!(
                    "annotations would set more than {max_vars} env vars in this container ({whose} `annotationEnv.maxVars`)"
                );
                Err(("maxVars", why))
            };
            let Err((rule, why)) = verdict else {
                taken.push(name);
                continue;
            };
            let message = format!(
                "sidecar `{}` (container `{container}`): annotation `{PREFIX}{key}` may not set env var `{name}`: {why}",
                entry.name
            );
            if !skip {
                self.seen.push(format!("denied: env rule {rule}"));
                return Err(message);
            }
            self.seen.push(format!("warned: env var skipped ({rule})"));
            skipped.push(message);
        }
        Ok(())
    }
}

/// The model's verdict on a case, and what it went through.
fn predict(mc: &ModelCase) -> (Verdict, Seen) {
    let mut model = Model { mc, seen: Vec::new(), warnings: Vec::new() };
    let pod = &mc.case.pod;
    let injection = match model.sidecars() {
        // A step that denies leaves no warnings of its own; the steps before it may.
        Err(message) => return (Verdict::Denied { message, warnings: Vec::new() }, model.seen),
        Ok(None) => {
            model.seen.push("admitted".to_owned());
            let verdict = Verdict::Admitted {
                warnings: model.warnings,
                containers: names_in(pod, "containers"),
                init_containers: names_in(pod, "initContainers"),
                status: None,
            };
            return (verdict, model.seen);
        }
        Ok(Some(injection)) => injection,
    };
    let before_env = model.warnings.len();
    if let Err(message) = model.env(&injection) {
        model.warnings.truncate(before_env);
        return (Verdict::Denied { message, warnings: model.warnings }, model.seen);
    }
    model.seen.push("admitted".to_owned());
    let verdict = Verdict::Admitted {
        warnings: model.warnings,
        containers: injection.containers,
        init_containers: injection.init_containers,
        status: Some(injection.status),
    };
    (verdict, model.seen)
}

/// The pipeline's answer in the model's terms.
fn verdict_of(ran: &Ran) -> Verdict {
    let answer = &ran.outcome.answer;
    match &ran.result {
        None => Verdict::Denied { message: answer.message.clone(), warnings: answer.warnings.clone() },
        Some(result) => Verdict::Admitted {
            warnings: answer.warnings.clone(),
            containers: names_in(result, "containers"),
            init_containers: names_in(result, "initContainers"),
            status: result
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(STATUS))
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
    }
}

/// Property 7: the injector's verdict is the model's — for a denial the exact message (the first
/// violation, in the order the injector checks) and the warnings before it; for an admission the
/// exact warnings, the containers and init containers in order, and the status annotation.
#[test]
fn the_verdict_is_the_models() {
    const ROUNDS: u32 = 3;
    let runtime = current_thread();
    let seen: std::sync::Mutex<BTreeMap<String, usize>> = std::sync::Mutex::default();
    let property = |mc: ModelCase| {
        let (harness, _) = harness_with(&mc.config(), &mc.case.entries);
        let ran = run(&runtime, &harness, &mc.case.pod)?;
        let (expected, what) = predict(&mc);
        prop_assert_eq!(verdict_of(&ran), expected, "the model went through {:?}", what);
        let mut counts = seen.lock().expect("no test thread panicked");
        for thing in what {
            *counts.entry(thing).or_default() += 1;
        }
        Ok(())
    };
    // Three rounds: a verdict that needs every earlier check passed (one env rule denying in one
    // container) comes about ten times in a thousand cases; three thousand make each reliable.
    for _ in 0..ROUNDS {
        check_property(model_case(), property);
    }
    let counts = seen.into_inner().expect("no test thread panicked");
    println!("property 7: {counts:#?}");
    let cases = (ROUNDS * MIN_CASES) as usize;
    let mut missing = Vec::new();
    for (what, at_least) in [
        ("admitted", cases / 3),
        ("denied: limits.maxAnnotationBytes", 5),
        ("denied: limits.maxEnvAnnotations", 5),
        ("denied: limits.maxInjectNames", 5),
        ("denied: unknown sidecar", 5),
        ("denied: namespace", 5),
        ("denied: collision (container)", 5),
        ("denied: collision (init container)", 5),
        ("denied: collision (volume)", 5),
        ("denied: env var name", 5),
        ("denied: two values for one env var", 5),
        ("denied: env rule maxVars", 5),
        ("denied: env rule maxValueBytes", 5),
        ("denied: env rule allow", 5),
        ("denied: env rule deny (configuration)", 5),
        ("denied: env rule deny (entry)", 5),
        ("denied: env rule built-in deny-list", 5),
        ("denied: env rule locked", 5),
        ("warned: unknown sidecar", 5),
        ("warned: collision skipped", 5),
        ("warned: env var skipped (locked)", 5),
        ("warned: env var skipped (maxVars)", 5),
        ("warned: env var skipped (built-in deny-list)", 5),
        ("warned: more env vars skipped", 5),
    ] {
        let count = counts.get(what).copied().unwrap_or_default();
        if count < at_least {
            missing.push(format!("{what}: {count} < {at_least}"));
        }
    }
    assert!(missing.is_empty(), "property 7 rarely or never saw: {missing:#?}");
}

/// `metadata.managedFields` as the API server records them: one to three entries, each with a
/// `fieldsV1` tree (its keys are the API server's field paths; any JSON here).
fn managed_fields() -> impl Strategy<Value = Value> {
    let entry = (prop::sample::select(vec!["kube-controller-manager", "kubectl", "helm"]), unknown_value());
    prop::collection::vec(entry, 1..4).prop_map(|entries| {
        let entries = entries.into_iter().map(|(manager, fields)| {
            json!({"manager": manager, "operation": "Update", "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": fields}})
        });
        Value::Array(entries.collect())
    })
}

/// Property 8: the server decodes reviews for the injector with `metadata.managedFields` set aside
/// (the pipeline says no step reads them); every answer is the one the whole pod gets, and the
/// API server's managedFields come through the patch unchanged.
#[test]
fn setting_managed_fields_aside_changes_no_answer() {
    let runtime = current_thread();
    let coverage = Coverage::default();
    check_property((case(), managed_fields()), |(case, managed)| {
        let (harness, store) = harness(case.policy, &case.entries);
        let pipeline = sidecar_injector::pipeline(&case.policy.config(), store, None).expect("the pipeline builds");
        prop_assert_eq!(pipeline.managed_fields(), ManagedFields::SetAside);
        let mut pod = case.pod.clone();
        pod["metadata"]["managedFields"] = managed.clone();
        let body = review_json(pod.clone(), &target()).namespace(NAMESPACE).body();
        let whole = Review::decode(&body, ManagedFields::Keep).expect("the review decodes");
        let lean = Review::decode(&body, ManagedFields::SetAside).expect("the review decodes");
        prop_assert!(lean.set_aside_managed_fields().is_some());
        let answer = runtime.block_on(harness.run(&whole));
        let lean_answer = runtime.block_on(harness.run(&lean));
        prop_assert_eq!(&lean_answer.answer, &answer.answer);
        let ran = Ran {
            result: if answer.answer.allowed { Some(patched(&pod, &lean_answer)?) } else { None },
            outcome: answer,
        };
        coverage.record(&ran);
        if let Some(result) = &ran.result {
            prop_assert_eq!(&result["metadata"]["managedFields"], &managed);
        }
        Ok(())
    });
    coverage.assert_meaningful("property 8");
}

/// A case property 5 once failed on (its minimal input): `delta` gives a plain init container
/// `proxy`, the native sidecar `gamma` a container `proxy`, collisions are skipped. `delta` comes
/// first, so the pod's `proxy` is `delta`'s plain init container, placed after the pod's own; it is
/// no native sidecar out of place.
#[test]
fn a_name_a_native_sidecar_shares_with_a_plain_init_container_is_not_taken_for_it() {
    let catalog = json!([
        {"name": "gamma", "nativeSidecar": true, "containers": [{"name": "proxy", "image": "a:0"}]},
        {"name": "delta", "initContainers": [{"name": "proxy", "image": "a:0"}]},
    ]);
    let entries = entries_from_value(&catalog, "regression").expect("the catalog parses");
    let policy = Policy {
        on_collision: CollisionPolicy::Skip,
        unknown_sidecar: UnknownSidecarPolicy::Deny,
        env_names: EnvNames::AsIs,
        placement: NativePlacement::First,
        override_pod_metadata: false,
        env: EnvPolicy { locked: false, narrow: false, skip: false },
    };
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": NAMESPACE, "annotations": {INJECT: "delta,gamma"}},
        "spec": {"initContainers": [{"name": "setup", "image": "a:0"}]}});
    let (harness, _) = harness(policy, &entries);
    let ran = run(&current_thread(), &harness, &pod).expect("the patch applies");
    let result = ran.result.expect("admitted");
    assert_eq!(names_in(&result, "initContainers"), ["setup", "proxy"]);
    assert_eq!(items(&result, "initContainers")[1].get("restartPolicy"), None, "delta's plain init container");
    let status = status_of(&result).expect("a status annotation");
    let case = Case { policy, entries, pod: pod.clone() };
    policy_decisions_hold(&case, &pod, &result, &status).expect("the policies' decisions hold");
}
