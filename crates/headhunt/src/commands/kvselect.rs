//! `headhunt kv-select`: a KV cache that keeps, in every head, the context positions the
//! question looks at (SnapKV), with per-head budgets from the retrieval scores (HeadKV).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use headhunt_engine::{Hooks, Model, Run, RunOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::niah::{model_name, model_stem};
use super::ModelArg;
use crate::experiments::kv::select::{
    held_visible, kv_prior, policy_rows, row_bytes, select, votes, window_hooks, Choice, GroupPool, PolicyName, Snap,
};
use crate::experiments::retrieval::masking::check_scores_fit;
use crate::experiments::retrieval::niah::grid::GridArgs;
use crate::experiments::retrieval::niah::trial::{decode_from, TrialRunner, TrialSpec, MAX_NEW_TOKENS};
use crate::experiments::retrieval::HeadScores;
use crate::metrics::stats::bootstrap_mean;
use crate::output::plot::{Figure, LinePlot, Series};
use crate::runner::shard::run_folder;
use crate::runner::store::{write_atomic, Keyed};
use crate::runner::trials::{run_pending, Status};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Question,
    Context,
}

/// One compressed cache's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub mode: Option<Mode>,
    pub policy: String,
    pub budget: f64,
    pub answer: String,
    pub rouge1: f64,
    pub kv_bytes: usize,
    /// Rows kept per layer and key/value head.
    pub rows: Vec<Vec<usize>>,
    /// Rows of room each head kept for what followed (the question in context mode, the answer).
    #[serde(default)]
    pub reserved: usize,
    pub decode_seconds: f64,
    pub generated: usize,
}

/// One trial: the full cache's answer and every compressed one's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvTrial {
    #[serde(flatten)]
    pub spec: TrialSpec,
    pub prompt_tokens: usize,
    pub full: Outcome,
    pub compressed: Vec<Outcome>,
    pub seconds: f64,
}

impl Keyed for KvTrial {
    fn key(&self) -> String {
        self.spec.key()
    }
}

impl Status for KvTrial {
    fn status(&self) -> String {
        format!("full {:>3.0}", self.full.rouge1)
    }
}

/// A policy at one budget: how many rows each head keeps and how it chooses them.
struct Plan {
    policy: String,
    budget: f64,
    rows: Vec<Vec<usize>>,
    choice: Choice,
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve_with("4000", "0:100:11")?;
    let model = args.model.load()?;
    let scores = HeadScores::load(&args.scores)?;
    check_scores_fit(&scores, &model)?;
    let prior = kv_prior(&model.config, &scores.means());
    let snap = Snap {
        window: args.window,
        sink: args.sink,
        kernel: args.kernel.max(1),
        pool: args.pool,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("kv-select-{}", model_stem(&args.model.model))));
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
    settings["snap"] = json!(snap);
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let specs = grid.shard_trials();
    let records = run_pending(&out, &settings, &specs, grid.shard, "trials", |spec| {
        trial(&runner, &model, spec, &args, &snap, &prior)
    })?;
    let summary = summarize(&records, &args);
    write_atomic(
        &out.join("kv_select.json"),
        serde_json::to_string_pretty(&json!({
            "model": model_name(&model, &args.model.model),
            "trials": records.len(),
            "snap": snap,
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

fn trial(runner: &TrialRunner<'_>, model: &Model, spec: &TrialSpec, args: &Args, snap: &Snap, prior: &[f64]) -> Result<KvTrial> {
    let start = Instant::now();
    let c = &model.config;
    let prompt = runner.prompt(spec)?;
    let ids = &prompt.ids;
    let (n, ce) = (ids.len(), prompt.context.end);
    // The context, its last positions' attention recorded (the question-agnostic votes), and
    // the prompt's (the question-aware votes; the question may be shorter than the window).
    let obs_context = ce.saturating_sub(snap.window)..ce;
    let obs_question = n - snap.window.min(n)..n;
    let options = RunOptions {
        capacity: n + MAX_NEW_TOKENS,
        ..Default::default()
    };
    let in_context: Vec<usize> = (obs_context.start.min(obs_question.start)..ce).collect();
    let mut at_context = model.run(window_hooks(c, in_context), options)?;
    at_context.prefill(&ids[..ce])?;
    // The question on top.
    let mut at_question = at_context.fork();
    at_question.set_hooks(window_hooks(c, obs_question.clone().filter(|&p| p >= ce).collect()))?;
    let logits = at_question.prefill(&ids[ce..])?;

    let full = {
        let mut run = at_question.fork();
        run.set_hooks(Hooks::default())?;
        outcome(
            runner,
            spec,
            &mut run,
            ids,
            logits.clone(),
            None,
            ("full".into(), 1.0),
            (None, MAX_NEW_TOKENS),
        )?
    };
    // Budgets are shares of the full cache's bytes (every head's rows, as allocated: a full
    // head's prompt and room for the answer, a sliding-window head's window), in rows.
    let heads = c.n_layers * c.n_kv_heads;
    let full_rows = full.kv_bytes / row_bytes(c);
    let mut compressed = Vec::new();
    for &mode in &args.modes {
        let (base, len, obs, recordings) = match mode {
            Mode::Question => (&at_question, n, &obs_question, vec![&at_context.recording, &at_question.recording]),
            Mode::Context => (&at_context, ce, &obs_context, vec![&at_context.recording]),
        };
        let votes = votes(&recordings, c, obs, snap)?;
        let held = held_visible(base, len);
        let caps: Vec<usize> = held.iter().flatten().map(Vec::len).collect();
        // Room each head keeps for what comes after: the question (context mode) and the answer.
        let extra = MAX_NEW_TOKENS + (n - len);
        for &budget in &args.budgets {
            let total = ((budget * full_rows as f64) as usize).saturating_sub(heads * extra);
            for plan in plans(args, snap, prior, &caps, total, budget, c.n_kv_heads) {
                let keep_rows = select(&held, len, &plan.rows, plan.choice, &votes, snap);
                let mut run = base.fork_retaining(&keep_rows, extra)?;
                run.set_hooks(Hooks::default())?;
                let logits = match mode {
                    Mode::Question => logits.clone(),
                    Mode::Context => run.prefill(&ids[ce..])?,
                };
                let kept = keep_rows.iter().map(|l| l.iter().map(Vec::len).collect()).collect();
                compressed.push(outcome(
                    runner,
                    spec,
                    &mut run,
                    ids,
                    logits,
                    Some(mode),
                    (plan.policy, plan.budget),
                    (Some(kept), extra),
                )?);
            }
        }
    }
    Ok(KvTrial {
        spec: *spec,
        prompt_tokens: n,
        full,
        compressed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every policy's rows per head at one budget of `total` kept rows.
fn plans(args: &Args, snap: &Snap, prior: &[f64], caps: &[usize], total: usize, budget: f64, n_kv: usize) -> Vec<Plan> {
    let mut out = Vec::new();
    for &p in &args.policies {
        let seeds = if p == PolicyName::Random { 0..args.seeds } else { 0..1 };
        for seed in seeds {
            let (rows, choice) = policy_rows(p, seed, total, snap, caps, prior);
            let name = serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            out.push(Plan {
                policy: if p == PolicyName::Random { format!("{name}-s{seed}") } else { name },
                budget,
                rows: rows.chunks(n_kv).map(<[usize]>::to_vec).collect(),
                choice,
            });
        }
    }
    out
}

/// Decode the answer from `logits` on `run` and score it.
#[allow(clippy::too_many_arguments)]
fn outcome(
    runner: &TrialRunner<'_>,
    spec: &TrialSpec,
    run: &mut Run<'_>,
    ids: &[u32],
    logits: Vec<f32>,
    mode: Option<Mode>,
    (policy, budget): (String, f64),
    (rows, reserved): (Option<Vec<Vec<usize>>>, usize),
) -> Result<Outcome> {
    let start = Instant::now();
    let answer = decode_from(run, ids, logits)?;
    let decode_seconds = start.elapsed().as_secs_f64();
    let rows = rows.unwrap_or_else(|| run.cache().rows());
    Ok(Outcome {
        mode,
        policy,
        budget,
        rouge1: runner.rouge1(spec, &answer.answer),
        generated: answer.generated.len(),
        answer: answer.answer,
        kv_bytes: answer.kv_bytes,
        rows,
        reserved,
        decode_seconds,
    })
}

/// One point of the study: a mode, a policy (random seeds pooled), a budget.
#[derive(Debug, Clone, Serialize)]
struct Point {
    mode: Mode,
    policy: String,
    budget: f64,
    trials: usize,
    score: f64,
    ci95: (f64, f64),
    /// Mean of each trial's compressed bytes over its full cache's bytes.
    bytes_share: f64,
    /// Mean score against the full cache's, same trials.
    relative: f64,
    full_score: f64,
}

fn policy_group(name: &str) -> String {
    if name.starts_with("random-s") {
        "random".into()
    } else {
        name.to_owned()
    }
}

fn summarize(records: &[KvTrial], args: &Args) -> Vec<Point> {
    let full_scores: Vec<f64> = records.iter().map(|r| r.full.rouge1).collect();
    let full_score = full_scores.iter().sum::<f64>() / records.len().max(1) as f64;
    let mut points = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for r in records.iter().flat_map(|r| &r.compressed) {
        let g = policy_group(&r.policy);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for &mode in &args.modes {
        for g in &groups {
            for &budget in &args.budgets {
                let mut scores = Vec::new();
                let mut shares = Vec::new();
                for r in records {
                    for o in r
                        .compressed
                        .iter()
                        .filter(|o| o.mode == Some(mode) && policy_group(&o.policy) == *g && o.budget == budget)
                    {
                        scores.push(o.rouge1);
                        shares.push(o.kv_bytes as f64 / r.full.kv_bytes.max(1) as f64);
                    }
                }
                if scores.is_empty() {
                    continue;
                }
                let mean = scores.iter().sum::<f64>() / scores.len() as f64;
                points.push(Point {
                    mode,
                    policy: g.clone(),
                    budget,
                    trials: scores.len(),
                    score: mean,
                    ci95: bootstrap_mean(&scores, 0.95, 2000, 0),
                    bytes_share: shares.iter().sum::<f64>() / shares.len() as f64,
                    relative: if full_score > 0.0 { mean / full_score } else { f64::NAN },
                    full_score,
                });
            }
        }
    }
    points
}

/// Per mode and policy, the smallest budget whose mean score is at least `share` of the full
/// cache's (`null` when none is).
fn smallest_keeping(points: &[Point], share: f64) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for p in points {
        let name = format!("{} {}", format!("{:?}", p.mode).to_lowercase(), p.policy);
        let entry = out.entry(name).or_insert(serde_json::Value::Null);
        if p.relative >= share && entry.as_f64().is_none_or(|b| p.budget < b) {
            *entry = json!(p.budget);
        }
    }
    out
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
