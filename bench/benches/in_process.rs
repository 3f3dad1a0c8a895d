//! In-process cost per review, per corpus size: `cargo bench -p bench`.
//!
//! `pipeline/<size>` makes the calls the server's axum handler makes — `Review::decode`
//! (decode), `Pipeline::review_until` (match → mutate → diff) and `Answer::to_review_json`
//! (encode) — through sidecar-injector's pipeline built from the embedded default configuration.
//! `router/<size>` sends the same body through the whole router in-process
//! (`admission_kit::server::router` with `admission_kit::testing::call_router`): axum, limits,
//! tracing spans and metrics too, but no socket or TLS. Each iteration is driven by
//! `Runtime::block_on` on a current-thread runtime, as the server runs a review on its runtime.

use std::hint::black_box;

use bench::corpus::corpus;
use bench::inprocess::Injector;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn in_process(c: &mut Criterion) {
    let injector = Injector::new().expect("the embedded default configuration builds");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let corpus = corpus();
    for (group_name, router) in [("pipeline", false), ("router", true)] {
        let mut group = c.benchmark_group(group_name);
        for entry in &corpus {
            let bytes = u64::try_from(entry.body.len()).unwrap_or(u64::MAX);
            group.throughput(Throughput::Bytes(bytes));
            if entry.body.len() > 500_000 {
                group.sample_size(20);
            }
            group.bench_with_input(BenchmarkId::from_parameter(entry.size.name()), &entry.body, |b, body| {
                if router {
                    b.iter(|| rt.block_on(injector.route(black_box(body.clone()))).expect("answers"));
                } else {
                    b.iter(|| rt.block_on(injector.review(black_box(body))).expect("answers"));
                }
            });
        }
        group.finish();
    }
}

criterion_group!(benches, in_process);
criterion_main!(benches);
