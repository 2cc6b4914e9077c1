//! The real models (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-1.5B), from their GGUF files,
//! against transformers on the same files: token ids,
//! full-vocabulary logits at 16 positions of three prompts (one past 1,000 tokens), attention
//! probabilities of chosen heads, and a 32-token greedy continuation.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::sync::OnceLock;

use common::{expected, max_abs_diff, reference_dir};
use headhunt_engine::{argmax, Capture, HookPoint, Hooks, Model, Positions, RunOptions};

fn model(id: &str) -> &'static Model {
    static SMOLLM: OnceLock<Model> = OnceLock::new();
    static GEMMA: OnceLock<Model> = OnceLock::new();
    static QWEN: OnceLock<Model> = OnceLock::new();
    let cell = match id {
        "smollm2-135m-instruct" => &SMOLLM,
        "gemma3-270m" => &GEMMA,
        "qwen2.5-coder-1.5b-instruct" => &QWEN,
        other => panic!("no test model {other}"),
    };
    cell.get_or_init(|| {
        let path = headhunt::models::resolve(id).unwrap_or_else(|e| panic!("{e:#}"));
        Model::load(&path).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn meta(id: &str) -> serde_json::Value {
    let path = reference_dir().join(id).join("meta.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} missing", path.display()))).unwrap()
}

fn ids(a: &headhunt_engine::npy::NpyArray) -> Vec<u32> {
    a.as_i64().iter().map(|&x| x as u32).collect()
}

const PROMPTS: [&str; 3] = ["short", "chat", "long"];

fn tokenizer_matches(id: &str) {
    let exp = expected(&format!("{id}/expected.npz"));
    let meta = meta(id);
    let tok = model(id).tokenizer().unwrap();
    for name in PROMPTS {
        let p = &meta["prompts"][name];
        let got = tok
            .encode_prompt(p["text"].as_str().unwrap(), p["chat"].as_bool().unwrap())
            .unwrap();
        assert_eq!(
            got,
            ids(&exp[&format!("{name}.ids")]),
            "{id}: prompt `{name}` tokenizes differently"
        );
    }
    let varied = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../reference/texts/varied.txt")).unwrap();
    assert_eq!(tok.encode(&varied, false).unwrap(), ids(&exp["varied.ids"]), "{id}: varied text");
    assert_eq!(
        tok.encode(&varied, true).unwrap(),
        ids(&exp["varied_special.ids"]),
        "{id}: varied text with special tokens"
    );
    if let Some(chat) = exp.get("chat_template.ids") {
        let msg = meta["chat_template"]["message"].as_str().unwrap();
        let rendered = tok.render_chat(&[headhunt_engine::ChatMessage::user(msg)]).unwrap();
        assert_eq!(rendered, meta["chat_template"]["rendered"].as_str().unwrap());
        assert_eq!(tok.encode_prompt(msg, true).unwrap(), ids(chat), "{id}: chat template ids");
    }
}

fn logits_and_attention_match(id: &str) {
    let exp = expected(&format!("{id}/expected.npz"));
    let m = model(id);
    let (nh, vocab) = (m.config.n_heads, m.config.vocab_size);
    let heads: Vec<(usize, usize)> = exp["attn_heads"]
        .as_i64()
        .chunks(2)
        .map(|p| (p[0] as usize, p[1] as usize))
        .collect();
    for name in PROMPTS {
        let prompt = ids(&exp[&format!("{name}.ids")]);
        let positions: Vec<usize> = exp[&format!("{name}.positions")].as_i64().iter().map(|&p| p as usize).collect();
        let qpos: Vec<usize> = exp[&format!("{name}.attn_qpos")].as_i64().iter().map(|&p| p as usize).collect();
        assert!(positions.len() >= 16 && positions.last() == Some(&(prompt.len() - 1)));
        let mut hooks = Hooks::default().capture(Capture::new(HookPoint::Logits, Positions::At(positions.clone())));
        for &(l, _) in &heads {
            hooks = hooks.capture(Capture::new(HookPoint::Pattern(l), Positions::At(qpos.clone())));
        }
        let mut run = m.run(hooks, RunOptions::default()).unwrap();
        run.prefill(&prompt).unwrap();

        let got = run.recording.get(HookPoint::Logits).unwrap();
        let want = exp[&format!("{name}.logits")].as_f32();
        assert_eq!(got.positions, positions);
        for (i, &p) in positions.iter().enumerate() {
            let d = max_abs_diff(got.row(i), &want[i * vocab..(i + 1) * vocab]);
            assert!(
                d <= 2e-3,
                "{id}: prompt `{name}` ({} tokens), position {p}: logits differ by {d}",
                prompt.len()
            );
        }

        let want = exp[&format!("{name}.attn")].as_f32(); // [head, qpos, key]
        let n = prompt.len();
        for (k, &(l, h)) in heads.iter().enumerate() {
            let rows = &run.recording.patterns[&l];
            for (j, &q) in qpos.iter().enumerate() {
                let row = rows.iter().find(|r| r.position == q).unwrap();
                let got = &row.values[h * row.n_keys..h * row.n_keys + q + 1];
                let base = (k * qpos.len() + j) * n;
                let d = max_abs_diff(got, &want[base..base + q + 1]);
                assert!(
                    d <= 1e-4,
                    "{id}: prompt `{name}`, head {l}.{h} of {nh}, query {q}: attention differs by {d}"
                );
            }
        }
    }
}

fn greedy_matches(id: &str) {
    let exp = expected(&format!("{id}/expected.npz"));
    let m = model(id);
    let prompt = ids(&exp["greedy.prompt"]);
    let want = ids(&exp["greedy.ids"]);
    let mut run = m.run(Hooks::default(), RunOptions::default()).unwrap();
    let mut logits = run.prefill(&prompt).unwrap();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let t = argmax(&logits);
        got.push(t);
        logits = run.decode(t).unwrap();
    }
    assert_eq!(got, want, "{id}: greedy continuation differs");
}

#[test]
fn smollm2_tokenizer_matches_reference() {
    tokenizer_matches("smollm2-135m-instruct");
}

#[test]
fn smollm2_logits_and_attention_match_reference() {
    logits_and_attention_match("smollm2-135m-instruct");
}

#[test]
fn smollm2_greedy_continuation_matches_reference() {
    greedy_matches("smollm2-135m-instruct");
}

#[test]
fn gemma3_tokenizer_matches_reference() {
    tokenizer_matches("gemma3-270m");
}

#[test]
fn gemma3_logits_and_attention_match_reference() {
    logits_and_attention_match("gemma3-270m");
}

#[test]
fn gemma3_greedy_continuation_matches_reference() {
    greedy_matches("gemma3-270m");
}

#[test]
fn qwen2_5_1_5b_tokenizer_matches_reference() {
    tokenizer_matches("qwen2.5-coder-1.5b-instruct");
}

#[test]
fn qwen2_5_1_5b_logits_and_attention_match_reference() {
    logits_and_attention_match("qwen2.5-coder-1.5b-instruct");
}

#[test]
fn qwen2_5_1_5b_greedy_continuation_matches_reference() {
    greedy_matches("qwen2.5-coder-1.5b-instruct");
}

/// The same logits through every kernel level this CPU runs (the AVX-512 kernels only where the
/// CPU has them; the AVX2 and portable ones everywhere), each against the reference.
#[test]
fn smollm2_logits_match_reference_at_every_simd_level() {
    let id = "smollm2-135m-instruct";
    let exp = expected(&format!("{id}/expected.npz"));
    let path = headhunt::models::resolve(id).unwrap_or_else(|e| panic!("{e:#}"));
    let prompt = ids(&exp["short.ids"]);
    let positions: Vec<usize> = exp["short.positions"].as_i64().iter().map(|&p| p as usize).collect();
    let want = exp["short.logits"].as_f32();
    let levels = headhunt_engine::Isa::available();
    if !levels.contains(&headhunt_engine::Isa::Avx512) {
        eprintln!("note: this CPU has no AVX-512; its kernels were not run here");
    }
    for isa in levels {
        let m = Model::load_with(&path, isa).unwrap();
        assert_eq!(m.isa(), isa);
        let vocab = m.config.vocab_size;
        let hooks = Hooks::default().capture(Capture::new(HookPoint::Logits, Positions::At(positions.clone())));
        let mut run = m.run(hooks, RunOptions::default()).unwrap();
        run.prefill(&prompt).unwrap();
        let got = run.recording.get(HookPoint::Logits).unwrap();
        for (i, &p) in positions.iter().enumerate() {
            let d = max_abs_diff(got.row(i), &want[i * vocab..(i + 1) * vocab]);
            assert!(d <= 2e-3, "{isa}: position {p}: logits differ by {d}");
        }
        // Decoding reads the weights through the matrix-vector kernels.
        let (prompt, want_ids) = (ids(&exp["greedy.prompt"]), ids(&exp["greedy.ids"]));
        let mut run = m.run(Hooks::default(), RunOptions::default()).unwrap();
        let mut logits = run.prefill(&prompt).unwrap();
        let mut got = Vec::new();
        while got.len() < want_ids.len() {
            got.push(argmax(&logits));
            logits = run.decode(*got.last().unwrap()).unwrap();
        }
        assert_eq!(got, want_ids, "{isa}: greedy continuation differs");
    }
}
