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
    // (document, what the message must say): the key or field, where it is, and the line.
    let cases = [
        ("- name: a\n  contianers: []\n", "[0].contianers: unknown field `contianers`"),
        ("- containers: []\n", "[0]: missing field `name`"),
        ("- name: a\n  containers:\n    - image: x\n", "[0].containers[0]: missing field `name`"),
        ("- name: a\n  containers: {}\n", "[0].containers: "),
        ("- name: a\n  labels: {x: 1}\n", "[0].labels.x: invalid type: integer `1`, expected a string"),
        ("sidecars:\n  - name: a\n    extra: 1\n", "sidecars[0].extra: unknown field `extra`"),
        ("hello: world\n", "hello: unknown field `hello`, expected one of sidecars"),
    ];
    for (text, expected) in cases {
        let message = err(text);
        assert!(message.contains(expected), "{text:?} gave: {message}");
        assert!(message.contains("at line "), "no line in: {message}");
    }
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

/// A store over `file`, loaded with `text`; after `change`, a reload must fail naming `expected`
/// and keep the first catalog.
fn failed_reload(change: impl FnOnce(&std::path::Path), expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecars.yaml");
    std::fs::write(&file, "- name: a\n- name: b\n").unwrap();
    let store = CatalogStore::load(vec![CatalogSource::path(&file)]).unwrap();
    change(&file);
    let error = store.reload().expect_err("the reload must fail, not drop sidecars").to_string();
    assert!(error.contains(&file.display().to_string()) && error.contains(expected), "{error}");
    assert_eq!(store.current().names(), vec!["a", "b"], "the last good catalog stays in service");
}

#[test]
fn a_catalog_file_that_became_a_directory_is_a_failed_reload() {
    failed_reload(
        |file| {
            std::fs::remove_file(file).unwrap();
            std::fs::create_dir(file).unwrap();
            // Even with a valid catalog inside: the configured file is gone.
            std::fs::write(file.join("other.yaml"), "- name: a\n").unwrap();
        },
        "was a file when the catalog was first loaded and is now a directory",
    );
}

#[test]
fn a_dangling_symlink_is_a_failed_reload() {
    failed_reload(
        |file| {
            std::fs::remove_file(file).unwrap();
            std::os::unix::fs::symlink(file.with_extension("gone"), file).unwrap();
        },
        "is a symbolic link whose target cannot be read",
    );
}

#[test]
fn an_unreadable_catalog_file_is_a_failed_reload() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "x").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&probe).is_ok() {
        eprintln!(
            "SKIPPED an_unreadable_catalog_file_is_a_failed_reload: running as root, permissions cannot make a file unreadable (the socket case below still runs)"
        );
    } else {
        failed_reload(
            |file| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o000)).unwrap(),
            "ermission denied",
        );
    }
    // Something that is neither a file nor a directory where the file was.
    failed_reload(
        |file| {
            std::fs::remove_file(file).unwrap();
            std::os::unix::net::UnixListener::bind(file).unwrap();
        },
        "is neither a file nor a directory",
    );
}

#[test]
fn a_broken_key_in_a_mounted_configmap_is_a_failed_reload_not_a_dropped_file() {
    let dir = tempfile::tempdir().unwrap();
    mount(dir.path(), 1, &[("one.yaml", "- name: a\n"), ("two.yaml", "- name: b\n")]);
    let store = CatalogStore::load(vec![CatalogSource::path(dir.path())]).unwrap();
    assert_eq!(store.current().names(), vec!["a", "b"]);
    // `two.yaml` now points nowhere.
    std::fs::remove_file(dir.path().join("two.yaml")).unwrap();
    std::os::unix::fs::symlink("..data/missing.yaml", dir.path().join("two.yaml")).unwrap();
    let error = store.reload().unwrap_err().to_string();
    assert!(error.contains("two.yaml") && error.contains("symbolic link"), "{error}");
    assert_eq!(store.current().names(), vec!["a", "b"]);
    // A key that is a directory.
    std::fs::remove_file(dir.path().join("two.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("two.yaml")).unwrap();
    let error = store.reload().unwrap_err().to_string();
    assert!(error.contains("two.yaml") && error.contains("is a directory"), "{error}");
    assert_eq!(store.current().names(), vec!["a", "b"]);
}

#[test]
fn a_file_that_changes_while_it_is_read_is_not_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecars.yaml");
    std::fs::write(&file, "- name: a\n- name: b\n").unwrap();
    let sources = vec![CatalogSource::path(&file)];
    // A writer part-way through: the first read sees a truncated (and valid) catalog, the second
    // read the rest of the write.
    std::fs::write(&file, "- name: a\n").unwrap();
    let read = source::read_stable_for_tests(&sources, |_| {
        std::fs::write(&file, "- name: a\n- name: b\n- name: c\n").unwrap();
    });
    let error = read.unwrap_err().to_string();
    assert!(error.contains("sidecars.yaml") && error.contains("changed while it was being read"), "{error}");
    // Unchanged between the reads: accepted.
    assert!(source::read_stable_for_tests(&sources, |_| {}).is_ok());
}

#[test]
fn items_that_kubernetes_would_not_accept_are_refused_naming_the_entry_and_field() {
    let err = |text: &str| parse_catalog(text, "c.yaml").unwrap_err().to_string();
    assert_eq!(
        err("- name: logger\n  containers: [{name: logger, image: l, env: not a list}]\n"),
        "invalid catalog c.yaml: sidecar `logger`: containers[0]: `env`: invalid type: string \"not a list\", expected a sequence"
    );
    assert!(
        err("- name: a\n  initContainers: [{name: i, ports: 7}]\n").contains("sidecar `a`: initContainers[0]: `ports`")
    );
    assert!(err("- name: a\n  volumes: [{name: v, emptyDir: []}]\n").contains("sidecar `a`: volumes[0]: `emptyDir`"));
    let secret = err("- name: a\n  imagePullSecrets: [{name: [r]}]\n");
    assert!(secret.contains("imagePullSecrets") && secret.contains("name"), "{secret}");
    // Fields Kubernetes does not know (a newer release's) are kept, not refused.
    assert!(parse_catalog("- name: a\n  containers: [{name: c, image: i, futureField: {x: 1}}]\n", "c.yaml").is_ok());
}

#[tokio::test]
async fn a_writer_still_writing_after_the_settle_time_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecars.yaml");
    std::fs::write(&file, "- name: a\n- name: b\n").unwrap();
    let store = std::sync::Arc::new(CatalogStore::load(vec![CatalogSource::path(&file)]).unwrap());
    // A slow writer: the poll finds the file truncated (and valid), and the rest arrives during
    // the settle time.
    std::fs::write(&file, "- name: a\n").unwrap();
    let writer = {
        let file = file.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            std::fs::write(&file, "- name: a\n- name: b\n- name: c\n").unwrap();
        })
    };
    let error = store.reload_settled(std::time::Duration::from_millis(200)).await.unwrap_err().to_string();
    assert!(error.contains("sidecars.yaml") && error.contains("changed while it was being read"), "{error}");
    assert_eq!(store.current().names(), vec!["a", "b"], "the last good catalog stays");
    writer.await.unwrap();
    // Unchanged across the settle time: taken.
    assert!(store.reload_settled(std::time::Duration::from_millis(20)).await.unwrap());
    assert_eq!(store.current().names(), vec!["a", "b", "c"]);
    assert!(!store.reload_settled(std::time::Duration::from_millis(20)).await.unwrap(), "nothing changed since");
}

#[tokio::test]
async fn a_failed_reload_is_counted_stale_until_a_good_one() {
    let mut registry = admission_kit::metrics::Metrics::default();
    let metrics = crate::metrics::InjectorMetrics::register(&mut registry);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecars.yaml");
    std::fs::write(&file, "- name: a\n").unwrap();
    let store = std::sync::Arc::new(CatalogStore::load(vec![CatalogSource::path(&file)]).unwrap());
    store.clone().spawn_reload(std::time::Duration::from_millis(20), Some(metrics.clone()));
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let wait = |want: i64| {
        let metrics = metrics.clone();
        async move {
            for _ in 0..250 {
                if metrics.catalog_stale.get() == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("catalog_stale never became {want}");
        }
    };
    wait(1).await;
    assert_eq!(store.current().names(), vec!["a"]);
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, "- name: b\n").unwrap();
    wait(0).await;
    assert_eq!(store.current().names(), vec!["b"]);
}

#[test]
fn duplicate_names_within_an_entry_are_refused() {
    let err = |text: &str| parse_catalog(text, "cat.yaml").unwrap_err().to_string();
    let volumes = err("- name: a\n  volumes: [{name: v, emptyDir: {}}, {name: v, configMap: {name: x}}]\n");
    assert!(volumes.contains("sidecar `a`: volume name `v` is used twice"), "{volumes}");
    let secrets = err("- name: a\n  imagePullSecrets: [{name: r}, {name: r}]\n");
    assert!(secrets.contains("sidecar `a`: image pull secret name `r` is used twice"), "{secrets}");
    let containers = err("- name: a\n  containers: [{name: c}]\n  initContainers: [{name: c}]\n");
    assert!(containers.contains("sidecar `a`: container name `c` is used twice"), "{containers}");
}

#[test]
fn entries_that_can_be_injected_together_may_not_share_container_or_volume_names() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("one.yaml", "- name: a\n  containers: [{name: proxy}]\n  imagePullSecrets: [{name: regcred}]\n");
    write("two.yaml", "- name: b\n  initContainers: [{name: proxy}]\n  imagePullSecrets: [{name: regcred}]\n");
    let err = load_sources(&[CatalogSource::path(dir.path())]).unwrap_err().to_string();
    assert!(
        err.contains("sidecars `a` (in ") && err.contains("one.yaml) and `b` (in ") && err.contains("two.yaml)"),
        "{err}"
    );
    assert!(err.contains("both add container `proxy`"), "{err}");
    write("two.yaml", "- name: b\n  volumes: [{name: shared}]\n- name: c\n  volumes: [{name: shared}]\n");
    let err = load_sources(&[CatalogSource::path(dir.path())]).unwrap_err().to_string();
    assert!(err.contains("both add volume `shared`"), "{err}");
    // Entries for disjoint namespaces never meet in one pod; shared pull secrets are added once.
    write(
        "two.yaml",
        "- name: b\n  namespaces: [team-x]\n  volumes: [{name: shared}]\n- name: c\n  namespaces: [team-y]\n  volumes: [{name: shared}]\n",
    );
    let catalog = load_sources(&[CatalogSource::path(dir.path())]).unwrap();
    assert_eq!(catalog.names(), vec!["a", "b", "c"]);
}

#[test]
fn a_misspelt_key_is_refused_with_its_line_column_and_the_known_keys() {
    let text = "- name: a\n  containers: [{name: c}]\n- name: b\n  initContianers: [{name: i}]\n";
    let error = parse_catalog(text, "cat.yaml").unwrap_err();
    assert!(matches!(error, CatalogError::Syntax { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("failed to parse catalog cat.yaml: [1].initContianers: unknown field `initContianers`"),
        "{message}"
    );
    assert!(message.contains("at line 4, column 3"), "{message}");
    assert!(
        message.contains("initContainers") && message.contains("imagePullSecrets"),
        "names the known keys: {message}"
    );
    // The same in the 2019 format, under `sidecar`.
    let text = "sidecars:\n  - name: a\n    sidecar:\n      volumes: []\n      volumeMounts: []\n";
    let message = parse_catalog(text, "cat.yaml").unwrap_err().to_string();
    assert!(message.contains("sidecars[0].sidecar.volumeMounts: unknown field `volumeMounts`"), "{message}");
    assert!(message.contains("at line 5, column 7"), "{message}");
}

#[test]
fn a_wrong_type_names_the_field_and_where_it_is() {
    let err = |text: &str| parse_catalog(text, "cat.yaml").unwrap_err().to_string();
    let cases = [
        ("- name: a\n  volumes: {name: v}\n", "[0].volumes: ", "line 2, column 12"),
        ("- name: a\n  nativeSidecar: [true]\n", "[0].nativeSidecar: invalid type: sequence", "line 2, column 3"),
        ("- name: a\n  containers:\n    - name: c\n    - just-a-string\n", "[0].containers[1]: ", "line 4, column 7"),
        ("- name: a\n  namespaces: team\n", "[0].namespaces: ", "line 2, column 15"),
        ("sidecars: {name: a}\n", "sidecars: ", "line 1, column 11"),
        ("- name: 42\n", "[0].name: invalid type: integer `42`, expected a string", "line 1, column 3"),
        ("- name: '  '\n", "[0].name: invalid value: string \"  \", expected a sidecar name", "line 1, column 3"),
        ("- name: a\n  volumes: [{name: ''}]\n", "[0].volumes[0]: invalid value", "line 2"),
        ("- name: a\n  annotations: {x: true}\n", "[0].annotations.x: invalid type: boolean `true`", "line 2"),
        (
            "- name: a\n  nativeSidecar: 'true'\n",
            "[0].nativeSidecar: invalid type: string \"true\", expected true or false",
            "line 2",
        ),
    ];
    for (text, field, line) in cases {
        let message = err(text);
        assert!(message.contains(field), "{text:?} should name {field:?}: {message}");
        assert!(message.contains(&format!("at {line}")), "{text:?} should point at {line}: {message}");
    }
}

#[test]
fn the_top_level_shape_picks_the_format_and_errors_stay_precise() {
    // Neither a list nor a map: the message says what a catalog is, not "no variant matched".
    let message = parse_catalog("just text\n", "cat.yaml").unwrap_err().to_string();
    assert!(message.contains("a list of sidecars (2022 format) or a map with `sidecars:` (2019 format)"), "{message}");
    assert!(!message.contains("variant"), "{message}");
    // Empty documents are empty catalogs, as before.
    for empty in ["", "# nothing yet\n", "null\n", "sidecars:\n", "sidecars: null\n", "[]\n"] {
        assert_eq!(parse_catalog(empty, "cat.yaml").unwrap(), Vec::new(), "{empty:?}");
    }
    // Keys with nothing after them are empty, and a 2019 `sidecar` may be left out or repeat the name.
    let entries = parse_catalog(
        "sidecars:\n  - name: ' a '\n  - name: b\n    sidecar:\n      name: b\n      containers:\n",
        "cat.yaml",
    )
    .unwrap();
    assert_eq!(entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a", "b"], "names are trimmed");
    assert!(entries.iter().all(|e| e.containers.is_empty() && e.namespaces.is_none()));
}

#[test]
fn inline_entries_from_the_configuration_name_the_field_too() {
    let error = entries_from_value(&json!([{"name": "a", "contianers": []}]), "the configuration's `sidecars`")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(
            "failed to parse catalog the configuration's `sidecars`: [0].contianers: unknown field `contianers`"
        ),
        "{error}"
    );
    let error = entries_from_value(&json!({"sidecars": [{"name": "a", "sidecar": {"labels": {"x": 1}}}]}), "inline")
        .unwrap_err()
        .to_string();
    assert!(error.contains("sidecars[0].sidecar.labels.x: invalid type: integer `1`, expected a string"), "{error}");
    // Both shapes of the same sidecar give the same entry, from a value as from text.
    let from_2019 =
        entries_from_value(&json!({"sidecars": [{"name": "a", "sidecar": {"volumes": [{"name": "v"}]}}]}), "x");
    let from_2022 = entries_from_value(&json!([{"name": "a", "volumes": [{"name": "v"}]}]), "x");
    assert_eq!(from_2019.unwrap(), from_2022.unwrap());
}

/// A derived struct would also read a list of its fields in order; the YAML reader never offers
/// one, so a document already parsed must not either (found by fuzzing: a list inside the list
/// was an error from text and an entry from the configuration's inline `sidecars:`).
#[test]
fn an_entry_written_as_a_list_is_refused_from_text_and_from_a_value_alike() {
    for (text, value) in [
        ("- - haystack-agent\n", json!([["haystack-agent"]])),
        ("sidecars:\n  - - haystack-agent\n", json!({"sidecars": [["haystack-agent"]]})),
        ("sidecars:\n  - name: a\n    sidecar: [x]\n", json!({"sidecars": [{"name": "a", "sidecar": ["x"]}]})),
    ] {
        let from_text = parse_catalog(text, "text").unwrap_err().to_string();
        let from_value = entries_from_value(&value, "value").unwrap_err().to_string();
        for error in [&from_text, &from_value] {
            assert!(error.contains("expected a map") || error.contains("mapping"), "{value}: {error}");
        }
    }
}

#[test]
fn the_shipped_catalogs_and_the_captured_pods_request_agree() {
    // The 2022 pod captured from a cluster asks for a sidecar by name; both catalog formats define
    // the 2019 review's sidecar under the name its pod asks for.
    let review: serde_json::Value = serde_json::from_str(&data("expedia-2019-admission-review-v1beta1.json")).unwrap();
    let asked =
        review["request"]["object"]["metadata"]["annotations"]["sidecar-injector.expedia.com/inject"].as_str().unwrap();
    for file in ["catalog-2019.yaml", "catalog-2022.yaml"] {
        let entries = parse_catalog(&data(file), file).unwrap();
        assert!(entries.iter().any(|e| e.name == asked), "{file} has no `{asked}`");
    }
}
