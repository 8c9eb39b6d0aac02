//! The `rank` benchmark scenario timed on wasm32 under node (criterion does not run there).
//! Ignored by default; run it optimised with
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test -p attune-core --profile bench --target wasm32-unknown-unknown --test wasm_rank_timing -- --include-ignored --nocapture`
#![cfg(target_arch = "wasm32")]

mod common;

use wasm_bindgen_test::{console_log, wasm_bindgen_test};

#[wasm_bindgen_test]
#[ignore]
fn rank_timing() {
    let s = common::RankScenario::new();
    let input = s.input(10);
    let expected = attune_core::rank(&input);
    assert_eq!(expected.len(), 10);
    for _ in 0..200 {
        std::hint::black_box(attune_core::rank(std::hint::black_box(&input)));
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let n = 1_000;
        let start = js_sys::Date::now();
        for _ in 0..n {
            std::hint::black_box(attune_core::rank(std::hint::black_box(&input)));
        }
        let per_op_us = (js_sys::Date::now() - start) * 1_000.0 / f64::from(n);
        best = best.min(per_op_us);
    }
    console_log!(
        "wasm rank for-you top-10, 10k catalog, {} candidates: {best:.1} µs/op (best of 5 x 1000)",
        s.candidate_count()
    );
}
