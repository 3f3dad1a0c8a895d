//! The whole pipeline: decode → match → mutate → diff → apply → run again.
//!
//! Bytes that decode as an `AdmissionReview` run through the sidecar-injector pipeline (default
//! configuration) as they are. Bytes that do not are read as a structured case instead
//! (`PodCase`: a pod built from arbitrary annotations, containers, volumes, knobs and namespace),
//! so the fuzzer reaches the injector's branches without first having to learn JSON. Either way
//! the namespace is opted in, and `check_pipeline` asserts the invariants: the uid is echoed, the
//! answer encodes, the patch applies with admission-kit's independent RFC 6902 implementation and
//! gives the pipeline's result, a second run on the result is admitted unchanged, and a fresh
//! injection loses no path of the original.
#![no_main]

use admission_kit::review::Review;
use admission_kit_fuzz::{PodCase, check_pipeline, pipeline};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(review) = Review::from_slice(data) {
        check_pipeline(pipeline(0), &review);
        return;
    }
    let Ok(case) = PodCase::arbitrary_take_rest(Unstructured::new(data)) else { return };
    check_pipeline(pipeline(case.knobs), &case.review());
});
