//! Bad input gets one clear error line and a non-zero exit, never a panic or a hang.

use std::path::{Path, PathBuf};
use std::process::Command;

use headhunt_engine::gguf::{GgufWriter, Value};

/// GPT-2's byte-level alphabet: one vocabulary entry per byte.
fn byte_tokens() -> Vec<Value> {
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
            Value::String(c.to_string())
        })
        .collect()
}

/// A complete one-layer llama-family GGUF model with a byte-level vocabulary.
fn tiny_llama(arch: &str, context: u32, skip_tensor: Option<&str>) -> GgufWriter {
    // Rows of 32 and 64 values: whole blocks of every quant type.
    let (d, ff, vocab) = (32usize, 64usize, 256usize);
    let k = |name: &str| format!("{arch}.{name}");
    let mut w = GgufWriter::new()
        .meta("general.architecture", Value::String(arch.into()))
        .meta(&k("block_count"), Value::U32(1))
        .meta(&k("context_length"), Value::U32(context))
        .meta(&k("embedding_length"), Value::U32(d as u32))
        .meta(&k("feed_forward_length"), Value::U32(ff as u32))
        .meta(&k("attention.head_count"), Value::U32(2))
        .meta(&k("attention.head_count_kv"), Value::U32(1))
        .meta(&k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.tokens", Value::Array(byte_tokens()))
        .meta("tokenizer.ggml.merges", Value::Array(vec![]));
    let tensors: Vec<(&str, Vec<usize>)> = vec![
        ("token_embd.weight", vec![vocab, d]),
        ("blk.0.attn_norm.weight", vec![d]),
        ("blk.0.attn_q.weight", vec![d, d]),
        ("blk.0.attn_k.weight", vec![d / 2, d]),
        ("blk.0.attn_v.weight", vec![d / 2, d]),
        ("blk.0.attn_output.weight", vec![d, d]),
        ("blk.0.ffn_norm.weight", vec![d]),
        ("blk.0.ffn_gate.weight", vec![ff, d]),
        ("blk.0.ffn_up.weight", vec![ff, d]),
        ("blk.0.ffn_down.weight", vec![d, ff]),
        ("output_norm.weight", vec![d]),
    ];
    for (name, shape) in tensors {
        if Some(name) == skip_tensor {
            continue;
        }
        let n: usize = shape.iter().product();
        w = w.tensor(name, &shape, (0..n).map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5).collect());
    }
    w
}

/// A file path in a folder of its own, removed when the test ends.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

impl AsRef<Path> for Temp {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for Temp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn temp(name: &str) -> Temp {
    let dir = std::env::temp_dir().join(format!("headhunt-bad-input-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Temp(dir.join(name))
}

/// Run headhunt; assert it failed cleanly with one `error:` line containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_headhunt")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: expected exit 1, got {:?}; stderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(lines[0].contains(needle), "{args:?}: `{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_valid_tiny_model_runs() {
    let path = temp("ok.gguf");
    tiny_llama("llama", 64, None).write(&path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_headhunt"))
        .args(["generate", "--model", path_str(&path), "--prompt", "abc", "--max-new", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn truncated_gguf() {
    let bytes = tiny_llama("llama", 64, None).to_bytes();
    let path = temp("truncated.gguf");
    for cut in [10, 200, bytes.len() / 2, bytes.len() - 8] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        fails_with(&["info", "--model", path_str(&path)], "truncated");
    }
}

#[test]
fn corrupted_gguf() {
    let mut bytes = tiny_llama("llama", 64, None).to_bytes();
    bytes[0] = b'X';
    let path = temp("corrupt.gguf");
    std::fs::write(&path, &bytes).unwrap();
    fails_with(&["info", "--model", path_str(&path)], "bad magic");
    std::fs::write(&path, b"").unwrap();
    fails_with(&["info", "--model", path_str(&path)], "not a valid GGUF");
}

#[test]
fn unknown_architecture() {
    let path = temp("mamba.gguf");
    tiny_llama("mamba", 64, None).write(&path).unwrap();
    fails_with(&["info", "--model", path_str(&path)], "unsupported architecture `mamba`");
}

#[test]
fn unknown_tensor() {
    // A Mixtral-style expert tensor in a file that says `llama`: refused by name, not ignored.
    let path = temp("unknown-tensor.gguf");
    tiny_llama("llama", 64, None)
        .tensor("blk.0.ffn_gate_inp.weight", &[4, 32], vec![0.0; 128])
        .write(&path)
        .unwrap();
    fails_with(
        &["info", "--model", path_str(&path)],
        "tensor `blk.0.ffn_gate_inp.weight` is not one",
    );
}

#[test]
fn keys_that_change_the_numbers() {
    let path = temp("keys.gguf");
    let cases = [
        (
            "llama.rope.scaling.type",
            Value::String("longrope".into()),
            "RoPE scaling `longrope` is not supported",
        ),
        // YaRN is read, and needs what it scales by.
        (
            "llama.rope.scaling.type",
            Value::String("yarn".into()),
            "YaRN RoPE scaling without llama.rope.scaling.factor",
        ),
        // A llama file with experts is a Mixtral, which needs how many are used per token.
        ("llama.expert_count", Value::U32(8), "missing llama.expert_used_count"),
        ("llama.rope.dimension_count", Value::U32(8), "partial rotary"),
        (
            "llama.attn_logit_softcapping",
            Value::F32(50.0),
            "`llama.attn_logit_softcapping` = 50",
        ),
    ];
    for (key, value, needle) in cases {
        tiny_llama("llama", 64, None).meta(key, value).write(&path).unwrap();
        fails_with(&["info", "--model", path_str(&path)], needle);
    }
    // Experts in a family whose GGUF reader has none.
    tiny_llama("qwen2", 64, None)
        .meta("qwen2.expert_count", Value::U32(8))
        .write(&path)
        .unwrap();
    fails_with(&["info", "--model", path_str(&path)], "`qwen2.expert_count` = 8 is not supported");
}

#[test]
fn missing_tensor() {
    let path = temp("missing.gguf");
    tiny_llama("llama", 64, Some("blk.0.ffn_down.weight")).write(&path).unwrap();
    fails_with(&["info", "--model", path_str(&path)], "missing tensor `blk.0.ffn_down.weight`");
}

#[test]
fn quant_type_without_kernels() {
    // Relabel one matrix as Q8_1 (a type GGUF files can hold but no model is stored in): its
    // directory entry is the name, the dimension count (u32), two dimensions (u64), the type.
    let mut bytes = tiny_llama("llama", 64, None).to_bytes();
    let name = b"blk.0.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    let path = temp("q8_1.gguf");
    std::fs::write(&path, &bytes).unwrap();
    fails_with(
        &["info", "--model", path_str(&path)],
        "tensor `blk.0.ffn_down.weight`: stored as Q8_1, which headhunt cannot compute with",
    );
}

#[test]
fn prompt_longer_than_the_context() {
    let path = temp("short-context.gguf");
    tiny_llama("llama", 16, None).write(&path).unwrap();
    let prompt = "x".repeat(40);
    fails_with(
        &["generate", "--model", path_str(&path), "--prompt", &prompt],
        "context length is 16",
    );
}

#[test]
fn bad_hook_name_and_missing_model() {
    let path = temp("hooks.gguf");
    tiny_llama("llama", 64, None).write(&path).unwrap();
    let out = temp("x.npz");
    fails_with(
        &[
            "cache",
            "--model",
            path_str(&path),
            "--prompt",
            "ab",
            "--hooks",
            "blocks.5.hook_resid_pre",
            "--out",
            path_str(&out),
        ],
        "the model has 1 layers",
    );
    fails_with(
        &[
            "cache",
            "--model",
            path_str(&path),
            "--prompt",
            "ab",
            "--hooks",
            "blocks.0.hook_nothing",
            "--out",
            path_str(&out),
        ],
        "unknown hook point",
    );
    fails_with(&["info", "--model", "/nonexistent/model.gguf"], "unknown model");
}

#[path = "../../engine/tests/common.rs"]
mod common;

#[test]
fn hugging_face_directories_name_what_is_missing() {
    let tiny = common::reference_dir().join("tiny/gpt2");
    assert!(
        tiny.join("model.safetensors").exists(),
        "run scripts/test.sh to make the reference models"
    );
    let dir = temp("hf");
    let dir = dir.parent().unwrap();
    let arg = dir.to_str().unwrap();
    // An empty folder is no model at all.
    fails_with(&["info", "--model", arg], "config.json");
    std::fs::copy(tiny.join("config.json"), dir.join("config.json")).unwrap();
    fails_with(&["info", "--model", arg], "no *.safetensors file");
    std::fs::copy(tiny.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    // Weights alone are enough for the card, not for text.
    let out = Command::new(env!("CARGO_BIN_EXE_headhunt"))
        .args(["info", "--model", arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fails_with(&["generate", "--model", arg, "--prompt", "hi"], "missing tokenizer.json");
    // A corrupt weights file is named.
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    fails_with(&["info", "--model", arg], "not a valid safetensors file");
}
