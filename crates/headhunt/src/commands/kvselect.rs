//! `headhunt kv-select`: a KV cache that keeps, in every head, the context positions the
//! question looks at (SnapKV), with per-head budgets from the retrieval scores (HeadKV).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::args::GridArgs;
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::kv::select::{kv_prior, GroupPool, PolicyName, Snap};
use crate::experiments::kv::select_study::{smallest_keeping, summarize, trial, Mode, Point, SelectStudy};
use crate::experiments::retrieval::masking::check_scores_fit;
use crate::experiments::retrieval::niah::trial::TrialRunner;
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::{Figure, LinePlot, Series};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::trials::run_pending;

/// Compress the KV cache by keeping, in every key/value head, a few sink positions, the prompt's
/// last `--window` positions (the observation window, which holds the question) and the earlier
/// positions that window attended to most (SnapKV), each head's budget set by a policy:
///
///   snapkv     the same for every head;
///   headkv     a floor plus a share of the rest in proportion to the head's retrieval score;
///   random     the same with the scores shuffled among the heads (--seeds of them);
///   streaming  the same budgets as snapkv, spent on the most recent positions (StreamingLLM);
///   duo        the best-scoring heads whole, the rest sink + window (DuoAttention-style).
///
/// Each trial's prompt is prefilled once; every policy and budget compresses a copy. In
/// `question` mode the cache is compressed after the whole prompt; in `context` mode after the
/// context, before the question is seen (one cache serves any question), the question then
/// prefilled on the compressed cache. Budgets are shares of the full cache's bytes (keys, values,
/// kept positions and the room reserved for the answer), and every figure is the bytes each cache
/// really allocated.
///
/// Writes trials.jsonl (each trial's answers under every condition), kv_select.json (per mode,
/// policy and budget: mean NIAH score with a bootstrap 95% interval, bytes against the full
/// cache's, the smallest budget keeping 95% of its score) and kv_select.png/.svg.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// The grid. [default: --lengths 4000 --depths 0:100:11 --per-cell 2]
    #[command(flatten)]
    pub grid: GridArgs,
    /// Retrieval scores (head_scores.json or its run folder, or a published score file).
    #[arg(long)]
    pub scores: PathBuf,
    /// Budgets as shares of the full cache's bytes.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.2,0.35")]
    pub budgets: Vec<f64>,
    /// Budget policies (see above).
    #[arg(long, value_delimiter = ',', default_value = "snapkv,headkv,random,streaming,duo")]
    pub policies: Vec<PolicyName>,
    /// When the cache is compressed: after the question, or after the context alone.
    #[arg(long, value_delimiter = ',', default_value = "question,context")]
    pub modes: Vec<Mode>,
    /// Shuffles of the scores for the random policy.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Observation window: the prompt's last positions, which vote and are always kept.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// First positions every head keeps.
    #[arg(long, default_value_t = 4)]
    pub sink: usize,
    /// Width of the max-pooling of the votes.
    #[arg(long, default_value_t = 7)]
    pub kernel: usize,
    /// How a key/value head combines its query heads' votes.
    #[arg(long, value_enum, default_value_t = GroupPool::Max)]
    pub pool: GroupPool,
    /// Output folder. [default: runs/kv-select-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve_with("4000", "0:100:11")?;
    let model = args.model.load()?;
    let scores = HeadScores::load(&args.scores)?;
    check_scores_fit(&scores, &model)?;
    let prior = kv_prior(&model.config, &scores.means());
    let study = SelectStudy {
        budgets: args.budgets.clone(),
        policies: args.policies.clone(),
        modes: args.modes.clone(),
        seeds: args.seeds,
        snap: Snap {
            window: args.window,
            sink: args.sink,
            kernel: args.kernel.max(1),
            pool: args.pool,
        },
    };
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("kv-select"));
    let out = run_folder(&out, grid.shard);
    super::record_provenance(&out, &model)?;
    let mut settings = grid.settings();
    settings["command"] = json!("kv-select");
    settings["model"] = json!(args.model.model);
    settings["scores"] = json!(args.scores.display().to_string());
    settings["budgets"] = json!(args.budgets);
    settings["policies"] = json!(args.policies);
    settings["modes"] = json!(args.modes);
    settings["seeds"] = json!(args.seeds);
    settings["snap"] = json!(study.snap);
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let specs = grid.shard_trials();
    let records = run_pending(&out, &settings, &specs, grid.shard, "trials", |spec| {
        trial(&runner, &model, spec, &study, &prior)
    })?;
    let summary = summarize(&records, &study);
    write_atomic(
        &out.join("kv_select.json"),
        serde_json::to_string_pretty(&json!({
            "model": model_name(&model, &args.model.model),
            "trials": records.len(),
            "snap": study.snap,
            "full_score": summary.first().map(|p| p.full_score),
            "smallest_95": smallest_keeping(&summary, 0.95),
            "points": summary,
        }))?,
    )?;
    print_table(&summary);
    plot(&summary, &model_name(&model, &args.model.model))
        .save(&out.join("kv_select"))
        .context("drawing kv_select")?;
    super::finish_with_report(&out)
}

fn print_table(points: &[Point]) {
    if let Some(p) = points.first() {
        println!("full cache: NIAH score {:.1}", p.full_score);
    }
    println!(
        "{:<9} {:<10} {:>7} {:>7} {:>15} {:>9} {:>9}",
        "mode", "policy", "budget", "score", "95% interval", "of full", "bytes"
    );
    for p in points {
        println!(
            "{:<9} {:<10} {:>6.0}% {:>7.1} {:>7.1}-{:<7.1} {:>8.0}% {:>8.1}%",
            format!("{:?}", p.mode).to_lowercase(),
            p.policy,
            100.0 * p.budget,
            p.score,
            p.ci95.0,
            p.ci95.1,
            100.0 * p.relative,
            100.0 * p.bytes_share
        );
    }
}

/// NIAH score against bytes per policy, in the first mode (the other is in the table: ten lines
/// in one panel are unreadable).
fn plot(points: &[Point], model: &str) -> LinePlot {
    let mode = points.first().map(|p| p.mode);
    let mut series: Vec<Series> = Vec::new();
    for p in points.iter().filter(|p| Some(p.mode) == mode) {
        let name = p.policy.clone();
        let half = (p.ci95.1 - p.ci95.0) / 2.0;
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.points.push((100.0 * p.bytes_share, p.score));
                s.errors.get_or_insert_with(Vec::new).push(half);
            }
            None => series.push(Series {
                name,
                points: vec![(100.0 * p.bytes_share, p.score)],
                errors: Some(vec![half]),
            }),
        }
    }
    if let Some(p) = points.first() {
        let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|q| q.0)).collect();
        let (lo, hi) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        series.push(Series {
            name: "full cache".into(),
            points: vec![(lo, p.full_score), (hi, p.full_score)],
            errors: None,
        });
    }
    LinePlot {
        title: format!(
            "{model}: NIAH score against KV bytes, cache compressed after the {}",
            if mode == Some(Mode::Context) { "context" } else { "question" }
        ),
        x_label: "KV cache bytes (% of the full cache's)".into(),
        y_label: "NIAH score (ROUGE-1 recall)".into(),
        series,
        y_range: Some((0.0, 105.0)),
    }
}
