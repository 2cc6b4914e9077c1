//! Contrastive decoding against the retrieval heads (DeCoRe, Gema et al., Findings of EMNLP
//! 2025): each next token is chosen from the model's log-probabilities contrasted with those of
//! the same model with its retrieval heads masked,
//!
//! `score(w) = (1 + a) log p(w) - a log p_masked(w)`, `a = min(H(p), cap)`,
//!
//! where `H(p)` is the entropy (in nats) of the unmasked next-token distribution: the less sure
//! the model, the more the contrast counts. Tokens whose unmasked probability is below
//! `plausibility` times the most likely one's are left out (the adaptive plausibility
//! constraint of contrastive decoding, Li et al. 2023), so the contrast cannot promote a token the
//! model itself finds implausible.
//!
//! The mask acts in decoding only: both runs share the prompt's cache (one prefill, then a fork
//! taken back one token), and from the prompt's last token on each feeds the chosen token, the
//! masked run with its heads masked.

use anyhow::{bail, Result};
use headhunt_engine::{Hooks, Intervention, Model, Run, RunOptions};

/// The contrast's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contrast {
    /// The largest weight `a` (None: the entropy as it is).
    pub alpha_cap: Option<f64>,
    /// Tokens below this share of the most likely token's probability are not chosen (0: none
    /// left out).
    pub plausibility: f64,
}

impl Default for Contrast {
    fn default() -> Self {
        Contrast {
            alpha_cap: None,
            plausibility: 0.1,
        }
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&l| l as f64 - log_z).collect()
}

/// The contrast's choice from the unmasked and masked logits of one step: the token and the
/// weight `a` used.
pub fn choose(base: &[f32], masked: &[f32], contrast: &Contrast) -> (u32, f64) {
    let (lp, lq) = (log_softmax(base), log_softmax(masked));
    let entropy: f64 = -lp.iter().map(|&l| l.exp() * l).filter(|v| v.is_finite()).sum::<f64>();
    let a = contrast.alpha_cap.map_or(entropy, |cap| entropy.min(cap));
    let best = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let floor = best + contrast.plausibility.ln();
    let mut chosen = (0u32, f64::NEG_INFINITY);
    for (w, (&p, &q)) in lp.iter().zip(&lq).enumerate() {
        if p < floor {
            continue;
        }
        let s = (1.0 + a) * p - a * q;
        if s > chosen.1 {
            chosen = (w as u32, s);
        }
    }
    (chosen.0, a)
}

/// DeCoRe's decoding: the interventions that make the contrasted model (masked heads; they act
/// in decoding whatever phase they name) and the contrast's settings.
#[derive(Debug, Clone)]
pub struct Contrastive {
    pub masks: Vec<Intervention>,
    pub contrast: Contrast,
}

/// Decode `prompt` contrastively: at most `max_new` tokens, stopping at end-of-sequence or when
/// `stop(generated so far)` says so. Returns the tokens and each step's weight `a`.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    contrastive: &Contrastive,
    max_new: usize,
    stop: impl FnMut(&[u32]) -> bool,
) -> Result<(Vec<u32>, Vec<f64>)> {
    if prompt.is_empty() {
        bail!("contrastive decoding needs a prompt");
    }
    let options = RunOptions {
        capacity: prompt.len() + max_new,
        keep_windows: true,
        ..Default::default()
    };
    let mut base = model.run(Hooks::default(), options)?;
    let logits = base.prefill(prompt)?;
    generate_from(&mut base, prompt, logits, contrastive, max_new, stop)
}

/// [`generate`] from a run that has just fed the whole `prompt` (its last position's `logits`;
/// its windowed layers keeping every position, so that it can be forked one token back). The
/// masked run forks its cache before the prompt's last token and feeds that token with the mask
/// on.
pub fn generate_from(
    base: &mut Run<'_>,
    prompt: &[u32],
    mut logits: Vec<f32>,
    contrastive: &Contrastive,
    max_new: usize,
    mut stop: impl FnMut(&[u32]) -> bool,
) -> Result<(Vec<u32>, Vec<f64>)> {
    let Some(&last) = prompt.last() else {
        bail!("contrastive decoding needs a prompt");
    };
    let mut masked: Run<'_> = base.fork();
    masked.truncate(prompt.len() - 1)?;
    masked.set_hooks(Hooks {
        interventions: contrastive.masks.clone(),
        ..Default::default()
    })?;
    let (mut out, mut alphas) = (Vec::new(), Vec::new());
    let mut token = last;
    while out.len() < max_new {
        let (next, a) = choose(&logits, &masked.decode(token)?, &contrastive.contrast);
        out.push(next);
        alphas.push(a);
        if base.model().is_eos(next) || stop(&out) {
            break;
        }
        logits = base.decode(next)?;
        token = next;
    }
    Ok((out, alphas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contrast_follows_the_formula_on_written_logits() {
        // Unmasked: token 0 likely, 1 close, 2 implausible. Masked: token 0 likelier still, 2
        // far less likely, so the contrast ranks 2 over 1 over 0.
        let base = [2.0f32, 1.8, -6.0];
        let masked = [4.0f32, 3.0, -20.0];
        let (lp, lq) = (log_softmax(&base), log_softmax(&masked));
        let h: f64 = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
        let score = |w: usize| (1.0 + h) * lp[w] - h * lq[w];
        assert!(
            score(1) > score(0) && score(2) > score(1),
            "the written case must exercise both rules"
        );
        // Token 2 wins the contrast but is implausible; token 1 is chosen.
        assert_eq!(choose(&base, &masked, &Contrast::default()), (1, h));
        let off = Contrast {
            plausibility: 0.0,
            ..Default::default()
        };
        assert_eq!(choose(&base, &masked, &off).0, 2);
        // A cap of 0 is greedy.
        let greedy = Contrast {
            alpha_cap: Some(0.0),
            plausibility: 0.0,
        };
        assert_eq!(choose(&base, &masked, &greedy), (0, 0.0));
        // The same distribution on both sides changes nothing.
        assert_eq!(choose(&base, &base, &off).0, 0);
    }
}
