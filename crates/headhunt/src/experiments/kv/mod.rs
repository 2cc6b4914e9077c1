//! Retrieval-aware KV caches: keep the full cache only for the key/value heads whose query heads
//! retrieve, and a few sink tokens plus a recent window for the rest (as DuoAttention and
//! RazorAttention do), against the same budget spent on random heads or on a uniform window.
//! Layers with their own sliding window (Gemma's local layers) are already windowed and do not
//! count.
//!
//! [`budget`]: the `headhunt kv` study over budgets; [`select`]: positions chosen per head (SnapKV, HeadKV) rather than whole heads kept;
//! [`select_study`]: the kv-select study's trials and summary.

pub mod budget;
pub mod select;
pub mod select_study;

use anyhow::{bail, Result};
use headhunt_engine::{KvPolicy, Model};
use serde::{Deserialize, Serialize};

use crate::experiments::retrieval::HeadScores;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum KvChoice {
    /// Every eligible head full.
    Full,
    /// The `budget` share of eligible KV heads with the best retrieval scores full.
    Retrieval { budget: f64 },
    /// The same share, drawn at random (seeded).
    Random { budget: f64, seed: u64 },
    /// Every eligible head sink + `window`.
    Uniform { window: usize },
}

impl KvChoice {
    pub fn label(&self) -> String {
        match self {
            KvChoice::Full => "full".into(),
            KvChoice::Retrieval { budget } => format!("retrieval-{budget}"),
            KvChoice::Random { budget, seed } => format!("random-{budget}-seed{seed}"),
            KvChoice::Uniform { window } => format!("uniform-window{window}"),
        }
    }
}

/// (layer, KV head) pairs whose cache a policy may compress: those of layers attending globally.
pub fn eligible(model: &Model) -> Vec<(usize, usize)> {
    let c = &model.config;
    (0..c.n_layers)
        .filter(|&l| c.layers[l].window.is_none())
        .flat_map(|l| (0..c.n_kv_heads).map(move |g| (l, g)))
        .collect()
}

/// A KV head's retrieval score: the best mean score among the query heads that share it (the
/// eligible heads' entries of [`crate::experiments::kv::select::kv_prior`]).
pub fn kv_head_scores(model: &Model, scores: &HeadScores) -> Vec<f64> {
    let c = &model.config;
    let all = crate::experiments::kv::select::kv_prior(c, &scores.means());
    eligible(model).iter().map(|&(l, g)| all[l * c.n_kv_heads + g]).collect()
}

/// Eligible heads kept full for a budget share.
pub fn full_count(model: &Model, budget: f64) -> usize {
    (budget.clamp(0.0, 1.0) * eligible(model).len() as f64).round() as usize
}

/// The per-layer, per-KV-head policy for a choice.
pub fn policy(model: &Model, choice: KvChoice, scores: Option<&HeadScores>, sink: usize, window: usize) -> Result<Vec<Vec<KvPolicy>>> {
    let c = &model.config;
    let heads = eligible(model);
    if heads.is_empty() {
        bail!("every layer of this model has its own sliding window: there is no global KV cache to compress");
    }
    let compressed = |window| KvPolicy::SinkWindow { sink, window };
    let mut out = vec![vec![KvPolicy::Full; c.n_kv_heads]; c.n_layers];
    let keep: Vec<usize> = match choice {
        KvChoice::Full => (0..heads.len()).collect(),
        KvChoice::Uniform { window } => {
            for &(l, g) in &heads {
                out[l][g] = compressed(window);
            }
            return Ok(out);
        }
        KvChoice::Retrieval { budget } => {
            let Some(scores) = scores else {
                bail!("a retrieval-aware cache needs --scores")
            };
            let s = kv_head_scores(model, scores);
            let mut order: Vec<usize> = (0..heads.len()).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            order.truncate(full_count(model, budget));
            order
        }
        KvChoice::Random { budget, seed } => {
            let mut order: Vec<usize> = (0..heads.len()).collect();
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            order.truncate(full_count(model, budget));
            order
        }
    };
    for (i, &(l, g)) in heads.iter().enumerate() {
        if !keep.contains(&i) {
            out[l][g] = compressed(window);
        }
    }
    Ok(out)
}

/// The window that gives a uniform policy the same cache rows, at `length` positions, as
/// keeping `full` of `n` heads full and the rest at sink + `window`.
pub fn matching_uniform_window(n: usize, full: usize, length: usize, sink: usize, window: usize) -> usize {
    let rows = full * length + (n - full) * (sink + window).min(length);
    (rows / n.max(1)).saturating_sub(sink).max(1)
}
