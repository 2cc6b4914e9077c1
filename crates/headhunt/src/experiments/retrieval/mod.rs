//! Retrieval scores (Wu et al. 2024).
//!
//! At each decoding step the model emits a token; a query head *copies* at that step when its
//! attention argmax lies inside the answer span of the needle and the token there is the one just
//! emitted. The paper's score is the number of distinct answer positions a head copied, over the
//! span length (at most 1); the paper's released code instead adds `1 / span` at every copying
//! step (`per-step`, which can exceed 1). A head's retrieval score is its mean over trials the
//! model answered (ROUGE-1 recall above 50); a *retrieval head* scores above 0.1.
//!
//! Beside the scores: the NIAH trials they come from ([`niah`]), masking heads to test that they
//! are causal ([`masking`]), and how an answer fails ([`failure`]).

pub mod compare;
pub mod failure;
pub mod masking;
pub mod niah;
pub mod outputs;
pub mod qrhead;

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Threshold on the mean score above which a head counts as a retrieval head.
pub const RETRIEVAL_THRESHOLD: f64 = 0.1;
/// ROUGE-1 recall (0-100) above which a trial counts as answered.
pub const SUCCESS_ROUGE: f64 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreVariant {
    /// Distinct answer positions copied / span length (the paper's definition).
    Paper,
    /// 1 / span length for every copying step (the paper's released code).
    PerStep,
}

/// Per-head scores of one trial, flat `[layer * n_heads + head]`.
///
/// `tokens[t]` is the token emitted at step t and `argmax[t]` every query head's argmax key
/// position in the forward pass that produced it. `answer` is the span of the needle's answer,
/// or several (a task with several values to copy), counted as one span of their total length.
pub fn trial_scores(prompt: &[u32], answer: &[Range<usize>], tokens: &[u32], argmax: &[Vec<u32>], variant: ScoreVariant) -> Vec<f64> {
    let n = argmax.first().map_or(0, Vec::len);
    let span = answer.iter().map(Range::len).sum::<usize>().max(1) as f64;
    let mut copied: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (t, &w) in tokens.iter().enumerate() {
        let Some(row) = argmax.get(t) else { break };
        for (h, &j) in row.iter().enumerate() {
            let j = j as usize;
            if answer.iter().any(|a| a.contains(&j)) && prompt.get(j) == Some(&w) {
                copied[h].push(j as u32);
            }
        }
    }
    copied
        .into_iter()
        .map(|mut c| match variant {
            ScoreVariant::PerStep => c.len() as f64 / span,
            ScoreVariant::Paper => {
                c.sort_unstable();
                c.dedup();
                c.len() as f64 / span
            }
        })
        .collect()
}

/// Scores per head over trials, in the paper's file format `{"L-H": [score per trial]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadScores {
    pub n_layers: usize,
    pub n_heads: usize,
    /// `[layer * n_heads + head]` -> one score per counted trial.
    pub scores: Vec<Vec<f64>>,
}

impl HeadScores {
    pub fn new(n_layers: usize, n_heads: usize) -> Self {
        HeadScores {
            n_layers,
            n_heads,
            scores: vec![Vec::new(); n_layers * n_heads],
        }
    }

    pub fn push_trial(&mut self, per_head: &[f64]) {
        for (s, &v) in self.scores.iter_mut().zip(per_head) {
            s.push(v);
        }
    }

    pub fn trials(&self) -> usize {
        self.scores.first().map_or(0, Vec::len)
    }

    /// Mean per head (0 for a head with no trials).
    pub fn means(&self) -> Vec<f64> {
        self.scores
            .iter()
            .map(|s| {
                if s.is_empty() {
                    0.0
                } else {
                    s.iter().sum::<f64>() / s.len() as f64
                }
            })
            .collect()
    }

    pub fn label(&self, i: usize) -> String {
        format!("{}-{}", i / self.n_heads, i % self.n_heads)
    }

    /// Heads by mean score, best first: (index, mean).
    pub fn ranked(&self) -> Vec<(usize, f64)> {
        let mut r: Vec<(usize, f64)> = self.means().into_iter().enumerate().collect();
        r.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        r
    }

    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = (0..self.scores.len())
            .map(|i| (self.label(i), serde_json::json!(self.scores[i])))
            .collect();
        serde_json::Value::Object(map)
    }

    /// Read `{"L-H": [scores]}` (headhunt's or the paper's published files). Shape comes from
    /// the largest layer and head indices present.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let map = value.as_object().context("a score file is a JSON object {\"L-H\": [scores]}")?;
        let mut entries = Vec::new();
        for (k, v) in map {
            let (l, h) = k
                .split_once('-')
                .and_then(|(l, h)| Some((l.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
                .with_context(|| format!("key `{k}` is not `layer-head`"))?;
            let scores: Vec<f64> = match v {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_f64().with_context(|| format!("`{k}` holds a non-number")))
                    .collect::<Result<_>>()?,
                serde_json::Value::Number(n) => vec![n.as_f64().unwrap_or(0.0)],
                _ => bail!("`{k}` must map to a list of scores"),
            };
            entries.push((l, h, scores));
        }
        if entries.is_empty() {
            bail!("the score file lists no heads");
        }
        let n_layers = entries.iter().map(|e| e.0).max().unwrap_or(0) + 1;
        let n_heads = entries.iter().map(|e| e.1).max().unwrap_or(0) + 1;
        if n_layers * n_heads > 1 << 20 {
            bail!("the score file names {n_layers} layers x {n_heads} heads, too many to be a model");
        }
        let mut out = HeadScores::new(n_layers, n_heads);
        for (l, h, s) in entries {
            out.scores[l * n_heads + h] = s;
        }
        Ok(out)
    }

    /// Scores from a score file (ours or the paper's published JSON) or a detection run's folder
    /// (its head_scores.json).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("head_scores.json")
        } else {
            path.to_owned()
        };
        let path = file.as_path();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(&value).with_context(|| format!("loading scores from {}", path.display()))
    }
}

/// What `summary.json` says about a set of scores.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trials_counted: usize,
    pub heads: usize,
    pub retrieval_heads: usize,
    pub fraction_above_threshold: f64,
    pub threshold: f64,
    /// Heads scoring above 0.5 in more than half of the counted trials.
    pub consistently_active: Vec<String>,
    /// Every head, best first.
    pub ranking: Vec<RankedHead>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RankedHead {
    pub head: String,
    pub layer: usize,
    pub index: usize,
    pub mean: f64,
    /// Share of counted trials in which the head scored above 0.5.
    pub active_share: f64,
}

impl Summary {
    pub fn of(scores: &HeadScores) -> Self {
        let trials = scores.trials();
        let ranking: Vec<RankedHead> = scores
            .ranked()
            .into_iter()
            .map(|(i, mean)| {
                let active = scores.scores[i].iter().filter(|&&s| s > 0.5).count();
                RankedHead {
                    head: scores.label(i),
                    layer: i / scores.n_heads,
                    index: i % scores.n_heads,
                    mean,
                    active_share: if trials == 0 { 0.0 } else { active as f64 / trials as f64 },
                }
            })
            .collect();
        let above = ranking.iter().filter(|r| r.mean > RETRIEVAL_THRESHOLD).count();
        Summary {
            trials_counted: trials,
            heads: ranking.len(),
            retrieval_heads: above,
            fraction_above_threshold: above as f64 / ranking.len().max(1) as f64,
            threshold: RETRIEVAL_THRESHOLD,
            consistently_active: ranking.iter().filter(|r| r.active_share > 0.5).map(|r| r.head.clone()).collect(),
            ranking,
        }
    }
}

/// Share of trials in which a head's score exceeds [`RETRIEVAL_THRESHOLD`] for the paper's
/// dynamic activation; at least this share makes a head "always on".
pub const ALWAYS_ON: f64 = 0.9;

/// Dynamic activation over the trials of several runs of one model (haystacks, needles):
/// per head, its mean score over all their trials and the share of them in which it scored
/// above 0.1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activation {
    pub n_heads: usize,
    pub trials: usize,
    pub mean: Vec<f64>,
    pub frequency: Vec<f64>,
}

impl Activation {
    pub fn of(sets: &[&HeadScores]) -> Result<Self> {
        let first = sets.first().context("no score sets to pool")?;
        if let Some(s) = sets.iter().find(|s| (s.n_layers, s.n_heads) != (first.n_layers, first.n_heads)) {
            bail!(
                "score sets of different shapes ({} x {} against {} x {} heads)",
                s.n_layers,
                s.n_heads,
                first.n_layers,
                first.n_heads
            );
        }
        let heads = first.n_layers * first.n_heads;
        let trials: usize = sets.iter().map(|s| s.trials()).sum();
        let pooled = |h: usize| sets.iter().flat_map(move |s| s.scores[h].iter().copied());
        let per_trial = |x: f64| if trials == 0 { 0.0 } else { x / trials as f64 };
        Ok(Activation {
            n_heads: first.n_heads,
            trials,
            mean: (0..heads).map(|h| per_trial(pooled(h).sum())).collect(),
            frequency: (0..heads)
                .map(|h| per_trial(pooled(h).filter(|&x| x > RETRIEVAL_THRESHOLD).count() as f64))
                .collect(),
        })
    }

    fn label(&self, i: usize) -> String {
        format!("{}-{}", i / self.n_heads, i % self.n_heads)
    }

    /// Heads above 0.1 in at least 90% of the trials, most often first.
    pub fn always_on(&self) -> Vec<String> {
        self.by_frequency(|f, _| f >= ALWAYS_ON)
    }

    /// Retrieval heads (mean above 0.1) active in fewer than 90% of the trials: those that
    /// retrieve in some contexts only.
    pub fn sometimes(&self) -> Vec<String> {
        self.by_frequency(|f, m| f < ALWAYS_ON && m > RETRIEVAL_THRESHOLD)
    }

    fn by_frequency(&self, keep: impl Fn(f64, f64) -> bool) -> Vec<String> {
        let mut idx: Vec<usize> = (0..self.mean.len()).filter(|&i| keep(self.frequency[i], self.mean[i])).collect();
        idx.sort_by(|&a, &b| self.frequency[b].total_cmp(&self.frequency[a]).then(a.cmp(&b)));
        idx.into_iter().map(|i| self.label(i)).collect()
    }

    /// Frequency against mean score, the heads of either kind labelled.
    pub fn plot(&self, title: &str) -> crate::output::plot::Scatter {
        let named: Vec<String> = self.always_on().into_iter().chain(self.sometimes()).collect();
        crate::output::plot::Scatter {
            title: title.to_owned(),
            x_label: "mean retrieval score".into(),
            y_label: "share of answered trials with score > 0.1".into(),
            points: self.mean.iter().copied().zip(self.frequency.iter().copied()).collect(),
            labels: (0..self.mean.len())
                .filter(|&i| named.contains(&self.label(i)))
                .map(|i| (i, self.label(i)))
                .collect(),
        }
    }
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Ranks with ties sharing their average rank (1-based).
pub(crate) fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman rank correlation (Pearson of average ranks).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Heads per trial keyed by label, for JSON records.
pub fn labelled(n_heads: usize, per_head: &[f64]) -> BTreeMap<String, f64> {
    per_head
        .iter()
        .enumerate()
        .filter(|(_, &v)| v > 0.0)
        .map(|(i, &v)| (format!("{}-{}", i / n_heads, i % n_heads), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_scores_follow_both_definitions() {
        // Prompt positions 10..14 hold the answer tokens 7 8 9 7.
        let mut prompt = vec![0u32; 20];
        prompt[10..14].copy_from_slice(&[7, 8, 9, 7]);
        let answer = 10..14;
        // Two heads; head 0 copies 7 (at 10), 8 (at 11), then 7 again at 10; head 1 looks at the
        // right place but the emitted token differs, then copies 9.
        let tokens = [7, 8, 7, 9];
        let argmax = vec![vec![10, 11], vec![11, 3], vec![10, 12], vec![19, 12]];
        let paper = trial_scores(&prompt, std::slice::from_ref(&answer), &tokens, &argmax, ScoreVariant::Paper);
        let step = trial_scores(&prompt, std::slice::from_ref(&answer), &tokens, &argmax, ScoreVariant::PerStep);
        assert_eq!(paper, vec![2.0 / 4.0, 1.0 / 4.0]);
        assert_eq!(step, vec![3.0 / 4.0, 1.0 / 4.0]);
    }

    #[test]
    fn paper_format_round_trips() {
        let mut s = HeadScores::new(2, 3);
        s.push_trial(&[0.0, 0.6, 0.0, 1.0, 0.0, 0.25]);
        s.push_trial(&[0.0, 0.7, 0.0, 0.9, 0.0, 0.5]);
        let back = HeadScores::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.ranked()[0].0, 3);
        let sum = Summary::of(&s);
        assert_eq!(sum.retrieval_heads, 3);
        assert_eq!(sum.consistently_active, vec!["1-0".to_string(), "0-1".to_string()]);
        assert!(HeadScores::from_json(&serde_json::json!({"x": [1]})).is_err());
    }

    #[test]
    fn correlations() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[1.0, 10.0, 100.0, 1000.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
    }
}
