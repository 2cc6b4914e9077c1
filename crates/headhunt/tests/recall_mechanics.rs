//! The factual-recall machinery: the residual stream decomposes exactly into its components,
//! direct logit attribution adds up to the logits, the MLP fit equals numpy's least squares, and
//! the mitigations change only what they say.

#[path = "../../engine/tests/common.rs"]
mod common;

use headhunt::experiments::recall::analysis::analyse;
use headhunt::experiments::recall::fit::fit;
use headhunt::experiments::recall::{attend_to_self_in_final_layer, subtract_final_intercept};
use headhunt_engine::{Capture, HookPoint, Hooks, Model, Positions, RunOptions};

/// Components sum to the final residual (1e-4 relative), and their logit attributions plus the
/// constant part sum to the logits.
fn decomposition_is_exact(model: &Model, prompt: &[u32]) {
    let pos = analyse(model, prompt, 1..3, &[]).unwrap();
    let d = model.config.d_model;
    let mut sum = vec![0.0f64; d];
    for (_, v) in &pos.components {
        sum.iter_mut().zip(v).for_each(|(s, &x)| *s += x as f64);
    }
    let norm = pos.final_resid.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let err = sum
        .iter()
        .zip(&pos.final_resid)
        .map(|(s, &x)| (s - x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        err <= 1e-4 * norm,
        "{}: components miss the residual by {err} (norm {norm})",
        model.config.architecture
    );

    let mut logits: Vec<f64> = model.logit_constant().iter().map(|&x| x as f64).collect();
    for (_, v) in &pos.components {
        let attribution = model.direct_logit_attribution(v, &pos.final_resid);
        logits.iter_mut().zip(&attribution).for_each(|(l, &a)| *l += a as f64);
        // The few-token form (what the recall commands use) gives the same values.
        let picked = [0u32, 7, model.config.vocab_size as u32 - 1];
        let few = model.direct_logit_attribution_to(v, &pos.final_resid, &picked);
        for (&t, &f) in picked.iter().zip(&few) {
            let full = attribution[t as usize];
            assert!((f - full).abs() <= 1e-5 * (1.0 + full.abs()), "token {t}: {f} against {full}");
        }
    }
    let scale = pos.logits.iter().map(|&x| (x as f64).abs()).fold(0.0, f64::max);
    let worst = logits
        .iter()
        .zip(&pos.logits)
        .map(|(a, &b)| (a - b as f64).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-4 * scale,
        "{}: DLA sums miss the logits by {worst} (largest logit {scale})",
        model.config.architecture
    );
}

#[test]
fn decomposition_of_tiny_models_of_every_family() {
    for name in ["gpt2", "opt", "gemma3-window", "llama-gqa", "qwen2-bias"] {
        let model = Model::load(&common::reference_dir().join("tiny").join(name)).unwrap();
        decomposition_is_exact(&model, &[5, 17, 200, 33, 9, 120, 64, 3, 250, 11]);
    }
}

#[test]
fn decomposition_of_smollm2() {
    let model = Model::load(&headhunt::models::resolve("smollm2-135m-instruct").unwrap()).unwrap();
    let prompt = model.tokenizer().unwrap().encode("The capital of France is", true).unwrap();
    decomposition_is_exact(&model, &prompt);
}

#[test]
fn least_squares_match_numpy() {
    let arrays = common::expected("recall/lstsq.npz");
    let shape = &arrays["components"].shape;
    let (n, k, d) = (shape[0], shape[1], shape[2]);
    let c = arrays["components"].as_f32();
    let y = arrays["targets"].as_f32();
    let components: Vec<Vec<Vec<f32>>> = (0..n)
        .map(|p| (0..k).map(|i| c[(p * k + i) * d..(p * k + i + 1) * d].to_vec()).collect())
        .collect();
    let targets: Vec<Vec<f32>> = (0..n).map(|p| y[p * d..(p + 1) * d].to_vec()).collect();
    let f = fit(&components, &targets).unwrap();
    let want_b = match &arrays["betas"].data {
        headhunt_engine::npy::NpyData::Float(v) => v.clone(),
        _ => panic!("betas are floats"),
    };
    let want_i = match &arrays["intercept"].data {
        headhunt_engine::npy::NpyData::Float(v) => v.clone(),
        _ => panic!("intercept is floats"),
    };
    for (a, b) in f.betas.iter().zip(&want_b) {
        assert!((a - b).abs() < 1e-6, "betas {:?} vs numpy {want_b:?}", f.betas);
    }
    for (a, b) in f.intercept.iter().zip(&want_i) {
        assert!((a - b).abs() < 1e-6, "intercept {:?} vs numpy {want_i:?}", f.intercept);
    }
    let r2 = match &arrays["r2"].data {
        headhunt_engine::npy::NpyData::Float(v) => v[0],
        _ => panic!(),
    };
    assert!((f.r2 - r2).abs() < 1e-9, "R² {} vs numpy {r2}", f.r2);
}

#[test]
fn mitigations_change_only_what_they_say() {
    let model = common::tiny_model();
    let c = model.config.clone();
    let last_layer = c.n_layers - 1;
    let prompt: Vec<u32> = (0..12).map(|i| (i * 29 + 7) % 256).collect();
    let last = prompt.len() - 1;
    let capture = |extra: Vec<headhunt_engine::Intervention>| {
        let mut hooks = Hooks {
            interventions: extra,
            ..Default::default()
        };
        for l in 0..c.n_layers {
            hooks = hooks
                .capture(Capture::new(HookPoint::Pattern(l), Positions::All))
                .capture(Capture::new(HookPoint::ResidPre(l), Positions::All))
                .capture(Capture::new(HookPoint::MlpOut(l), Positions::All));
        }
        let mut run = model.run(hooks, RunOptions::default()).unwrap();
        run.prefill(&prompt).unwrap();
        run.recording
    };
    let base = capture(Vec::new());

    // (a): the final layer's heads put all attention on the query's own position; nothing
    // upstream of the final layer moves.
    let a = capture(attend_to_self_in_final_layer(&model));
    for row in &a.patterns[&last_layer] {
        for h in 0..c.n_heads {
            let probs = &row.values[h * row.n_keys..(h + 1) * row.n_keys];
            assert!(probs
                .iter()
                .enumerate()
                .all(|(k, &p)| if k == row.position { (p - 1.0).abs() < 1e-6 } else { p == 0.0 }));
        }
    }
    for l in 0..last_layer {
        assert_eq!(
            a.patterns[&l].iter().map(|r| &r.values).collect::<Vec<_>>(),
            base.patterns[&l].iter().map(|r| &r.values).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        a.get(HookPoint::ResidPre(last_layer)).unwrap().data,
        base.get(HookPoint::ResidPre(last_layer)).unwrap().data
    );

    // (b): exactly -b added to the final MLP's output at the last position, nowhere else.
    let intercept: Vec<f64> = (0..c.d_model).map(|i| (i as f64 * 0.37).sin()).collect();
    let b = capture(subtract_final_intercept(&model, &intercept));
    let (mb, mo) = (
        b.get(HookPoint::MlpOut(last_layer)).unwrap(),
        base.get(HookPoint::MlpOut(last_layer)).unwrap(),
    );
    for p in 0..prompt.len() {
        let want: Vec<f32> = if p == last {
            mo.row(p).iter().zip(&intercept).map(|(&x, &v)| x + (-v as f32)).collect()
        } else {
            mo.row(p).to_vec()
        };
        assert_eq!(mb.row(p), &want[..], "position {p}");
    }
    for l in 0..c.n_layers {
        assert_eq!(
            b.patterns[&l].iter().map(|r| &r.values).collect::<Vec<_>>(),
            base.patterns[&l].iter().map(|r| &r.values).collect::<Vec<_>>()
        );
    }
}
