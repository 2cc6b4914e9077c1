//! DeCoRe's contrastive decoding on SmolLM2: with nothing masked it is greedy decoding; with
//! retrieval heads masked, its first step equals the contrast computed from two separate runs
//! (the whole prompt unmasked; the prompt with the mask acting from its last token on).

use headhunt::experiments::decore::{self, Contrast, Contrastive};
use headhunt_engine::{greedy, Hooks, Intervention, MaskMode, Model, Phase, RunOptions};

fn model() -> Model {
    let path = headhunt::models::resolve("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e:#}"));
    Model::load(&path).unwrap()
}

fn options(n: usize) -> RunOptions {
    RunOptions {
        capacity: n,
        ..Default::default()
    }
}

#[test]
fn contrastive_decoding_is_greedy_with_nothing_masked_and_the_contrast_with_masks() {
    let model = model();
    let tok = model.tokenizer().unwrap();
    let prompt = tok
        .encode_prompt(
            "The vault code is 4417 and the courier is Ines Varga. Who is the courier, and what is the code?",
            true,
        )
        .unwrap();
    let nothing = Contrastive {
        masks: Vec::new(),
        contrast: Contrast::default(),
    };
    let (tokens, alphas) = decore::generate(&model, &prompt, &nothing, 12, |_| false).unwrap();
    let mut run = model.run(Hooks::default(), options(prompt.len() + 12)).unwrap();
    assert_eq!(tokens, greedy(&mut run, &prompt, 12, |_| false).unwrap());
    assert!(alphas.iter().all(|a| a.is_finite() && *a >= 0.0));

    // SmolLM2's strongest retrieval heads (docs/retrieval-heads.md), masked in decoding.
    let masks: Vec<Intervention> = [(18, 7), (18, 6), (23, 2), (17, 3), (17, 4)]
        .into_iter()
        .map(|(layer, head)| Intervention::MaskHead {
            layer,
            head,
            mode: MaskMode::Uniform,
            phase: Phase::Decode,
        })
        .collect();
    let contrastive = Contrastive {
        masks: masks.clone(),
        contrast: Contrast::default(),
    };
    let (tokens, alphas) = decore::generate(&model, &prompt, &contrastive, 1, |_| false).unwrap();
    let base = model
        .run(Hooks::default(), options(prompt.len()))
        .unwrap()
        .prefill(&prompt)
        .unwrap();
    let mut masked = model
        .run(
            Hooks {
                interventions: masks.clone(),
                ..Default::default()
            },
            options(prompt.len()),
        )
        .unwrap();
    masked.prefill(&prompt[..prompt.len() - 1]).unwrap();
    let masked = masked.decode(prompt[prompt.len() - 1]).unwrap();
    assert_ne!(base, masked, "the mask changes the last position's logits");
    // The contrast by plain loops: entropy weight, plausibility floor, argmax.
    let lsm = |l: &[f32]| {
        let m = l.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        l.iter().map(|&x| x as f64 - z).collect::<Vec<f64>>()
    };
    let (p, q) = (lsm(&base), lsm(&masked));
    let h: f64 = -p.iter().map(|l| l.exp() * l).sum::<f64>();
    let best = p.iter().copied().fold(f64::MIN, f64::max);
    let want = (0..p.len())
        .filter(|&w| p[w] >= best + 0.1f64.ln())
        .max_by(|&a, &b| ((1.0 + h) * p[a] - h * q[a]).total_cmp(&((1.0 + h) * p[b] - h * q[b])))
        .unwrap();
    assert_eq!(tokens, vec![want as u32]);
    // The decoding step's logits against the prefill's: the same products, summed in another
    // order.
    assert!((alphas[0] - h).abs() < 1e-4, "{} against {h}", alphas[0]);
}
