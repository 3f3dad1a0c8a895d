//! Tests of the service-owner webhook on raw Service (and custom resource) reviews.

use admission_kit::testing::proptest::prelude::*;
use admission_kit::testing::{Harness, check_property, review_json, strategies};
use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook};
use serde_json::json;

use super::*;

fn owner() -> OwnerLabel {
    OwnerLabel::new(DEFAULT_OWNER_LABEL.parse().unwrap(), "platform".parse().unwrap())
}

fn harness() -> Harness {
    Harness::new(pipeline(&owner()))
}

fn service(labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps", "labels": labels},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })
}

#[tokio::test]
async fn labels_services_without_an_owner() {
    let checked = harness().check(&review_json(service(&json!({"app": "web"})), &services()).build()).await;
    assert_eq!(checked.patched()["metadata"]["labels"], json!({"app": "web", "example.com/owner": "platform"}));

    let no_metadata = json!({"apiVersion": "v1", "kind": "Service", "spec": {}});
    let checked = harness().check(&review_json(no_metadata, &services()).build()).await;
    assert_eq!(checked.patched()["metadata"]["labels"], json!({"example.com/owner": "platform"}));
}

#[tokio::test]
async fn keeps_the_owner_a_service_names() {
    let owned = service(&json!({"example.com/owner": "payments"}));
    harness().check(&review_json(owned, &services()).build()).await.assert_unchanged();
}

#[tokio::test]
async fn denies_an_empty_owner_saying_what_to_do() {
    let empty = service(&json!({"example.com/owner": ""}));
    harness().check(&review_json(empty, &services()).build()).await.assert_denied(
        "label `example.com/owner` is empty: set it to the owning team, or remove it to get the default owner `platform`",
    );
}

#[tokio::test]
async fn an_update_cannot_drop_the_owner() {
    let old = service(&json!({"example.com/owner": "payments"}));
    let update = review_json(service(&json!({})), &services()).operation(Operation::Update).old_object(old);
    let checked = harness().check(&update.build()).await;
    assert_eq!(checked.patched()["metadata"]["labels"]["example.com/owner"], "platform");
}

#[tokio::test]
async fn malformed_metadata_is_refused_with_the_reason() {
    let malformed = json!({"metadata": {"name": "web", "labels": "owner=me"}});
    let checked = harness().check(&review_json(malformed, &services()).build()).await;
    checked.assert_denied("owner-label-services failed: metadata.labels is not a JSON object");
}

#[tokio::test]
async fn serves_only_the_kinds_it_is_given() {
    let config_map = ResourceTarget::new("", "v1", "ConfigMap", "configmaps");
    let object = json!({"metadata": {"name": "c", "namespace": "apps"}, "data": {}});
    harness().check(&review_json(object.clone(), &config_map).build()).await.assert_unchanged();
    // The status subresource is not the Service itself.
    let status = review_json(service(&json!({})), &services()).operation(Operation::Update).sub_resource("status");
    harness().check(&status.build()).await.assert_unchanged();
}

#[tokio::test]
async fn the_same_mutator_serves_a_custom_resource() {
    let widgets = ResourceTarget::new("example.com", "v1", "Widget", "widgets");
    let harness = Harness::new(pipeline_for(&owner(), [services(), widgets.clone()]).unwrap());
    // A custom resource with fields no Rust type knows, all kept.
    let widget = json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "apps"},
        "spec": {"size": 3, "colour": {"name": "blue", "x-any": [1, null]}},
    });
    let checked = harness.check(&review_json(widget, &widgets).build()).await;
    assert_eq!(checked.patched()["metadata"]["labels"]["example.com/owner"], "platform");

    let rendered = render_webhook(
        &pipeline_for(&owner(), [services(), widgets]).unwrap(),
        &WebhookConfigOptions::new("service-owner", ClientTarget::Url("https://127.0.0.1:8443".into())),
    );
    let rules = serde_json::to_value(rendered.rules).unwrap();
    assert_eq!(
        rules,
        json!([
            {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["services"], "operations": ["CREATE", "UPDATE"], "scope": "*"},
            {"apiGroups": ["example.com"], "apiVersions": ["v1"], "resources": ["widgets"], "operations": ["CREATE", "UPDATE"], "scope": "*"},
        ])
    );
}

#[test]
fn label_keys_and_owners_follow_the_kubernetes_syntax() {
    for ok in ["owner", "example.com/owner", "a.b-c.io/Team_name.x", &"o".repeat(63)] {
        assert!(ok.parse::<LabelKey>().is_ok(), "`{ok}` should be a key");
    }
    for bad in ["", "/owner", "Example.com/owner", "a_b.io/owner", "a.io/", "-owner", "a/b/c", &"o".repeat(64)] {
        assert!(bad.parse::<LabelKey>().is_err(), "`{bad}` should not be a key");
    }
    for ok in ["platform", "team-a", "A.b_c", "7"] {
        assert!(ok.parse::<Owner>().is_ok(), "`{ok}` should be an owner");
    }
    for bad in ["", "-team", "team-", "a b", "ä", &"o".repeat(64)] {
        assert!(bad.parse::<Owner>().is_err(), "`{bad}` should not be an owner");
    }
}

#[test]
fn property_every_service_ends_with_one_non_empty_owner() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let harness = harness();
    let owner_value = prop::option::of(prop_oneof![Just(String::new()), "[a-z]{1,6}"]);
    let labels = prop::collection::btree_map(strategies::tricky_key(), "[a-z]{0,3}", 0..4);
    let inputs = (labels, owner_value, strategies::maybe_unknown(), strategies::maybe_unknown());
    check_property(inputs, |(labels, owner, unknown_meta, unknown_spec)| {
        let mut labels: Map<String, Value> = labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        if let Some(owner) = &owner {
            labels.insert(DEFAULT_OWNER_LABEL.to_owned(), Value::String(owner.clone()));
        }
        let mut object = service(&Value::Object(labels));
        if let Some(u) = unknown_meta {
            object["metadata"]["x-unknown"] = u;
        }
        if let Some(u) = unknown_spec {
            object["spec"]["x-unknown"] = u;
        }
        // `check` asserts the patch applies, is idempotent and loses nothing of the original.
        let checked = runtime.block_on(harness.try_check(&review_json(object, &services()).build()))?;
        match owner.as_deref() {
            Some("") => prop_assert!(!checked.answer().allowed, "an empty owner was admitted"),
            Some(named) => prop_assert_eq!(&checked.patched()["metadata"]["labels"][DEFAULT_OWNER_LABEL], named),
            None => prop_assert_eq!(&checked.patched()["metadata"]["labels"][DEFAULT_OWNER_LABEL], "platform"),
        }
        Ok(())
    });
}
