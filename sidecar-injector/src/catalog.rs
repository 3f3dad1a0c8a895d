//! The sidecar catalog: named entries of containers, init containers, volumes, image pull secrets,
//! annotations and labels, read from either Expedia format.
//!
//! - 2019 (`sidecarconfig.yaml`): `sidecars: [{name, sidecar: {containers, volumes, …}}]`
//! - 2022 (`sidecars.yaml` key of a `ConfigMap`): a plain list `[{name, containers, …}]`
//!
//! Containers, volumes and the rest are kept as raw JSON, so every field an entry carries reaches
//! the pod — including fields newer than any typed struct (for example `restartPolicy: Always` on an
//! init container). Entry-level keys are checked: a misspelt `contianers` is an error naming the key,
//! its line and column, not a silently empty sidecar (the serde types are in `format`).

mod format;
mod namespaced;
mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

pub use namespaced::{NamespaceCatalogWriter, NamespaceCatalogs};
pub use source::{CatalogSource, CatalogStore, SourceKind, load as load_sources};

/// One sidecar of the catalog.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SidecarEntry {
    /// The name pods ask for in their `inject` annotation.
    pub name: String,
    /// Containers appended to `spec.containers` (or, for a native sidecar, prepended to
    /// `spec.initContainers` with `restartPolicy: Always`).
    pub containers: Vec<Value>,
    /// Containers appended to `spec.initContainers`.
    pub init_containers: Vec<Value>,
    /// Volumes appended to `spec.volumes`.
    pub volumes: Vec<Value>,
    /// Entries appended to `spec.imagePullSecrets`.
    pub image_pull_secrets: Vec<Value>,
    /// Annotations added to the pod.
    pub annotations: BTreeMap<String, String>,
    /// Labels added to the pod.
    pub labels: BTreeMap<String, String>,
    /// Inject `containers` as native sidecars (init containers with `restartPolicy: Always`).
    pub native_sidecar: bool,
    /// Namespaces where this sidecar may be injected; `None` means everywhere.
    pub namespaces: Option<Vec<String>>,
    /// Which env vars annotations may set in this entry's containers, over the configuration's
    /// `annotationEnv`.
    pub annotation_env: Option<crate::env_rules::SidecarEnvRules>,
}

impl SidecarEntry {
    /// Names of every container this entry adds (containers and init containers).
    pub fn container_names(&self) -> impl Iterator<Item = &str> {
        self.containers.iter().chain(&self.init_containers).filter_map(|c| c.get("name").and_then(Value::as_str))
    }

    /// Names of the volumes this entry adds.
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.volumes.iter().filter_map(|v| v.get("name").and_then(Value::as_str))
    }
}

/// Why a catalog could not be read. Messages name the source and, for syntax errors, the line.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatalogError {
    /// A file or directory could not be read.
    #[error("failed to read catalog {source_name}: {message}")]
    Io {
        /// The file or directory.
        source_name: String,
        /// The I/O error.
        message: String,
    },
    /// The text is not YAML/JSON, or not a catalog: a key no entry has, a value of the wrong type,
    /// an item without a `name`.
    #[error("failed to parse catalog {source_name}: {message}")]
    Syntax {
        /// The file (or config key).
        source_name: String,
        /// Where in the document (`[0].containers`), the parser's message, and (for YAML text) the
        /// line and column.
        message: String,
    },
    /// The document is a catalog, but an entry cannot be injected as written.
    #[error("invalid catalog {source_name}: {message}")]
    Invalid {
        /// The file (or config key).
        source_name: String,
        /// What is wrong, naming the entry.
        message: String,
    },
    /// Two entries that a pod may ask for together add an item of the same name, so every such
    /// pod would be denied (or lose an item) for the catalog's mistake.
    #[error("sidecars {first} and {second} both add {what} `{item}`; a pod asking for both could not get both")]
    Conflict {
        /// The first entry and where it is defined: "`a` (in one.yaml)".
        first: String,
        /// The second entry and where it is defined.
        second: String,
        /// `container` or `volume`.
        what: &'static str,
        /// The shared name.
        item: String,
    },
    /// Two sources define the same sidecar.
    #[error("sidecar `{name}` is defined twice: in {first} and in {second}")]
    Duplicate {
        /// The sidecar name.
        name: String,
        /// Where it was first defined.
        first: String,
        /// Where it was defined again.
        second: String,
    },
}

/// A set of sidecars by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    entries: BTreeMap<String, (Arc<SidecarEntry>, String)>,
}

impl Catalog {
    /// An empty catalog.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds entries read from `source_name`; a name already present is an error.
    pub fn extend(&mut self, entries: Vec<SidecarEntry>, source_name: &str) -> Result<(), CatalogError> {
        for entry in entries {
            if let Some((_, first)) = self.entries.get(&entry.name) {
                return Err(CatalogError::Duplicate {
                    name: entry.name.clone(),
                    first: first.clone(),
                    second: source_name.to_owned(),
                });
            }
            self.entries.insert(entry.name.clone(), (Arc::new(entry), source_name.to_owned()));
        }
        Ok(())
    }

    /// Checks that no two entries a pod may ask for together (their `namespaces` overlap) add a
    /// container (of any kind) or a volume of the same name: that pod would be denied, or lose an
    /// item, for the catalog's mistake. Image pull secrets may be shared (injection adds each once).
    pub fn check_conflicts(&self) -> Result<(), CatalogError> {
        type Seen<'a> = HashMap<&'a str, Vec<&'a (Arc<SidecarEntry>, String)>>;
        let mut containers: Seen<'_> = HashMap::new();
        let mut volumes: Seen<'_> = HashMap::new();
        for defined in self.entries.values() {
            let entry = &defined.0;
            let kinds: [(&'static str, &mut Seen<'_>, Vec<&str>); 2] = [
                ("container", &mut containers, entry.container_names().collect()),
                ("volume", &mut volumes, entry.volume_names().collect()),
            ];
            for (what, seen, names) in kinds {
                for item in names {
                    let others = seen.entry(item).or_default();
                    if let Some(other) = others.iter().find(|other| may_meet(&other.0, entry)) {
                        return Err(CatalogError::Conflict {
                            first: format!("`{}` (in {})", other.0.name, other.1),
                            second: format!("`{}` (in {})", entry.name, defined.1),
                            what,
                            item: item.to_owned(),
                        });
                    }
                    others.push(defined);
                }
            }
        }
        Ok(())
    }

    /// The entry called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<SidecarEntry>> {
        self.entries.get(name).map(|(e, _)| e)
    }

    /// The known names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// How many sidecars the catalog holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the catalog is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether one pod may get both entries: their namespace allow-lists overlap.
fn may_meet(a: &SidecarEntry, b: &SidecarEntry) -> bool {
    match (&a.namespaces, &b.namespaces) {
        (Some(a), Some(b)) => a.iter().any(|n| b.contains(n)),
        _ => true,
    }
}

impl fmt::Display for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() { f.write_str("(empty catalog)") } else { f.write_str(&names.join(", ")) }
    }
}

/// Parses a catalog document in either Expedia format (detected from its shape). A key no entry
/// has, or a value of the wrong type, is an error naming where it is in the document, with its
/// line and column.
pub fn parse_catalog(text: &str, source_name: &str) -> Result<Vec<SidecarEntry>, CatalogError> {
    let entries = format::from_yaml(text)
        .map_err(|message| CatalogError::Syntax { source_name: source_name.to_owned(), message })?;
    checked(entries, source_name)
}

/// Reads catalog entries from an already-parsed document (either format, or `null` for none).
pub fn entries_from_value(document: &Value, source_name: &str) -> Result<Vec<SidecarEntry>, CatalogError> {
    let entries = format::from_value(document)
        .map_err(|message| CatalogError::Syntax { source_name: source_name.to_owned(), message })?;
    checked(entries, source_name)
}

/// Checks one catalog item against its Kubernetes type.
type ItemCheck = fn(&Value) -> Result<(), String>;

/// Whether `value` decodes as `K`, naming the field that does not.
fn decodes_as<K: serde::de::DeserializeOwned>(value: &Value) -> Result<(), String> {
    admission_kit::pipeline::decode_naming_field::<K>(value).map(drop)
}

/// Refuses an entry whose items are not what Kubernetes accepts (a container, volume or image
/// pull secret that does not decode as one: every pod it went into would be rejected, or denied
/// by the webhook itself as undecodable), or that repeats a name of its own (the second item would
/// collide with the first in every pod, and the denial would blame the pod).
fn checked(entries: Vec<SidecarEntry>, source_name: &str) -> Result<Vec<SidecarEntry>, CatalogError> {
    use k8s_openapi::api::core::v1::{Container, LocalObjectReference, Volume};
    for entry in &entries {
        let typed: [(&str, &[Value], ItemCheck); 4] = [
            ("containers", &entry.containers, decodes_as::<Container>),
            ("initContainers", &entry.init_containers, decodes_as::<Container>),
            ("volumes", &entry.volumes, decodes_as::<Volume>),
            ("imagePullSecrets", &entry.image_pull_secrets, decodes_as::<LocalObjectReference>),
        ];
        for (field, items, check) in typed {
            for (i, item) in items.iter().enumerate() {
                check(item).map_err(|why| CatalogError::Invalid {
                    source_name: source_name.to_owned(),
                    message: format!("sidecar `{}`: {field}[{i}]: {why}", entry.name),
                })?;
            }
        }
        let pull_secret_names = entry.image_pull_secrets.iter().filter_map(|s| s.get("name").and_then(Value::as_str));
        for (what, names) in [
            ("container", entry.container_names().collect::<Vec<_>>()),
            ("volume", entry.volume_names().collect()),
            ("image pull secret", pull_secret_names.collect()),
        ] {
            let mut seen = BTreeSet::new();
            for name in names {
                if !seen.insert(name) {
                    return Err(CatalogError::Invalid {
                        source_name: source_name.to_owned(),
                        message: format!("sidecar `{}`: {what} name `{name}` is used twice", entry.name),
                    });
                }
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
