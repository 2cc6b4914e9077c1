//! Query-focused retrieval heads (QRHead, Zhang et al., EMNLP 2025): a second detector beside
//! Wu's copy score.
//!
//! A head's QR score on one example follows QRHead's detection (its `attn_retriever.py`):
//!
//! 1. the attention every key receives from the query's tokens, averaged over those tokens, with
//!    the real question and again with a content-free one (`N/A`) in its place;
//! 2. per key, the first minus the second: the calibration QRHead takes from ICR (Chen et al.,
//!    ICLR 2025), which removes what a head pays a key whatever is asked;
//! 3. over the gold span's keys, the sum of these calibrated values, leaving out the outliers
//!    below the span's mean minus two (sample) standard deviations.
//!
//! The query's tokens are the question and everything after it (the answer cue, the chat
//! template's closing tokens), as QRHead's query span runs to the prompt's end; they start where
//! the two prompts first differ, so the score needs no knowledge of the prompt's format (QRHead's
//! span also holds the fixed instruction before the question, whose rows are the same in both
//! prompts). Scores average over examples and come in the `{"L-H": [...]}` format of Wu's, so
//! `headhunt compare` and `--scores` take them.
//!
//! Both prompts share everything before the question: it is prefilled once, captured only at
//! the query's positions, and the content-free question continues from the same prefix.

use std::ops::Range;
use std::time::Instant;

use anyhow::{bail, Result};
use headhunt_engine::{Capture, HookPoint, Hooks, Model, Positions, Recording, RunOptions};
use serde::{Deserialize, Serialize};

use super::niah::trial::{TrialRunner, TrialSpec};
use super::HeadScores;
use crate::output::plot::Heatmap;

/// ICR's and QRHead's content-free query.
pub const NULL_QUESTION: &str = "N/A";

/// The query positions of a prompt `a` and of its content-free form `b`: from their first
/// differing token to the end of each.
pub fn query_spans(a: &[u32], b: &[u32]) -> (Range<usize>, Range<usize>) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (prefix..a.len(), prefix..b.len())
}

/// Per head (`layer * n_heads + head`), the attention each key before `queries.start` receives
/// from the recorded query positions `queries`, averaged over them.
pub fn mean_attention(recording: &Recording, queries: &Range<usize>, n_heads: usize) -> Vec<Vec<f64>> {
    let keys = queries.start;
    let mut out = Vec::new();
    for rows in recording.patterns.values() {
        let mine: Vec<_> = rows.iter().filter(|r| queries.contains(&r.position)).collect();
        for h in 0..n_heads {
            let mut mean = vec![0.0f64; keys];
            for row in &mine {
                let probs = &row.values[h * row.n_keys..(h + 1) * row.n_keys];
                for (m, &p) in mean.iter_mut().zip(probs) {
                    *m += f64::from(p);
                }
            }
            mean.iter_mut().for_each(|m| *m /= mine.len().max(1) as f64);
            out.push(mean);
        }
    }
    out
}

/// QRHead's sum over one span's calibrated values, without those below the mean minus two
/// sample standard deviations (torch's `std`, divided by n - 1).
pub fn sum_without_outliers(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if values.len() < 2 {
        return values.iter().sum();
    }
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    values.iter().filter(|&&v| v > mean - 2.0 * std).sum()
}

fn capture_at(model: &Model, positions: Range<usize>) -> Hooks {
    let mut hooks = Hooks::default();
    for l in 0..model.config.n_layers {
        hooks = hooks.capture(Capture::new(HookPoint::Pattern(l), Positions::At(positions.clone().collect())));
    }
    hooks
}

/// The calibrated attention of a prompt's query: per head (`layer * n_heads + head`), per key
/// before the query, the attention from the query's tokens averaged over them, less the same
/// with the content-free question of `null` in its place; and the query's positions in `prompt`.
/// The shared part is prefilled once; the content-free question continues from it.
pub fn calibrated_attention(model: &Model, prompt: &[u32], null: &[u32]) -> Result<(Range<usize>, Vec<Vec<f64>>)> {
    let (query, null_query) = query_spans(prompt, null);
    if query.is_empty() || null_query.is_empty() || prompt[query.clone()] == null[null_query.clone()] {
        bail!("the prompt and its content-free form do not differ in a question");
    }
    let n_heads = model.config.n_heads;
    let options = RunOptions {
        capacity: prompt.len().max(null.len()),
        keep_windows: true,
        ..Default::default()
    };
    let mut run = model.run(capture_at(model, query.clone()), options)?;
    run.prefill(prompt)?;
    let mut calibrated = mean_attention(&run.recording, &query, n_heads);
    run.truncate(query.start)?;
    run.recording.clear();
    run.set_hooks(capture_at(model, null_query.clone()))?;
    run.prefill(&null[null_query.clone()])?;
    for (c, n) in calibrated.iter_mut().zip(mean_attention(&run.recording, &null_query, n_heads)) {
        c.iter_mut().zip(n).for_each(|(c, n)| *c -= n);
    }
    Ok((query, calibrated))
}

/// A span's score from per-key calibrated values: QRHead's sum without the low outliers.
pub fn span_score(calibrated: &[f64], span: &Range<usize>) -> f64 {
    sum_without_outliers(&calibrated[span.start.min(calibrated.len())..span.end.min(calibrated.len())])
}

/// One example's QR score per head: `prompt` asks the real question, `null` the content-free one
/// in its place; `gold` are the spans the question is about (before the question).
pub fn qr_scores(model: &Model, prompt: &[u32], null: &[u32], gold: &[Range<usize>]) -> Result<Vec<f64>> {
    let (query, _) = query_spans(prompt, null);
    if gold.iter().any(|g| g.end > query.start) {
        bail!("the gold span must come before the question (at {})", query.start);
    }
    let (_, calibrated) = calibrated_attention(model, prompt, null)?;
    Ok(calibrated
        .iter()
        .map(|head| gold.iter().map(|g| span_score(head, g)).sum())
        .collect())
}

/// The heads' map of QR scores: its scale starts below zero where the content-free question drew
/// more attention than the real one.
pub fn qr_heatmap(title: &str, scores: &HeadScores) -> Heatmap {
    let means = scores.means();
    let mut map = Heatmap::heads(title, scores.n_layers, scores.n_heads, means.clone(), "mean calibrated QR score");
    map.range.0 = means.into_iter().fold(0.0, f64::min);
    map
}

/// One NIAH example scored for QRHead; one line of a QRHead run's `trials.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QrRecord {
    #[serde(flatten)]
    pub spec: TrialSpec,
    pub prompt_tokens: usize,
    /// The needle's positions (the gold span) and the query's (the question to the prompt's end).
    pub needle_span: [usize; 2],
    pub query_span: [usize; 2],
    /// Per head, the calibrated QR score.
    pub scores: Vec<f64>,
    pub seconds: f64,
}

/// QR scores of one NIAH trial: the needle is the gold span, its question the query.
pub fn qr_trial(runner: &TrialRunner<'_>, spec: &TrialSpec) -> Result<QrRecord> {
    let start = Instant::now();
    let prompt = runner.prompt(spec)?;
    let null = runner.prompt_asking(spec, NULL_QUESTION)?;
    let (query, _) = query_spans(&prompt.ids, &null.ids);
    let scores = qr_scores(runner.model, &prompt.ids, &null.ids, std::slice::from_ref(&prompt.needle))?;
    Ok(QrRecord {
        spec: *spec,
        prompt_tokens: prompt.ids.len(),
        needle_span: [prompt.needle.start, prompt.needle.end],
        query_span: [query.start, query.end],
        scores,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl crate::runner::store::Keyed for QrRecord {
    fn key(&self) -> String {
        self.spec.key()
    }
}

impl crate::runner::trials::Status for QrRecord {
    fn status(&self) -> String {
        format!("{} tokens", self.prompt_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_runs_from_the_first_difference_to_the_end() {
        let a = [1, 2, 3, 10, 11, 12, 7, 8];
        let b = [1, 2, 3, 20, 7, 8];
        assert_eq!(query_spans(&a, &b), (3..8, 3..6));
    }

    #[test]
    fn outliers_below_two_deviations_are_left_out() {
        // mean 0.125, sample sd 1.81 (n - 1 = 7): the threshold is -3.49, so -4 goes and -1
        // stays.
        let x = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -4.0];
        assert_eq!(sum_without_outliers(&x), 5.0);
        assert_eq!(sum_without_outliers(&[0.25]), 0.25);
    }
}
