//! Arbitrary text as a sidecar catalog, in either Expedia format: the 2019 map
//! (`sidecars: [{name, sidecar: {...}}]`) and the 2022 list (`[{name, containers, ...}]`). Errors
//! are fine, panics (and YAML that takes unbounded time or memory) are not. Catalog text can come
//! from tenants when `namespaceCatalogs` reads `ConfigMaps` in their namespaces.
//!
//! Also differential: a document that parses is rewritten into the other format, entry by entry,
//! and must give the same sidecars (or fail in both); a text that parses gives what its YAML value
//! gives.
#![no_main]

use admission_kit::reexports::serde_json::{Map, Value};
use libfuzzer_sys::fuzz_target;
use sidecar_injector::catalog::{
    Catalog, CatalogError, CatalogSource, SidecarEntry, entries_from_value, load_sources, parse_catalog,
};

fn check_entries(entries: &[SidecarEntry]) {
    for entry in entries {
        assert!(!entry.name.is_empty() && entry.name.trim() == entry.name, "bad entry name {:?}", entry.name);
        let mut seen = std::collections::BTreeSet::new();
        for name in entry.container_names() {
            assert!(!name.is_empty(), "sidecar {:?} has a container without a name", entry.name);
            assert!(seen.insert(name), "sidecar {:?} has container {name:?} twice", entry.name);
        }
        for item in
            entry.containers.iter().chain(&entry.init_containers).chain(&entry.volumes).chain(&entry.image_pull_secrets)
        {
            assert!(item.is_object(), "sidecar {:?} has a list item that is not a map: {item}", entry.name);
        }
    }
    let mut catalog = Catalog::new();
    match catalog.extend(entries.to_vec(), "first") {
        Ok(()) => {
            assert!(catalog.len() <= entries.len());
            let _ = catalog.to_string();
            if !entries.is_empty() {
                let again = catalog.extend(entries.to_vec(), "second");
                assert!(matches!(again, Err(CatalogError::Duplicate { .. })), "the same entries twice: {again:?}");
            }
        }
        Err(CatalogError::Duplicate { .. }) => {}
        Err(other) => panic!("extend failed with a non-duplicate error: {other}"),
    }
}

/// A 2022 entry as a 2019 one: `{name, sidecar: {everything else}}`. Items without a string name
/// stay as they are (both formats must reject them).
fn to_2019(item: &Value) -> Value {
    match item {
        Value::Object(map) if map.get("name").is_some_and(Value::is_string) => {
            let mut inner = map.clone();
            let name = inner.remove("name").unwrap_or_default();
            let mut outer = Map::new();
            outer.insert("name".to_owned(), name);
            outer.insert("sidecar".to_owned(), Value::Object(inner));
            Value::Object(outer)
        }
        other => other.clone(),
    }
}

/// A 2019 entry as a 2022 one, when that is a faithful rewrite (`None` when the inner map has a
/// `name` of its own, which the 2019 format ignores and the 2022 format would read).
fn to_2022(item: &Value) -> Option<Value> {
    let Value::Object(map) = item else { return Some(item.clone()) };
    if map.keys().any(|k| k != "name" && k != "sidecar") {
        return Some(item.clone());
    }
    match map.get("sidecar") {
        None | Some(Value::Null) => {
            let mut flat = map.clone();
            flat.remove("sidecar");
            Some(Value::Object(flat))
        }
        Some(Value::Object(inner)) if !inner.contains_key("name") => {
            let mut out = inner.clone();
            if let Some(name) = map.get("name") {
                out.insert("name".to_owned(), name.clone());
            }
            Some(Value::Object(out))
        }
        Some(Value::Object(_)) => None,
        Some(_) => Some(item.clone()),
    }
}

fn same(a: &Result<Vec<SidecarEntry>, CatalogError>, b: &Result<Vec<SidecarEntry>, CatalogError>, what: &str) {
    match (a, b) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: the two formats give different sidecars"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("{what}: one format accepts what the other rejects:\n{a:?}\n{b:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_catalog(&text, "fuzz.yaml");
    match &parsed {
        Ok(entries) => check_entries(entries),
        Err(error) => {
            let _ = error.to_string();
        }
    }
    let Ok(document) = serde_saphyr::from_str::<Value>(&text) else {
        assert!(parsed.is_err(), "the catalog parsed but its YAML did not");
        return;
    };
    // The rewrites below are made from the YAML's value, so they are compared with that value's
    // own parse. A value has lost what the text parser refuses in the text itself (a map key
    // given twice keeps its last value), so the text's parse is held to the value's only when the
    // text parsed.
    let direct = entries_from_value(&document, "fuzz.yaml");
    if parsed.is_ok() {
        same(&parsed, &direct, "the text and its YAML value");
    }
    match &document {
        Value::Array(items) => {
            let nested = Value::Object(Map::from_iter([(
                "sidecars".to_owned(),
                Value::Array(items.iter().map(to_2019).collect()),
            )]));
            same(&direct, &entries_from_value(&nested, "as-2019"), "2022 list rewritten as 2019");
        }
        Value::Object(map) if map.len() == 1 => {
            if let Some(Value::Array(items)) = map.get("sidecars")
                && let Some(flat) = items.iter().map(to_2022).collect::<Option<Vec<_>>>()
            {
                same(&direct, &entries_from_value(&Value::Array(flat), "as-2022"), "2019 map rewritten as 2022");
            }
        }
        _ => {}
    }
    // The configuration's inline `sidecars:` goes through the loader.
    let loaded = load_sources(&[CatalogSource::inline(document)]);
    match (&direct, &loaded) {
        (Ok(entries), Ok(catalog)) => assert!(catalog.len() <= entries.len()),
        (Err(_), Ok(_)) => panic!("the loader accepted what entries_from_value rejects"),
        _ => {}
    }
});
