//! The two catalog formats of the Expedia injector as serde types.
//!
//! The document's top-level shape picks the format before any entry is read — a list is the 2022
//! format, a map the 2019 one — and the entries then deserialise into derived types that refuse
//! unknown keys. An untagged enum would try each format in turn and, when neither fits, say only
//! that no variant matched; deciding first keeps the parser's own error, which names the key or
//! value at fault with its line and column. [`serde_path_to_error`] adds where in the document that
//! is (`[0].containers`, `sidecars[1].sidecar.volumes[0]`), so that a wrong type names its field.
//!
//! Containers, volumes and pull secrets stay raw JSON maps: every field they carry reaches the pod,
//! including fields newer than any typed struct (`restartPolicy: Always` on an init container).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::SidecarEntry;

/// Reads a catalog document (either format, or an empty one) from YAML or JSON text. The error
/// says where in the document it is and, from the YAML parser, its line and column.
pub(super) fn from_yaml(text: &str) -> Result<Vec<SidecarEntry>, String> {
    let mut path = None;
    // One line, not the parser's source snippet: the message goes into logs and admission denials.
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |deserializer| {
        serde_path_to_error::deserialize::<_, Document>(deserializer).map_err(|error| {
            path = Some(error.path().to_string());
            error.into_inner()
        })
    })
    .map(|document| document.0)
    .map_err(|error| located(path.as_deref(), &error))
}

/// Reads a catalog document from an already-parsed value (the configuration's inline `sidecars`).
pub(super) fn from_value(value: &Value) -> Result<Vec<SidecarEntry>, String> {
    serde_path_to_error::deserialize::<_, Document>(value)
        .map(|document| document.0)
        .map_err(|error| located(Some(&error.path().to_string()), error.inner()))
}

/// `path: message`, leaving out the path of the document itself (`.`).
fn located(path: Option<&str>, error: &dyn fmt::Display) -> String {
    match path {
        Some(path) if path != "." && !path.is_empty() => format!("{path}: {error}"),
        _ => error.to_string(),
    }
}

/// A whole catalog document, in the format its shape says.
struct Document(Vec<SidecarEntry>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

/// Looks at the top-level shape only, then hands the whole of it to the derived type of its format.
struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a catalog: a list of sidecars (2022 format) or a map with `sidecars:` (2019 format)")
    }

    // An empty file (or `null`) is an empty catalog: a mounted `ConfigMap` may carry one.
    fn visit_unit<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Document, A::Error> {
        let entries = Vec::<MapOnly<Fields<Name>>>::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Document(entries.into_iter().map(|fields| fields.0.into_entry(|name| name.0)).collect()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Document, A::Error> {
        let catalog = Catalog2019::deserialize(MapAccessDeserializer::new(map))?;
        Ok(Document(
            catalog.sidecars.into_iter().map(|MapOnly(entry)| entry.sidecar.0.into_entry(|_| entry.name.0)).collect(),
        ))
    }
}

/// The 2019 format (`sidecarconfig.yaml`): `sidecars: [{name, sidecar: {containers, …}}]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalog2019 {
    #[serde(default, deserialize_with = "or_default")]
    sidecars: Vec<MapOnly<Entry2019>>,
}

/// One 2019 entry: its name, and the rest under `sidecar`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry2019 {
    name: Name,
    /// A `name` repeated inside `sidecar` has always been accepted (and ignored), so 2019 catalogs
    /// that carry one still load.
    #[serde(default, deserialize_with = "or_default")]
    sidecar: MapOnly<Fields<Option<IgnoredAny>>>,
}

/// A struct read from a mapping only. A derived struct also accepts a list of its fields in order
/// (`["haystack-agent"]` as `{name: haystack-agent}`); the YAML reader never offers that, but a
/// document already parsed (the configuration's inline `sidecars:`) does, and the two must agree:
/// an entry is a map, in every source.
#[derive(Default)]
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MapOnly<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        deserializer.deserialize_map(Only(std::marker::PhantomData))
    }
}

/// The fields of an entry: a whole 2022 entry (`N` = [`Name`], required), or the `sidecar` map of a
/// 2019 one (`N` = an optional, ignored `name`).
///
/// A key written with nothing after it (`containers:`) is the same as no key, as it always was.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Fields<N> {
    name: N,
    #[serde(default, deserialize_with = "or_default")]
    containers: Vec<NamedItem>,
    #[serde(default, deserialize_with = "or_default")]
    init_containers: Vec<NamedItem>,
    #[serde(default, deserialize_with = "or_default")]
    volumes: Vec<NamedItem>,
    #[serde(default, deserialize_with = "or_default")]
    image_pull_secrets: Vec<NamedItem>,
    #[serde(default, deserialize_with = "or_default")]
    annotations: BTreeMap<String, Text>,
    #[serde(default, deserialize_with = "or_default")]
    labels: BTreeMap<String, Text>,
    #[serde(default, deserialize_with = "or_default")]
    native_sidecar: Flag,
    #[serde(default)]
    namespaces: Option<Vec<Text>>,
    #[serde(default)]
    annotation_env: Option<crate::env_rules::SidecarEnvRules>,
}

impl<N> Fields<N> {
    /// The entry, named by `name` (given the `name` field, which only 2022 entries carry).
    fn into_entry(self, name: impl FnOnce(N) -> String) -> SidecarEntry {
        let items = |items: Vec<NamedItem>| items.into_iter().map(|item| Value::Object(item.0)).collect();
        let strings = |map: BTreeMap<String, Text>| map.into_iter().map(|(key, value)| (key, value.0)).collect();
        SidecarEntry {
            name: name(self.name),
            containers: items(self.containers),
            init_containers: items(self.init_containers),
            volumes: items(self.volumes),
            image_pull_secrets: items(self.image_pull_secrets),
            annotations: strings(self.annotations),
            labels: strings(self.labels),
            native_sidecar: self.native_sidecar.0,
            namespaces: self.namespaces.map(|names| names.into_iter().map(|name| name.0).collect()),
            annotation_env: self.annotation_env,
        }
    }
}

/// Reads `null` (or a key with no value) as the default.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A string that was written as one. YAML would read `1` or `true` into a string as `"1"` or
/// `"true"`; the API server refuses them in a pod's labels and annotations, so the catalog does too
/// rather than inject something its author did not write.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(Self(text)),
            other => Err(de::Error::invalid_type(unexpected(&other), &"a string (quote it)")),
        }
    }
}

/// A boolean that was written as one: YAML would read the string `'true'` into a `bool`.
#[derive(Default)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Bool(flag) => Ok(Self(flag)),
            other => Err(de::Error::invalid_type(unexpected(&other), &"true or false")),
        }
    }
}

/// A sidecar's name: a string, spaces around it trimmed, not empty.
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(deserializer)?;
        let name = text.trim();
        if name.is_empty() {
            return Err(de::Error::invalid_value(de::Unexpected::Str(&text), &"a sidecar name"));
        }
        Ok(Self(name.to_owned()))
    }
}

/// A container, volume or pull secret: a map kept whole, with a non-empty string `name` (injection
/// finds collisions by name, and the API server refuses these without one).
struct NamedItem(Map<String, Value>);

impl<'de> Deserialize<'de> for NamedItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let item = Map::<String, Value>::deserialize(deserializer)?;
        match item.get("name") {
            Some(Value::String(name)) if !name.is_empty() => Ok(Self(item)),
            Some(Value::String(_)) => Err(de::Error::invalid_value(de::Unexpected::Str(""), &"a non-empty `name`")),
            Some(other) => Err(de::Error::invalid_type(unexpected(other), &"a string `name`")),
            None => Err(de::Error::missing_field("name")),
        }
    }
}

/// A JSON value as serde's description of what was found instead.
fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => de::Unexpected::Signed(i),
            (None, Some(u), _) => de::Unexpected::Unsigned(u),
            (None, None, f) => de::Unexpected::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}
