//! What retrieval runs write beside their trials: a detection run's aggregate (head scores,
//! summary, heatmaps, for Wu's detector and QRHead's), and any NIAH run's summary, failure
//! examples and depth x length map.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::failure::{classify, evidence, AnswerClass, Evidence};
use super::masking::{top_heads, Head};
use super::niah::grid::{Grid, GridShape};
use super::niah::needle::Needle;
use super::niah::trial::TrialRecord;
use super::qrhead::{qr_heatmap, QrRecord};
use super::{HeadScores, ScoreVariant, Summary};
use crate::output::plot::{Figure, Heatmap};
use crate::runner::store::{write_atomic, Keyed};

/// The aggregate of a detection run.
pub struct DetectReport {
    pub model: String,
    pub trials: usize,
    pub answered: usize,
    pub mean_rouge: f64,
    pub scores: HeadScores,
    pub summary: Summary,
}

impl DetectReport {
    pub fn table(&self, top: usize) -> String {
        let s = &self.summary;
        let mut t = format!(
            "{}: {} trials, {} answered (mean ROUGE-1 recall {:.1}); {} of {} heads ({:.1}%) score above {}\n",
            self.model,
            self.trials,
            self.answered,
            self.mean_rouge,
            s.retrieval_heads,
            s.heads,
            100.0 * s.fraction_above_threshold,
            s.threshold
        );
        t.push_str(" rank  head    mean score  active (>0.5)\n");
        for (i, r) in s.ranking.iter().take(top).enumerate() {
            t.push_str(&format!(
                "{:>5}  {:<6}  {:>10.3}  {:>12.0}%\n",
                i + 1,
                r.head,
                r.mean,
                100.0 * r.active_share
            ));
        }
        t
    }
}

/// A run's heads (layers, heads per layer) from its settings, and its records in the grid's
/// order, however the trials were run (in prompt order, or by shards).
fn in_grid_order<'r, R: Keyed>(settings: &serde_json::Value, records: &'r [R]) -> Result<(usize, usize, Vec<&'r R>)> {
    let dims = |k: &str| {
        settings[k]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("run.json lacks {k}"))
    };
    let shape = GridShape::of_settings(settings)?;
    let rank: HashMap<String, usize> = shape.trials().iter().enumerate().map(|(i, s)| (s.key(), i)).collect();
    let mut records: Vec<&R> = records.iter().collect();
    records.sort_by_key(|r| rank.get(&r.key()).copied().unwrap_or(usize::MAX));
    Ok((dims("n_layers")?, dims("n_heads")?, records))
}

/// Aggregate every trial of a detection run folder into head_scores.json, summary.json, the heads'
/// heatmap and the depth x length map.
pub fn write_detection(dir: &Path, settings: &serde_json::Value, records: &[TrialRecord], variant: ScoreVariant) -> Result<DetectReport> {
    let (n_layers, n_heads, records) = in_grid_order(settings, records)?;
    let shape = GridShape::of_settings(settings)?;
    let mut scores = HeadScores::new(n_layers, n_heads);
    for r in records.iter().filter(|r| r.answered()) {
        let s = r.scores(variant);
        if s.len() != n_layers * n_heads {
            bail!(
                "a trial in {} has {} head scores, the run has {n_layers} x {n_heads} heads",
                dir.display(),
                s.len()
            );
        }
        scores.push_trial(s);
    }
    let summary = Summary::of(&scores);
    let answered = records.iter().filter(|r| r.answered()).count();
    let mean_rouge = records.iter().map(|r| r.rouge1).sum::<f64>() / records.len().max(1) as f64;
    let model = model_label(settings);
    write_atomic(&dir.join("head_scores.json"), serde_json::to_string(&scores.to_json())?)?;
    // What the last invocation took from the prefix cache, when it used one.
    let prefix_cache: Option<serde_json::Value> = std::fs::read_to_string(dir.join("prefix_cache.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let summary_json = json!({
        "model": model,
        "score_variant": variant,
        "trials": records.len(),
        "answered": answered,
        "mean_rouge1": mean_rouge,
        "prefix_cache": prefix_cache,
        "summary": summary,
    });
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&summary_json)?)?;
    let mut map = Heatmap::heads(
        &format!("Retrieval scores: {model} ({} answered trials)", scores.trials()),
        n_layers,
        n_heads,
        scores.means(),
        "mean retrieval score",
    );
    map.range.1 = map.range.1.max(0.1);
    map.save(&dir.join("retrieval_heads"))?;
    let title = format!("{model}: needle in a haystack");
    depth_length_map(&title, (&shape.lengths, &shape.depths), records.iter().copied()).save(&dir.join("niah"))?;
    Ok(DetectReport {
        model,
        trials: records.len(),
        answered,
        mean_rouge,
        scores,
        summary,
    })
}

fn model_label(settings: &serde_json::Value) -> String {
    settings["model_name"]
        .as_str()
        .or(settings["model"].as_str())
        .unwrap_or("model")
        .to_owned()
}

/// A QRHead run's head_scores.json (every trial's calibrated QR scores), summary.json and
/// heatmap.
pub fn write_qr_detection(dir: &Path, settings: &serde_json::Value, records: &[QrRecord]) -> Result<HeadScores> {
    let (n_layers, n_heads, records) = in_grid_order(settings, records)?;
    let mut scores = HeadScores::new(n_layers, n_heads);
    for r in &records {
        if r.scores.len() != n_layers * n_heads {
            bail!(
                "a trial in {} has {} head scores, the run has {n_layers} x {n_heads} heads",
                dir.display(),
                r.scores.len()
            );
        }
        scores.push_trial(&r.scores);
    }
    let model = model_label(settings);
    write_atomic(&dir.join("head_scores.json"), serde_json::to_string(&scores.to_json())?)?;
    let summary = json!({
        "model": model,
        "detector": "qrhead",
        "trials": records.len(),
        "summary": Summary::of(&scores),
    });
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    qr_heatmap(&format!("QRHead scores: {model} ({} trials)", scores.trials()), &scores).save(&dir.join("retrieval_heads"))?;
    Ok(scores)
}

pub fn qr_table(settings: &serde_json::Value, scores: &HeadScores, top: usize) -> String {
    let mut t = format!(
        "{}: QRHead scores over {} trials (the query's attention on the needle, less that with \"N/A\" asked)\n rank  head    mean score\n",
        model_label(settings),
        scores.trials()
    );
    for (i, (h, m)) in scores.ranked().into_iter().take(top).enumerate() {
        t.push_str(&format!("{:>5}  {:<6}  {:>10.4}\n", i + 1, scores.label(h), m));
    }
    t
}

/// The `k` best heads of a score file that are not masked, as flat indices: the evidence of
/// where the remaining retrieval heads looked (a masked head's argmax says nothing).
pub fn strongest_unmasked(scores: &HeadScores, masked: &[Head], k: usize) -> Vec<usize> {
    top_heads(scores, scores.n_layers * scores.n_heads)
        .into_iter()
        .filter(|h| !masked.contains(h))
        .take(k)
        .map(|(l, h)| l * scores.n_heads + h)
        .collect()
}

/// What a NIAH run amounts to.
#[derive(Debug, Clone, Serialize)]
pub struct NiahSummary {
    pub trials: usize,
    /// Mean ROUGE-1 recall, 0 to 100.
    pub mean_rouge: f64,
    pub outcomes: BTreeMap<AnswerClass, usize>,
    /// Where the five strongest unmasked retrieval heads looked, averaged per outcome (when
    /// scores were given).
    pub evidence: BTreeMap<AnswerClass, Evidence>,
}

impl NiahSummary {
    pub fn line(&self, label: &str) -> String {
        let counts: Vec<String> = AnswerClass::ALL
            .iter()
            .map(|o| format!("{} {}", o.name(), self.outcomes.get(o).unwrap_or(&0)))
            .collect();
        format!(
            "{label}: {} trials, mean ROUGE-1 recall {:.1}; {}",
            self.trials,
            self.mean_rouge,
            counts.join(", ")
        )
    }
}

#[derive(Serialize)]
struct Example<'a> {
    question: &'a str,
    real_needle: &'a str,
    answer: &'a str,
    rouge1: f64,
    length: usize,
    depth: f64,
    evidence: Option<Evidence>,
}

/// Heatmap, summary and failure examples of a finished (or partial) run.
pub fn write_niah(dir: &Path, title: &str, grid: &Grid, records: &[TrialRecord], evidence_heads: &[usize]) -> Result<NiahSummary> {
    let needle = |r: &TrialRecord| -> &Needle { &grid.needles[r.spec.needle] };
    let mut outcomes = BTreeMap::new();
    let mut evidence_sum: BTreeMap<AnswerClass, (Evidence, usize)> = BTreeMap::new();
    let mut examples: BTreeMap<AnswerClass, Vec<Example<'_>>> = BTreeMap::new();
    for r in records {
        let outcome = classify(&needle(r).real_needle, &r.answer);
        *outcomes.entry(outcome).or_insert(0) += 1;
        let ev = (!evidence_heads.is_empty()).then(|| evidence(r, evidence_heads));
        if let Some(e) = ev {
            let (sum, n) = evidence_sum.entry(outcome).or_default();
            sum.needle += e.needle;
            sum.first_tokens += e.first_tokens;
            sum.elsewhere += e.elsewhere;
            *n += 1;
        }
        let list = examples.entry(outcome).or_default();
        if list.len() < 3 {
            list.push(Example {
                question: &needle(r).question,
                real_needle: &needle(r).real_needle,
                answer: &r.answer,
                rouge1: r.rouge1,
                length: r.spec.length,
                depth: r.spec.depth,
                evidence: ev,
            });
        }
    }
    let evidence = evidence_sum
        .into_iter()
        .map(|(o, (s, n))| {
            let n = n as f64;
            (
                o,
                Evidence {
                    needle: s.needle / n,
                    first_tokens: s.first_tokens / n,
                    elsewhere: s.elsewhere / n,
                },
            )
        })
        .collect();
    let summary = NiahSummary {
        trials: records.len(),
        mean_rouge: records.iter().map(|r| r.rouge1).sum::<f64>() / records.len().max(1) as f64,
        outcomes,
        evidence,
    };
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    write_atomic(&dir.join("failures.json"), serde_json::to_string_pretty(&examples)?)?;
    depth_length_map(title, (&grid.lengths, &grid.depths), records).save(&dir.join("niah"))?;
    Ok(summary)
}

/// Mean ROUGE-1 recall per (depth, length) cell, depth 0 at the top.
pub fn depth_length_map<'a>(
    title: &str,
    (lengths, depths): (&[usize], &[f64]),
    records: impl IntoIterator<Item = &'a TrialRecord>,
) -> Heatmap {
    let (nl, nd) = (lengths.len(), depths.len());
    let mut sum = vec![0.0; nl * nd];
    let mut count = vec![0usize; nl * nd];
    for r in records {
        let (Some(li), Some(di)) = (
            lengths.iter().position(|&l| l == r.spec.length),
            depths.iter().position(|&d| d == r.spec.depth),
        ) else {
            continue;
        };
        sum[di * nl + li] += r.rouge1;
        count[di * nl + li] += 1;
    }
    Heatmap {
        title: title.to_owned(),
        x_label: "context length (tokens)".into(),
        y_label: "needle depth (%)".into(),
        x_ticks: lengths.iter().map(|l| l.to_string()).collect(),
        y_ticks: depths.iter().map(|d| format!("{d}")).collect(),
        values: sum
            .iter()
            .zip(&count)
            .map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f64 })
            .collect(),
        range: (0.0, 100.0),
        value_label: "ROUGE-1 recall".into(),
    }
}
