//! The binary's command line: the shell's `webhook-config` and the plugin's own `lint`.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cost-center");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("the binary runs");
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn lint_accepts_a_good_table_and_names_each_bad_entry() {
    let (ok, out, err) = run(&["lint", "tests/data/cost-centers.yaml"]);
    assert!(ok, "{err}");
    assert_eq!(out, "tests/data/cost-centers.yaml: 2 namespace(s) with a cost center\n");
    let (ok, _, err) = run(&["lint", "tests/data/cost-centers-broken.yaml"]);
    assert!(!ok);
    assert!(err.contains("`Payments_Team` is not a namespace name"), "{err}");
    assert!(err.contains("`retail 42` is not a label value"), "{err}");
    let (ok, _, err) = run(&["lint", "tests/data/missing.yaml"]);
    assert!(!ok && err.contains("failed to read tests/data/missing.yaml"), "{err}");
}

#[test]
fn webhook_config_comes_from_the_shell_with_the_apps_name() {
    let (ok, out, err) = run(&["webhook-config", "--url", "https://127.0.0.1:8443"]);
    assert!(ok, "{err}");
    let config: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(config["metadata"]["name"], "cost-center");
    assert_eq!(config["webhooks"][0]["name"], "cost-center.admission-kit.dev");
    assert_eq!(config["webhooks"][0]["clientConfig"]["url"], "https://127.0.0.1:8443/mutate");
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for command in ["serve", "webhook-config", "lint"] {
        assert!(out.contains(command), "{command} in --help:\n{out}");
    }
}
