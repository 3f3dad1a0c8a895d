use super::*;

fn write(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn defaults_are_the_expedia_injector_plus_an_example_sidecar() {
    let config = Config::load(None, &[]).unwrap();
    assert_eq!(config.annotation_prefix, "sidecar-injector.expedia.com");
    assert_eq!(
        (config.namespace_label_key.as_str(), config.namespace_label_value.as_str()),
        ("kubernetes-sidecar-injector", "enabled")
    );
    assert_eq!(config.excluded_namespaces, vec!["kube-system", "kube-public"]);
    assert_eq!(config.sidecars[0]["name"], "haystack-agent");
    assert_eq!(config.reinvocation_policy, ReinvocationPolicy::IfNeeded);
    assert_eq!(config.failure_policy, FailurePolicy::Fail);
    assert!(matches!(config.server_config().unwrap().tls, admission_kit::tls::TlsSource::SelfSigned { .. }));
}

#[test]
fn a_file_replaces_the_embedded_defaults_and_flags_win_over_it() {
    let file = write(
        "timeoutSeconds: 3\nannotationPrefix: injector.example.com\nserver:\n  drainDelay: 1s\n  handshakeTimeout: 2s\n",
    );
    let config = Config::load(Some(file.path()), &[]).unwrap();
    assert_eq!(config.timeout_seconds, 3);
    assert_eq!(config.annotation_prefix, "injector.example.com");
    assert_eq!(config.sidecars, Value::Null, "the embedded example sidecar comes only without a file");
    assert_eq!(config.server_config().unwrap().drain_delay, Duration::from_secs(1));
    // Every setting of admission-kit's server is a key of the injector's, timeouts included.
    assert_eq!(config.server_config().unwrap().handshake_timeout, Duration::from_secs(2));
    let overridden = Config::load(
        Some(file.path()),
        &[
            ("timeoutSeconds".into(), Value::from(7)),
            ("server.logFormat".into(), Value::from("json")),
            ("server.idleTimeout".into(), Value::from("45s")),
        ],
    )
    .unwrap();
    assert_eq!(overridden.timeout_seconds, 7);
    assert_eq!(overridden.server.log_format, admission_kit::telemetry::LogFormat::Json);
    assert_eq!(overridden.server_config().unwrap().idle_timeout, Duration::from_secs(45));
}

#[test]
fn errors_name_the_key_and_where_it_came_from() {
    let file = write("timeoutSeconds: soon\n");
    let err = format!("{:#}", anyhow::Error::from(Config::load(Some(file.path()), &[]).unwrap_err()));
    assert!(err.contains("timeoutSeconds") && err.contains(&file.path().display().to_string()), "{err}");
    let file = write("timeoutSecond: 5\n");
    let err = format!("{:#}", anyhow::Error::from(Config::load(Some(file.path()), &[]).unwrap_err()));
    assert!(err.contains("timeoutSecond"), "{err}");
    let err = Config::load(None, &[("timeoutSeconds".into(), Value::from(31))]).unwrap_err().to_string();
    assert_eq!(err, "invalid configuration: `timeoutSeconds` must be between 1 and 30, got 31");
    let err = Config::load(None, &[("failurePolicy".into(), Value::from("Sometimes"))]).unwrap_err().to_string();
    assert!(
        err.contains("`failurePolicy`: unknown variant: found `Sometimes`, expected ``Fail` or `Ignore`` (from --set failurePolicy)"),
        "{err}"
    );
    let err = Config::load(None, &[("catalogReloadInterval".into(), Value::from("often"))]).unwrap_err().to_string();
    assert!(err.contains("`catalogReloadInterval`: `often` is not a duration like 5s, 250ms or 1m30s"), "{err}");
    let err =
        Config::load(None, &[("server.namespaceCache".into(), Value::from("sometimes"))]).unwrap_err().to_string();
    assert!(err.contains("`server.namespaceCache`: unknown variant: found `sometimes`"), "{err}");
    let err = Config::load(None, &[("server.tlsCertFile".into(), Value::from("/x.pem"))]).unwrap_err().to_string();
    assert!(err.contains("`server.tlsCertFile` is set without the key file"), "{err}");
    let err = format!(
        "{:#}",
        anyhow::Error::from(Config::load(None, &[("unknownSidecar".into(), Value::from("maybe"))]).unwrap_err())
    );
    assert!(err.contains("unknownSidecar") && err.contains("maybe"), "{err}");
}

#[test]
fn environment_variable_names_map_to_camel_case_keys() {
    assert_eq!(env_key_to_camel("timeout_seconds"), "timeoutSeconds");
    assert_eq!(env_key_to_camel("server__webhook_addr"), "server.webhookAddr");
    assert_eq!(env_key_to_camel("ANNOTATION_PREFIX"), "annotationPrefix");
}

#[test]
fn cache_max_staleness_is_a_duration_or_never() {
    let staleness = |value: Value| Config::load(None, &[("server.cacheMaxStaleness".into(), value)]);
    let bound = |value: Value| staleness(value).unwrap().server_config().unwrap().cache_max_staleness;
    assert_eq!(
        Config::load(None, &[]).unwrap().server_config().unwrap().cache_max_staleness,
        Some(Duration::from_secs(600))
    );
    assert_eq!(bound(Value::from("2s")), Some(Duration::from_secs(2)));
    assert_eq!(bound(Value::from("1h30m")), Some(Duration::from_secs(5400)));
    assert_eq!(bound(Value::from("never")), None);
    assert_eq!(bound(Value::from("0")), None);
    assert_eq!(bound(Value::from("0s")), None);
    assert_eq!(bound(Value::from(0)), None, "`0` from an environment variable or --set is a number");
    let err = staleness(Value::from("forever")).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid configuration: `server.cacheMaxStaleness`: `forever` is neither `never` nor a duration like 30s, 10m or 1h (from --set server.cacheMaxStaleness)"
    );
}

#[test]
fn limits_default_far_above_real_pods_and_errors_name_their_key() {
    let limits = Config::load(None, &[]).unwrap().limits;
    assert_eq!(
        (limits.max_inject_names, limits.max_env_annotations, limits.max_annotation_bytes),
        (64, 1000, 256 * 1024)
    );
    let file = write("limits:\n  maxInjectNames: 8\n  maxAnnotationBytes: 4096\n");
    let config = Config::load(Some(file.path()), &[]).unwrap();
    assert_eq!(config.injection().limits.max_inject_names, 8, "the file's cap reaches the mutators");
    assert_eq!(config.limits.max_env_annotations, 1000, "an unset cap keeps its default");
    assert_eq!(config.limits.max_annotation_bytes, 4096);
    let file = write("limits:\n  maxInjectNames: many\n");
    let err = Config::load(Some(file.path()), &[]).unwrap_err().to_string();
    assert!(err.contains("`limits.maxInjectNames`") && err.contains(&file.path().display().to_string()), "{err}");
    let file = write("limits:\n  maxNames: 3\n");
    let err = Config::load(Some(file.path()), &[]).unwrap_err().to_string();
    assert!(err.contains("maxNames"), "an unknown cap is refused: {err}");
    let err = Config::load(None, &[("limits.maxEnvAnnotations".into(), Value::from(0))]).unwrap_err().to_string();
    assert_eq!(err, "invalid configuration: `limits.maxEnvAnnotations` must be at least 1");
    assert_eq!(env_var("limits.maxAnnotationBytes"), "SIDECAR_INJECTOR_LIMITS__MAX_ANNOTATION_BYTES");
}

#[test]
fn kubelet_service_link_variables_are_not_configuration_keys() {
    // What kubelet sets for the chart's Service `sidecar-injector` (port 443, named `https`) and
    // for a Service `sidecar-injector-metrics` in the same namespace.
    for name in [
        "SERVICE_HOST",
        "SERVICE_PORT",
        "SERVICE_PORT_HTTPS",
        "PORT",
        "PORT_443_TCP",
        "PORT_443_TCP_PROTO",
        "PORT_443_TCP_PORT",
        "PORT_443_TCP_ADDR",
        "METRICS_SERVICE_HOST",
        "METRICS_PORT_8080_TCP_ADDR",
    ] {
        assert!(is_service_link(name), "{name} is a service link");
    }
    for name in [
        "ANNOTATION_PREFIX",
        "SERVER__WEBHOOK_ADDR",
        "LIMITS__MAX_INJECT_NAMES",
        "PORT_443_HTTP",
        "PORT_X_TCP",
        "SERVICE",
        "PORTS",
    ] {
        assert!(!is_service_link(name), "{name} is not a service link");
    }
}
