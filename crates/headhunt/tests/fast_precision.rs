//! `--precision fast` against `exact` on held-out prose (a text no other test uses), on both real
//! models: the text is fed one token at a time (decoding's matrix-vector products) and as one
//! prompt (the int8 tiles of many tokens, where the CPU has them), and at every position the
//! next-token distributions of the two precisions are compared.
//!
//! Measured here (docs/performance.md, "Precision"): mean KL 2.7e-3 (SmolLM2) and 2.3e-3 (Gemma), the same
//! top token at ~96% of positions, about what llama.cpp's own int8 products give against the
//! exact numbers on the same files (2.8e-3 and 4.9e-3, `bench/llama_agreement.py`). The bounds below hold that level with a
//! margin; a fault in the fast products (for instance offsets taken against the unquantised
//! vector, which measured 1.5e-2 and 92%) fails them. The goal of 1e-3 and 99% is not met.

use headhunt_engine::{argmax, Capture, HookPoint, Hooks, Isa, Model, Positions, Precision, RunOptions};

const HELDOUT: &str = include_str!("data/heldout.txt");

/// Log-probabilities of the next token after each of `tokens`, fed one at a time.
fn next_token_logprobs(model: &Model, tokens: &[u32]) -> Vec<Vec<f64>> {
    let mut run = model.run(Hooks::default(), RunOptions::default()).unwrap();
    let mut out = Vec::with_capacity(tokens.len());
    let mut logits = run.prefill(&tokens[..1]).unwrap();
    for &t in &tokens[1..] {
        out.push(log_softmax(&logits));
        logits = run.decode(t).unwrap();
    }
    out.push(log_softmax(&logits));
    out
}

/// The same, from the logits of one prefill of all of `tokens`.
fn prompt_logprobs(model: &Model, tokens: &[u32]) -> Vec<Vec<f64>> {
    let hooks = Hooks::default().capture(Capture::new(HookPoint::Logits, Positions::All));
    let mut run = model.run(hooks, RunOptions::default()).unwrap();
    run.prefill(tokens).unwrap();
    let logits = run.recording.get(HookPoint::Logits).unwrap();
    (0..tokens.len()).map(|i| log_softmax(logits.row(i))).collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

/// (mean KL(exact || fast) per position, share of positions with the same top token).
fn agreement(id: &str, isa: Isa, how: &str, feed: fn(&Model, &[u32]) -> Vec<Vec<f64>>) -> (f64, f64) {
    let path = headhunt::models::resolve(id).unwrap_or_else(|e| panic!("{e:#}"));
    let mut model = Model::load_with(&path, isa).unwrap_or_else(|e| panic!("{e}"));
    let tokens = model.tokenizer().unwrap().encode(HELDOUT, true).unwrap();
    assert!(tokens.len() > 250, "{id}: {} tokens", tokens.len());
    assert_eq!(model.precision(), Precision::Exact);
    let exact = feed(&model, &tokens);
    model.set_precision(Precision::Fast);
    assert_eq!(model.precision(), Precision::Fast, "{id}: quantised weights run fast");
    let fast = feed(&model, &tokens);
    let n = exact.len() as f64;
    let kl: f64 = exact
        .iter()
        .zip(&fast)
        .map(|(p, q)| p.iter().zip(q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum::<f64>())
        .sum::<f64>()
        / n;
    let top1 = |lp: &[f64]| argmax(&lp.iter().map(|&v| v as f32).collect::<Vec<_>>());
    let same = exact.iter().zip(&fast).filter(|(p, q)| top1(p) == top1(q)).count() as f64 / n;
    eprintln!(
        "{id}: {} positions {how}, {}: mean KL {kl:.2e}, same top token {:.2}%",
        exact.len(),
        model.isa(),
        100.0 * same
    );
    (kl, same)
}

fn check(id: &str) {
    let (kl, same) = agreement(id, Isa::detected(), "token by token", next_token_logprobs);
    assert!(kl <= 4e-3, "{id}: mean KL {kl:e} above 4e-3");
    assert!(same >= 0.94, "{id}: the top token agrees at {:.2}% of positions", 100.0 * same);
    // Not identical either: the fast products really ran.
    assert!(kl > 0.0, "{id}: fast and exact gave the same distributions");
}

#[test]
fn smollm2_fast_agrees_with_exact() {
    check("smollm2-135m-instruct");
}

#[test]
fn gemma_fast_agrees_with_exact() {
    check("gemma3-270m");
}

/// As [`check`], the text as one prompt (int8 tiles), through every kernel level this CPU runs:
/// AVX-512 (VNNI where the CPU has it), AVX2 (`vpmaddubsw`; AVX-VNNI on CPUs without AVX-512),
/// and portable, which has no tiles: its prompt products run exact and only the unembedding's
/// matrix-vector products (the logits at each position) are fast.
fn check_prompt(id: &str) {
    for isa in Isa::available() {
        let (kl, same) = agreement(id, isa, "as one prompt", prompt_logprobs);
        assert!(kl <= 4e-3, "{id}: prompt at {isa}: mean KL {kl:e} above 4e-3");
        assert!(
            same >= 0.94,
            "{id}: prompt at {isa}: the top token agrees at {:.2}% of positions",
            100.0 * same
        );
        assert!(kl > 0.0, "{id}: prompt at {isa}: fast and exact gave the same distributions");
    }
}

#[test]
fn smollm2_fast_prompt_agrees_with_exact() {
    check_prompt("smollm2-135m-instruct");
}

#[test]
fn gemma_fast_prompt_agrees_with_exact() {
    check_prompt("gemma3-270m");
}
