//! A run continued from a kept prefix (truncated back to it, or forked there) gives what one
//! forward over the whole sequence gives, on both real models (Gemma's sliding-window layers
//! going back by truncation only when the run keeps its windows): logits within 1e-5 of their
//! largest magnitude (the sums run in other orders: chunks start elsewhere) and the same
//! attention argmax of every head at every decoding step.

use headhunt_engine::{argmax, Capture, Hooks, Model, Positions, Run, RunOptions};

const HELDOUT: &str = include_str!("data/heldout.txt");
const STEPS: usize = 6;

/// Per layer, (query position, every query head's argmax key position).
type Argmaxes = Vec<Vec<(usize, Vec<u32>)>>;

/// Greedy steps from a run's current logits: every step's logits and every head's argmax.
fn continue_greedy(run: &mut Run<'_>, mut logits: Vec<f32>) -> (Vec<Vec<f32>>, Argmaxes) {
    let mut all = vec![logits.clone()];
    for _ in 0..STEPS {
        logits = run.decode(argmax(&logits)).unwrap();
        all.push(logits.clone());
    }
    let argmaxes = run.recording.argmax.values().cloned().collect();
    (all, argmaxes)
}

fn check(id: &str) {
    let path = headhunt::models::resolve(id).unwrap_or_else(|e| panic!("{e:#}"));
    let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let tok = model.tokenizer().unwrap();
    // ~1,400 tokens: past Gemma's 512-token window and past a 1,024-token prefill chunk.
    let tokens = tok.encode(&[HELDOUT; 5].join("\n\n"), true).unwrap();
    let other = tok.encode(&HELDOUT[HELDOUT.len() / 2..], false).unwrap();
    assert!(tokens.len() > 1200, "{id}: {} tokens", tokens.len());
    let mut hooks = Hooks::default();
    for l in 0..model.config.n_layers {
        hooks = hooks.capture(Capture::pattern_argmax(l, Positions::Last));
    }
    let options = |keep_windows| RunOptions {
        capacity: tokens.len() + other.len() + STEPS + 8,
        keep_windows,
        ..Default::default()
    };
    let start = |hooks: &Hooks| model.run(hooks.clone(), options(false)).unwrap();

    let mut whole = start(&hooks);
    let logits = whole.prefill(&tokens).unwrap();
    let (want_logits, want_argmax) = continue_greedy(&mut whole, logits);

    // Kept prefixes: a short suffix (the row-by-row products) and a long one (the GEMM).
    for split in [tokens.len() - 40, 700] {
        let mut run = start(&hooks);
        run.prefill(&tokens[..split]).unwrap();
        let mut fork = run.fork();
        let mut keeping = model.run(hooks.clone(), options(true)).unwrap();
        keeping.prefill(&tokens[..split]).unwrap();
        // The originals move on through another text, then come back where they can.
        for r in [&mut run, &mut keeping] {
            r.prefill(&other).unwrap();
            r.decode(other[0]).unwrap();
        }
        let truncated = run.truncate(split);
        let windowed = model.config.layers.iter().any(|l| l.window.is_some());
        keeping.truncate(split).unwrap();
        let mut continued = vec![("fork", &mut fork), ("truncate, windows kept", &mut keeping)];
        match truncated {
            Ok(()) => continued.push(("truncate", &mut run)),
            Err(e) => assert!(windowed, "{id}: only sliding-window layers refuse to go back: {e}"),
        }
        for (how, r) in continued {
            assert_eq!(r.tokens(), &tokens[..split]);
            r.recording.clear();
            let logits = r.prefill(&tokens[split..]).unwrap();
            let (got_logits, got_argmax) = continue_greedy(r, logits);
            for (step, (a, b)) in want_logits.iter().zip(&got_logits).enumerate() {
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 1e-5 * scale,
                    "{id}: {how} at {split}, step {step}: logits differ by {diff} (largest {scale})"
                );
            }
            // The argmaxes of the decoding steps (the prefill's last position included).
            let decode_steps = |rows: &[Vec<(usize, Vec<u32>)>]| -> Argmaxes {
                rows.iter()
                    .map(|l| l.iter().filter(|(p, _)| *p + 1 >= tokens.len()).cloned().collect())
                    .collect()
            };
            assert_eq!(
                decode_steps(&got_argmax),
                decode_steps(&want_argmax),
                "{id}: {how} at {split}: argmaxes"
            );
            eprintln!(
                "{id}: continued by {how} from {split} of {} tokens: same logits and argmaxes",
                tokens.len()
            );
        }
    }
}

#[test]
fn smollm2_continues_from_a_kept_prefix() {
    check("smollm2-135m-instruct");
}

#[test]
fn gemma_continues_from_a_kept_prefix() {
    check("gemma3-270m");
}

/// A Mixture-of-Experts model's trial records, per decoding step and layer, the experts chosen
/// for the token read at that step: those a single forward over the prompt and the answer
/// weighs at the same position (tiny random Mixtral GGUF made by `reference/make_reference.py`).
#[test]
fn trials_record_the_experts_each_step_chose() {
    use headhunt::experiments::retrieval::niah::trial::{answer, Condition};
    use headhunt_engine::HookPoint;
    let dir = match std::env::var_os("HEADHUNT_REFERENCE") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reference"),
    };
    let model = Model::load(&dir.join("tiny/mixtral-moe/model.gguf")).unwrap();
    let (layers, moe) = (model.config.n_layers, model.config.moe.unwrap());
    let prompt: Vec<u32> = (0..10).map(|i| 3 + 17 * i % 200).collect();
    let out = answer(&model, &prompt, &Condition::default(), true).unwrap();
    assert!(!out.generated.is_empty());
    assert_eq!(out.experts.len(), out.generated.len());
    // Step t read the token at position prompt.len() - 1 + t.
    let mut whole = prompt.clone();
    whole.extend(&out.generated[..out.generated.len() - 1]);
    let mut hooks = Hooks::default();
    for l in 0..layers {
        hooks = hooks.capture(Capture::new(HookPoint::ExpertWeights(l), Positions::All));
    }
    let mut run = model.run(hooks, RunOptions::default()).unwrap();
    run.prefill(&whole).unwrap();
    for (t, step) in out.experts.iter().enumerate() {
        assert_eq!(step.len(), layers);
        for (l, chosen) in step.iter().enumerate() {
            let w = run
                .recording
                .get(HookPoint::ExpertWeights(l))
                .unwrap()
                .at(prompt.len() - 1 + t)
                .unwrap()
                .to_vec();
            assert_eq!(chosen.len(), moe.per_token, "step {t} layer {l}");
            let mut want: Vec<u16> = (0..w.len() as u16).filter(|&e| w[e as usize] > 0.0).collect();
            want.sort_by(|&a, &b| w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b)));
            assert_eq!(chosen, &want, "step {t} layer {l}");
        }
    }
}
