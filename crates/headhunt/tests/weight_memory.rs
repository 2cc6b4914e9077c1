//! Weights stay in the checkpoint's storage: loading a real model allocates on the heap what
//! reading its header and building its tokenizer allocate, plus at most 2% of the file (norm
//! weights, biases, row orders), and running it allocates activations, not weights. Measured by
//! a counting allocator, so a silent copy of any weight matrix (even Q and K alone, ~9% of
//! SmolLM2's file) fails here; a full f32 copy would be about four times the file.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::sync::atomic::Ordering;

use common::{LIVE, PEAK};
use headhunt_engine::{Hooks, Model, RunOptions};

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// What `f` returns, and the heap it allocated above what was live before it: at its peak, and
/// still held when it returned.
fn heap<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    let (peak, held) = (PEAK.load(Ordering::SeqCst), LIVE.load(Ordering::SeqCst));
    (out, (peak - before) as f64, (held - before) as f64)
}

fn check(id: &str) {
    let path = headhunt::models::resolve(id).unwrap_or_else(|e| panic!("{e:#}"));
    let file = std::fs::metadata(&path).unwrap().len() as f64;
    let mib = |b: f64| b / 1048576.0;
    // What a load costs besides the weights: the parsed header (dropped after the load) and
    // the tokenizer (kept).
    let (tokenizer, header_peak, tokenizer_held) = heap(|| {
        let f = headhunt_engine::gguf::GgufFile::open(&path).unwrap();
        headhunt_engine::Tokenizer::from_gguf(&f.header).unwrap()
    });
    drop(tokenizer);
    let (model, load_peak, load_held) = heap(|| Model::load(&path).unwrap());
    let weights = model.weights.n_bytes() as f64;
    eprintln!(
        "{id}: file {:.1} MiB, weights {:.1} MiB; heap without the weights: peak {:.1} MiB, held {:.1} MiB; \
         whole load: peak {:.1} MiB, held {:.1} MiB",
        mib(file),
        mib(weights),
        mib(header_peak),
        mib(tokenizer_held),
        mib(load_peak),
        mib(load_held)
    );
    assert!(
        weights <= file,
        "{id}: the weights take {weights} bytes, more than the file's {file}"
    );
    for (what, with, without) in [("peak", load_peak, header_peak), ("held", load_held, tokenizer_held)] {
        assert!(
            with <= without + 0.02 * file,
            "{id}: loading {what} {with} bytes of heap, against {without} for the header and tokenizer alone"
        );
    }

    // A prefill and a few decoding steps: the KV cache, activations and one dequantised tile.
    let tokens: Vec<u32> = (0..300).map(|i| (i * 7919 % 20000 + 100) as u32).collect();
    let (kv, run_peak, _) = heap(|| {
        let mut run = model.run(Hooks::default(), RunOptions::default()).unwrap();
        let mut logits = run.prefill(&tokens).unwrap();
        for _ in 0..4 {
            logits = run.decode(headhunt_engine::argmax(&logits)).unwrap();
        }
        run.cache().bytes() as f64
    });
    eprintln!(
        "{id}: a 300-token prefill and 4 decoding steps: heap peak {:.1} MiB, KV cache {:.1} MiB",
        mib(run_peak),
        mib(kv)
    );
    assert!(
        run_peak < kv + 0.25 * file,
        "{id}: running allocated {run_peak} bytes on the heap (KV cache {kv}, file {file})"
    );
}

/// One test for both models: the allocator's counts are per process, so checks must not overlap.
#[test]
fn weights_stay_in_the_file_through_load_and_run() {
    check("smollm2-135m-instruct");
    check("gemma3-270m");
}
