//! A hallucination study's answers: each item answered greedily (and guided, and by DeCoRe)
//! with the signals of every step, its label, and the comparisons over all of them (ROC curves,
//! the other decodings against greedy). `headhunt hallucination` runs it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use headhunt_engine::Model;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{contrastive, greedy, guided, outcome, prepared, Decoded, Detection, Guide};
use crate::experiments::decore::Contrastive;
use crate::experiments::grounding::Grounder;
use crate::experiments::retrieval::failure::AnswerClass;
use crate::metrics::stats::bootstrap_mean;
use crate::output::plot::{LinePlot, Series};
use crate::runner::store::Keyed;
use crate::runner::trials::Status;

/// One labelled answer; a line of a hallucination run's `niah/` or `qa/` trials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub key: String,
    pub question: String,
    pub expected: Vec<String>,
    pub prompt_tokens: usize,
    pub greedy: Decoded,
    /// ROUGE-1 recall (NIAH) or token F1 (QA), 0-100.
    pub score: f64,
    pub outcome: AnswerClass,
    pub guided: Option<Decoded>,
    pub guided_score: Option<f64>,
    #[serde(default)]
    pub contrastive: Option<Decoded>,
    #[serde(default)]
    pub contrastive_score: Option<f64>,
    /// Seconds of each decoding (greedy, guided, contrastive), where measured.
    #[serde(default)]
    pub decode_seconds: BTreeMap<String, f64>,
    pub seconds: f64,
}

impl Keyed for AnswerRecord {
    fn key(&self) -> String {
        self.key.clone()
    }
}

impl Status for AnswerRecord {
    fn status(&self) -> String {
        format!("{} {:.2}", self.outcome.name(), self.greedy.signal.support)
    }
}

/// How a study answers each item: greedily, and guided or contrastively where asked.
pub struct Answerer<'a> {
    pub model: &'a Model,
    pub grounder: &'a Grounder,
    pub guide: Option<Guide>,
    pub contrast: Option<&'a Contrastive>,
}

impl Answerer<'_> {
    /// Answer one prompt every way asked, each scored by `score` (ROUGE-1 or F1, 0-100).
    pub fn answer(
        &self,
        key: String,
        question: &str,
        expected: Vec<String>,
        prompt: &[u32],
        score: &dyn Fn(&str) -> f64,
    ) -> Result<AnswerRecord> {
        let g = self.grounder;
        let start = Instant::now();
        let base = prepared(self.model, prompt)?;
        let mut decode_seconds = BTreeMap::new();
        let mut timed = |name: &str, decode: &dyn Fn() -> Result<Decoded>| {
            let t = Instant::now();
            let d = decode();
            decode_seconds.insert(name.to_owned(), t.elapsed().as_secs_f64());
            d
        };
        let greedy = timed("greedy", &|| greedy(&base, prompt, g))?;
        let guided = self.guide.map(|gd| timed("guided", &|| guided(&base, prompt, g, gd))).transpose()?;
        let contrastive = self
            .contrast
            .map(|c| timed("contrastive", &|| contrastive(&base, prompt, g, c)))
            .transpose()?;
        Ok(AnswerRecord {
            key,
            question: question.to_owned(),
            outcome: outcome(&expected, &greedy.answer),
            expected,
            prompt_tokens: prompt.len(),
            score: score(&greedy.answer),
            guided_score: guided.as_ref().map(|d| score(&d.answer)),
            contrastive_score: contrastive.as_ref().map(|d| score(&d.answer)),
            greedy,
            guided,
            contrastive,
            decode_seconds,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The records of another hallucination run (its NIAH and QA answers), checked to be of the
/// same model; their keys carry the folder's name.
pub fn load_run(dir: &Path, model: &Option<String>) -> Result<(Vec<AnswerRecord>, Vec<AnswerRecord>)> {
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.json")).with_context(|| format!("{} is not a hallucination run", dir.display()))?,
    )?;
    if card["name"].as_str() != Some(model.as_deref().unwrap_or("-")) {
        bail!("{} is a run of {}, not of this model", dir.display(), card["name"]);
    }
    let read = |task: &str| -> Result<Vec<AnswerRecord>> {
        let path = dir.join(task).join("trials.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut r: AnswerRecord = serde_json::from_str(l).with_context(|| format!("a record of {}", path.display()))?;
                r.key = format!("{}/{}", dir.display(), r.key);
                Ok(r)
            })
            .collect()
    };
    Ok((read("niah")?, read("qa").unwrap_or_default()))
}

/// How many answers of each class per task.
pub fn counts(niah: &[AnswerRecord], qa: &[AnswerRecord]) -> serde_json::Value {
    let of = |rs: &[AnswerRecord]| {
        json!({
            "answers": rs.len(),
            "complete": rs.iter().filter(|r| r.outcome == AnswerClass::Complete).count(),
            "incomplete": rs.iter().filter(|r| r.outcome == AnswerClass::Incomplete).count(),
            "hallucinated": rs.iter().filter(|r| r.outcome == AnswerClass::Hallucination).count(),
        })
    };
    json!({"niah": of(niah), "qa": of(qa)})
}

/// The ROC curves of the three detectors on all labelled answers.
pub fn roc_plot(name: &str, found: &[Detection]) -> LinePlot {
    let series = ["retrieval-head support", "Lookback Lens (cross-validated)", "confidence"]
        .iter()
        .filter_map(|want| found.iter().find(|d| d.detector == *want && d.evaluated_on == "all"))
        .map(|d| Series {
            name: format!("{} (AUROC {:.3})", d.detector, d.auroc),
            points: d.roc.clone(),
            errors: None,
        })
        .chain(std::iter::once(Series {
            name: "chance".into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            errors: None,
        }))
        .collect();
    LinePlot {
        title: format!("{name}: detecting hallucinated answers"),
        x_label: "false positive rate (complete answers flagged)".into(),
        y_label: "true positive rate (hallucinations flagged)".into(),
        series,
        y_range: Some((0.0, 1.0)),
    }
}

/// Another decoding (`name`: guided, contrastive) against greedy decoding, per task: means, the
/// mean difference with its interval, answers changed, and the decoding's seconds against
/// greedy's; each row printed as it is made.
pub fn compare_decoding(
    niah: &[AnswerRecord],
    qa: &[AnswerRecord],
    name: &str,
    other: impl Fn(&AnswerRecord) -> Option<(f64, &Decoded)>,
) -> serde_json::Value {
    let row = |task: &str, metric: &str, rs: &[AnswerRecord]| {
        let pairs: Vec<(f64, f64)> = rs.iter().filter_map(|r| Some((r.score, other(r)?.0))).collect();
        let n = pairs.len().max(1) as f64;
        let diffs: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
        let (lo, hi) = bootstrap_mean(&diffs, 0.95, 2000, 11);
        let seconds = |d: &str| rs.iter().filter_map(|r| r.decode_seconds.get(d)).sum::<f64>();
        let row = json!({
            "task": task,
            "metric": metric,
            "items": pairs.len(),
            "greedy": pairs.iter().map(|p| p.0).sum::<f64>() / n,
            name: pairs.iter().map(|p| p.1).sum::<f64>() / n,
            "difference": diffs.iter().sum::<f64>() / n,
            "ci95": [lo, hi],
            "changed": rs.iter().filter(|r| other(r).is_some_and(|(_, d)| d.answer != r.greedy.answer)).count(),
            "seconds_over_greedy": if seconds("greedy") > 0.0 { Some(seconds(name) / seconds("greedy")) } else { None },
        });
        println!(
            "{name} against greedy, {task}: {metric} {:.1} -> {:.1} ({:+.1}, 95% interval [{lo:+.1}, {hi:+.1}]; {} of {} answers changed)",
            row["greedy"].as_f64().unwrap_or(0.0),
            row[name].as_f64().unwrap_or(0.0),
            row["difference"].as_f64().unwrap_or(0.0),
            row["changed"],
            pairs.len()
        );
        row
    };
    json!([row("niah", "ROUGE-1 recall", niah), row("qa", "token F1", qa)])
}
