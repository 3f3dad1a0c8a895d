//! The book's reference material, checked against the code it describes.
//!
//! - Command output the book includes (`--help` of every subcommand, `webhook-config`, `explain`,
//!   `inject`, `check`, denials) lives in `book/src/reference/` and must be exactly what the binary
//!   prints today. After a deliberate change, regenerate it with
//!   `UPDATE_BOOK_REFERENCE=1 cargo test -p sidecar-injector --test cli_reference` and review the diff.
//! - The configuration table (`book/src/sidecar-injector/configuration.md`) must list every key of
//!   [`Config`], with the environment variable that really sets it and its real default.
//! - The metrics table (`book/src/operations/metrics.md`) must list exactly the metrics the server
//!   exposes, and the example alerts (`book/src/operations/prometheus-alerts.yaml`) may only use
//!   those.
//! - The built-in env deny-list table (`book/src/sidecar-injector/annotations.md`) is exactly
//!   [`sidecar_injector::env_rules::DENIED`], in order.
//! - Every test the threat model page names exists.
//! - The example configuration file (`book/src/sidecar-injector/examples/config.yaml`) loads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use admission_kit::metrics::{
    CacheLabels, HandshakeLabels, Metrics, RefusalLabels, ReloadLabels, ReviewLabels, StepLabels, WebhookLabels,
};
use serde_json::Value;
use sidecar_injector::config::{Config, ENV_PREFIX, env_var};
use sidecar_injector::metrics::{InjectionLabels, InjectorMetrics};

const BIN: &str = env!("CARGO_BIN_EXE_sidecar-injector");
const UPDATE: &str = "UPDATE_BOOK_REFERENCE";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is in the workspace").to_path_buf()
}

fn book(path: &str) -> PathBuf {
    root().join("book/src").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// Runs the binary from the workspace root (so paths in its output are the ones the book shows),
/// with no configuration from the environment: clap prints an env var's current value in `--help`.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(root());
    for (key, _) in std::env::vars() {
        if key.starts_with(ENV_PREFIX) || key.starts_with("ADMISSION_KIT_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    let out = command.envs(env.iter().copied()).output().expect("the binary runs");
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Which stream a reference file holds, and whether the command must succeed.
#[derive(Clone, Copy)]
enum Expect {
    Stdout,
    FailureStderr,
}

/// Every command whose output the book includes, and the file holding it (under `book/src/reference/`).
const CASES: &[(&str, &[&str], Expect)] = &[
    ("help.txt", &["--help"], Expect::Stdout),
    ("help-serve.txt", &["serve", "--help"], Expect::Stdout),
    ("help-inject.txt", &["inject", "--help"], Expect::Stdout),
    ("help-explain.txt", &["explain", "--help"], Expect::Stdout),
    ("help-webhook-config.txt", &["webhook-config", "--help"], Expect::Stdout),
    ("help-check.txt", &["check", "--help"], Expect::Stdout),
    ("help-policy.txt", &["policy", "--help"], Expect::Stdout),
    (
        "policy-refused.txt",
        &["--set", "namespaceCatalogs=true", "--set", "onCollision=skip", "policy"],
        Expect::FailureStderr,
    ),
    ("sidecar-injector-webhook-config.json", &["webhook-config", "--url", "https://127.0.0.1:8443"], Expect::Stdout),
    (
        "sidecar-injector-explain.txt",
        &["explain", "-f", "sidecar-injector/tests/data/echo-server-deployment.yaml"],
        Expect::Stdout,
    ),
    (
        "sidecar-injector-inject.yaml",
        &["inject", "-f", "sidecar-injector/tests/data/echo-server-deployment.yaml"],
        Expect::Stdout,
    ),
    ("sidecar-injector-check.txt", &["check"], Expect::Stdout),
    (
        "check-2019-catalog.txt",
        &["--catalog", "sidecar-injector/tests/data/catalog-2019.yaml", "--set", "sidecars=null", "check"],
        Expect::Stdout,
    ),
    (
        "check-duplicate.txt",
        &["--catalog", "sidecar-injector/tests/data/catalog-2022.yaml", "check"],
        Expect::FailureStderr,
    ),
    (
        "check-misspelt-key.txt",
        &["--catalog", "sidecar-injector/tests/data/catalog-misspelt.yaml", "--set", "sidecars=null", "check"],
        Expect::FailureStderr,
    ),
    (
        "native-sidecar-inject.yaml",
        &[
            "--catalog",
            "book/src/sidecar-injector/examples/catalog.yaml",
            "--set",
            "sidecars=null",
            "inject",
            "-f",
            "book/src/sidecar-injector/examples/pod.yaml",
        ],
        Expect::Stdout,
    ),
    (
        "allow-list-denied.txt",
        &[
            "--catalog",
            "book/src/sidecar-injector/examples/catalog.yaml",
            "--set",
            "sidecars=null",
            "inject",
            "-f",
            "book/src/sidecar-injector/examples/payments-proxy-pod.yaml",
        ],
        Expect::FailureStderr,
    ),
    (
        "explain-annotated-wrongly.txt",
        &["explain", "-f", "book/src/sidecar-injector/examples/deployment-annotated-wrongly.yaml"],
        Expect::Stdout,
    ),
    (
        "explain-unlabelled-namespace.txt",
        &[
            "explain",
            "-f",
            "sidecar-injector/tests/data/echo-server-deployment.yaml",
            "--namespace-labels",
            "team=payments",
        ],
        Expect::Stdout,
    ),
];

#[test]
fn command_output_in_the_book_is_what_the_binary_prints() {
    let update = std::env::var_os(UPDATE).is_some();
    let mut stale = Vec::new();
    for (file, args, expect) in CASES {
        let (ok, stdout, stderr) = run(args, &[]);
        let actual = match expect {
            Expect::Stdout => {
                assert!(ok, "`sidecar-injector {}` failed:\n{stderr}", args.join(" "));
                stdout
            }
            Expect::FailureStderr => {
                assert!(!ok, "`sidecar-injector {}` was expected to fail, and succeeded:\n{stdout}", args.join(" "));
                stderr
            }
        };
        let path = book("reference").join(file);
        if update {
            std::fs::create_dir_all(book("reference")).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            stale.push(format!(
                "book/src/reference/{file} (`sidecar-injector {}`):\n--- in the book\n{expected}\n--- printed now\n{actual}",
                args.join(" ")
            ));
        }
    }
    // A reference file no case writes would be included by the book and never checked.
    let known: BTreeSet<&str> = CASES.iter().map(|(file, ..)| *file).collect();
    for entry in std::fs::read_dir(book("reference")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(known.contains(name.as_str()), "book/src/reference/{name} is not produced by any case in this test");
    }
    assert!(
        stale.is_empty(),
        "the book's command output is stale; if the change is deliberate, run\n  {UPDATE}=1 cargo test -p sidecar-injector --test cli_reference\nand review the diff.\n\n{}",
        stale.join("\n\n")
    );
}

/// The cells of each row of a markdown table whose first cell is a code span.
fn table_rows(markdown: &str) -> Vec<Vec<String>> {
    markdown
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.trim().trim_matches('|').split(" | ").map(|cell| cell.trim().to_owned()).collect())
        .collect()
}

/// The first code span of a cell.
fn code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// A default value as the configuration table writes it.
fn render_default(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            format!("[{}]", items.iter().map(render_default).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}

/// Every key of the configuration, dotted for sections, with its default.
fn config_keys() -> Vec<(String, Value)> {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut keys = Vec::new();
    for (key, value) in defaults.as_object().unwrap() {
        match value {
            Value::Object(section) => {
                keys.extend(section.iter().map(|(k, v)| (format!("{key}.{k}"), v.clone())));
            }
            _ => keys.push((key.clone(), value.clone())),
        }
    }
    keys
}

#[test]
fn configuration_table_lists_every_key_with_its_environment_variable_and_default() {
    let page = read(&book("sidecar-injector/configuration.md"));
    let rows = table_rows(&page);
    let keys = config_keys();
    let mut documented = BTreeSet::new();
    for row in &rows {
        assert_eq!(row.len(), 4, "a configuration row has four cells (key, variable, default, meaning): {row:?}");
        let key = code(&row[0]).unwrap();
        assert!(documented.insert(key.to_owned()), "`{key}` is documented twice");
        let Some((_, default)) = keys.iter().find(|(k, _)| k == key) else {
            panic!("the book documents `{key}`, which is not a configuration key");
        };
        assert_eq!(code(&row[1]), Some(env_var(key).as_str()), "environment variable of `{key}`");
        assert_eq!(code(&row[2]), Some(render_default(default).as_str()), "default of `{key}`");
    }
    let missing: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).filter(|k| !documented.contains(*k)).collect();
    assert!(missing.is_empty(), "configuration keys missing from the book: {missing:?}");
}

/// Each documented variable really sets its key: given a value of the wrong shape, the binary
/// names that key in its error.
#[test]
fn each_documented_environment_variable_sets_its_key() {
    for (key, _) in config_keys() {
        let variable = env_var(&key);
        let (ok, _, stderr) = run(&["check"], &[(&variable, "{bogus=1}")]);
        assert!(!ok, "{variable}={{bogus=1}} was accepted");
        if key == "sidecars" {
            // Any shape is a document; the catalog then names where it came from.
            assert!(stderr.contains("the configuration's `sidecars`"), "{variable}: {stderr}");
        } else {
            // The error names the key (an enum read from a map adds the variant: `envNames.bogus`),
            // so the key must be followed by "`" or ".", not by more letters.
            let named = format!("`{key}");
            let names_key = stderr
                .match_indices(&named)
                .any(|(at, _)| matches!(stderr[at + named.len()..].chars().next(), Some('`' | '.')));
            assert!(
                names_key && stderr.contains(&format!("(from environment variable {ENV_PREFIX}")),
                "{variable} did not set `{key}`: {stderr}"
            );
        }
    }
}

#[test]
fn example_configuration_file_loads() {
    let path = book("sidecar-injector/examples/config.yaml");
    let config = Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    assert_eq!(config.server.log_format, admission_kit::telemetry::LogFormat::Json);
    assert_eq!(config.catalog_paths, [PathBuf::from("/etc/sidecar-injector/catalog")]);
    assert!(config.server.tls_cert_file.is_some() && config.server.tls_key_file.is_some());
}

/// Every metric the injector's server exposes, by the name queries use (counters with `_total`).
fn exposed_metrics() -> BTreeSet<String> {
    let mut metrics = Metrics::new();
    let injector = InjectorMetrics::register(&mut metrics);
    // Families only appear once they have a member: create one in each.
    let step = StepLabels { webhook: "w".into(), step: "s".into() };
    metrics
        .requests
        .get_or_create(&ReviewLabels { webhook: "w".into(), operation: "CREATE".into(), result: "patched".into() })
        .inc();
    metrics.duration.get_or_create(&WebhookLabels { webhook: "w".into() }).observe(0.001);
    metrics.panics.get_or_create(&step).inc();
    metrics.fail_open.get_or_create(&step).inc();
    metrics.failures.get_or_create(&step).inc();
    metrics.overruns.get_or_create(&WebhookLabels { webhook: "w".into() }).inc();
    metrics.cert_reloads.get_or_create(&ReloadLabels { result: "success".into() }).inc();
    metrics.connections_refused.get_or_create(&RefusalLabels { reason: "connection_cap".into() }).inc();
    metrics.handshakes.get_or_create(&HandshakeLabels { kind: "full".into() }).observe(0.001);
    let cache = CacheLabels { cache: "namespaces".into() };
    metrics.cache_healthy.get_or_create(&cache).set(1);
    metrics.cache_last_contact.get_or_create(&cache).set(1.0);
    metrics.cache_watch_errors.get_or_create(&cache).inc();
    injector.injections.get_or_create(&InjectionLabels { sidecar: "s".into(), outcome: "injected".into() }).inc();
    injector.reloaded(true, 1);
    let text = metrics.encode();
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            if kind == "counter" { format!("{name}_total") } else { name.to_owned() }
        })
        .collect();
    // A metric registered but never created above would be missing from the encoding: count the
    // registrations in the sources so a new metric cannot slip past this test.
    let registrations: usize = ["admission-kit/src/metrics.rs", "sidecar-injector/src/metrics.rs"]
        .iter()
        .map(|file| read(&root().join(file)).matches("registry.register(").count())
        .sum();
    assert_eq!(names.len(), registrations, "create a member of every metric family above:\n{text}");
    names
}

#[test]
fn metrics_page_lists_exactly_the_exposed_metrics() {
    let exposed = exposed_metrics();
    let page = read(&book("operations/metrics.md"));
    let documented: BTreeSet<String> = table_rows(&page)
        .iter()
        .filter_map(|row| code(&row[0]).map(str::to_owned))
        .filter(|name| name.starts_with("admission_kit_"))
        .collect();
    let missing: Vec<_> = exposed.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&exposed).collect();
    assert!(missing.is_empty() && unknown.is_empty(), "metrics page: missing {missing:?}, not exposed {unknown:?}");
}

#[test]
fn example_alerts_use_only_exposed_metrics() {
    let exposed = exposed_metrics();
    let text = read(&book("operations/prometheus-alerts.yaml"));
    let rules: Value = serde_saphyr::from_str(&text).expect("the alerts file is YAML");
    let mut count = 0;
    for group in rules["groups"].as_array().expect("`groups` is a list") {
        assert!(group["name"].is_string(), "a group has a name: {group}");
        for rule in group["rules"].as_array().expect("a group has `rules`") {
            count += 1;
            let name = rule["alert"].as_str().expect("each rule is an alert with a name");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{name} has an `expr`"));
            assert!(rule["annotations"]["summary"].is_string(), "{name} has a summary");
            let mut used = 0;
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !token.starts_with("admission_kit_") {
                    continue;
                }
                used += 1;
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| token.strip_suffix(suffix))
                    .filter(|base| exposed.contains(*base))
                    .unwrap_or(token);
                assert!(exposed.contains(base), "alert {name} uses `{token}`, which the server does not expose");
            }
            assert!(used > 0, "alert {name} uses none of the server's metrics");
        }
    }
    assert!(count > 0, "the alerts file has no rules");
}

#[test]
fn the_books_deny_list_is_the_built_in_one() {
    let page = read(&book("sidecar-injector/annotations.md"));
    let section = page.split("### The built-in deny-list").nth(1).expect("the page has the deny-list section");
    let section = section.split("\n#").next().unwrap_or(section);
    let rows: Vec<(String, String)> = table_rows(section)
        .into_iter()
        .map(|row| (code(&row[0]).unwrap_or_default().to_owned(), row[1].clone()))
        .collect();
    let built_in: Vec<(String, String)> = sidecar_injector::env_rules::DENIED
        .iter()
        .map(|(pattern, why)| ((*pattern).to_owned(), (*why).to_owned()))
        .collect();
    assert_eq!(rows, built_in, "the book's deny-list table differs from env_rules::DENIED");
}

/// The threat model proves each setting by naming tests: each name must be a test function in the
/// files the page says they are in, so a renamed or deleted test cannot leave the page vouching for it.
#[test]
fn the_threat_models_tests_exist() {
    let page = read(&book("sidecar-injector/threat-model.md"));
    let sources: String = [
        "sidecar-injector/src/inject/tests.rs",
        "sidecar-injector/src/env_rules.rs",
        "sidecar-injector/tests/properties.rs",
        "integration-tests/src/scenarios.rs",
    ]
    .iter()
    .map(|path| read(&root().join(path)))
    .collect();
    let mut named = 0;
    for span in page.split('`').skip(1).step_by(2) {
        let is_test_name = span.matches('_').count() >= 2
            && span.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_test_name {
            named += 1;
            assert!(sources.contains(&format!("fn {span}(")), "the threat model names `{span}`, which is no test");
        }
    }
    assert!(named >= 15, "the threat model names only {named} tests");
}
