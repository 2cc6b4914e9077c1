//! The grounding signal the engine records while decoding (every head's attention mass on the
//! prompt and its argmax, a few numbers per head per step) equals a plain recomputation from the
//! whole attention rows captured in the same run, on both real models.

use headhunt::experiments::grounding::{self, lookback_ratio, Grounder};
use headhunt::experiments::retrieval::HeadScores;
use headhunt_engine::{argmax, Capture, HookPoint, Hooks, Model, Positions, RunOptions};

fn load(id: &str) -> Model {
    Model::load(&headhunt::models::resolve(id).unwrap()).unwrap()
}

fn check(id: &str, retrieval: &[(usize, usize, f64)]) {
    let model = load(id);
    let c = &model.config;
    let tok = model.tokenizer().unwrap();
    let text = "Marta keeps the spare key under the blue anchor by the lighthouse. \
                The ferry leaves at nine and returns at six. Where does Marta keep the spare key?";
    let prompt = tok.encode_prompt(text, true).unwrap();
    let p = prompt.len();
    let mut hooks = Hooks::default();
    for cap in grounding::captures(c.n_layers, p) {
        hooks = hooks.capture(cap);
    }
    for l in 0..c.n_layers {
        hooks = hooks.capture(Capture::new(HookPoint::Pattern(l), Positions::Last));
    }
    let mut run = model
        .run(
            hooks,
            RunOptions {
                capacity: p + 16,
                ..Default::default()
            },
        )
        .unwrap();
    let logits = run.prefill(&prompt).unwrap();
    let steps = grounding::decode(&mut run, logits, 12, argmax, |_| false).unwrap();
    assert!(steps.len() >= 4, "{id}: the model stopped at once");

    let mut scores = HeadScores::new(c.n_layers, c.n_heads);
    let mut means = vec![0.0; c.n_layers * c.n_heads];
    for &(l, h, s) in retrieval {
        means[l * c.n_heads + h] = s;
    }
    scores.push_trial(&means);
    let g = Grounder::from_scores(&scores).unwrap();

    // Recompute each step's signal from the whole attention rows.
    let (mut support, mut lookback) = (0.0, 0.0);
    for (t, s) in steps.iter().enumerate() {
        let q = p - 1 + t;
        for l in 0..c.n_layers {
            let row = run.recording.patterns[&l].iter().find(|r| r.position == q).expect("a row per step");
            for h in 0..c.n_heads {
                let probs = &row.values[h * row.n_keys..(h + 1) * row.n_keys];
                let mass: f64 = probs[..p].iter().map(|&x| x as f64).sum();
                let i = l * c.n_heads + h;
                assert!(
                    (s.mass[i] as f64 - mass).abs() < 1e-5,
                    "{id} step {t} head {l}-{h}: {} against {mass}",
                    s.mass[i]
                );
                // The first maximum (the engine's tie rule).
                let best = probs.iter().enumerate().fold(0, |b, (j, &x)| if x > probs[b] { j } else { b });
                if probs[best] - probs[s.argmax[i] as usize] > 1e-6 {
                    panic!("{id} step {t} head {l}-{h}: argmax {} against {best}", s.argmax[i]);
                }
            }
        }
        let weight: f64 = retrieval.iter().map(|r| r.2).sum();
        let mut copied = 0.0;
        let mut ratio = 0.0;
        for &(l, h, w) in retrieval {
            let row = run.recording.patterns[&l].iter().find(|r| r.position == q).unwrap();
            let probs = &row.values[h * row.n_keys..(h + 1) * row.n_keys];
            let best = probs.iter().enumerate().fold(0, |b, (j, &x)| if x > probs[b] { j } else { b });
            if best < p && prompt[best] == s.token {
                copied += w;
            }
            let ctx: f64 = probs[..p].iter().map(|&x| x as f64).sum::<f64>() / p as f64;
            let new: f64 = if t == 0 {
                0.0
            } else {
                probs[p..].iter().map(|&x| x as f64).sum::<f64>() / t as f64
            };
            ratio += w * if t == 0 { 1.0 } else { ctx / (ctx + new) };
        }
        support += copied / weight;
        lookback += ratio / weight;
        assert!((lookback_ratio(1.0, t, p) - 1.0).abs() < 1e-12);
    }
    let n = steps.len() as f64;
    let signal = g.answer(&prompt, &steps, 0);
    assert!(
        (signal.support - support / n).abs() < 1e-9,
        "{id}: support {} against {}",
        signal.support,
        support / n
    );
    assert!(
        (signal.lookback - lookback / n).abs() < 1e-4,
        "{id}: lookback {} against {}",
        signal.lookback,
        lookback / n
    );
    // Something was copied: the answer repeats the context.
    assert!(
        signal.support > 0.0,
        "{id}: {:?}",
        tok.decode(&steps.iter().map(|s| s.token).collect::<Vec<_>>(), true)
    );
}

#[test]
fn smollm2_signal_equals_a_recomputation_from_patterns() {
    // SmolLM2's strongest retrieval heads (README).
    check(
        "smollm2-135m-instruct",
        &[(18, 7, 0.72), (18, 6, 0.71), (23, 2, 0.69), (17, 3, 0.59)],
    );
}

#[test]
fn gemma_signal_equals_a_recomputation_from_patterns() {
    // Gemma-3-270M's (layer 5 is a sliding-window layer).
    check("gemma3-270m", &[(11, 2, 0.85), (5, 1, 0.73), (5, 2, 0.54)]);
}

/// `headhunt hallucination` on a few SmolLM2 answers: guided decoding with a single candidate
/// per chunk is greedy decoding cut into chunks, and contrastive decoding with its weight capped
/// at 0 is greedy decoding beside a masked run, so both must reproduce the greedy answers and
/// their signals exactly; every answer is labelled and the detectors' table and ROC are written.
#[test]
fn guided_with_one_candidate_and_contrast_without_weight_are_greedy() {
    let dir = std::env::temp_dir().join(format!("headhunt-ground-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scores = dir.join("scores.json");
    let mut map = serde_json::Map::new();
    for l in 0..30 {
        for h in 0..9 {
            let s = if (l, h) == (18, 7) || (l, h) == (18, 6) || (l, h) == (23, 2) {
                0.7
            } else {
                0.0
            };
            map.insert(format!("{l}-{h}"), serde_json::json!([s]));
        }
    }
    std::fs::write(&scores, serde_json::Value::Object(map).to_string()).unwrap();
    let qa = dir.join("qa.jsonl");
    std::fs::write(
        &qa,
        serde_json::json!({
            "context": "The Harlow Trust keeps its seed vault on Maren Island. A retired sea captain named Osgood Finch guards it.",
            "question": "Who guards the seed vault?",
            "answers": ["Osgood Finch"],
        })
        .to_string()
            + "\n",
    )
    .unwrap();
    let out = dir.join("run");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_headhunt"))
        .args([
            "hallucination",
            "--lengths",
            "600",
            "--depths",
            "0,100",
            "--guided",
            "--candidates",
            "1",
            "--chunk",
            "3",
            "--decode",
            "contrastive",
            "--alpha-cap",
            "0",
        ])
        .arg("--scores")
        .arg(&scores)
        .arg("--qa-data")
        .arg(&qa)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut n = 0;
    for task in ["niah", "qa"] {
        for line in std::fs::read_to_string(out.join(task).join("trials.jsonl")).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(r["guided"], r["greedy"], "{task}: guided with one candidate differs from greedy");
            assert_eq!(r["contrastive"], r["greedy"], "{task}: contrast without weight differs from greedy");
            assert!(["complete", "incomplete", "hallucination"].contains(&r["outcome"].as_str().unwrap()));
            assert_eq!(r["greedy"]["lookback"].as_array().unwrap().len(), 270);
            n += 1;
        }
    }
    assert_eq!(n, 3);
    let h: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("hallucination.json")).unwrap()).unwrap();
    assert_eq!(h["guided"][0]["difference"], 0.0);
    assert_eq!(h["contrastive"][1]["difference"], 0.0);
    assert_eq!(h["contrastive"][1]["hallucinated"]["difference"], 0.0);
    assert!(out.join("roc.png").exists());
    std::fs::remove_dir_all(dir).ok();
}
