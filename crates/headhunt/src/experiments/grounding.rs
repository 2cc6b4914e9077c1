//! Grounding: how far the context supports each generated token, read from what the model's
//! attention heads did while emitting it.
//!
//! At decoding step t the model emits token w_t from the forward pass whose query sits at
//! position P - 1 + t (P: the prompt's length). The engine records there, per query head, its
//! attention argmax and its attention mass on the prompt (keys before P): a few numbers per head
//! per step. From them:
//!
//! - **copy**: a head copies w_t when its argmax lies in the prompt on a token equal to w_t (the
//!   retrieval score's test, over the whole prompt rather than a needle);
//! - **lookback ratio** (Lookback Lens, Chuang et al. 2024): the head's mean attention per prompt
//!   token against its mean per generated token before w_t, `A_ctx / (A_ctx + A_new)` with
//!   `A_ctx = mass / P` and `A_new = (1 - mass) / t` (1 at the first step, which sees no
//!   generated token).
//!
//! The training-free signal uses only the retrieval heads of a detection run (mean score above
//! 0.1), weighted by their score: a token's **support** is the weighted share of them that copy
//! it; an answer's, the mean over its tokens. Lookback Lens instead feeds every head's mean
//! lookback ratio to a trained classifier.

use anyhow::{bail, Context, Result};
use headhunt_engine::{generate_from, Capture, Hooks, Model, Positions, Run, RunOptions, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};

/// What the engine records at one decoding step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundedStep {
    pub token: u32,
    /// Log-probability of the token under the model's distribution at this step.
    pub logprob: f32,
    /// Per query head (`layer * n_heads + head`): attention mass on the prompt's positions.
    pub mass: Vec<f32>,
    /// Per query head: the key position of its attention argmax.
    pub argmax: Vec<u32>,
}

/// The captures a run needs for the signal: every layer's argmax and prompt mass at the last
/// position of each forward pass (the query that emits the next token).
pub fn captures(n_layers: usize, prompt_len: usize) -> Vec<Capture> {
    (0..n_layers)
        .flat_map(|l| {
            [
                Capture::pattern_argmax(l, Positions::Last),
                Capture::pattern_mass_before(l, Positions::Last, prompt_len),
            ]
        })
        .collect()
}

/// A run of `model` for a prompt of `prompt_len` tokens with the signal's captures and room for
/// `capacity` positions.
pub fn run(model: &Model, prompt_len: usize, capacity: usize) -> Result<Run<'_>> {
    let mut hooks = Hooks::default();
    for cap in captures(model.config.n_layers, prompt_len) {
        hooks = hooks.capture(cap);
    }
    Ok(model.run(
        hooks,
        RunOptions {
            capacity,
            ..Default::default()
        },
    )?)
}

/// Log-probability of `token` under softmax(`logits`).
pub fn log_prob(logits: &[f32], token: u32) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&x| ((x - m) as f64).exp()).sum();
    (logits[token as usize] - m) - z.ln() as f32
}

/// Decode from `logits` (the run's last position, the query for the first new token) with
/// `choose` picking tokens, until EOS, `max_new` or `stop`; the run must carry [`captures`] for
/// `prompt_len`. Returns each new token with its signal.
pub fn decode(
    run: &mut Run<'_>,
    logits: Vec<f32>,
    max_new: usize,
    mut choose: impl FnMut(&[f32]) -> u32,
    stop: impl FnMut(&[u32]) -> bool,
) -> Result<Vec<GroundedStep>> {
    let first = run.tokens().len().checked_sub(1).context("decode after a prompt")?;
    let mut logprobs = Vec::new();
    let tokens = generate_from(
        run,
        logits,
        max_new,
        |l| {
            let t = choose(l);
            logprobs.push(log_prob(l, t));
            t
        },
        stop,
    )?;
    steps_of(run, first, &tokens, &logprobs)
}

/// The steps of `tokens` emitted from query positions `first`, `first + 1`, ... of `run`.
fn steps_of(run: &Run<'_>, first: usize, tokens: &[u32], logprobs: &[f32]) -> Result<Vec<GroundedStep>> {
    let c = &run.model().config;
    let heads = c.n_layers * c.n_heads;
    let mut steps: Vec<GroundedStep> = tokens
        .iter()
        .zip(logprobs)
        .map(|(&token, &logprob)| GroundedStep {
            token,
            logprob,
            mass: vec![f32::NAN; heads],
            argmax: vec![u32::MAX; heads],
        })
        .collect();
    let rec = &run.recording;
    for l in 0..c.n_layers {
        let (mass, argmax) = (rec.mass.get(&l), rec.argmax.get(&l));
        let (Some(mass), Some(argmax)) = (mass, argmax) else {
            bail!("the run records no attention mass and argmax at layer {l} (build it with ground::captures)");
        };
        let span = l * c.n_heads..(l + 1) * c.n_heads;
        for (pos, m) in mass {
            if let Some(s) = pos.checked_sub(first).and_then(|t| steps.get_mut(t)) {
                s.mass[span.clone()].copy_from_slice(m);
            }
        }
        for (pos, a) in argmax {
            if let Some(s) = pos.checked_sub(first).and_then(|t| steps.get_mut(t)) {
                s.argmax[span.clone()].copy_from_slice(a);
            }
        }
    }
    if steps.iter().any(|s| s.mass.iter().any(|m| m.is_nan())) {
        bail!("a decoding step was not recorded");
    }
    Ok(steps)
}

/// Lookback ratio of a head at step `t` (0-based) whose attention mass on a prompt of
/// `prompt_len` tokens is `mass`.
pub fn lookback_ratio(mass: f32, t: usize, prompt_len: usize) -> f64 {
    if t == 0 {
        return 1.0;
    }
    let ctx = mass as f64 / prompt_len as f64;
    let new = (1.0 - mass as f64).max(0.0) / t as f64;
    if ctx + new > 0.0 {
        ctx / (ctx + new)
    } else {
        0.5
    }
}

/// Lookback Lens's features of a span of steps (the first at t = `t0`): every head's lookback
/// ratio averaged over the span.
pub fn lookback_features(steps: &[GroundedStep], t0: usize, prompt_len: usize) -> Vec<f64> {
    let heads = steps.first().map_or(0, |s| s.mass.len());
    let n = steps.len().max(1) as f64;
    (0..heads)
        .map(|h| {
            steps
                .iter()
                .enumerate()
                .map(|(i, s)| lookback_ratio(s.mass[h], t0 + i, prompt_len))
                .sum::<f64>()
                / n
        })
        .collect()
}

/// Whether head `h` copies the step's token from the prompt.
pub fn copies(prompt: &[u32], step: &GroundedStep, h: usize) -> bool {
    copies_token(prompt, step.argmax[h], step.token)
}

/// Whether a head whose attention argmax is on key `key` copies `token`: the key is in the
/// prompt and holds that token.
pub fn copies_token(prompt: &[u32], key: u32, token: u32) -> bool {
    prompt.get(key as usize) == Some(&token)
}

/// The retrieval heads of a detection run and their weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grounder {
    /// (head `layer * n_heads + head`, mean retrieval score)
    pub heads: Vec<(usize, f64)>,
}

/// An answer's signals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Mean over tokens of the retrieval heads' weighted copy share (training-free).
    pub support: f64,
    /// Mean over tokens of the retrieval heads' weighted lookback ratio (training-free).
    pub lookback: f64,
    /// Mean log-probability of the tokens (the model's confidence).
    pub confidence: f64,
}

impl Grounder {
    /// The heads scoring above 0.1.
    pub fn from_scores(scores: &HeadScores) -> Result<Self> {
        let heads: Vec<(usize, f64)> = scores
            .means()
            .into_iter()
            .enumerate()
            .filter(|&(_, m)| m > RETRIEVAL_THRESHOLD)
            .collect();
        if heads.is_empty() {
            bail!("the scores name no retrieval head (none above {RETRIEVAL_THRESHOLD})");
        }
        Ok(Grounder { heads })
    }

    fn weight(&self) -> f64 {
        self.heads.iter().map(|h| h.1).sum()
    }

    /// The weighted share of retrieval heads that copy the step's token from the prompt.
    pub fn support(&self, prompt: &[u32], step: &GroundedStep) -> f64 {
        self.heads
            .iter()
            .filter(|&&(h, _)| copies(prompt, step, h))
            .map(|h| h.1)
            .sum::<f64>()
            / self.weight()
    }

    /// The retrieval heads' weighted lookback ratio at step `t`.
    pub fn lookback(&self, step: &GroundedStep, t: usize, prompt_len: usize) -> f64 {
        self.heads
            .iter()
            .map(|&(h, w)| w * lookback_ratio(step.mass[h], t, prompt_len))
            .sum::<f64>()
            / self.weight()
    }

    /// The signals of an answer: `steps` from step `t0` on.
    pub fn answer(&self, prompt: &[u32], steps: &[GroundedStep], t0: usize) -> Signal {
        let n = steps.len().max(1) as f64;
        Signal {
            support: steps.iter().map(|s| self.support(prompt, s)).sum::<f64>() / n,
            lookback: steps
                .iter()
                .enumerate()
                .map(|(i, s)| self.lookback(s, t0 + i, prompt.len()))
                .sum::<f64>()
                / n,
            confidence: steps.iter().map(|s| s.logprob as f64).sum::<f64>() / n,
        }
    }
}

/// The steps that make up an answer's text: special tokens (end of turn) and whitespace-only
/// tokens (the line break that ends it) are left out, with their index kept.
pub fn answer_steps<'s>(tok: &Tokenizer, steps: &'s [GroundedStep]) -> Vec<(usize, &'s GroundedStep)> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !tok.is_special(s.token) && tok.decode(&[s.token], false).is_ok_and(|t| !t.trim().is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookback_ratio_follows_lookback_lens() {
        // Half the mass on 100 prompt tokens, half on 4 generated ones: 0.005 against 0.125.
        let r = lookback_ratio(0.5, 4, 100);
        assert!((r - 0.005 / 0.130).abs() < 1e-9);
        assert_eq!(lookback_ratio(0.2, 0, 10), 1.0);
        assert_eq!(lookback_ratio(1.0, 3, 10), 1.0);
        assert_eq!(lookback_ratio(0.0, 3, 10), 0.0);
    }

    #[test]
    fn support_weighs_the_copying_retrieval_heads() {
        let g = Grounder {
            heads: vec![(0, 0.6), (2, 0.2)],
        };
        let prompt = [5, 9, 7, 9];
        // Head 0 looks at a 9 and the token is 9; head 2 at a 7; head 1 (not a retrieval head)
        // at a 9 too.
        let step = GroundedStep {
            token: 9,
            logprob: -0.5,
            mass: vec![0.9, 0.5, 0.3],
            argmax: vec![3, 1, 2],
        };
        assert!((g.support(&prompt, &step) - 0.75).abs() < 1e-12);
        // An argmax past the prompt (on a generated token) does not copy.
        let later = GroundedStep {
            argmax: vec![4, 4, 4],
            ..step.clone()
        };
        assert_eq!(g.support(&prompt, &later), 0.0);
        let s = g.answer(&prompt, &[step.clone(), later], 0);
        assert!((s.support - 0.375).abs() < 1e-12);
        assert!((s.confidence + 0.5).abs() < 1e-12);
        let second = (0.6 * lookback_ratio(0.9, 1, 4) + 0.2 * lookback_ratio(0.3, 1, 4)) / 0.8;
        assert!((s.lookback - (1.0 + second) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn log_prob_is_a_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((log_prob(&l, 2) as f64 - (3.0 - z.ln())).abs() < 1e-6);
    }
}
