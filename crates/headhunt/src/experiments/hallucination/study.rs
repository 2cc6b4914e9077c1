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
        let (greedy_mean, other_mean, difference, lo, hi) = paired(&pairs);
        // The same items labelled by the same rule, each decoding's answer in turn: the share
        // hallucinated (0-100) under greedy decoding and under the other.
        let hallucinated = |expected: &[String], answer: &str| {
            if outcome(expected, answer) == AnswerClass::Hallucination {
                100.0
            } else {
                0.0
            }
        };
        let labels: Vec<(f64, f64)> = rs
            .iter()
            .filter_map(|r| {
                Some((
                    hallucinated(&r.expected, &r.greedy.answer),
                    hallucinated(&r.expected, &other(r)?.1.answer),
                ))
            })
            .collect();
        let (rate_greedy, rate_other, rate_difference, rate_lo, rate_hi) = paired(&labels);
        let seconds = |d: &str| rs.iter().filter_map(|r| r.decode_seconds.get(d)).sum::<f64>();
        let row = json!({
            "task": task,
            "metric": metric,
            "items": pairs.len(),
            "greedy": greedy_mean,
            name: other_mean,
            "difference": difference,
            "ci95": [lo, hi],
            "hallucinated": {"greedy": rate_greedy, name: rate_other, "difference": rate_difference, "ci95": [rate_lo, rate_hi]},
            "changed": rs.iter().filter(|r| other(r).is_some_and(|(_, d)| d.answer != r.greedy.answer)).count(),
            "seconds_over_greedy": if seconds("greedy") > 0.0 { Some(seconds(name) / seconds("greedy")) } else { None },
        });
        println!(
            "{name} against greedy, {task}: {metric} {greedy_mean:.1} -> {other_mean:.1} ({difference:+.1}, 95% interval [{lo:+.1}, {hi:+.1}]; \
             {} of {} answers changed); hallucinated {rate_greedy:.1}% -> {rate_other:.1}% ({rate_difference:+.1}, [{rate_lo:+.1}, {rate_hi:+.1}])",
            row["changed"],
            pairs.len()
        );
        row
    };
    json!([row("niah", "ROUGE-1 recall", niah), row("qa", "token F1", qa)])
}

/// Means of paired values (a, b), their mean difference b - a, and its 95% bootstrap interval.
fn paired(pairs: &[(f64, f64)]) -> (f64, f64, f64, f64, f64) {
    let n = pairs.len().max(1) as f64;
    let diffs: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
    let (lo, hi) = bootstrap_mean(&diffs, 0.95, 2000, 11);
    let mean = |f: fn(&(f64, f64)) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    (mean(|p| p.0), mean(|p| p.1), diffs.iter().sum::<f64>() / n, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::grounding::Signal;

    fn decoded(answer: &str) -> Decoded {
        Decoded {
            answer: answer.into(),
            tokens: Vec::new(),
            signal: Signal {
                support: 0.0,
                lookback: 0.0,
                confidence: 0.0,
            },
            lookback: Vec::new(),
        }
    }

    fn record(greedy: &str, score: f64, other: &str, other_score: f64) -> AnswerRecord {
        let expected = vec!["The spare key is under the blue anchor.".to_string()];
        AnswerRecord {
            key: greedy.into(),
            question: "Where is the spare key?".into(),
            outcome: outcome(&expected, greedy),
            expected,
            prompt_tokens: 10,
            greedy: decoded(greedy),
            score,
            guided: None,
            guided_score: None,
            contrastive: Some(decoded(other)),
            contrastive_score: Some(other_score),
            decode_seconds: BTreeMap::from([("greedy".into(), 1.0), ("contrastive".into(), 2.5)]),
            seconds: 3.5,
        }
    }

    #[test]
    fn decodings_are_compared_by_score_and_by_hallucination_rate() {
        // Four items: one hallucinated answer fixed, one made, one correct and one partial kept.
        let niah = vec![
            record("It is in a drawer.", 0.0, "The spare key is under the blue anchor.", 100.0),
            record("The spare key is under the blue anchor.", 100.0, "Nobody knows.", 0.0),
            record(
                "The spare key is under the blue anchor.",
                100.0,
                "The spare key is under the blue anchor.",
                100.0,
            ),
            record("The key is blue.", 50.0, "The key is blue.", 50.0),
        ];
        let rows = compare_decoding(&niah, &[], "contrastive", |r| Some((r.contrastive_score?, r.contrastive.as_ref()?)));
        let r = &rows[0];
        assert_eq!(r["items"], 4);
        assert_eq!(r["greedy"], 62.5);
        assert_eq!(r["contrastive"], 62.5);
        assert_eq!(r["changed"], 2);
        // Hallucinated: items 1 (greedy) and 2 (contrastive), 25% each; the changes +100/-100.
        let h = &r["hallucinated"];
        assert_eq!(h["greedy"], 25.0);
        assert_eq!(h["contrastive"], 25.0);
        assert_eq!(h["difference"], 0.0);
        let (lo, hi) = (h["ci95"][0].as_f64().unwrap(), h["ci95"][1].as_f64().unwrap());
        assert!(lo < 0.0 && hi > 0.0 && lo >= -100.0 && hi <= 100.0, "{lo} {hi}");
        assert_eq!(r["seconds_over_greedy"], 2.5);
        // No QA items: an empty row, not a failure.
        assert_eq!(rows[1]["items"], 0);
    }
}
