//! Prints what a fuzz input means, for triage: `cargo run --example show -- pipeline FILE`.
//!
//! For `pipeline`, the review (decoded, or built from the structured case), the knob combination,
//! the answer and the patched object; for `review_decode`, the decode result; for
//! `catalog_parse`, the text and the parse result. Then runs the target's checks outside
//! libFuzzer, so a finding's panic message and backtrace print as usual.

use admission_kit::matcher::NamespaceView;
use admission_kit::review::Review;
use admission_kit_fuzz::{PodCase, check_pipeline, opted_in, pipeline};
use arbitrary::{Arbitrary, Unstructured};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: show <review_decode|pipeline|catalog_parse> FILE");
        std::process::exit(2);
    };
    let data = std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    match target.as_str() {
        "review_decode" => println!("{:#?}", Review::from_slice(&data)),
        "catalog_parse" => {
            let text = String::from_utf8_lossy(&data);
            println!("text:\n{text}\n---");
            println!("{:#?}", sidecar_injector::catalog::parse_catalog(&text, "input"));
        }
        "pipeline" => {
            let (knobs, review) = if let Ok(review) = Review::from_slice(&data) {
                (0, review)
            } else {
                let case = PodCase::arbitrary_take_rest(Unstructured::new(&data)).expect("a structured case");
                println!("structured case: {case:#?}");
                (case.knobs, case.review())
            };
            let config = admission_kit_fuzz::config(knobs);
            println!(
                "knobs {}: unknownSidecar={:?} onCollision={:?} overridePodMetadata={} envNames={:?} nativeSidecarPlacement={:?} literalEnvValues={}",
                knobs % admission_kit_fuzz::KNOB_COMBINATIONS,
                config.unknown_sidecar,
                config.on_collision,
                config.override_pod_metadata,
                config.env_names,
                config.native_sidecar_placement,
                config.literal_env_values
            );
            println!(
                "review: {}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"apiVersion": review.api_version, "request": review.request})
                )
                .unwrap()
            );
            let outcome =
                futures::executor::block_on(pipeline(knobs).review(&review, NamespaceView::Known(&opted_in())));
            println!("answer: {:#?}", outcome.answer);
            println!("steps: {:#?}", outcome.steps);
            if let Some(mutated) = &outcome.mutated {
                println!("mutated: {}", serde_json::to_string_pretty(mutated).unwrap());
            }
            if let (Some(original), Some(mutated)) = (&review.request.object, &outcome.mutated) {
                println!("lost paths: {:?}", admission_kit::testing::lost_paths(original, mutated));
            }
            check_pipeline(pipeline(knobs), &review);
            println!("all invariants hold");
        }
        other => panic!("unknown target {other}"),
    }
}
