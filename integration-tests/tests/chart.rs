//! `charts/sidecar-injector`, proven offline: `helm lint --strict` with Helm 3 and 4, the rendered
//! objects of each certificate mode and of the main value combinations, the schema rejecting bad
//! values, and the rendered configuration and catalog accepted by the injector itself.
//! (`chart_cluster.rs` installs the chart into the local control plane.)

use std::path::Path;

use base64::Engine as _;
use integration_tests::helm::{Helm, Rendered, chart_dir, verify_chain};
use serde_json::{Value, json};
use sidecar_injector::catalog::{CatalogSource, load_sources};
use sidecar_injector::config::Config;

const NS: &str = "injector-system";
/// What a Kubernetes 1.36 API server serves, for `helm template --api-versions`.
const MAP_V1: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";

fn helm4() -> Helm {
    Helm::locate(4).expect("Helm 4 is available (scripts/build-helm.sh builds it)")
}

fn render(args: &[&str]) -> Rendered {
    helm4().template("sidecar-injector", NS, args).expect("the chart renders")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(value: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD.decode(value.as_str().expect("base64 string")).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Every `ci/*.yaml` values file, the combinations `helm lint` and the tests use.
fn ci_values() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the chart has a values file per certificate mode and feature set");
    files
}

#[test]
fn lint_strict_with_helm_3_and_4() {
    for major in [3, 4] {
        let helm = Helm::locate(major).unwrap();
        let version = helm.version().unwrap();
        assert!(version.starts_with(&format!("v{major}.")), "helm {major} says {version}");
        let chart = chart_dir();
        let run = helm.run(["lint", "--strict", chart.to_str().unwrap()]).unwrap();
        assert!(run.ok, "helm {version} lint --strict (default values):\n{}{}", run.stdout, run.stderr);
        for values in ci_values() {
            let run = helm.run(["lint", "--strict", chart.to_str().unwrap(), "-f", values.to_str().unwrap()]).unwrap();
            assert!(run.ok, "helm {version} lint --strict -f {}:\n{}{}", values.display(), run.stdout, run.stderr);
        }
    }
}

#[test]
fn every_ci_values_file_renders_with_helm_3_and_4() {
    for major in [3, 4] {
        let helm = Helm::locate(major).unwrap();
        for values in ci_values() {
            let rendered = helm.template("sidecar-injector", NS, &["-f", values.to_str().unwrap()]).unwrap();
            assert!(rendered.one("Deployment", None).is_ok(), "{}", values.display());
            assert!(rendered.one("MutatingWebhookConfiguration", None).is_ok(), "{}", values.display());
        }
    }
}

#[test]
fn default_values_render_a_hardened_helm_generated_release() {
    let r = render(&[]);
    assert_eq!(
        r.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );

    // Certificates: the Secret's serving certificate chains to the caBundle for the Service name.
    let secret = r.one("Secret", Some("sidecar-injector-tls")).unwrap();
    let webhook = r.one("MutatingWebhookConfiguration", None).unwrap();
    let hook = &webhook["webhooks"][0];
    let ca = unb64(&hook["clientConfig"]["caBundle"]);
    assert_eq!(ca, unb64(&secret["data"]["ca.crt"]), "one CA for the bundle and the Secret");
    verify_chain(&ca, &unb64(&secret["data"]["tls.crt"]), "sidecar-injector.injector-system.svc").unwrap();
    assert!(verify_chain(&ca, &unb64(&secret["data"]["tls.crt"]), "other.injector-system.svc").is_err());
    assert_eq!(secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");

    // The webhook: the Expedia opt-in label, kube-system / kube-public / the release namespace
    // always excluded, opt-out labels on namespaces and pods, the annotation as a match condition.
    assert_eq!(hook["name"], "sidecar-injector.expedia.com");
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"name": "sidecar-injector", "namespace": NS, "path": "/mutate", "port": 443})
    );
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["matchPolicy"], "Equivalent");
    assert_eq!(hook["timeoutSeconds"], 10);
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        hook["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"],
        json!([
            {"key": "kubernetes-sidecar-injector", "operator": "In", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public", NS]},
            {"key": "sidecar-injector.expedia.com/disable-inject", "operator": "NotIn", "values": ["true"]},
        ])
    );
    assert_eq!(
        hook["objectSelector"]["matchExpressions"],
        json!([{"key": "sidecar-injector.expedia.com/inject", "operator": "NotIn", "values": ["skip"]}])
    );
    assert_eq!(
        hook["matchConditions"][0]["expression"],
        "has(object.metadata.annotations) && 'sidecar-injector.expedia.com/inject' in object.metadata.annotations"
    );
    assert_eq!(
        hook["matchConditions"][1]["expression"],
        "!has(object.metadata.annotations) || !('sidecar-injector.expedia.com/status' in object.metadata.annotations)",
        "a pod that arrives injected is not sent again"
    );

    // The Deployment: 2 replicas, spread, probes on the admin port, hardened, drain-aware.
    let deployment = r.one("Deployment", None).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 45, "5 s drain + 30 s shutdown + 10 s");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["topologySpreadConstraints"].as_array().unwrap().len(), 2);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "admin"}));
    assert_eq!(container["livenessProbe"]["httpGet"], json!({"path": "/livez", "port": "admin"}));
    assert!(
        container["resources"]["requests"]["cpu"].is_string() && container["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(container["image"], "admission-kit/sidecar-injector:0.1.0");
    // The image's entrypoint is `sidecar-injector serve`: no args, the file comes by env, from the
    // config volume's mount (sidecar-injector/tests/cli.rs proves the variable is read).
    assert!(container.get("args").is_none() && container.get("command").is_none());
    assert_eq!(
        container["env"][0],
        json!({"name": "SIDECAR_INJECTOR_CONFIG", "value": "/etc/sidecar-injector/config/config.yaml"})
    );
    assert_eq!(
        container["volumeMounts"][0],
        json!({"name": "config", "mountPath": "/etc/sidecar-injector/config", "readOnly": true})
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/config"].is_string() && annotations["checksum/tls"].is_string());
    assert_eq!(
        pod["volumes"][2]["secret"]["items"],
        json!([{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}])
    );

    // RBAC: read namespaces only (no ConfigMaps without namespace catalogs).
    let role = r.one("ClusterRole", None).unwrap();
    assert_eq!(role["rules"], json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]));
    assert_eq!(r.one("PodDisruptionBudget", None).unwrap()["spec"]["maxUnavailable"], 1);
}

/// The configuration and catalog the chart renders are accepted by the injector's own loaders,
/// and say what the values say.
#[test]
fn rendered_configuration_and_catalog_load_in_the_injector() {
    let r = render(&["-f", chart_dir().join("ci/features-values.yaml").to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let config_map = r.one("ConfigMap", Some("sidecar-injector-config")).unwrap();
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, config_map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let config = Config::load(Some(&config_file), &[]).expect("the injector accepts the rendered configuration");
    assert_eq!(config.excluded_namespaces, ["kube-system", "kube-public", NS, "legacy"]);
    assert_eq!(config.namespace_label_key, "team.example.com/sidecars");
    assert!(config.namespace_catalogs);
    assert_eq!(config.failure_policy, admission_kit::pipeline::FailurePolicy::Ignore);
    assert_eq!(config.timeout_seconds, 5);
    assert_eq!(config.annotation_env.allow.texts(), ["api-key", "log-*"]);
    assert_eq!(config.annotation_env.on_violation, sidecar_injector::env_rules::OnViolation::Skip);
    assert_eq!(config.annotation_env.locked.texts(), ["*"], "what the values leave out keeps its default");
    assert_eq!(config.server.tls_cert_file.as_deref(), Some(Path::new("/etc/sidecar-injector/tls/tls.crt")));
    assert_eq!(config.server.drain_delay, std::time::Duration::from_secs(7));
    assert_eq!(config.server.cache_max_staleness, admission_kit::app::MaxStaleness(None));
    let server = config.server_config().expect("server settings are valid");
    assert_eq!(server.cache_max_staleness, None, "never: readiness does not depend on the caches' contact");

    let catalog = r.one("ConfigMap", Some("sidecar-injector-catalog")).unwrap();
    let catalog_file = dir.path().join("sidecars.yaml");
    std::fs::write(&catalog_file, catalog["data"]["sidecars.yaml"].as_str().unwrap()).unwrap();
    let loaded = load_sources(&[CatalogSource::path(&catalog_file)]).expect("the injector accepts the catalog");
    assert_eq!(loaded.len(), 2);

    // Namespace catalogs need ConfigMap reads; the webhook's selectors follow the values.
    let role = r.one("ClusterRole", None).unwrap();
    assert_eq!(role["rules"][1]["resources"], json!(["configmaps"]));
    let hook = &r.one("MutatingWebhookConfiguration", None).unwrap()["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["reinvocationPolicy"], "Never");
    assert!(hook.get("matchConditions").is_none());
    assert_eq!(hook["namespaceSelector"]["matchExpressions"].as_array().unwrap().len(), 2, "no opt-out label");
    assert!(hook["objectSelector"].as_object().is_none_or(serde_json::Map::is_empty));
    let deployment = r.one("Deployment", None).unwrap();
    assert_eq!(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 7 + 20 + 10);
    assert!(r.one("ServiceMonitor", None).is_ok());
    let policy = r.one("NetworkPolicy", None).unwrap();
    assert_eq!(policy["spec"]["ingress"][0]["from"], json!([{"ipBlock": {"cidr": "10.0.0.1/32"}}]));
}

#[test]
fn the_inject_annotation_name_reaches_the_configuration_and_the_match_condition() {
    let r = render(&["--set", "injector.injectAnnotationName=sidecars"]);
    let config_map = r.one("ConfigMap", Some("sidecar-injector-config")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, config_map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let config = Config::load(Some(&config_file), &[]).expect("the injector accepts the rendered configuration");
    assert_eq!(config.inject_annotation_name, "sidecars");
    assert_eq!(config.annotation_env, sidecar_injector::env_rules::AnnotationEnv::default(), "empty values: defaults");
    let hook = &r.one("MutatingWebhookConfiguration", None).unwrap()["webhooks"][0];
    assert_eq!(
        hook["matchConditions"][0]["expression"],
        "has(object.metadata.annotations) && 'sidecar-injector.expedia.com/sidecars' in object.metadata.annotations"
    );
}

#[test]
fn default_catalog_is_an_empty_list_the_injector_accepts() {
    let r = render(&[]);
    let catalog = r.one("ConfigMap", Some("sidecar-injector-catalog")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecars.yaml");
    std::fs::write(&file, catalog["data"]["sidecars.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(load_sources(&[CatalogSource::path(&file)]).unwrap().len(), 0);
}

#[test]
fn cert_manager_mode_wins_and_lets_cainjector_fill_the_bundle() {
    // cert-manager is first in the precedence, even with a user Secret named.
    let r = render(&["--set", "tls.certManager.enabled=true", "--set", "tls.existingSecret=mine"]);
    assert!(r.all("Secret").is_empty(), "cert-manager writes the Secret");
    let webhook = r.one("MutatingWebhookConfiguration", None).unwrap();
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NS}/sidecar-injector-serving")
    );
    assert!(webhook["webhooks"][0]["clientConfig"].get("caBundle").is_none(), "no templated caBundle");
    let serving = r.one("Certificate", Some("sidecar-injector-serving")).unwrap();
    assert_eq!(serving["spec"]["secretName"], "sidecar-injector-tls");
    assert!(serving["spec"]["dnsNames"].as_array().unwrap().contains(&json!(format!("sidecar-injector.{NS}.svc"))));
    assert_eq!(serving["spec"]["issuerRef"]["name"], "sidecar-injector-ca");
    assert_eq!(r.all("Issuer").len(), 2, "a self-signed root and the CA issuer");
    let deployment = r.one("Deployment", None).unwrap();
    assert_eq!(deployment["spec"]["template"]["spec"]["volumes"][2]["secret"]["secretName"], "sidecar-injector-tls");
    assert!(deployment["spec"]["template"]["metadata"]["annotations"].get("checksum/tls").is_none());

    // With an issuer of the user's, the chart makes only the serving Certificate.
    let r = render(&[
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "tls.certManager.issuerRef.name=corp-ca",
        "--set",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(r.all("Issuer").is_empty());
    assert_eq!(
        r.one("Certificate", None).unwrap()["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer"})
    );
}

#[test]
fn user_provided_mode_uses_the_secret_and_bundle_given() {
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let r = render(&["--set", "tls.existingSecret=my-tls", "--set-string", &format!("tls.caBundle={ca}")]);
    assert!(r.all("Secret").is_empty() && r.all("Certificate").is_empty());
    let hook = &r.one("MutatingWebhookConfiguration", None).unwrap()["webhooks"][0];
    assert_eq!(hook["clientConfig"]["caBundle"], b64(ca));
    let deployment = r.one("Deployment", None).unwrap();
    assert_eq!(deployment["spec"]["template"]["spec"]["volumes"][2]["secret"]["secretName"], "my-tls");

    // A Secret without its CA cannot make a working webhook: refused with the reason.
    let run =
        helm4().run(["template", "x", chart_dir().to_str().unwrap(), "--set", "tls.existingSecret=my-tls"]).unwrap();
    assert!(!run.ok && run.stderr.contains("tls.existingSecret needs tls.caBundle"), "{}", run.stderr);
}

#[test]
fn url_mode_calls_the_url_with_the_given_bundle() {
    let ca = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";
    let r = render(&[
        "--set",
        "webhook.url=https://192.168.1.10:8443/",
        "--set-string",
        &format!("tls.caBundle={ca}"),
        "--set",
        "tls.existingSecret=dev-tls",
    ]);
    let client = &r.one("MutatingWebhookConfiguration", None).unwrap()["webhooks"][0]["clientConfig"];
    assert_eq!(client["url"], "https://192.168.1.10:8443/mutate");
    assert!(client.get("service").is_none());
    assert_eq!(client["caBundle"], b64(ca));
}

/// Policy mode: only the policies `sidecar-injector policy` printed for the chart's own
/// configuration, with the chart's selection, failure and reinvocation policies and labels; no
/// Deployment, Service, certificates, RBAC or webhook. A missing or foreign `policy` is refused.
#[test]
fn policy_mode_installs_the_policies_and_nothing_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let values = chart_dir().join("ci/features-values.yaml");
    let webhook_mode = render(&["-f", values.to_str().unwrap()]);
    let mut config = webhook_mode.injector_config(dir.path()).unwrap();
    // The feature set's own choices a policy cannot honour (namespace catalogs, skipping env vars).
    config.namespace_catalogs = false;
    config.annotation_env.on_violation = sidecar_injector::env_rules::OnViolation::Deny;
    let list = dir.path().join("policy.json");
    std::fs::write(&list, integration_tests::helm::policy_list(&config).unwrap()).unwrap();
    let set_file = format!("policy={}", list.display());
    let mut args = vec!["-f", values.to_str().unwrap(), "--set", "mode=policy", "--set-file", &set_file];
    // Without a cluster, `helm template` assumes a Kubernetes that lacks the v1 policy API.
    let refused = helm4().run(["template", "x", chart_dir().to_str().unwrap()].iter().chain(&args)).unwrap();
    assert!(!refused.ok && refused.stderr.contains("Kubernetes 1.36 or later"), "{}", refused.stderr);
    args.extend(["--api-versions", MAP_V1]);
    let r = render(&args);
    assert_eq!(
        r.kinds(),
        [
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    for kind in ["MutatingAdmissionPolicy", "ValidatingAdmissionPolicy"] {
        let spec = &r.one(kind, None).unwrap()["spec"];
        assert_eq!(spec["failurePolicy"], "Ignore", "{kind}: the chart's webhook.failurePolicy");
        let ns = spec["matchConstraints"]["namespaceSelector"]["matchExpressions"].as_array().unwrap();
        assert_eq!(ns[0]["key"], "team.example.com/sidecars", "{kind}: the chart's opt-in label");
        assert!(ns[1]["values"].as_array().unwrap().contains(&json!(NS)), "{kind}: the release namespace excluded");
        assert_eq!(r.one(kind, None).unwrap()["metadata"]["labels"]["app.kubernetes.io/instance"], "sidecar-injector");
    }
    assert_eq!(r.one("MutatingAdmissionPolicy", None).unwrap()["spec"]["reinvocationPolicy"], "Never");

    let chart = chart_dir();
    let run = helm4()
        .run(["template", "x", chart.to_str().unwrap(), "--set", "mode=policy", "--api-versions", MAP_V1])
        .unwrap();
    assert!(!run.ok && run.stderr.contains("sidecar-injector policy"), "{}", run.stderr);
    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, r#"{"items": [{"kind": "ClusterRoleBinding"}]}"#).unwrap();
    let set_file = format!("policy={}", foreign.display());
    let run = helm4()
        .run(["template", "x", chart.to_str().unwrap(), "--set", "mode=policy", "--set-file", &set_file])
        .unwrap();
    assert!(!run.ok, "without the v1 policy API too");
    let run = helm4()
        .run([
            "template",
            "x",
            chart.to_str().unwrap(),
            "--set",
            "mode=policy",
            "--set-file",
            &set_file,
            "--api-versions",
            MAP_V1,
        ])
        .unwrap();
    assert!(!run.ok && run.stderr.contains("holds a ClusterRoleBinding"), "{}", run.stderr);
    let run = helm4().run(["template", "x", chart.to_str().unwrap(), "--set", "mode=webhooks"]).unwrap();
    assert!(!run.ok, "the schema refuses an unknown mode");
}

#[test]
fn optional_objects_follow_their_switches() {
    let r = render(&[
        "--set",
        "injector.namespaceCache=never",
        "--set",
        "podDisruptionBudget.enabled=false",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "catalog.existingConfigMap=corp-sidecars",
        "--set",
        "spreadReplicas=false",
    ]);
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
        "ServiceAccount",
        "ServiceMonitor",
        "NetworkPolicy",
    ] {
        assert!(r.all(kind).is_empty(), "{kind} rendered");
    }
    assert_eq!(r.all("ConfigMap").len(), 1, "the catalog is the user's ConfigMap");
    let pod = &r.one("Deployment", None).unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false, "no API access needed");
    assert_eq!(pod["serviceAccountName"], "default");
    assert_eq!(pod["volumes"][1]["configMap"]["name"], "corp-sidecars");
    assert!(pod.get("topologySpreadConstraints").is_none());

    let run =
        helm4().run(["template", "x", chart_dir().to_str().unwrap(), "--set", "networkPolicy.enabled=true"]).unwrap();
    assert!(!run.ok && run.stderr.contains("networkPolicy.apiServerCIDRs"), "{}", run.stderr);
}

#[test]
fn an_image_digest_wins_over_the_tag() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let r = render(&["--set", "image.tag=9.9.9", "--set", &format!("image.digest={digest}")]);
    let image = &r.one("Deployment", None).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(*image, format!("admission-kit/sidecar-injector@{digest}"));
}

/// The schema rejects unknown keys and wrong types, naming them.
#[test]
fn schema_rejects_bad_values() {
    let helm = helm4();
    let chart = chart_dir();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("unknown top-level key", "replicas: 3\n", "replicas"),
        ("misspelt nested key", "webhook:\n  failurPolicy: Fail\n", "failurPolicy"),
        ("wrong enum", "webhook:\n  failurePolicy: Sometimes\n", "failurePolicy"),
        ("out of range", "webhook:\n  timeoutSeconds: 31\n", "timeoutSeconds"),
        ("wrong type", "replicaCount: two\n", "replicaCount"),
        ("string for a number", "injector:\n  maxBodyBytes: big\n", "maxBodyBytes"),
        ("misspelt catalog key", "sidecars:\n  - name: a\n    contianers: []\n", "contianers"),
        ("sidecar without a name", "sidecars:\n  - containers: []\n", "name"),
        ("not a PEM bundle", "tls:\n  caBundle: hello\n", "caBundle"),
        ("a webhook name that is not fully qualified", "webhook:\n  name: injector\n", "name"),
        ("a bad duration", "catalog:\n  reloadInterval: soon\n", "reloadInterval"),
        ("a bad staleness bound", "injector:\n  cacheMaxStaleness: forever\n", "cacheMaxStaleness"),
        ("a plain-HTTP url", "webhook:\n  url: http://10.0.0.1\n", "url"),
        ("a misspelt env rule", "injector:\n  annotationEnv:\n    alow: ['*']\n", "alow"),
        ("a bad violation mode", "sidecars:\n  - name: a\n    annotationEnv: {onViolation: ignore}\n", "onViolation"),
        (
            "the status annotation as the inject one",
            "injector:\n  injectAnnotationName: status\n",
            "injectAnnotationName",
        ),
    ];
    for (what, values, named) in cases {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).unwrap();
        let run = helm.run(["template", "x", chart.to_str().unwrap(), "-f", file.to_str().unwrap()]).unwrap();
        assert!(!run.ok, "{what}: accepted");
        assert!(
            run.stderr.contains("schema") && run.stderr.contains(named),
            "{what}: the error names the schema and `{named}`:\n{}",
            run.stderr
        );
    }
}

#[test]
fn every_value_is_documented_in_values_yaml() {
    // Each key carries a `# --` comment in the comment block right above it, or sits inside a
    // value that does (e.g. `resources.requests.cpu` inside the documented `resources`).
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let documented_at = |i: usize| {
        lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'))
            .any(|l| l.trim_start().starts_with("# --"))
    };
    // (indent, documented) of the keys enclosing the current line.
    let mut enclosing: Vec<(usize, bool)> = Vec::new();
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') || !trimmed.contains(':') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        while enclosing.last().is_some_and(|(at, _)| *at >= indent) {
            enclosing.pop();
        }
        let inherited = enclosing.iter().any(|(_, documented)| *documented);
        let documented = documented_at(i);
        let is_section = trimmed.ends_with(':');
        if !is_section && !documented && !inherited {
            undocumented.push(trimmed.to_owned());
        }
        enclosing.push((indent, documented));
    }
    assert!(undocumented.is_empty(), "values without a `# --` comment: {undocumented:?}");
}

/// The values table of the book's Helm reference, from `values.yaml`: each documented key (a
/// `# --` comment block above it), its default and its comment. Sections (`image:`) are the path.
fn values_table() -> String {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values: Value = serde_saphyr::from_str(&text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut rows = vec!["| Value | Default | Meaning |".to_owned(), "|---|---|---|".to_owned()];
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else { continue };
        let indent = line.len() - trimmed.len();
        while path.last().is_some_and(|(at, _)| *at >= indent) {
            path.pop();
        }
        path.push((indent, key.to_owned()));
        let comment: Vec<&str> =
            lines[..i].iter().rev().take_while(|l| l.trim_start().starts_with('#')).copied().collect();
        let Some(start) = comment.iter().position(|l| l.trim_start().starts_with("# --")) else { continue };
        // The `# --` line and the lines after it, in file order; an `Example:` block ends it.
        let mut doc: Vec<&str> =
            comment[..=start].iter().rev().map(|l| l.trim_start().trim_start_matches('#').trim()).collect();
        doc[0] = doc[0].trim_start_matches("--").trim();
        if let Some(example) = doc.iter().position(|l| l.starts_with("Example:")) {
            doc.truncate(example);
        }
        let pointer = path.iter().fold(String::new(), |mut pointer, (_, k)| {
            pointer.push('/');
            pointer.push_str(k);
            pointer
        });
        let default = serde_json::to_string(values.pointer(&pointer).unwrap()).unwrap();
        let dotted: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
        rows.push(format!("| `{}` | `{}` | {} |", dotted.join("."), default.replace('|', "\\|"), doc.join(" ")));
    }
    rows.join("\n") + "\n"
}

/// The book's Helm values page lists every value of `values.yaml`, with its default and meaning
/// (`UPDATE_BOOK_REFERENCE=1` rewrites it after a change to the chart).
#[test]
fn the_books_helm_reference_lists_every_value() {
    let page_path = integration_tests::helm::repo_root().join("book/src/helm-values.md");
    let page = std::fs::read_to_string(&page_path).unwrap();
    let (begin, end) = ("<!-- BEGIN values table -->\n", "<!-- END values table -->");
    let (before, rest) = page.split_once(begin).expect("the page has a values table");
    let (current, after) = rest.split_once(end).expect("the values table ends");
    let table = values_table();
    if std::env::var_os("UPDATE_BOOK_REFERENCE").is_some() {
        std::fs::write(&page_path, format!("{before}{begin}{table}{end}{after}")).unwrap();
        return;
    }
    let stale: Vec<(&str, &str)> = current.lines().zip(table.lines()).filter(|(a, b)| a != b).collect();
    assert!(
        current == table,
        "book/src/helm-values.md is out of date (run UPDATE_BOOK_REFERENCE=1 cargo test -p integration-tests --test chart); \
         {} lines in the page, {} from values.yaml; first differences (page, values.yaml): {:#?}",
        current.lines().count(),
        table.lines().count(),
        &stale[..stale.len().min(3)]
    );
    // Every key is in it (the table is the documented keys; every key is documented).
    assert!(table.lines().count() > 60, "{table}");
}
