//! Which heads to mask and how: the top-K retrieval heads of a score file, K random heads drawn
//! only from those that are not retrieval heads, or a list; silenced by zeroing their query
//! (uniform attention), their output, or replacing it by its mean over reference text.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use headhunt_engine::{Capture, HookPoint, Hooks, Intervention, MaskMode, Model, Phase, Positions, RunOptions};
use serde::{Deserialize, Serialize};

use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};

/// A query head: (layer, head).
pub type Head = (usize, usize);

pub fn head_label(h: Head) -> String {
    format!("{}-{}", h.0, h.1)
}

pub fn parse_heads(spec: &str) -> Result<Vec<Head>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (l, h) = s
                .trim()
                .split_once('-')
                .with_context(|| format!("`{s}` is not a head: write LAYER-HEAD, e.g. 14-3"))?;
            Ok((
                l.parse().with_context(|| format!("bad layer in `{s}`"))?,
                h.parse().with_context(|| format!("bad head in `{s}`"))?,
            ))
        })
        .collect()
}

/// The `K` heads with the highest mean score.
pub fn top_heads(scores: &HeadScores, k: usize) -> Vec<Head> {
    scores
        .ranked()
        .into_iter()
        .take(k)
        .map(|(i, _)| (i / scores.n_heads, i % scores.n_heads))
        .collect()
}

/// `K` heads drawn uniformly (seeded) from those scoring at or below the retrieval threshold, so
/// a random draw never contains a retrieval head.
pub fn random_heads(scores: &HeadScores, k: usize, seed: u64) -> Result<Vec<Head>> {
    let means = scores.means();
    let mut pool: Vec<Head> = (0..means.len())
        .filter(|&i| means[i] <= RETRIEVAL_THRESHOLD)
        .map(|i| (i / scores.n_heads, i % scores.n_heads))
        .collect();
    if pool.len() < k {
        bail!(
            "only {} heads score at or below {RETRIEVAL_THRESHOLD}; cannot draw {k} random non-retrieval heads",
            pool.len()
        );
    }
    // Fisher-Yates with SplitMix64: the same draw for the same seed on every machine.
    let mut rng = crate::experiments::retrieval::niah::haystack::Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
    for i in (1..pool.len()).rev() {
        let j = rng.below(i + 1);
        pool.swap(i, j);
    }
    let mut heads: Vec<Head> = pool.into_iter().take(k).collect();
    heads.sort_unstable();
    Ok(heads)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MaskModeArg {
    /// Zero the head's query: uniform attention over the keys it sees (the paper's masking).
    #[default]
    Uniform,
    /// Zero the head's output.
    Zero,
    /// Replace the head's output by its mean over needle-free reference text.
    Mean,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseArg {
    /// While generating the answer only.
    Decode,
    /// While reading the prompt and while generating.
    #[default]
    All,
}

impl From<PhaseArg> for Phase {
    fn from(p: PhaseArg) -> Self {
        match p {
            PhaseArg::Decode => Phase::Decode,
            PhaseArg::All => Phase::Both,
        }
    }
}

/// How masked heads are silenced and when.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskHow {
    pub mode: MaskModeArg,
    pub phase: PhaseArg,
}

impl MaskHow {
    /// Interventions that mask `heads`. `--mask-mode mean` needs reference text (token ids),
    /// over whose positions each head's output is averaged.
    pub fn interventions(&self, model: &Model, heads: &[Head], reference: &[u32]) -> Result<Vec<Intervention>> {
        let c = &model.config;
        if let Some(h) = heads.iter().find(|h| h.0 >= c.n_layers || h.1 >= c.n_heads) {
            bail!(
                "head {} does not exist ({} layers x {} heads)",
                head_label(*h),
                c.n_layers,
                c.n_heads
            );
        }
        let means = match self.mode {
            MaskModeArg::Mean => mean_head_outputs(model, heads, reference)?,
            _ => BTreeMap::new(),
        };
        Ok(heads
            .iter()
            .map(|&(layer, head)| Intervention::MaskHead {
                layer,
                head,
                mode: match self.mode {
                    MaskModeArg::Uniform => MaskMode::Uniform,
                    MaskModeArg::Zero => MaskMode::Zero,
                    MaskModeArg::Mean => MaskMode::Mean(means[&(layer, head)].clone()),
                },
                phase: self.phase.into(),
            })
            .collect())
    }

    /// The settings that identify a masked run: the heads, the mode and the phase.
    pub fn settings(&self, heads: &[Head]) -> serde_json::Value {
        serde_json::json!({
            "masked_heads": heads.iter().map(|&h| head_label(h)).collect::<Vec<_>>(),
            "mask_mode": self.mode,
            "mask_phase": self.phase,
        })
    }
}

/// The second score file of `--versus`, checked against the first's shape.
pub fn load_versus(path: &Path, scores: &HeadScores) -> Result<HeadScores> {
    let versus = HeadScores::load(path)?;
    if (versus.n_layers, versus.n_heads) != (scores.n_layers, scores.n_heads) {
        bail!(
            "--versus {}: {} layers x {} heads, --scores has {} x {}",
            path.display(),
            versus.n_layers,
            versus.n_heads,
            scores.n_layers,
            scores.n_heads
        );
    }
    Ok(versus)
}

/// Check a score file fits the model.
pub fn check_scores_fit(scores: &HeadScores, model: &Model) -> Result<()> {
    let c = &model.config;
    if (scores.n_layers, scores.n_heads) != (c.n_layers, c.n_heads) {
        bail!(
            "the score file describes {} layers x {} heads; this model has {} x {}",
            scores.n_layers,
            scores.n_heads,
            c.n_layers,
            c.n_heads
        );
    }
    Ok(())
}

/// Each head's `hook_z` averaged over every position of the reference tokens.
pub fn mean_head_outputs(model: &Model, heads: &[Head], reference: &[u32]) -> Result<BTreeMap<Head, Vec<f32>>> {
    let c = &model.config;
    let mut layers: Vec<usize> = heads.iter().map(|h| h.0).collect();
    layers.sort_unstable();
    layers.dedup();
    let hooks = layers
        .iter()
        .fold(Hooks::default(), |h, &l| h.capture(Capture::new(HookPoint::Z(l), Positions::All)));
    let mut run = model.run(hooks, RunOptions::default())?;
    run.prefill(reference)?;
    let mut out = BTreeMap::new();
    for &(l, h) in heads {
        let rows = run.recording.get(HookPoint::Z(l)).context("hook_z was captured")?;
        let mut mean = vec![0.0f64; c.d_head];
        for i in 0..rows.positions.len() {
            for (m, &v) in mean.iter_mut().zip(&rows.row(i)[h * c.d_head..(h + 1) * c.d_head]) {
                *m += v as f64;
            }
        }
        let n = rows.positions.len().max(1) as f64;
        out.insert((l, h), mean.into_iter().map(|m| (m / n) as f32).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores() -> HeadScores {
        let mut s = HeadScores::new(6, 5);
        // Heads 0..8 are retrieval heads (mean > 0.1), the rest are not.
        s.push_trial(
            &(0..30)
                .map(|i| if i < 8 { 0.9 - i as f64 * 0.05 } else { 0.1 * (i % 2) as f64 })
                .collect::<Vec<_>>(),
        );
        s
    }

    #[test]
    fn random_draws_never_take_retrieval_heads_and_repeat_by_seed() {
        let s = scores();
        let means = s.means();
        for seed in 0..50 {
            let a = random_heads(&s, 12, seed).unwrap();
            assert_eq!(a.len(), 12);
            assert!(
                a.iter().all(|&(l, h)| means[l * 5 + h] <= RETRIEVAL_THRESHOLD),
                "seed {seed}: {a:?}"
            );
            assert_eq!(a, random_heads(&s, 12, seed).unwrap());
        }
        assert_ne!(random_heads(&s, 12, 1).unwrap(), random_heads(&s, 12, 2).unwrap());
        assert!(random_heads(&s, 23, 0).is_err(), "only 22 non-retrieval heads exist");
    }

    #[test]
    fn top_heads_follow_the_ranking() {
        assert_eq!(top_heads(&scores(), 3), vec![(0, 0), (0, 1), (0, 2)]);
        assert_eq!(parse_heads("14-3, 2-0").unwrap(), vec![(14, 3), (2, 0)]);
        assert!(parse_heads("14").is_err());
    }
}
