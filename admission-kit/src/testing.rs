//! A testing kit for plugin authors (feature `testing`): build a review for an object, run a
//! pipeline or the whole router in-process, apply the returned patch with an implementation
//! independent of the one that made it, and check the invariants every mutating webhook must keep:
//!
//! - the patch applies, and gives exactly the object the pipeline produced;
//! - running again on the result changes nothing (idempotence, for `reinvocationPolicy: IfNeeded`);
//! - nothing of the original is lost (every path of the original is still there).
//!
//! ```no_run
//! # use admission_kit::{prelude::*, testing};
//! # use k8s_openapi::api::core::v1::Pod;
//! # async fn t(pipeline: Pipeline, pod: Pod) {
//! let checked = testing::Harness::new(pipeline).check(&testing::review(&pod).namespace("team-a").build()).await;
//! assert_eq!(checked.patched()["metadata"]["labels"]["team"], "unassigned");
//! # }
//! ```
//!
//! A mutator alone needs none of this: build a [`Request`] and a [`crate::Context`] and call it
//! (see [`crate::Context`]).
//!
//! # Properties
//!
//! [`check_property`] runs a proptest property on at least [`MIN_PROPERTY_CASES`] cases; proptest
//! is re-exported as [`proptest`], so it need not be a dependency of the plugin. The
//! harness is async and a property is not: give the property a current-thread tokio runtime and
//! `block_on` the harness in it. Call [`Harness::try_check`], not [`Harness::check`], and return
//! its [`Violation`] with `?`: a failed case is then an error, not a panic, and proptest shrinks
//! it quietly to the smallest failing input, reported once.
//!
//! ```no_run
//! use admission_kit::testing::proptest::prelude::*;
//! use admission_kit::testing::{self, Harness, check_property};
//! # use admission_kit::prelude::*;
//! # use k8s_openapi::api::core::v1::Pod;
//! # fn t(pipeline: Pipeline) {
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
//! let harness = Harness::new(pipeline).namespace("apps", [("team", "a")]);
//! check_property("[a-z]{1,8}", |name| {
//!     let mut pod = Pod::default();
//!     pod.metadata.name = Some(name);
//!     let review = testing::review(&pod).namespace("apps").build();
//!     let checked = runtime.block_on(harness.try_check(&review))?;
//!     prop_assert!(checked.answer().allowed);
//!     Ok(())
//! });
//! # }
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::matcher::NamespaceView;
use crate::namespaces::NamespaceSource;
use crate::pipeline::{Outcome, Pipeline, ResourceTarget};
use crate::review::{Answer, Request, RequestBuilder, Review};

/// Builds an `AdmissionReview` for tests: a [`RequestBuilder`] whose `build()` gives a [`Review`]
/// (`admission.k8s.io/v1`), and whose `body()` gives the JSON the API server would send.
pub type ReviewBuilder = RequestBuilder<Review>;

/// A CREATE review of a typed object (namespace from its metadata, else `default`); see
/// [`Request::of`].
pub fn review<K: k8s_openapi::Resource + Serialize + serde::de::DeserializeOwned>(object: &K) -> ReviewBuilder {
    Request::of(object).for_review()
}

/// A CREATE review of raw JSON of kind `target`; see [`Request::of_json`].
pub fn review_json(object: Value, target: &ResourceTarget) -> ReviewBuilder {
    Request::of_json(object, target).for_review()
}

/// Runs a pipeline in-process and checks its answers.
#[derive(Debug, Clone)]
pub struct Harness {
    pipeline: Pipeline,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    known_namespaces: bool,
    allow_removals: bool,
}

/// A review's answer, with the patch applied by [`apply_patch`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// What the pipeline returned.
    pub outcome: Outcome,
    /// The object the API server sent.
    pub original: Value,
    /// The original with the answer's patch applied (equal to the original when not patched).
    pub result: Value,
}

impl Checked {
    /// The object after the patch.
    ///
    /// # Panics
    /// When the review was denied: a denied object has no "after", and returning the object as it
    /// was sent would let a test that expects a change pass on a denial it did not look at.
    #[must_use]
    pub fn patched(&self) -> &Value {
        assert!(
            self.outcome.answer.allowed,
            "patched() of a denied review (code {}): {}",
            self.outcome.answer.code, self.outcome.answer.message
        );
        &self.result
    }

    /// The answer.
    #[must_use]
    pub fn answer(&self) -> &Answer {
        &self.outcome.answer
    }

    /// Checks that the object was admitted unchanged.
    ///
    /// # Panics
    /// When it was denied or patched.
    pub fn assert_unchanged(&self) {
        assert!(self.outcome.answer.allowed, "expected admission, got denial: {}", self.outcome.answer.message);
        assert!(!self.outcome.answer.is_patched(), "expected no patch, got {:?}", self.outcome.answer.patch);
    }

    /// Checks that the object was denied with a message containing `fragment`.
    ///
    /// # Panics
    /// When it was admitted, or denied with another message.
    pub fn assert_denied(&self, fragment: &str) {
        assert!(!self.outcome.answer.allowed, "expected a denial containing {fragment:?}, but it was admitted");
        assert!(
            self.outcome.answer.message.contains(fragment),
            "denial message {:?} does not contain {fragment:?}",
            self.outcome.answer.message
        );
    }
}

impl Harness {
    /// A harness for `pipeline`; namespace labels are unknown until [`Harness::namespace`] is called.
    #[must_use]
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline, namespaces: BTreeMap::new(), known_namespaces: false, allow_removals: false }
    }

    /// Declares a namespace and its labels (this makes namespace labels known).
    #[must_use]
    pub fn namespace<K: Into<String>, V: Into<String>>(
        mut self,
        name: &str,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.known_namespaces = true;
        self.namespaces.insert(name.to_owned(), labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    /// Allows the pipeline to remove paths of the original (for mutators whose job is removal).
    #[must_use]
    pub fn allow_removals(mut self) -> Self {
        self.allow_removals = true;
        self
    }

    /// The namespace source this harness describes.
    #[must_use]
    pub fn namespace_source(&self) -> NamespaceSource {
        if self.known_namespaces {
            NamespaceSource::fixed(self.namespaces.iter().map(|(n, l)| (n.clone(), l.clone())))
        } else {
            NamespaceSource::Unknown
        }
    }

    /// Runs the pipeline once.
    pub async fn run(&self, review: &Review) -> Outcome {
        if !self.known_namespaces {
            return self.pipeline.review(review, NamespaceView::unknown()).await;
        }
        // A namespace the harness was not told about is known to have no labels.
        let none = BTreeMap::new();
        let labels = review.request.namespace.as_ref().and_then(|ns| self.namespaces.get(ns)).unwrap_or(&none);
        self.pipeline.review(review, NamespaceView::Known(labels)).await
    }

    /// Runs the pipeline and checks every invariant, panicking with the [`Violation`] on a breach;
    /// see [`Harness::try_check`], which returns it instead (for properties).
    ///
    /// # Panics
    /// On any breach of those invariants: this is a test assertion.
    pub async fn check(&self, review: &Review) -> Checked {
        self.try_check(review).await.unwrap_or_else(|violation| panic!("{violation}"))
    }

    /// Runs the pipeline and checks every invariant: the answer echoes the uid and API version and
    /// encodes; a denial says why and carries no patch; a request without an object is not
    /// patched; the patch applies (independent implementation) and gives the pipeline's own
    /// result; a second run on the result is admitted unchanged; and no path of the original is
    /// lost (unless [`Harness::allow_removals`]). The first breach is the error.
    ///
    /// In a property, `?` turns a [`Violation`] into a failed case, so proptest shrinks quietly.
    pub async fn try_check(&self, review: &Review) -> Result<Checked, Violation> {
        let outcome = self.run(review).await;
        let answer = &outcome.answer;
        let echoed = |what: &'static str, expected: &str, got: &str| {
            if expected == got {
                Ok(())
            } else {
                Err(Violation::NotEchoed { what, expected: expected.to_owned(), got: got.to_owned() })
            }
        };
        echoed("uid", &review.request.uid, &answer.uid)?;
        echoed("apiVersion", &review.api_version, &answer.api_version)?;
        let body = answer.to_review_json().map_err(|e| Violation::Encoding(e.to_string()))?;
        let wire: Value = serde_json::from_slice(&body).map_err(|e| Violation::Encoding(e.to_string()))?;
        echoed("uid", &review.request.uid, wire["response"]["uid"].as_str().unwrap_or_default())?;
        echoed("apiVersion", &review.api_version, wire["apiVersion"].as_str().unwrap_or_default())?;
        let Some(original) = review.request.object.clone() else {
            if answer.is_patched() {
                return Err(Violation::PatchedWithoutObject);
            }
            return Ok(Checked { result: Value::Null, original: Value::Null, outcome });
        };
        if !answer.allowed {
            if answer.is_patched() {
                return Err(Violation::DenialWithPatch);
            }
            if answer.message.trim().is_empty() {
                return Err(Violation::DenialWithoutReason);
            }
            return Ok(Checked { result: original.clone(), original, outcome });
        }
        let result = match &answer.patch {
            Some(patch) => {
                let patch = serde_json::to_value(patch).map_err(|e| Violation::Encoding(e.to_string()))?;
                apply_patch(&original, &patch).map_err(|error| Violation::PatchDoesNotApply { error, patch })?
            }
            None => original.clone(),
        };
        if let Some(mutated) = &outcome.mutated
            && &result != mutated
        {
            return Err(Violation::PatchDisagrees { patched: result, pipeline: mutated.clone() });
        }
        let mut again = review.clone();
        again.request.object = Some(result.clone());
        let second = self.run(&again).await;
        if !second.answer.allowed {
            return Err(Violation::SecondRunDenied(second.answer.message));
        }
        if second.answer.is_patched() {
            let patch = serde_json::to_string(&second.answer.patch).unwrap_or_default();
            return Err(Violation::NotIdempotent(patch));
        }
        if !self.allow_removals {
            let lost = lost_paths(&original, &result);
            if !lost.is_empty() {
                return Err(Violation::LostPaths(lost));
            }
        }
        Ok(Checked { outcome, original, result })
    }
}

/// An invariant a review broke, as [`Harness::try_check`] finds it. Its `Display` is a message a
/// person can act on; in a proptest property, `?` turns it into a failed case (proptest's
/// `TestCaseError` is made from any error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The answer does not echo the request (the API server rejects such an answer).
    #[error("the answer's {what} is `{got}`, not the request's `{expected}`")]
    NotEchoed {
        /// `uid` or `apiVersion`.
        what: &'static str,
        /// The request's value.
        expected: String,
        /// The answer's value.
        got: String,
    },
    /// The answer or its patch does not encode as JSON.
    #[error("the answer does not encode: {0}")]
    Encoding(String),
    /// A denial carries a patch.
    #[error("a denial carries a patch")]
    DenialWithPatch,
    /// A denial has an empty message: the user would not know what to fix.
    #[error("a denial says nothing about why")]
    DenialWithoutReason,
    /// A request without an object (DELETE) was answered with a patch.
    #[error("a request without an object was patched")]
    PatchedWithoutObject,
    /// The patch does not apply to the object the API server sent.
    #[error("the patch does not apply: {error}\npatch: {patch}")]
    PatchDoesNotApply {
        /// Why not.
        error: ApplyError,
        /// The patch.
        patch: Value,
    },
    /// The patch applied to the original gives another object than the pipeline's result.
    #[error(
        "the patch applied to the original does not give the pipeline's result\npatched:  {patched}\npipeline: {pipeline}"
    )]
    PatchDisagrees {
        /// The original with the patch applied.
        patched: Value,
        /// What the pipeline produced.
        pipeline: Value,
    },
    /// Running the pipeline again on its own result was denied.
    #[error("running again on the result was denied: {0}")]
    SecondRunDenied(String),
    /// Running the pipeline again on its own result patched it again (not idempotent, so unsafe
    /// with `reinvocationPolicy: IfNeeded`).
    #[error("not idempotent: running again on the result patched it again: {0}")]
    NotIdempotent(String),
    /// Paths of the original are missing from the result.
    #[error("the mutation lost paths of the original: {0:?}")]
    LostPaths(Vec<String>),
}

/// proptest, re-exported so that plugins write properties without depending on it.
pub use proptest;

/// The fewest cases [`check_property`] runs.
pub const MIN_PROPERTY_CASES: u32 = 1000;

/// Runs a proptest property on at least [`MIN_PROPERTY_CASES`] cases of `strategy` (more if
/// `PROPTEST_CASES` asks for more) and panics once, with the shrunk input, on failure. A
/// `TestRunner` rather than the `proptest!` macro, because the macro lets `PROPTEST_CASES` lower
/// the count. No regression files are written next to the tests.
///
/// The property returns its failures (`prop_assert!`, `?` on [`Harness::try_check`]) rather than
/// panicking: proptest runs a failing property dozens of times while shrinking, and each panic
/// would print a message and a backtrace. See the [module docs](self#properties).
///
/// # Panics
/// When the property fails: this is a test assertion.
pub fn check_property<S: proptest::strategy::Strategy>(
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let default = proptest::test_runner::Config::default(); // reads PROPTEST_CASES
    let config = proptest::test_runner::Config {
        cases: default.cases.max(MIN_PROPERTY_CASES),
        failure_persistence: None,
        ..default
    };
    if let Err(e) = proptest::test_runner::TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

/// proptest strategies for the inputs that break mutating webhooks: map keys that need JSON
/// pointer escaping and fields that k8s-openapi does not model.
pub mod strategies {
    use proptest::prelude::*;
    use serde_json::Value;

    /// A short map key that often needs JSON pointer escaping: `a.io/a~1`, `b~0`, `x/y~1/`, `""`.
    pub fn tricky_key() -> impl Strategy<Value = String> {
        (prop::sample::select(vec!["", "a.io/", "b~", "x/y~1"]), "[a/~01]{0,2}")
            .prop_map(|(prefix, rest)| format!("{prefix}{rest}"))
    }

    /// A small JSON value, the content of a field k8s-openapi does not model.
    pub fn unknown_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            "[a/~]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 6, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(tricky_key(), inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An optional unknown field.
    pub fn maybe_unknown() -> impl Strategy<Value = Option<Value>> {
        prop::option::of(unknown_value())
    }
}

/// Sends `body` to an in-process router at `path`, as the API server would, and returns the status
/// and body. See [`crate::server::router`].
pub async fn call_router(router: &axum::Router, path: &str, body: Vec<u8>) -> (http::StatusCode, Vec<u8>) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let request = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body))
        .unwrap_or_else(|e| unreachable!("a static request always builds: {e}"));
    let Ok(response) = router.clone().oneshot(request).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    (status, bytes)
}

/// Why [`apply_patch`] failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("failed to apply patch operation {index} ({op} {path}): {reason}")]
pub struct ApplyError {
    index: usize,
    op: String,
    path: String,
    reason: String,
}

/// Applies an RFC 6902 patch (as JSON). Written here, independently of the `json-patch` crate that
/// derives the patches, so that tests check one implementation against another.
pub fn apply_patch(document: &Value, patch: &Value) -> Result<Value, ApplyError> {
    let mut doc = document.clone();
    let ops = patch.as_array().ok_or_else(|| ApplyError {
        index: 0,
        op: String::new(),
        path: String::new(),
        reason: "a patch is a JSON array".into(),
    })?;
    for (index, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default().to_owned();
        let target = op.get("path").and_then(Value::as_str).unwrap_or_default().to_owned();
        let fail = |reason: String| ApplyError { index, op: name.clone(), path: target.clone(), reason };
        let value = || op.get("value").cloned().ok_or_else(|| fail("missing `value`".into()));
        let from =
            || op.get("from").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| fail("missing `from`".into()));
        match name.as_str() {
            "add" => add(&mut doc, &target, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut doc, &target).map_err(fail)?;
            }
            "replace" => {
                remove(&mut doc, &target).map_err(fail)?;
                add(&mut doc, &target, value()?).map_err(fail)?;
            }
            "move" => {
                let from = from()?;
                let v = remove(&mut doc, &from).map_err(fail)?;
                add(&mut doc, &target, v).map_err(fail)?;
            }
            "copy" => {
                let v = get(&doc, &from()?).map_err(fail)?.clone();
                add(&mut doc, &target, v).map_err(fail)?;
            }
            "test" => {
                if get(&doc, &target).map_err(fail)? != &value()? {
                    return Err(fail("test failed".into()));
                }
            }
            other => return Err(fail(format!("unknown op `{other}`"))),
        }
    }
    Ok(doc)
}

fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer.strip_prefix('/').ok_or_else(|| format!("pointer `{pointer}` does not start with `/`"))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{token}` is not an array index"));
    }
    let i: usize = token.parse().map_err(|_| format!("`{token}` is not an array index"))?;
    if i > len || (!allow_end && i == len) {
        return Err(format!("index {i} is out of bounds (length {len})"));
    }
    Ok(i)
}

fn get<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    let mut cur = doc;
    for t in tokens(pointer)? {
        cur = match cur {
            Value::Object(m) => m.get(&t).ok_or_else(|| format!("no member `{t}`"))?,
            Value::Array(a) => &a[index(&t, a.len(), false)?],
            _ => return Err(format!("cannot descend into a scalar at `{t}`")),
        };
    }
    Ok(cur)
}

fn parent<'a>(doc: &'a mut Value, pointer: &str) -> Result<(&'a mut Value, String), String> {
    let mut toks = tokens(pointer)?;
    let last = toks.pop().ok_or_else(|| "the root has no parent".to_owned())?;
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(&t).ok_or_else(|| format!("no member `{t}`"))?,
            Value::Array(a) => {
                let i = index(&t, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(format!("cannot descend into a scalar at `{t}`")),
        };
    }
    Ok((cur, last))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    if pointer.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (container, last) = parent(doc, pointer)?;
    match container {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = index(&last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => return Err("the parent is a scalar".into()),
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    if pointer.is_empty() {
        return Ok(std::mem::take(doc));
    }
    let (container, last) = parent(doc, pointer)?;
    match container {
        Value::Object(m) => m.remove(&last).ok_or_else(|| format!("no member `{last}` to remove")),
        Value::Array(a) => {
            let i = index(&last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err("the parent is a scalar".into()),
    }
}

/// JSON pointers of `original`'s leaves that are missing from `result`. Values may differ (a
/// mutator may change them); paths must not disappear. List items are matched in order: each
/// original item to the earliest later result item that keeps all of it, so items inserted around
/// them (a sidecar before the pod's own init containers) and items sharing a name are not losses.
/// An item kept nowhere is reported down to the missing field through its merge key (`name`,
/// `mountPath`, …) when it has one, else as the whole item. Paths are as in the original.
#[must_use]
pub fn lost_paths(original: &Value, result: &Value) -> Vec<String> {
    let mut lost = Vec::new();
    walk_lost(original, Some(result), &mut String::new(), &mut lost);
    lost
}

use crate::patch::merge_key;

/// Whether `result` still has everything of `original`: the same keys (recursively) and its list
/// items as an ordered subsequence; scalars may change value, as in [`lost_paths`].
fn keeps(original: &Value, result: &Value) -> bool {
    match (original, result) {
        (Value::Object(o), Value::Object(r)) => o.iter().all(|(k, v)| r.get(k).is_some_and(|rv| keeps(v, rv))),
        (Value::Array(o), Value::Array(r)) => {
            let mut rest = r.iter();
            o.iter().all(|item| rest.any(|candidate| keeps(item, candidate)))
        }
        _ => true,
    }
}

fn walk_lost(original: &Value, result: Option<&Value>, path: &mut String, lost: &mut Vec<String>) {
    let Some(result) = result else {
        lost.push(path.clone());
        return;
    };
    let len = path.len();
    match (original, result) {
        (Value::Object(o), Value::Object(r)) => {
            for (k, v) in o {
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk_lost(v, r.get(k), path, lost);
                path.truncate(len);
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            // Mutators insert around items, never drop or reorder them: each original item must be
            // kept by a distinct result item, in order (an ordered subsequence), so that two items
            // sharing a name, or an unnamed item shifted by an insertion, are matched correctly.
            let mut next = 0;
            for (i, v) in o.iter().enumerate() {
                if let Some(j) = (next..r.len()).find(|&j| keeps(v, &r[j])) {
                    next = j + 1;
                    continue;
                }
                // Not kept: report what is missing from its merge-key counterpart, if it has one.
                path.push('/');
                path.push_str(&i.to_string());
                let key = merge_key(v);
                let counterpart = key.and_then(|(k, x)| r.iter().find(|item| item.get(k) == Some(x)));
                walk_lost(v, counterpart, path, lost);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// JSON pointers of `original`'s leaves whose value `result` changed: what [`lost_paths`] allows.
/// List items are matched as there (in order, each to the earliest later item that keeps all of
/// it), then compared leaf by leaf; a lost leaf is not reported here. A property states the changes
/// a mutation documents by filtering these paths (`/metadata/labels/…` when labels may be
/// overridden) and asserts that nothing else changed.
#[must_use]
pub fn changed_values(original: &Value, result: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    walk_changed(original, result, &mut String::new(), &mut changed);
    changed
}

fn walk_changed(original: &Value, result: &Value, path: &mut String, changed: &mut Vec<String>) {
    let len = path.len();
    match (original, result) {
        (Value::Object(o), Value::Object(r)) => {
            for (k, v) in o {
                let Some(rv) = r.get(k) else { continue };
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk_changed(v, rv, path, changed);
                path.truncate(len);
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            // As in `lost_paths`, but an item with a merge key (`name`, …) is only matched to one
            // with the same key: an item inserted before it with the same fields (a native sidecar
            // before the pod's own init containers) is not it.
            let mut next = 0;
            for (i, v) in o.iter().enumerate() {
                let same_key = |item: &Value| merge_key(v).is_none_or(|(k, x)| item.get(k) == Some(x));
                let Some(j) = (next..r.len()).find(|&j| same_key(&r[j]) && keeps(v, &r[j])) else { continue };
                next = j + 1;
                path.push('/');
                path.push_str(&i.to_string());
                walk_changed(v, &r[j], path, changed);
                path.truncate(len);
            }
        }
        (o, r) if o != r => changed.push(path.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use k8s_openapi::api::core::v1::{Container, Pod};
    use serde_json::json;

    use super::*;
    use crate::{Step, mutator};

    /// Adds a container every time: not idempotent.
    fn growing() -> Harness {
        let grow = mutator::from_typed_fn(|pod: &mut Pod, _: &mut crate::Context<'_>| {
            let spec = pod.spec.get_or_insert_default();
            spec.containers.push(Container { name: format!("c{}", spec.containers.len()), ..Container::default() });
            Ok(())
        });
        Harness::new(Pipeline::builder("grow.example.com").step(Step::new("grow", grow)).build().unwrap())
    }

    #[tokio::test]
    #[should_panic(expected = "patched() of a denied review (code 403): no pods here")]
    async fn patched_of_a_denial_panics_instead_of_returning_the_original() {
        let deny = mutator::from_fn(|_, _| Err(crate::MutationError::deny("no pods here")));
        let pipeline =
            Pipeline::builder("deny.example.com").step(Step::dynamic("deny", ResourceTarget::of::<Pod>(), deny));
        let checked = Harness::new(pipeline.build().unwrap()).check(&review(&Pod::default()).build()).await;
        let _ = checked.patched();
    }

    #[tokio::test]
    async fn try_check_returns_the_violation_check_panics_with() {
        let review = review(&Pod::default()).build();
        let violation = growing().try_check(&review).await.unwrap_err();
        assert!(matches!(violation, Violation::NotIdempotent(_)), "{violation:?}");
        assert!(violation.to_string().starts_with("not idempotent: running again"), "{violation}");

        let wipe = mutator::from_fn(|pod, _| {
            pod["metadata"]["annotations"] = json!({});
            Ok(())
        });
        let pipeline =
            Pipeline::builder("wipe.example.com").step(Step::dynamic("wipe", ResourceTarget::of::<Pod>(), wipe));
        let harness = Harness::new(pipeline.build().unwrap());
        let annotated = json!({"metadata": {"annotations": {"keep": "me"}}});
        let review = review_json(annotated, &ResourceTarget::of::<Pod>()).build();
        assert_eq!(
            harness.try_check(&review).await.unwrap_err(),
            Violation::LostPaths(vec!["/metadata/annotations/keep".to_owned()])
        );
        assert!(harness.clone().allow_removals().try_check(&review).await.is_ok());
    }

    thread_local! {
        static PANICS: Cell<u32> = const { Cell::new(0) };
    }

    /// A failing property shrinks without a panic per run: one panic, with the violation and the
    /// smallest input, at the end.
    #[test]
    fn a_failing_property_panics_once_with_the_violation_and_the_shrunk_input() {
        let previous = std::sync::Arc::new(std::panic::take_hook());
        let chained = previous.clone();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            chained(info);
        }));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let harness = growing();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_property(0u32..1000, |n| {
                let review = review(&Pod::default()).uid(format!("u-{n}")).build();
                runtime.block_on(harness.try_check(&review))?;
                Ok(())
            });
        }));
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
        let panic = result.unwrap_err();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("not idempotent"), "{message}");
        assert!(message.contains("minimal failing input: 0"), "{message}");
        assert_eq!(PANICS.with(Cell::get), 1, "only the final report panics");
    }

    #[test]
    fn rfc6902_appendix_a_examples() {
        let cases = [
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}]),
                json!({"baz": "qux", "foo": "bar"}),
            ),
            (
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
                json!({"foo": ["bar", "qux", "baz"]}),
            ),
            (json!({"baz": "qux", "foo": "bar"}), json!([{"op": "remove", "path": "/baz"}]), json!({"foo": "bar"})),
            (
                json!({"foo": ["bar", "qux", "baz"]}),
                json!([{"op": "remove", "path": "/foo/1"}]),
                json!({"foo": ["bar", "baz"]}),
            ),
            (
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
                json!({"baz": "boo", "foo": "bar"}),
            ),
            (
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": ["abc"]}]),
                json!({"foo": ["bar", ["abc"]]}),
            ),
            (
                json!({"/": 9, "~1": 10}),
                json!([{"op": "test", "path": "/~01", "value": 10}, {"op": "add", "path": "/a~1b", "value": 1}]),
                json!({"/": 9, "~1": 10, "a/b": 1}),
            ),
            (
                json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
                json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
            ),
        ];
        for (doc, patch, expected) in cases {
            assert_eq!(apply_patch(&doc, &patch).unwrap(), expected, "patch {patch}");
        }
        assert!(
            apply_patch(&json!({"foo": "bar"}), &json!([{"op": "add", "path": "/baz/bat", "value": "qux"}])).is_err()
        );
        assert!(apply_patch(&json!({"a": [1]}), &json!([{"op": "add", "path": "/a/01", "value": 2}])).is_err());
        assert!(apply_patch(&json!({"a": [1]}), &json!([{"op": "test", "path": "/a/0", "value": 2}])).is_err());
    }

    #[test]
    fn lost_paths_reports_removed_leaves_only() {
        let original = json!({"metadata": {"annotations": {"a/b": "1", "c": "2"}}, "spec": {"x": [1, 2]}});
        let kept =
            json!({"metadata": {"annotations": {"a/b": "changed", "c": "2", "new": "3"}}, "spec": {"x": [1, 2, 3]}});
        assert!(lost_paths(&original, &kept).is_empty());
        let wiped = json!({"metadata": {"annotations": {"new": "3"}}, "spec": {"x": [1]}});
        assert_eq!(
            lost_paths(&original, &wiped),
            vec!["/metadata/annotations/a~1b", "/metadata/annotations/c", "/spec/x/1"]
        );
    }

    #[test]
    fn changed_values_names_each_changed_leaf_and_nothing_else() {
        let original = json!({"metadata": {"labels": {"app": "web", "x/y": "1"}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
        let same_with_more = json!({"metadata": {"labels": {"app": "web", "x/y": "1", "new": "2"}}, "spec": {"containers": [{"name": "side"}, {"name": "app", "image": "app:1"}]}});
        assert!(changed_values(&original, &same_with_more).is_empty());
        let changed = json!({"metadata": {"labels": {"app": "api", "x/y": "1"}}, "spec": {"containers": [{"name": "app", "image": "app:2"}]}});
        assert_eq!(changed_values(&original, &changed), vec!["/metadata/labels/app", "/spec/containers/0/image"]);
        // An inserted item of the same shape before the original one is not taken for it.
        let inserted =
            json!({"spec": {"containers": [{"name": "side", "image": "side:1"}, {"name": "app", "image": "app:1"}]}});
        assert!(changed_values(&json!({"spec": original["spec"].clone()}), &inserted).is_empty());
    }

    /// Found by the `pipeline` fuzz target (`fuzz/artifacts-found/pipeline/`): two containers
    /// sharing a name, and an unnamed init container shifted by an inserted native sidecar, are
    /// not losses.
    #[test]
    fn lost_paths_matches_list_items_in_order_not_by_first_name() {
        let twins = json!({"spec": {"containers": [{"name": "app"}, {"name": "app", "env": [{"name": "A"}]}]}});
        assert!(lost_paths(&twins, &twins).is_empty());
        let shifted = json!({"spec": {"initContainers": [{"command": ["setup"]}]}});
        let inserted =
            json!({"spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}, {"command": ["setup"]}]}});
        assert!(lost_paths(&shifted, &inserted).is_empty());
        // A real loss is still named down to the field, through the item's merge key.
        let lost_env = json!({"spec": {"containers": [{"name": "app"}, {"name": "app"}]}});
        assert_eq!(lost_paths(&twins, &lost_env), vec!["/spec/containers/1/env"]);
    }
}
