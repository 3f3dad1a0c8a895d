use serde_json::json;

use super::*;

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn both_expedia_formats_read_the_same_sidecar() {
    let old = parse_catalog(&data("catalog-2019.yaml"), "catalog-2019.yaml").unwrap();
    let new = parse_catalog(&data("catalog-2022.yaml"), "catalog-2022.yaml").unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(new.len(), 2);
    assert_eq!(old[0], new[0]);
    let agent = &old[0];
    assert_eq!(agent.name, "haystack-agent");
    assert_eq!(agent.containers[0]["env"], json!([{"name": "haystack_env", "value": "local"}]));
    assert_eq!(agent.volumes[0]["configMap"]["name"], "haystack-agent-config");
    assert_eq!(agent.image_pull_secrets, vec![json!({"name": "registry-credentials"})]);
}

#[test]
fn entries_keep_every_field_they_carry() {
    let entries = parse_catalog(&data("catalog-2022.yaml"), "x").unwrap();
    let busybox = &entries[1];
    assert_eq!(busybox.init_containers[0]["restartPolicy"], "Always");
    assert_eq!(busybox.init_containers[0]["futureInitField"], json!({"kept": true}));
    assert_eq!(busybox.annotations.get("busybox.example.com/injected").map(String::as_str), Some("true"));
    assert_eq!(busybox.labels.get("sidecar").map(String::as_str), Some("busybox"));
}

#[test]
fn mistakes_are_named() {
    let err = |text: &str| parse_catalog(text, "cat.yaml").unwrap_err().to_string();
    assert!(
        err("- name: a\n  contianers: []\n").contains("sidecar `a`: unknown key `contianers`"),
        "{}",
        err("- name: a\n  contianers: []\n")
    );
    assert!(err("- containers: []\n").contains("entry 0 has no `name`"));
    assert!(err("- name: a\n  containers:\n    - image: x\n").contains("containers[0] has no `name`"));
    assert!(err("- name: a\n  containers: {}\n").contains("`containers` must be a list"));
    assert!(err("- name: a\n  labels: {x: 1}\n").contains("labels.x must be a string"));
    assert!(err("sidecars:\n  - name: a\n    extra: 1\n").contains("unknown key `extra`"));
    assert!(err("hello: world\n").contains("unknown top-level key `hello`"));
    assert!(
        err("- name: a\n  containers:\n    - name: c\n    - name: c\n").contains("container name `c` is used twice")
    );
    // Syntax errors name the file and the line.
    let syntax = err("- name: a\n  containers: [\n    - name: b\n");
    assert!(syntax.starts_with("failed to parse catalog cat.yaml:"), "{syntax}");
    assert!(syntax.contains("line"), "no line number in: {syntax}");
}

#[test]
fn a_name_defined_in_two_sources_is_an_error() {
    let mut catalog = Catalog::new();
    catalog.extend(parse_catalog("- name: a\n", "one.yaml").unwrap(), "one.yaml").unwrap();
    let err = catalog.extend(parse_catalog("- name: a\n", "two.yaml").unwrap(), "two.yaml").unwrap_err();
    assert_eq!(err.to_string(), "sidecar `a` is defined twice: in one.yaml and in two.yaml");
}

/// Lays out files the way kubelet mounts a `ConfigMap`: `key -> ..data/key`, `..data -> ..<ts>`.
fn mount(dir: &std::path::Path, generation: u32, files: &[(&str, &str)]) {
    let ts = dir.join(format!("..2026_{generation}"));
    std::fs::create_dir_all(&ts).unwrap();
    for (name, text) in files {
        std::fs::write(ts.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(std::path::Path::new("..data").join(name), &link).unwrap();
        }
    }
}

#[test]
fn mounted_configmap_hot_reload_keeps_the_last_good_catalog() {
    let dir = tempfile::tempdir().unwrap();
    mount(dir.path(), 1, &[("sidecars.yaml", "- name: a\n")]);
    let store =
        CatalogStore::load(vec![CatalogSource::inline(json!([{"name": "inline"}])), CatalogSource::path(dir.path())])
            .unwrap();
    assert_eq!(store.current().names(), vec!["a", "inline"]);
    assert!(!store.reload().unwrap(), "nothing changed");

    mount(dir.path(), 2, &[("sidecars.yaml", "- name: a\n- name: b\n")]);
    assert!(store.reload().unwrap());
    assert_eq!(store.current().names(), vec!["a", "b", "inline"]);

    mount(dir.path(), 3, &[("sidecars.yaml", "- name: a\n- name: [broken\n")]);
    let error = store.reload().unwrap_err().to_string();
    assert!(error.contains("sidecars.yaml") && error.contains("line"), "the error names the file and line: {error}");
    assert_eq!(store.current().names(), vec!["a", "b", "inline"], "the last good catalog stays in service");
    assert!(!store.reload().unwrap(), "a broken file is reported once, not on every poll");

    mount(dir.path(), 4, &[("sidecars.yaml", "- name: c\n")]);
    assert!(store.reload().unwrap());
    assert_eq!(store.current().names(), vec!["c", "inline"]);
}

#[test]
fn a_missing_catalog_file_is_reported_once_and_the_last_good_catalog_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecars.yaml");
    std::fs::write(&file, "- name: a\n").unwrap();
    let store = CatalogStore::load(vec![CatalogSource::path(&file)]).unwrap();
    std::fs::remove_file(&file).unwrap();
    let error = store.reload().unwrap_err().to_string();
    assert!(error.contains("sidecars.yaml"), "{error}");
    assert!(!store.reload().unwrap(), "reported once, not on every poll");
    assert_eq!(store.current().names(), vec!["a"], "the last good catalog stays in service");
    std::fs::write(&file, "- name: b\n").unwrap();
    assert!(store.reload().unwrap());
    assert_eq!(store.current().names(), vec!["b"]);
}

#[test]
fn the_first_load_must_succeed() {
    let err = CatalogStore::load(vec![CatalogSource::path("/nonexistent/catalog.yaml")]).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/catalog.yaml"), "{err}");
}
