//! Arbitrary bytes as an `AdmissionReview` body: the decodings the server uses (`Review::decode`
//! keeping every field and setting `metadata.managedFields` aside, each with its uid-salvage path;
//! the two must agree), then the same bytes through the webhook router in-process, as the API server
//! would send them. Never a panic; the server answers 400 when there
//! is no review to answer, else HTTP 200 with an `AdmissionReview` that echoes the uid (a 400
//! denial for a request it could only partly read).
#![no_main]

use std::sync::LazyLock;

use admission_kit::namespaces::NamespaceSource;
use admission_kit::review::{API_VERSION_V1, API_VERSION_V1BETA1, Answer, DecodeError, ManagedFields, Review};
use admission_kit::server::{ServerConfig, parse_duration, router};
use admission_kit::testing::call_router;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The injector's default pipeline behind the server's router; namespace labels unknown, so the
/// matcher trusts what the webhook's `namespaceSelector` enforces (as a server without cluster
/// access does).
static ROUTER: LazyLock<axum::Router> = LazyLock::new(|| {
    let pipeline = admission_kit_fuzz::pipeline(0).clone();
    assert_eq!(pipeline.managed_fields(), ManagedFields::SetAside, "the router decodes as `decoded` does");
    router(ServerConfig::local(), &[pipeline], NamespaceSource::Unknown)
});

/// `object` without `metadata.managedFields`.
fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

fuzz_target!(|data: &[u8]| {
    let whole = Review::decode(data, ManagedFields::Keep);
    let decoded = Review::decode(data, ManagedFields::SetAside);
    match (&whole, &decoded) {
        (Ok(whole), Ok(lean)) => {
            let object = whole.request.object.as_ref();
            assert_eq!(lean.request.object, object.map(without_managed_fields), "the object, managedFields aside");
            let old = whole.request.old_object.as_ref();
            assert_eq!(lean.request.old_object, old.map(without_managed_fields), "the old object, managedFields aside");
            let set_aside = lean.set_aside_managed_fields().map(|raw| serde_json::from_str::<Value>(raw.get()).unwrap());
            assert_eq!(set_aside.as_ref(), object.and_then(|o| o.pointer("/metadata/managedFields")));
        }
        (Ok(whole), Err(error)) => {
            // Only an object (or old object), or its metadata, that is not a JSON object is refused.
            let not_an_object = |o: &Option<Value>| {
                o.as_ref().is_some_and(|o| !o.is_object() || o.get("metadata").is_some_and(|m| !m.is_object()))
            };
            let request = &whole.request;
            assert!(not_an_object(&request.object) || not_an_object(&request.old_object), "{error}");
            assert!(matches!(error, DecodeError::MalformedRequest { .. }), "{error}");
        }
        (Err(_), Ok(lean)) => panic!("only the decode setting managedFields aside read {lean:?}"),
        (Err(_), Err(_)) => {}
    }
    match &decoded {
        Ok(review) => {
            assert!(
                [API_VERSION_V1, API_VERSION_V1BETA1].contains(&review.api_version.as_str()),
                "decoded a review of unsupported apiVersion {:?}",
                review.api_version
            );
            let answer = Answer::allow(&review.api_version, &review.request.uid);
            answer.to_review_json().expect("an answer to a decoded review encodes");
        }
        Err(DecodeError::MalformedRequest { uid, api_version, source }) => {
            assert!(!uid.is_empty(), "a salvaged uid is never empty");
            // What the server answers: a denial echoing the uid.
            let answer = Answer::deny(api_version, uid, 400, format!("could not be read: {source}"));
            let body = answer.to_review_json().expect("a denial encodes");
            let wire: Value = serde_json::from_slice(&body).expect("a denial is JSON");
            assert_eq!(wire["response"]["uid"], uid.as_str());
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // The API server's `?timeout=` value, parsed on the same path.
        let _ = parse_duration(text);
    }

    let (status, body) = admission_kit_fuzz::RUNTIME.block_on(call_router(&ROUTER, "/mutate", data.to_vec()));
    let status = status.as_u16();
    let text = String::from_utf8_lossy(&body);
    match decoded {
        Ok(review) => {
            assert_eq!(status, 200, "a decoded review is answered with 200: {text}");
            let wire: Value = serde_json::from_slice(&body).expect("the answer is JSON");
            assert_eq!(wire["response"]["uid"], review.request.uid.as_str(), "uid echoed: {text}");
            assert_eq!(wire["apiVersion"], review.api_version.as_str(), "apiVersion echoed: {text}");
            assert_eq!(wire["kind"], "AdmissionReview");
        }
        Err(DecodeError::MalformedRequest { uid, .. }) => {
            assert_eq!(status, 200, "a request with a uid is answered with a denial, not {status}: {text}");
            let wire: Value = serde_json::from_slice(&body).expect("the denial is JSON");
            assert_eq!(wire["response"]["uid"], uid.as_str(), "uid echoed: {text}");
            assert_eq!(wire["response"]["allowed"], false, "{text}");
            assert_eq!(wire["response"]["status"]["code"], 400, "{text}");
        }
        Err(_) => assert_eq!(status, 400, "no review to answer: 400, not {status}: {text}"),
    }
});
