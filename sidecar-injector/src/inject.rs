//! The two mutators: sidecars from the catalog, then env vars from the pod's annotations.
//!
//! Both work on the pod's raw JSON ([`admission_kit::DynamicMutator`]) so that catalog containers
//! reach the pod with every field they carry and the pod keeps every field it has; admission-kit
//! turns the change into the patch. Nothing is shared between requests except the read-only
//! catalog: one pod's annotations can never reach another pod.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use admission_kit::mutator::{object_at, object_entry};
use admission_kit::prelude::*;
use serde_json::{Map, Value, json};

use crate::catalog::{CatalogStore, NamespaceCatalogs, SidecarEntry};
use crate::env_rules::{AnnotationEnv, OnViolation, Rules, Violation};
use crate::settings::{CollisionPolicy, EnvNames, InjectionSettings, Limits, NativePlacement, UnknownSidecarPolicy};

/// The annotation names derived from the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotations {
    /// `<prefix>/` — every annotation under it is either a control annotation or an env var.
    pub prefix: String,
    /// `<prefix>/inject`: the comma-separated sidecar names.
    pub inject: String,
    /// `<prefix>/status`: what was injected (the idempotence marker).
    pub status: String,
}

impl Annotations {
    /// Names under `prefix` (e.g. `sidecar-injector.expedia.com`), the sidecars listed in
    /// `<prefix>/<inject>` (`inject` by default).
    #[must_use]
    pub fn new(prefix: &str, inject: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        Self { prefix: format!("{prefix}/"), inject: format!("{prefix}/{inject}"), status: format!("{prefix}/status") }
    }

    /// The names `settings` use.
    #[must_use]
    pub fn of(settings: &InjectionSettings) -> Self {
        Self::new(&settings.annotation_prefix, &settings.inject_annotation_name)
    }

    /// The env var annotations of a pod: every `<prefix>/<key>` but the control annotations.
    pub fn env_pairs<'a>(
        &'a self,
        annotations: &'a Map<String, Value>,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        annotations.iter().filter_map(move |(k, v)| {
            let key = k.strip_prefix(&self.prefix)?;
            (k != &self.inject && k != &self.status && !key.is_empty()).then_some((key, v.as_str().unwrap_or_default()))
        })
    }

    /// Checks the caps that do not depend on the catalog: the bytes of the `inject` and env
    /// annotations (keys and values), then the number of env annotations. One pass, before any work
    /// that grows with them; the error names the cap and its configuration key, for the denial. The
    /// status annotation is not counted: by the env step it is the injector's own writing.
    pub fn check_limits(&self, annotations: &Map<String, Value>, limits: &Limits) -> Result<(), String> {
        let bytes: usize = annotations
            .iter()
            .filter(|(k, _)| k.starts_with(&self.prefix) && **k != self.status)
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if bytes > limits.max_annotation_bytes {
            return Err(format!(
                "the pod's `inject` and env annotations under `{}` hold {bytes} bytes; the limit is {} (configuration key `limits.maxAnnotationBytes`)",
                self.prefix, limits.max_annotation_bytes
            ));
        }
        let env = self.env_pairs(annotations).count();
        if env > limits.max_env_annotations {
            return Err(format!(
                "the pod has {env} env var annotations under `{}`; the limit is {} (configuration key `limits.maxEnvAnnotations`)",
                self.prefix, limits.max_env_annotations
            ));
        }
        Ok(())
    }
}

/// The sidecar names a pod asks for: comma-separated, spaces trimmed, empty items ignored, the
/// first of any repeated name kept.
///
/// ```
/// assert_eq!(sidecar_injector::inject::requested(" haystack-agent, logger ,haystack-agent"), ["haystack-agent", "logger"]);
/// ```
#[must_use]
pub fn requested(value: &str) -> Vec<&str> {
    // A set beside the list: the annotation is pod authors' input, so duplicate removal must stay
    // linear in the number of names (a list search made 60,000 names take seconds).
    let mut seen: HashSet<&str> = HashSet::new();
    value.split(',').map(str::trim).filter(|n| !n.is_empty() && seen.insert(n)).collect()
}

/// What the status annotation records.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The sidecars injected, in order.
    pub sidecars: Vec<String>,
    /// The containers (of any kind) that were added, which receive env from annotations.
    pub containers: Vec<String>,
}

fn annotations_of(pod: &Value) -> Map<String, Value> {
    pod.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default()
}

fn array_at<'a>(spec: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    if !spec.get(key).is_some_and(Value::is_array) {
        spec.insert(key.to_owned(), Value::Array(Vec::new()));
    }
    spec.get_mut(key).and_then(Value::as_array_mut).unwrap_or_else(|| unreachable!("just made an array"))
}

fn names(items: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    items
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_owned))
}

/// Which catalog entry added each container of this review, left by [`SidecarMutator`] for
/// [`EnvFromAnnotations`] (through [`Context::shared`]), whose rules depend on the entry.
#[derive(Clone, Debug, Default)]
pub struct AddedBy(pub Arc<HashMap<String, Arc<SidecarEntry>>>);

/// Counts injection outcomes by sidecar; the server's metrics registry holds it.
pub type InjectionCounter = Arc<dyn Fn(&str, &'static str) + Send + Sync>;

/// Injects the sidecars a pod asks for.
pub struct SidecarMutator {
    catalog: Arc<CatalogStore>,
    namespaced: Option<Arc<NamespaceCatalogs>>,
    settings: Arc<InjectionSettings>,
    annotations: Annotations,
    count: Option<InjectionCounter>,
}

impl std::fmt::Debug for SidecarMutator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarMutator").field("annotations", &self.annotations).finish_non_exhaustive()
    }
}

impl SidecarMutator {
    /// A mutator over `catalog` with `settings`.
    #[must_use]
    pub fn new(catalog: Arc<CatalogStore>, settings: Arc<InjectionSettings>) -> Self {
        let annotations = Annotations::of(&settings);
        Self { catalog, namespaced: None, settings, annotations, count: None }
    }

    /// Also looks names up as `ConfigMaps` in the pod's namespace (the 2022 generation's catalogs),
    /// after the catalog: an administrator's catalog entry wins over a namespace's `ConfigMap`.
    #[must_use]
    pub fn with_namespace_catalogs(mut self, namespaced: Arc<NamespaceCatalogs>) -> Self {
        self.namespaced = Some(namespaced);
        self
    }

    /// Reports each sidecar's outcome (`injected`, `unknown`, `not_allowed`, `collision`);
    /// `injected` is reported only for pods that are admitted.
    #[must_use]
    pub fn counting(mut self, count: InjectionCounter) -> Self {
        self.count = Some(count);
        self
    }

    fn count(&self, sidecar: &str, outcome: &'static str) {
        if let Some(count) = &self.count {
            count(sidecar, outcome);
        }
    }
}

/// How many names or env vars a loop handles between two looks at the review's deadline (reading
/// the clock costs tens of nanoseconds; a few hundred items cost microseconds).
const DEADLINE_CHECK_EVERY: usize = 256;

/// Names already taken in the pod, for collision checks.
struct Taken {
    containers: BTreeSet<String>,
    volumes: BTreeSet<String>,
    pull_secrets: BTreeSet<String>,
}

impl Taken {
    fn of(spec: &Map<String, Value>) -> Self {
        Self {
            containers: names(spec.get("containers")).chain(names(spec.get("initContainers"))).collect(),
            volumes: names(spec.get("volumes")).collect(),
            pull_secrets: names(spec.get("imagePullSecrets")).collect(),
        }
    }
}

#[async_trait]
impl DynamicMutator for SidecarMutator {
    async fn mutate(&self, pod: &mut Value, ctx: &mut Context<'_>) -> MutationResult {
        let annotations = annotations_of(pod);
        if annotations.contains_key(&self.annotations.status) {
            return Ok(());
        }
        let Some(request) = annotations.get(&self.annotations.inject).and_then(Value::as_str) else { return Ok(()) };
        let limits = &self.settings.limits;
        self.annotations.check_limits(&annotations, limits).map_err(MutationError::deny)?;
        let requested = requested(request);
        if requested.len() > limits.max_inject_names {
            return Err(MutationError::deny(format!(
                "annotation `{}` names {} sidecars; the limit is {} (configuration key `limits.maxInjectNames`)",
                self.annotations.inject,
                requested.len(),
                limits.max_inject_names
            )));
        }
        let catalog = self.catalog.current();
        let namespace = ctx.request().namespace.clone().unwrap_or_default();
        let mut entries: Vec<(Arc<SidecarEntry>, bool)> = Vec::new();
        for (i, name) in requested.into_iter().enumerate() {
            if i % DEADLINE_CHECK_EVERY == 0 {
                ctx.check_deadline()?;
            }
            let from_namespace = match (catalog.get(name), &self.namespaced) {
                (Some(_), _) | (None, None) => None,
                (None, Some(namespaced)) => namespaced.lookup(&namespace, name),
            };
            match from_namespace {
                Some(Ok(found)) => {
                    for entry in &found {
                        entries.push((entry.clone(), false));
                    }
                    continue;
                }
                Some(Err(message)) => return Err(MutationError::deny(message)),
                None => {}
            }
            let Some(entry) = catalog.get(name) else {
                // Requested names are user input: never a metric label.
                self.count("(unknown)", "unknown");
                let message = match self.namespaced {
                    None => format!("sidecar `{name}` is not in the catalog; known: {catalog}"),
                    Some(_) => format!(
                        "sidecar `{name}` is not in the catalog (known: {catalog}) nor a ConfigMap with a sidecars catalog in namespace `{namespace}`"
                    ),
                };
                if self.settings.unknown_sidecar == UnknownSidecarPolicy::Deny {
                    return Err(MutationError::deny(message));
                }
                ctx.warn(format!("{message}; pod admitted without it"));
                continue;
            };
            if let Some(allowed) = &entry.namespaces
                && !allowed.contains(&namespace)
            {
                self.count(name, "not_allowed");
                return Err(MutationError::deny(format!(
                    "sidecar `{name}` may not be injected in namespace `{namespace}`; it is allowed in: {}",
                    allowed.join(", ")
                )));
            }
            entries.push((entry.clone(), true));
        }
        if entries.is_empty() {
            return Ok(());
        }
        let status = self.inject(pod, &entries, ctx)?;
        let annotations = object_entry(object_at(pod, "metadata"), "annotations");
        let status_json =
            serde_json::to_string(&status).map_err(|e| MutationError::caused_by("failed to encode the status", e))?;
        annotations.insert(self.annotations.status.clone(), Value::String(status_json));
        Ok(())
    }
}

impl SidecarMutator {
    fn inject(
        &self,
        pod: &mut Value,
        entries: &[(Arc<SidecarEntry>, bool)],
        ctx: &mut Context<'_>,
    ) -> Result<Status, MutationError> {
        let spec = object_at(pod, "spec");
        let mut taken = Taken::of(spec);
        let mut status = Status::default();
        let mut native: Vec<Value> = Vec::new();
        let mut injected: Vec<String> = Vec::new();
        let mut added_by: HashMap<String, Arc<SidecarEntry>> = HashMap::new();
        for (entry, from_catalog) in entries {
            let name = entry.name.as_str();
            // Names from a namespace ConfigMap are tenants' input: never a metric label.
            let label = if *from_catalog { name } else { "(namespace ConfigMap)" };
            // Containers first: a collision either denies the pod or skips the item.
            let add = |item: &Value,
                       set: &mut BTreeSet<String>,
                       what: &str,
                       ctx: &mut Context<'_>|
             -> Result<bool, MutationError> {
                let item_name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                if set.insert(item_name.to_owned()) {
                    return Ok(true);
                }
                self.count(label, "collision");
                let message =
                    format!("sidecar `{name}` adds {what} `{item_name}`, but the pod already has one with that name");
                match self.settings.on_collision {
                    CollisionPolicy::Deny => Err(MutationError::deny(message)),
                    CollisionPolicy::Skip => {
                        ctx.warn(format!("{message}; skipped"));
                        Ok(false)
                    }
                }
            };
            for container in &entry.containers {
                if add(container, &mut taken.containers, "container", ctx)? {
                    let container_name = container["name"].as_str().unwrap_or_default();
                    added_by.insert(container_name.to_owned(), entry.clone());
                    status.containers.push(container_name.to_owned());
                    if entry.native_sidecar {
                        let mut c = container.clone();
                        c["restartPolicy"] = json!("Always");
                        native.push(c);
                    } else {
                        array_at(spec, "containers").push(container.clone());
                    }
                }
            }
            for container in &entry.init_containers {
                if add(container, &mut taken.containers, "init container", ctx)? {
                    let container_name = container["name"].as_str().unwrap_or_default();
                    added_by.insert(container_name.to_owned(), entry.clone());
                    status.containers.push(container_name.to_owned());
                    array_at(spec, "initContainers").push(container.clone());
                }
            }
            for volume in &entry.volumes {
                if add(volume, &mut taken.volumes, "volume", ctx)? {
                    array_at(spec, "volumes").push(volume.clone());
                }
            }
            for secret in &entry.image_pull_secrets {
                // The same pull secret twice is harmless: add it once.
                let secret_name = secret.get("name").and_then(Value::as_str).unwrap_or_default();
                if taken.pull_secrets.insert(secret_name.to_owned()) {
                    array_at(spec, "imagePullSecrets").push(secret.clone());
                }
            }
            status.sidecars.push(name.to_owned());
            injected.push(label.to_owned());
        }
        ctx.shared_mut().insert(AddedBy(Arc::new(added_by)));
        // Counted once the review's verdict is in, and only if the pod is admitted: a later
        // sidecar's collision or the env step may still deny it.
        if let Some(count) = self.count.clone() {
            ctx.on_admit(move || {
                for label in &injected {
                    count(label, "injected");
                }
            });
        }
        if !native.is_empty() {
            let init = array_at(spec, "initContainers");
            match self.settings.native_sidecar_placement {
                NativePlacement::First => {
                    init.splice(0..0, native);
                }
                NativePlacement::Last => init.extend(native),
            }
        }
        let metadata = object_at(pod, "metadata");
        for (entry, _) in entries {
            for (field, values) in [("annotations", &entry.annotations), ("labels", &entry.labels)] {
                if values.is_empty() {
                    continue;
                }
                let map = object_entry(metadata, field);
                for (k, v) in values {
                    if self.settings.override_pod_metadata || !map.contains_key(k) {
                        map.insert(k.clone(), Value::String(v.clone()));
                    }
                }
            }
        }
        Ok(status)
    }
}

/// Sets env vars from `<prefix>/<key>` annotations in every container the status annotation lists
/// that was added in this review (not in the object the API server sent).
#[derive(Debug)]
pub struct EnvFromAnnotations {
    annotations: Annotations,
    names: EnvNames,
    literal: bool,
    limits: Limits,
    rules: AnnotationEnv,
}

impl EnvFromAnnotations {
    /// A mutator for annotations under `settings.annotation_prefix`.
    #[must_use]
    pub fn new(settings: &InjectionSettings) -> Self {
        Self {
            annotations: Annotations::of(settings),
            names: settings.env_names,
            literal: settings.literal_env_values,
            limits: settings.limits,
            rules: settings.annotation_env.clone(),
        }
    }
}

/// `some-api-key` → `SOME_API_KEY`: upper case, every other character `_`, no leading digit.
#[must_use]
pub fn c_identifier(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Whether every Kubernetes release accepts `name` as an env var name: `[-._a-zA-Z][-._a-zA-Z0-9]*`,
/// and not `.`, `..` nor anything starting with `..` (Kubernetes' `IsEnvVarName` refuses those too,
/// as they read as directory references).
#[must_use]
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && name != "."
        && !name.starts_with("..")
}

#[async_trait]
impl DynamicMutator for EnvFromAnnotations {
    async fn mutate(&self, pod: &mut Value, ctx: &mut Context<'_>) -> MutationResult {
        let annotations = annotations_of(pod);
        let Some(status) = annotations.get(&self.annotations.status).and_then(Value::as_str) else { return Ok(()) };
        let Ok(status) = serde_json::from_str::<Status>(status) else {
            return Err(MutationError::deny(format!(
                "annotation `{}` is not a status this injector wrote; remove it to have the pod injected",
                self.annotations.status
            )));
        };
        // Checked here too: this mutator may run without the sidecar step before it.
        self.annotations.check_limits(&annotations, &self.limits).map_err(MutationError::deny)?;
        // Env var name → (annotation key, value), in name order.
        let mut env: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        for (i, (key, value)) in self.annotations.env_pairs(&annotations).enumerate() {
            if i % DEADLINE_CHECK_EVERY == 0 {
                ctx.check_deadline()?;
            }
            let name = match self.names {
                EnvNames::AsIs => key.to_owned(),
                EnvNames::CIdentifier => c_identifier(key),
            };
            if !is_env_var_name(&name) {
                return Err(MutationError::deny(format!(
                    "annotation `{}{key}` would become env var `{name}`, which Kubernetes rejects; rename it, or set envNames: cIdentifier",
                    self.annotations.prefix
                )));
            }
            if let Some((_, previous)) = env.insert(name.clone(), (key, value))
                && previous != value
            {
                return Err(MutationError::deny(format!(
                    "two annotations under `{}` become env var `{name}` with different values",
                    self.annotations.prefix
                )));
            }
        }
        if env.is_empty() {
            return Ok(());
        }
        // Only containers this review added: a container the API server already sent is the pod's
        // own, whatever a status annotation (hand-written, or ours from an earlier invocation)
        // lists, so it never receives annotation env. Sidecars injected in an earlier invocation
        // got their env then.
        let sent = ctx.request().object.as_ref().and_then(|o| o.get("spec"));
        let present: HashSet<String> = ["containers", "initContainers"]
            .iter()
            .flat_map(|key| names(sent.and_then(|spec| spec.get(*key))))
            .collect();
        let targets: BTreeSet<&str> =
            status.containers.iter().map(String::as_str).filter(|n| !present.contains(*n)).collect();
        if targets.is_empty() {
            return Ok(());
        }
        let added_by = ctx.shared().get::<AddedBy>().cloned().unwrap_or_default();
        let mut skipped = Skipped::default();
        let spec = object_at(pod, "spec");
        for key in ["initContainers", "containers"] {
            let Some(containers) = spec.get_mut(key).and_then(Value::as_array_mut) else { continue };
            for container in containers {
                let Some(container_name) =
                    container.get("name").and_then(Value::as_str).filter(|n| targets.contains(n)).map(str::to_owned)
                else {
                    continue;
                };
                let Some(container) = container.as_object_mut() else { continue };
                // The rules of the entry that added the container; a container the sidecar step
                // did not report (this step run on its own) follows the configuration's.
                let entry = added_by.0.get(&container_name);
                let rules = Rules::new(&self.rules, entry.and_then(|e| e.annotation_env.as_ref()));
                let whom = match entry {
                    Some(entry) => format!("sidecar `{}` (container `{container_name}`)", entry.name),
                    None => format!("injected container `{container_name}`"),
                };
                self.set_env(container, &whom, rules, &env, ctx, &mut skipped)?;
            }
        }
        skipped.warn(ctx);
        Ok(())
    }
}

impl EnvFromAnnotations {
    /// Sets the annotations' `env` (name → key, value) in one injected `container`, as `rules` allow.
    fn set_env(
        &self,
        container: &mut Map<String, Value>,
        whom: &str,
        rules: Rules<'_>,
        env: &BTreeMap<String, (&str, &str)>,
        ctx: &mut Context<'_>,
        skipped: &mut Skipped,
    ) -> MutationResult {
        let list = container.entry("env").or_insert_with(|| Value::Array(Vec::new()));
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        let list = list.as_array_mut().unwrap_or_else(|| unreachable!("just made an array"));
        // Where each existing var sits, by name: one lookup per annotation keeps this linear in the
        // number of annotations (a list search per var made 60,000 take 30 s).
        let mut at: HashMap<String, usize> = HashMap::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            if let Some(n) = e.get("name").and_then(Value::as_str) {
                at.entry(n.to_owned()).or_insert(i);
            }
        }
        let max_vars = rules.max_vars();
        let mut taken = 0;
        for (i, (name, (key, value))) in env.iter().enumerate() {
            if i % DEADLINE_CHECK_EVERY == 0 {
                ctx.check_deadline()?;
            }
            let existing = at.get(name.as_str()).copied();
            let verdict = if taken < max_vars {
                rules.check(key, name, value, existing.is_some())
            } else {
                Err(Violation::TooMany { limit: max_vars })
            };
            if let Err(violation) = verdict {
                let message = format!(
                    "{whom}: annotation `{}{key}` may not set env var `{name}`: {}",
                    self.annotations.prefix,
                    violation.describe(rules.whose(&violation))
                );
                match rules.on_violation() {
                    OnViolation::Deny => return Err(MutationError::deny(message)),
                    OnViolation::Skip => {
                        skipped.add(message);
                        continue;
                    }
                }
            }
            taken += 1;
            // kubelet expands `$(VAR)` and turns `$$` into `$`: doubling every `$` makes the
            // container see exactly the annotation's bytes.
            let value = if self.literal { value.replace('$', "$$") } else { (*value).to_owned() };
            let var = json!({"name": name, "value": value});
            match existing {
                // An unlocked var of the container's own is replaced (and its valueFrom).
                Some(i) => list[i] = var,
                None => list.push(var),
            }
        }
        Ok(())
    }
}

/// The vars `onViolation: skip` left out, for warnings: each named up to a cap, then a count, so
/// a pod with a thousand refused annotations gets a readable answer.
#[derive(Default)]
struct Skipped {
    messages: Vec<String>,
    more: usize,
}

impl Skipped {
    /// Warnings named one by one; the rest are counted.
    const NAMED: usize = 10;

    fn add(&mut self, message: String) {
        if self.messages.len() < Self::NAMED {
            self.messages.push(message);
        } else {
            self.more += 1;
        }
    }

    fn warn(self, ctx: &mut Context<'_>) {
        for message in self.messages {
            ctx.warn(format!("{message}; not set"));
        }
        if self.more > 0 {
            ctx.warn(format!(
                "{} more env vars from annotations were not set, for the same kinds of reasons",
                self.more
            ));
        }
    }
}

#[cfg(test)]
mod tests;
