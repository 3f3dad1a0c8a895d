//! The wire format: decoding `AdmissionReview` requests and encoding answers.
//!
//! Implements <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#request>
//! and `#response`. The object is kept as raw JSON ([`serde_json::Value`]) rather than decoded into
//! a typed struct, so the patch can be derived against exactly what the API server sent, including
//! fields newer than the k8s-openapi release this crate was built with.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::{GroupVersionKind, GroupVersionResource, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::pipeline::ResourceTarget;

/// `admission.k8s.io/v1`, the only version rendered into webhook configurations.
pub const API_VERSION_V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1`, still accepted so that captured reviews from old clusters replay.
pub const API_VERSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

/// Why a body could not be read as an `AdmissionReview`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is not JSON, or not an `AdmissionReview` at all; there is no `uid` to answer.
    #[error("failed to decode AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The review has no `request`; there is nothing to answer.
    #[error("AdmissionReview has no `request`; nothing to admit")]
    NoRequest,
    /// The review names an API version this server does not speak.
    #[error("AdmissionReview apiVersion `{0}` is not supported; use admission.k8s.io/v1")]
    UnsupportedVersion(String),
    /// The `request` is present and has a `uid`, but another field is malformed. It can be
    /// answered with a denial that echoes the `uid`.
    #[error("failed to decode AdmissionReview request {uid}: {source}")]
    MalformedRequest {
        /// The request's `uid`, echoed in the denial.
        uid: String,
        /// The API version of the review, echoed in the denial.
        api_version: String,
        /// What serde could not read.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    request: Option<Request>,
}

/// One admission request, with the object kept as raw JSON.
///
/// The field names and types follow `admission.k8s.io/v1` `AdmissionRequest`; the typed parts reuse
/// kube-rs's types.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Request {
    /// Identifies this request/response round trip; echoed in the answer.
    pub uid: String,
    /// The kind of the object, as converted for this webhook (e.g. `v1/Pod`).
    pub kind: GroupVersionKind,
    /// The resource being requested (e.g. `v1/pods`).
    pub resource: GroupVersionResource,
    /// The subresource, if any (e.g. `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_resource: Option<String>,
    /// The kind the user originally requested, before conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_kind: Option<GroupVersionKind>,
    /// The object's name; empty on CREATE with `generateName`.
    #[serde(default)]
    pub name: String,
    /// The object's namespace; absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Operation,
    /// Who is asking.
    #[serde(default)]
    pub user_info: k8s_openapi::api::authentication::v1::UserInfo,
    /// The object as the API server sent it (absent on DELETE); without `metadata.managedFields`
    /// when decoded by [`Review::decode`] with [`ManagedFields::SetAside`].
    #[serde(default, deserialize_with = "set_aside::object", skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// The existing object on UPDATE and DELETE; without `metadata.managedFields` when decoded with
    /// [`ManagedFields::SetAside`].
    #[serde(default, deserialize_with = "set_aside::old_object", skip_serializing_if = "Option::is_none")]
    pub old_object: Option<Value>,
    /// Whether this is a dry run; mutators must have no side effects either way.
    #[serde(default)]
    pub dry_run: bool,
    /// The operation's options (`CreateOptions`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
}

/// The uid [`Request::builder`] gives a request until [`RequestBuilder::uid`] sets another.
pub const BUILT_REQUEST_UID: &str = "00000000-0000-0000-0000-000000000001";

impl Request {
    /// Starts a CREATE request for an object of kind `target`, with no object yet (set it with
    /// [`RequestBuilder::object`]), for unit tests of mutators and matchers, offline tools and
    /// fuzzers. The request is namespaced (`default`) until [`RequestBuilder::namespace`] or
    /// [`RequestBuilder::cluster_scoped`] says otherwise.
    pub fn builder(target: &ResourceTarget) -> RequestBuilder {
        RequestBuilder {
            request: Request {
                uid: BUILT_REQUEST_UID.to_owned(),
                kind: GroupVersionKind::gvk(&target.group, &target.version, &target.kind),
                resource: GroupVersionResource::gvr(&target.group, &target.version, &target.plural),
                sub_resource: None,
                request_kind: None,
                name: String::new(),
                namespace: Some("default".to_owned()),
                operation: Operation::Create,
                user_info: k8s_openapi::api::authentication::v1::UserInfo {
                    username: Some("admission-kit-test".to_owned()),
                    ..Default::default()
                },
                object: None,
                old_object: None,
                dry_run: false,
                options: None,
            },
            _output: PhantomData,
        }
    }

    /// Starts a CREATE request for a typed object: its kind, name and namespace (else `default`)
    /// come from the object.
    ///
    /// ```
    /// use admission_kit::Request;
    /// use k8s_openapi::api::core::v1::Pod;
    ///
    /// let request = Request::of(&Pod::default()).namespace("apps").build();
    /// assert_eq!(request.kind.kind, "Pod");
    /// assert_eq!(request.namespace.as_deref(), Some("apps"));
    /// ```
    pub fn of<K: k8s_openapi::Resource + Serialize + serde::de::DeserializeOwned>(object: &K) -> RequestBuilder {
        // A k8s-openapi object always encodes; `null` would only show in the test that built it.
        let value = serde_json::to_value(object).unwrap_or(Value::Null);
        Self::of_json(value, &ResourceTarget::of::<K>())
    }

    /// Starts a CREATE request for the raw JSON of an object of kind `target`: its name and
    /// namespace (else `default`) come from the object's metadata.
    pub fn of_json(object: Value, target: &ResourceTarget) -> RequestBuilder {
        let metadata = object.get("metadata");
        let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_owned();
        let namespace = metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default");
        let builder = Self::builder(target).name(name).namespace(namespace);
        builder.object(object)
    }
}

/// Builds a [`Request`] (or, as the testing kit's `ReviewBuilder`, a [`Review`]); made by
/// [`Request::builder`], [`Request::of`] and [`Request::of_json`].
///
/// `O` is what [`RequestBuilder::build`] returns: the [`Request`] itself, or anything made from
/// one, such as a [`Review`] (see [`RequestBuilder::for_review`]).
#[derive(Clone, Debug)]
#[must_use]
pub struct RequestBuilder<O = Request> {
    request: Request,
    _output: PhantomData<fn() -> O>,
}

impl<O: From<Request>> RequestBuilder<O> {
    /// Sets the operation (default CREATE).
    pub fn operation(mut self, operation: Operation) -> Self {
        self.request.operation = operation;
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.request.namespace = Some(namespace.into());
        self
    }

    /// Makes the request cluster-scoped (no namespace).
    pub fn cluster_scoped(mut self) -> Self {
        self.request.namespace = None;
        self
    }

    /// Sets the object's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.request.name = name.into();
        self
    }

    /// Sets the old object (UPDATE, DELETE).
    pub fn old_object(mut self, old: Value) -> Self {
        self.request.old_object = Some(old);
        self
    }

    /// Sets (or replaces) the object.
    pub fn object(mut self, object: Value) -> Self {
        self.request.object = Some(object);
        self
    }

    /// Removes the object, as on DELETE.
    pub fn no_object(mut self) -> Self {
        self.request.object = None;
        self
    }

    /// Marks the request as a dry run.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.request.dry_run = dry_run;
        self
    }

    /// Sets the uid (default [`BUILT_REQUEST_UID`]).
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.request.uid = uid.into();
        self
    }

    /// Sets the kind and resource, e.g. to test how a step treats other kinds.
    pub fn kind(mut self, target: &ResourceTarget) -> Self {
        self.request.kind = GroupVersionKind::gvk(&target.group, &target.version, &target.kind);
        self.request.resource = GroupVersionResource::gvr(&target.group, &target.version, &target.plural);
        self
    }

    /// Sets a subresource (e.g. `status`).
    pub fn sub_resource(mut self, sub: impl Into<String>) -> Self {
        self.request.sub_resource = Some(sub.into());
        self
    }

    /// Sets who is asking.
    pub fn user_info(mut self, user_info: k8s_openapi::api::authentication::v1::UserInfo) -> Self {
        self.request.user_info = user_info;
        self
    }

    /// The request (or what `O` makes of it).
    #[must_use]
    pub fn build(self) -> O {
        O::from(self.request)
    }
}

impl RequestBuilder<Request> {
    /// The same builder, whose [`RequestBuilder::build`] gives an `admission.k8s.io/v1` [`Review`].
    pub fn for_review(self) -> RequestBuilder<Review> {
        RequestBuilder { request: self.request, _output: PhantomData }
    }
}

impl RequestBuilder<Review> {
    /// The review as the JSON body the API server would send.
    #[must_use]
    pub fn body(self) -> Vec<u8> {
        let review = self.build();
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": review.api_version,
            "kind": "AdmissionReview",
            "request": review.request,
        }))
        .unwrap_or_default()
    }
}

impl From<Request> for Review {
    /// Wraps a request as an `admission.k8s.io/v1` review.
    fn from(request: Request) -> Self {
        Self::v1(request)
    }
}

/// The wire name of an operation (`CREATE`, …), as used in webhook rules and metrics.
#[must_use]
pub fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// A decoded review: the request and the API version to answer in.
#[derive(Clone, Debug)]
pub struct Review {
    /// `admission.k8s.io/v1` or `admission.k8s.io/v1beta1`.
    pub api_version: String,
    /// The request.
    pub request: Request,
    /// The object's `metadata.managedFields`, when [`Review::decode`] set them aside.
    managed_fields: Option<Box<RawValue>>,
}

/// What [`Review::decode`] does with `metadata.managedFields`, the API server's record of which
/// client set which field: in a pod made by a Deployment, often a third of the object's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedFields {
    /// Decodes them into the object like any other field.
    #[default]
    Keep,
    /// Leaves them out of `object` and `old_object`. The object's are kept as raw JSON
    /// ([`Review::set_aside_managed_fields`]), checked as JSON but never built into a
    /// [`Value`] tree. For pipelines whose steps never read or write them
    /// ([`crate::pipeline::PipelineBuilder::set_aside_managed_fields`]): the patch is derived from objects
    /// without them, so it never touches them and the API server keeps them as they were.
    SetAside,
}

impl Review {
    /// Wraps a request as an `admission.k8s.io/v1` review.
    #[must_use]
    pub fn v1(request: Request) -> Self {
        Self { api_version: API_VERSION_V1.to_owned(), request, managed_fields: None }
    }

    /// Decodes a request body, keeping every field ([`ManagedFields::Keep`]).
    pub fn from_slice(body: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(body, ManagedFields::Keep)
    }

    /// Decodes a request body. The fast path is a single typed parse; only when it fails is the body
    /// parsed again, loosely, to find a `uid` worth answering.
    pub fn decode(body: &[u8], managed_fields: ManagedFields) -> Result<Self, DecodeError> {
        let parsed = match managed_fields {
            ManagedFields::Keep => serde_json::from_slice::<Envelope>(body).map(|envelope| (envelope, None)),
            ManagedFields::SetAside => set_aside::decode(body),
        };
        match parsed {
            Ok((Envelope { api_version, request }, managed_fields)) => {
                check_version(&api_version)?;
                let request = request.ok_or(DecodeError::NoRequest)?;
                Ok(Self { api_version, request, managed_fields })
            }
            Err(source) => Err(salvage(body, source)),
        }
    }

    /// The object's `metadata.managedFields` as the API server sent them, when the review was
    /// decoded with [`ManagedFields::SetAside`] and the object had them.
    #[must_use]
    pub fn set_aside_managed_fields(&self) -> Option<&RawValue> {
        self.managed_fields.as_deref()
    }
}

/// Decoding with [`ManagedFields::SetAside`].
///
/// The `object` and `old_object` fields of [`Request`] decode through [`object`] and
/// [`old_object`], which read a flag of the decoding thread: serde's derive gives a field no
/// context, and the flag is set and cleared around one synchronous `serde_json` parse, so nothing
/// else on the thread sees it.
mod set_aside {
    use std::cell::Cell;
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use serde_json::{Map, Value};

    use super::Envelope;

    thread_local! {
        /// Whether the parse on this thread sets managedFields aside.
        static SETTING_ASIDE: Cell<bool> = const { Cell::new(false) };
        /// The object's managedFields, set aside by the parse on this thread.
        static OBJECT_MANAGED_FIELDS: Cell<Option<Box<RawValue>>> = const { Cell::new(None) };
    }

    /// Clears the flag when the parse ends, however it ends.
    struct Setting;

    impl Setting {
        fn start() -> Self {
            SETTING_ASIDE.set(true);
            OBJECT_MANAGED_FIELDS.set(None);
            Self
        }
    }

    impl Drop for Setting {
        fn drop(&mut self) {
            SETTING_ASIDE.set(false);
        }
    }

    pub(super) fn decode(body: &[u8]) -> Result<(Envelope, Option<Box<RawValue>>), serde_json::Error> {
        let setting = Setting::start();
        let envelope = serde_json::from_slice::<Envelope>(body);
        drop(setting);
        let managed_fields = OBJECT_MANAGED_FIELDS.take();
        Ok((envelope?, managed_fields))
    }

    pub(super) fn object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
        if !SETTING_ASIDE.get() {
            return Option::<Value>::deserialize(deserializer);
        }
        let lean = Option::<Lean>::deserialize(deserializer)?;
        Ok(lean.map(|lean| {
            OBJECT_MANAGED_FIELDS.set(lean.managed_fields);
            lean.object
        }))
    }

    pub(super) fn old_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
        if !SETTING_ASIDE.get() {
            return Option::<Value>::deserialize(deserializer);
        }
        Ok(Option::<Lean>::deserialize(deserializer)?.map(|lean| lean.object))
    }

    /// An object decoded without its `metadata.managedFields`, and those as raw JSON.
    struct Lean {
        object: Value,
        managed_fields: Option<Box<RawValue>>,
    }

    impl<'de> Deserialize<'de> for Lean {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(LeanVisitor { metadata: false })
        }
    }

    /// Visits the object (`metadata: false`), then its `metadata` (`metadata: true`).
    struct LeanVisitor {
        metadata: bool,
    }

    impl<'de> Visitor<'de> for LeanVisitor {
        type Value = Lean;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.metadata {
                "the object's metadata as a JSON object"
            } else {
                "an object as a JSON object"
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lean, A::Error> {
            let mut object = Map::new();
            let mut managed_fields = None;
            while let Some(key) = map.next_key::<String>()? {
                if self.metadata && key == "managedFields" {
                    managed_fields = Some(map.next_value::<Box<RawValue>>()?);
                } else if !self.metadata && key == "metadata" {
                    let metadata: LeanMetadata = map.next_value()?;
                    managed_fields = metadata.0.managed_fields;
                    object.insert(key, metadata.0.object);
                } else {
                    object.insert(key, map.next_value::<Value>()?);
                }
            }
            Ok(Lean { object: Value::Object(object), managed_fields })
        }
    }

    struct LeanMetadata(Lean);

    impl<'de> Deserialize<'de> for LeanMetadata {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(LeanVisitor { metadata: true }).map(LeanMetadata)
        }
    }
}

fn check_version(api_version: &str) -> Result<(), DecodeError> {
    match api_version {
        API_VERSION_V1 | API_VERSION_V1BETA1 => Ok(()),
        other => Err(DecodeError::UnsupportedVersion(other.to_owned())),
    }
}

/// A typed decode failed: find out whether it failed inside a request whose `uid` we can echo.
fn salvage(body: &[u8], source: serde_json::Error) -> DecodeError {
    let Ok(Value::Object(review)) = serde_json::from_slice::<Value>(body) else {
        return DecodeError::Malformed(source);
    };
    let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Err(e) = check_version(&api_version) {
        return e;
    }
    match review.get("request") {
        None | Some(Value::Null) => DecodeError::NoRequest,
        Some(request) => match request.get("uid").and_then(Value::as_str) {
            Some(uid) if !uid.is_empty() => DecodeError::MalformedRequest { uid: uid.to_owned(), api_version, source },
            _ => DecodeError::Malformed(source),
        },
    }
}

/// The answer to one request: allowed (with or without a patch) or denied.
///
/// Built by [`crate::Pipeline::review`]; encoded by [`Answer::to_review_json`]. Warnings and audit
/// annotations keep the order mutators added them (audit annotations sorted by key), so identical
/// inputs give byte-identical answers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Answer {
    /// The API version to answer in (the request's).
    pub api_version: String,
    /// The request's `uid`.
    pub uid: String,
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Why it was denied (empty when allowed).
    pub message: String,
    /// HTTP-like status code for a denial (403 for a decision, 400 for bad input, 500 for a failure).
    pub code: u16,
    /// The RFC 6902 patch, if the object changed.
    pub patch: Option<json_patch::Patch>,
    /// Warnings returned to the API client (`kubectl` prints them).
    pub warnings: Vec<String>,
    /// Audit annotations, recorded by the API server in its audit log.
    pub audit_annotations: BTreeMap<String, String>,
}

impl Answer {
    /// Admits unchanged.
    #[must_use]
    pub fn allow(api_version: &str, uid: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            uid: uid.to_owned(),
            allowed: true,
            message: String::new(),
            code: 200,
            patch: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        }
    }

    /// Denies with a message a person can act on.
    #[must_use]
    pub fn deny(api_version: &str, uid: &str, code: u16, message: impl Into<String>) -> Self {
        Self { allowed: false, message: message.into(), code, ..Self::allow(api_version, uid) }
    }

    /// Whether the answer carries a non-empty patch.
    #[must_use]
    pub fn is_patched(&self) -> bool {
        self.patch.as_ref().is_some_and(|p| !p.0.is_empty())
    }

    /// A short word for metrics and logs: `patched`, `allowed` or `denied`.
    #[must_use]
    pub fn result_label(&self) -> &'static str {
        match (self.allowed, self.is_patched()) {
            (false, _) => "denied",
            (true, true) => "patched",
            (true, false) => "allowed",
        }
    }

    /// Converts to kube-rs's response type, for code that already speaks it.
    pub fn into_kube_response(self) -> Result<AdmissionResponse, kube::core::admission::SerializePatchError> {
        let mut response = AdmissionResponse::invalid("");
        response.result = if self.allowed { Status::default() } else { self.status() };
        response.types.api_version = self.api_version;
        response.uid = self.uid;
        response.allowed = self.allowed;
        response.warnings = (!self.warnings.is_empty()).then_some(self.warnings);
        response.audit_annotations = self.audit_annotations.into_iter().collect();
        match self.patch {
            Some(patch) if !patch.0.is_empty() => response.with_patch(patch),
            _ => Ok(response),
        }
    }

    fn status(&self) -> Status {
        let reason = match self.code {
            400 => "BadRequest",
            403 => "Forbidden",
            504 => "Timeout",
            _ => "InternalError",
        };
        let mut status = Status::failure(&self.message, reason);
        status.code = self.code;
        status
    }

    /// Encodes the answer as an `AdmissionReview` response body.
    pub fn to_review_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let patch = match &self.patch {
            Some(patch) if !patch.0.is_empty() => Some(base64_encode(&serde_json::to_vec(patch)?)),
            _ => None,
        };
        let status = (!self.allowed).then(|| self.status());
        let body = WireReview {
            api_version: &self.api_version,
            kind: "AdmissionReview",
            response: WireResponse {
                uid: &self.uid,
                allowed: self.allowed,
                status,
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch,
                warnings: &self.warnings,
                audit_annotations: &self.audit_annotations,
            },
        };
        serde_json::to_vec(&body)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<String, String>,
}

/// Standard base64 with padding, as Go's `[]byte` JSON encoding expects.
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(request: &str) -> Vec<u8> {
        format!(r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{request}}}"#).into_bytes()
    }

    #[test]
    fn decodes_the_captured_v1beta1_review() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/expedia-2019-admission-review-v1beta1.json"
        ))
        .unwrap();
        let review = Review::from_slice(&body).unwrap();
        assert_eq!(review.api_version, API_VERSION_V1BETA1);
        assert_eq!(review.request.uid, "6e397dab-317d-11e9-b50f-080027bbd2ff");
        assert_eq!(review.request.operation, Operation::Create);
        assert_eq!(review.request.kind.kind, "Pod");
    }

    #[test]
    fn bad_inputs_are_told_apart() {
        assert!(matches!(Review::from_slice(b"{not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(Review::from_slice(b"[1,2]"), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            Review::from_slice(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(DecodeError::NoRequest)
        ));
        assert!(matches!(
            Review::from_slice(br#"{"apiVersion":"admission.k8s.io/v2","request":{}}"#),
            Err(DecodeError::UnsupportedVersion(v)) if v == "admission.k8s.io/v2"
        ));
        let bad_op = body(
            r#"{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"EXPLODE"}"#,
        );
        match Review::from_slice(&bad_op) {
            Err(DecodeError::MalformedRequest { uid, .. }) => assert_eq!(uid, "u-1"),
            other => panic!("expected a salvageable uid, got {other:?}"),
        }
    }

    #[test]
    fn built_requests_read_the_object_and_round_trip_as_reviews() {
        let pod = k8s_openapi::api::core::v1::Pod {
            metadata: kube::core::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let request = Request::of(&pod).operation(Operation::Update).dry_run(true).build();
        assert_eq!((request.name.as_str(), request.namespace.as_deref()), ("p", Some("apps")));
        assert_eq!((request.kind.kind.as_str(), request.resource.resource.as_str()), ("Pod", "pods"));
        assert_eq!((request.operation.clone(), request.dry_run), (Operation::Update, true));
        assert_eq!(request.uid, BUILT_REQUEST_UID);
        assert_eq!(request.object.as_ref().and_then(|o| o["metadata"]["name"].as_str()), Some("p"));

        let target = ResourceTarget::new("example.com", "v1", "Widget", "widgets");
        let bare = Request::builder(&target).cluster_scoped().uid("u-9").build();
        assert_eq!((bare.namespace, bare.object, bare.uid.as_str()), (None, None, "u-9"));
        assert_eq!(Request::of_json(json!({}), &target).build().namespace.as_deref(), Some("default"));

        let built = Request::of(&pod).sub_resource("status").for_review();
        let decoded = Review::from_slice(&built.clone().body()).unwrap();
        assert_eq!(decoded.api_version, API_VERSION_V1);
        assert_eq!(decoded.request, built.build().request);
    }

    #[test]
    fn answers_encode_as_v1_reviews() {
        let mut answer = Answer::allow(API_VERSION_V1, "u-2");
        answer.patch =
            Some(serde_json::from_str(r#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#).unwrap());
        let json: Value = serde_json::from_slice(&answer.to_review_json().unwrap()).unwrap();
        assert_eq!(json["kind"], "AdmissionReview");
        assert_eq!(json["response"]["uid"], "u-2");
        assert_eq!(json["response"]["patchType"], "JSONPatch");
        let patch = json["response"]["patch"].as_str().unwrap();
        assert_eq!(patch, base64_encode(br#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#));
        let denied = Answer::deny(API_VERSION_V1, "u-3", 403, "no");
        let json: Value = serde_json::from_slice(&denied.to_review_json().unwrap()).unwrap();
        assert_eq!(json["response"]["allowed"], false);
        assert_eq!(json["response"]["status"]["message"], "no");
        assert_eq!(json["response"]["status"]["code"], 403);
    }

    /// A review body whose object and old object both carry `managedFields`.
    fn body_with_managed_fields(object: &Value, old: &Value) -> Vec<u8> {
        let request = json!({
            "uid": "u-7",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "UPDATE",
            "object": object,
            "oldObject": old,
        });
        body(&request.to_string())
    }

    fn without_managed_fields(object: &Value) -> Value {
        let mut object = object.clone();
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
        }
        object
    }

    #[test]
    fn managed_fields_are_set_aside_only_when_asked_and_kept_as_sent() {
        let managed = json!([{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]);
        let object = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "managedFields": managed, "labels": {"app": "a"}},
            "spec": {"metadata": {"managedFields": "not the object's"}}});
        let old = json!({"metadata": {"managedFields": [{"manager": "old"}], "name": "p"}});
        let body = body_with_managed_fields(&object, &old);

        let lean = Review::decode(&body, ManagedFields::SetAside).unwrap();
        assert_eq!(lean.request.object, Some(without_managed_fields(&object)));
        assert_eq!(lean.request.old_object, Some(without_managed_fields(&old)));
        let raw = lean.set_aside_managed_fields().expect("the object's are kept");
        assert_eq!(serde_json::from_str::<Value>(raw.get()).unwrap(), managed);
        // Only the object's own metadata is special.
        assert_eq!(lean.request.object.as_ref().unwrap()["spec"]["metadata"]["managedFields"], "not the object's");

        // The flag ends with the decode: the same thread decodes everything afterwards.
        let kept = Review::decode(&body, ManagedFields::Keep).unwrap();
        assert_eq!(kept.request.object, Some(object.clone()));
        assert_eq!(kept.request.old_object, Some(old));
        assert!(kept.set_aside_managed_fields().is_none());
        assert!(Review::decode(b"{broken", ManagedFields::SetAside).is_err());
        let request: Request =
            serde_json::from_value(serde_json::from_slice::<Value>(&body).unwrap()["request"].clone())
                .expect("a request decodes from a Value, with no flag set");
        assert_eq!(request.object, Some(object));

        // An object without managedFields, or without metadata, sets nothing aside.
        let plain = json!({"metadata": {"name": "p"}});
        let lean = Review::decode(&body_with_managed_fields(&plain, &json!({})), ManagedFields::SetAside).unwrap();
        assert!(lean.set_aside_managed_fields().is_none());
        assert_eq!(lean.request.object, Some(plain));
    }

    #[test]
    fn setting_aside_names_an_object_or_metadata_that_is_not_a_json_object() {
        for (object, expected) in [
            (json!("a pod"), "expected an object as a JSON object"),
            (json!({"metadata": ["m"]}), "expected the object's metadata as a JSON object"),
        ] {
            match Review::decode(&body_with_managed_fields(&object, &json!({})), ManagedFields::SetAside) {
                Err(DecodeError::MalformedRequest { uid, source, .. }) => {
                    assert_eq!(uid, "u-7");
                    assert!(source.to_string().contains(expected), "{source}");
                }
                other => panic!("expected a denial echoing the uid, got {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Setting managedFields aside gives exactly the object decoded whole, minus them, and
        /// them as sent; bodies that are not whole reviews fail as the plain decode fails.
        #[test]
        fn setting_aside_equals_decoding_whole_then_removing(
            object in crate::testing::strategies::unknown_value(),
            metadata in proptest::option::of(crate::testing::strategies::unknown_value()),
            managed in proptest::option::of(crate::testing::strategies::unknown_value()),
            cut in proptest::option::of(0usize..400),
        ) {
            let mut object = object;
            if let (Value::Object(map), Some(metadata)) = (&mut object, metadata) {
                let mut metadata = metadata;
                if let (Value::Object(m), Some(managed)) = (&mut metadata, managed) {
                    m.insert("managedFields".to_owned(), managed);
                }
                map.insert("metadata".to_owned(), metadata);
            }
            let mut body = body_with_managed_fields(&object, &object);
            if let Some(cut) = cut {
                body.truncate(cut);
            }
            let whole = Review::decode(&body, ManagedFields::Keep);
            let lean = Review::decode(&body, ManagedFields::SetAside);
            let is_map = |v: Option<&Value>| v.is_none_or(Value::is_object);
            match (whole, lean) {
                (Ok(whole), Ok(lean)) => {
                    let Some(original) = whole.request.object.clone() else {
                        // `null`: no object either way.
                        proptest::prop_assert!(lean.request.object.is_none() && lean.request.old_object.is_none());
                        return Ok(());
                    };
                    proptest::prop_assert_eq!(&lean.request.object, &Some(without_managed_fields(&original)));
                    proptest::prop_assert_eq!(&lean.request.old_object, &Some(without_managed_fields(&original)));
                    let set_aside = lean.set_aside_managed_fields().map(|raw| serde_json::from_str::<Value>(raw.get()).unwrap());
                    proptest::prop_assert_eq!(set_aside.as_ref(), original.pointer("/metadata/managedFields"));
                }
                (Ok(whole), Err(error)) => {
                    // Only an object, or its metadata, that is not a JSON object is refused.
                    let object = whole.request.object.unwrap_or_default();
                    proptest::prop_assert!(!object.is_object() || !is_map(object.get("metadata")), "{}", error);
                    proptest::prop_assert!(matches!(error, DecodeError::MalformedRequest { .. }), "{}", error);
                }
                (Err(_), Ok(lean)) => proptest::prop_assert!(false, "only the lean decode read {:?}", lean),
                (Err(whole), Err(lean)) => proptest::prop_assert_eq!(
                    std::mem::discriminant(&whole),
                    std::mem::discriminant(&lean),
                    "{} / {}", whole, lean
                ),
            }
        }
    }
}
