//! Shared helpers for tests that compare against the transformers reference.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};

use headhunt_engine::npy::{read_npz, NpyArray};

/// Where `reference/make_reference.py` wrote its outputs.
pub fn reference_dir() -> PathBuf {
    match std::env::var_os("HEADHUNT_REFERENCE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reference"),
    }
}

/// The arrays of one reference file; a missing file is a failure that says how to make it.
pub fn expected(rel: &str) -> std::collections::BTreeMap<String, NpyArray> {
    let path = reference_dir().join(rel);
    assert!(
        path.exists(),
        "{} is missing: generate the reference with `scripts/test.sh` (or reference/make_reference.py)",
        path.display()
    );
    read_npz(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// GPT-2's byte-level alphabet as vocabulary strings: one token per byte.
pub fn byte_tokens() -> Vec<headhunt_engine::gguf::Value> {
    let mut n = 0u32;
    (0..=255u32)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            };
            headhunt_engine::gguf::Value::String(c.to_string())
        })
        .collect()
}

/// A small random llama-family model (2 layers, 4 query heads sharing 2 key/value heads, byte
/// vocabulary), written as GGUF and loaded: for tests of mechanisms rather than of numerics.
pub fn tiny_model() -> headhunt_engine::Model {
    use headhunt_engine::gguf::{GgufWriter, Value};
    let (layers, d, ff, heads, kv, vocab) = (2usize, 32usize, 64usize, 4usize, 2usize, 256usize);
    let dh = d / heads;
    let mut w = GgufWriter::new()
        .meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(layers as u32))
        .meta("llama.context_length", Value::U32(512))
        .meta("llama.embedding_length", Value::U32(d as u32))
        .meta("llama.feed_forward_length", Value::U32(ff as u32))
        .meta("llama.attention.head_count", Value::U32(heads as u32))
        .meta("llama.attention.head_count_kv", Value::U32(kv as u32))
        .meta("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.tokens", Value::Array(byte_tokens()))
        .meta("tokenizer.ggml.merges", Value::Array(vec![]));
    let mut seed = 0x1234_5678u64;
    let mut rand = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                offset + scale * (((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    };
    w = w.tensor("token_embd.weight", &[vocab, d], rand(vocab * d, 1.0, 0.0));
    for l in 0..layers {
        let name = |n: &str| format!("blk.{l}.{n}.weight");
        w = w
            .tensor(&name("attn_norm"), &[d], rand(d, 0.2, 1.0))
            .tensor(&name("attn_q"), &[heads * dh, d], rand(heads * dh * d, 0.5, 0.0))
            .tensor(&name("attn_k"), &[kv * dh, d], rand(kv * dh * d, 0.5, 0.0))
            .tensor(&name("attn_v"), &[kv * dh, d], rand(kv * dh * d, 0.5, 0.0))
            .tensor(&name("attn_output"), &[d, heads * dh], rand(d * heads * dh, 0.3, 0.0))
            .tensor(&name("ffn_norm"), &[d], rand(d, 0.2, 1.0))
            .tensor(&name("ffn_gate"), &[ff, d], rand(ff * d, 0.3, 0.0))
            .tensor(&name("ffn_up"), &[ff, d], rand(ff * d, 0.3, 0.0))
            .tensor(&name("ffn_down"), &[d, ff], rand(d * ff, 0.3, 0.0));
    }
    w = w.tensor("output_norm.weight", &[d], rand(d, 0.2, 1.0));
    let path = std::env::temp_dir().join(format!(
        "headhunt-tiny-{}-{:?}.gguf",
        std::process::id(),
        std::thread::current().id()
    ));
    w.write(&path).unwrap();
    let model = headhunt_engine::Model::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    model
}

/// The system allocator, counting the heap bytes live now and at their peak. A test binary that
/// measures allocations installs it: `#[global_allocator] static GLOBAL: common::Counting =
/// common::Counting;`.
pub struct Counting;

pub static LIVE: AtomicIsize = AtomicIsize::new(0);
pub static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst) + layout.size() as isize;
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}
