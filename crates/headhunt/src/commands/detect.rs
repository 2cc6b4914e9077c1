//! `headhunt detect`: find a model's retrieval heads with needle-in-a-haystack trials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::ModelArg;
use crate::experiments::retrieval::niah::grid::{GridArgs, GridShape};
use crate::experiments::retrieval::niah::trial::{Condition, TrialRecord, TrialRunner};
use crate::experiments::retrieval::qrhead::{qr_heatmap, qr_trial, QrRecord};
use crate::experiments::retrieval::{HeadScores, ScoreVariant, Summary};
use crate::output::plot::{Figure, Heatmap};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::store::Keyed;
use crate::runner::trials::{run_niah, run_pending, Status};

/// Find retrieval heads: hide needles in long contexts, let the model answer, and score every
/// query head by how much of the answer it copied from the needle (Wu et al. 2024).
///
/// Writes to --out: trials.jsonl (every trial: settings, answer, ROUGE-1, per-head scores, the
/// argmax of every head at every step), head_scores.json (the paper's {"L-H": [score per answered
/// trial]} format), summary.json (heads ranked by mean score, retrieval heads above 0.1, heads
/// active above 0.5 in most trials) and retrieval_heads.png/.svg (a layers x heads heatmap).
/// Rerun with the same --out to resume; split the grid with --shard i/n and join with
/// `headhunt merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub grid: GridArgs,
    /// Output folder (resumable). [default: runs/detect-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// How per-trial scores count copies: distinct answer positions (paper) or every copying
    /// step (per-step, as the paper's released code).
    #[arg(long, value_enum, default_value_t = ScoreVariant::Paper)]
    pub score_variant: ScoreVariant,
    /// Heads listed in the printed table.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Which score finds the heads: `wu` (the heads that copy the needle into the answer, Wu et
    /// al. 2024) or `qrhead` (query-focused retrieval heads, Zhang et al. 2025: the attention the
    /// question and what follows it pay to the needle, less that with the content-free question
    /// "N/A", summed over the needle's tokens; no decoding, every trial counted). [default
    /// folder for qrhead: runs/qrhead-<model>]
    #[arg(long, value_enum, default_value_t = Detector::Wu)]
    pub detector: Detector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Detector {
    Wu,
    Qrhead,
}

impl Keyed for QrRecord {
    fn key(&self) -> String {
        self.spec.key()
    }
}

impl Status for QrRecord {
    fn status(&self) -> String {
        format!("{} tokens", self.prompt_tokens)
    }
}

impl Keyed for TrialRecord {
    fn key(&self) -> String {
        self.spec.key()
    }
}

/// A folder name from a model argument.
pub fn default_out(command: &str, model: &str) -> PathBuf {
    let stem = Path::new(model).file_stem().and_then(|s| s.to_str()).unwrap_or(model);
    PathBuf::from("runs").join(format!("{command}-{stem}"))
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve()?;
    let model = args.model.load()?;
    let c = &model.config;
    let folder = match args.detector {
        Detector::Wu => "detect",
        Detector::Qrhead => "qrhead",
    };
    let out = run_folder(
        &args.out.clone().unwrap_or_else(|| default_out(folder, &args.model.model)),
        grid.shard,
    );
    let mut settings = grid.settings();
    settings["command"] = json!("detect");
    if args.detector == Detector::Qrhead {
        settings["detector"] = json!("qrhead");
    }
    settings["model"] = json!(args.model.model);
    settings["model_name"] = json!(model.source.name);
    settings["n_layers"] = json!(c.n_layers);
    settings["n_heads"] = json!(c.n_heads);
    super::record_provenance(&out, &model)?;
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    if args.detector == Detector::Qrhead {
        let records = run_pending(&out, &settings, &grid.shard_trials(), grid.shard, "trials", |s| {
            qr_trial(&runner, s)
        })?;
        let scores = write_qr_outputs(&out, &settings, &records)?;
        print!("{}", qr_table(&settings, &scores, args.top));
        return super::finish_with_report(&out);
    }
    let records = run_niah(&runner, &grid, &Condition::default(), &out, &settings, "trials")?;
    let report = write_outputs(&out, &settings, &records, args.score_variant)?;
    print!("{}", report.table(args.top));
    super::finish_with_report(&out)
}

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

/// Aggregate every trial of a run folder into head_scores.json, summary.json, the heads' heatmap
/// and the depth x length map.
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

pub fn write_outputs(dir: &Path, settings: &serde_json::Value, records: &[TrialRecord], variant: ScoreVariant) -> Result<DetectReport> {
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
    let model = settings["model_name"]
        .as_str()
        .or(settings["model"].as_str())
        .unwrap_or("model")
        .to_owned();
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
    super::niah::depth_length_map(&title, (&shape.lengths, &shape.depths), records.iter().copied()).save(&dir.join("niah"))?;
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
fn write_qr_outputs(dir: &Path, settings: &serde_json::Value, records: &[QrRecord]) -> Result<HeadScores> {
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

fn qr_table(settings: &serde_json::Value, scores: &HeadScores, top: usize) -> String {
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
