//! `headhunt kv`: a KV cache that keeps full memory only where retrieval happens.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::args::GridArgs;
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::kv::budget::{budget_choices, budget_plot, BudgetRow, BudgetSummary};
use crate::experiments::kv::{eligible, policy, KvChoice};
use crate::experiments::retrieval::masking::{check_scores_fit, MaskHow};
use crate::experiments::retrieval::niah::trial::{Condition, TrialRecord, TrialRunner};
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::Figure;
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::trials::run_niah;

const KV_LENGTHS: &str = "4000,6000";
const KV_DEPTHS: &str = "0:100:5";

/// The KV policy flags `bench` shares.
#[derive(clap::Args, Debug, Clone)]
pub struct KvPolicyArgs {
    /// Which KV heads keep their full cache: all (full), the best by retrieval score, random
    /// ones, or none (uniform sink + window).
    #[arg(long, value_enum, default_value_t = PolicyKind::Full)]
    pub kv_policy: PolicyKind,
    /// Share of eligible KV heads kept full (retrieval, random).
    #[arg(long, default_value_t = 0.2)]
    pub kv_budget: f64,
    /// Retrieval scores for --kv-policy retrieval.
    #[arg(long)]
    pub kv_scores: Option<PathBuf>,
    /// First positions every compressed head keeps.
    #[arg(long, default_value_t = 16)]
    pub kv_sink: usize,
    /// Recent positions every compressed head keeps.
    #[arg(long, default_value_t = 256)]
    pub kv_window: usize,
    /// Seed of the random heads (--kv-policy random).
    #[arg(long, default_value_t = 0)]
    pub kv_seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    Full,
    Retrieval,
    Random,
    Uniform,
}

impl KvPolicyArgs {
    pub fn choice(&self) -> KvChoice {
        match self.kv_policy {
            PolicyKind::Full => KvChoice::Full,
            PolicyKind::Retrieval => KvChoice::Retrieval { budget: self.kv_budget },
            PolicyKind::Random => KvChoice::Random {
                budget: self.kv_budget,
                seed: self.kv_seed,
            },
            PolicyKind::Uniform => KvChoice::Uniform { window: self.kv_window },
        }
    }

    /// The per-head policy, or `None` for the plain full cache.
    pub fn build(&self, model: &headhunt_engine::Model) -> Result<Option<Vec<Vec<headhunt_engine::KvPolicy>>>> {
        if self.kv_policy == PolicyKind::Full {
            return Ok(None);
        }
        let scores = self.kv_scores.as_ref().map(|p| HeadScores::load(p)).transpose()?;
        Ok(Some(policy(model, self.choice(), scores.as_ref(), self.kv_sink, self.kv_window)?))
    }
}

/// Compress the KV cache with retrieval scores: for each budget (the share of key/value heads
/// kept full), run the needle-in-a-haystack grid with the best-scoring heads full and the rest at
/// sink + window, against the same budget on random heads and against a uniform sink + window
/// with the same memory. Reports each policy's NIAH score and KV bytes, the smallest budget
/// keeping 95% of the full cache's score, and (measured in separate processes) prefill and
/// decode speed and peak memory of that cache against the full one.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// The grid. [default: --lengths 4000,6000 --depths 0:100:5]
    #[command(flatten)]
    pub grid: GridArgs,
    /// Retrieval scores (head_scores.json or its run folder, or a published score file).
    #[arg(long)]
    pub scores: PathBuf,
    /// Shares of eligible KV heads kept full.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2,0.3,0.5")]
    pub budgets: Vec<f64>,
    /// First positions (attention sinks) every compressed head keeps.
    #[arg(long, default_value_t = 16)]
    pub sink: usize,
    /// Most recent positions every compressed head keeps (the uniform policy's window is widened
    /// to spend the same bytes as each budget).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Seed of the random heads (--seed is the haystack's).
    #[arg(long, default_value_t = 0)]
    pub kv_seed: u64,
    /// Leave out the speed and memory measurement.
    #[arg(long)]
    pub no_bench: bool,
    /// Output folder. [default: runs/kv-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve_with(KV_LENGTHS, KV_DEPTHS)?;
    let model = args.model.load()?;
    let scores = HeadScores::load(&args.scores)?;
    check_scores_fit(&scores, &model)?;
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("kv"));
    let out = run_folder(&out, grid.shard);
    super::record_provenance(&out, &model)?;
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let longest = grid.max_length();
    let choices = budget_choices(&model, &args.budgets, args.kv_seed, longest, args.sink, args.window);
    let mut rows = Vec::new();
    for (i, (budget, kind, choice)) in choices.iter().enumerate() {
        let label = choice.label();
        eprintln!("policy {}/{}: {label}", i + 1, choices.len());
        let condition = Condition {
            interventions: Vec::new(),
            kv_policy: match choice {
                KvChoice::Full => None,
                c => Some(policy(&model, *c, Some(&scores), args.sink, args.window)?),
            },
            contrastive: None,
        };
        let mut settings = grid.settings();
        settings["command"] = json!("niah");
        settings["model"] = json!(args.model.model);
        settings["condition"] = MaskHow::default().settings(&[]);
        settings["kv"] = json!({"choice": choice, "sink": args.sink, "window": args.window});
        let records = run_niah(&runner, &grid, &condition, &out.join(&label), &settings, &label)?;
        let score = records.iter().map(|r| r.rouge1).sum::<f64>() / records.len().max(1) as f64;
        let kv_bytes = records
            .iter()
            .filter(|r| r.spec.length == longest)
            .map(|r: &TrialRecord| r.kv_bytes)
            .max()
            .unwrap_or(0);
        println!("{label:<28} NIAH {score:>5.1}  KV {:>7.1} MiB", kv_bytes as f64 / 1048576.0);
        rows.push(BudgetRow {
            budget: *budget,
            policy: kind,
            label,
            score,
            kv_bytes,
        });
    }
    let summary = BudgetSummary::of(&rows)?;
    print!("{}", summary.table(&rows, &model, longest));
    let name = model_name(&model, &args.model.model);
    budget_plot(&rows, &name, longest).save(&out.join("kv_budget"))?;
    let chosen = summary.chosen;
    let full = summary.full;
    let n = eligible(&model).len();

    // Speed and peak memory of the chosen cache against the full one, each in its own process.
    let mut speed = Vec::new();
    if !args.no_bench {
        let budget = chosen.unwrap_or(0.2);
        for kind in ["full", "retrieval"] {
            let exe = std::env::current_exe().context("finding the headhunt executable")?;
            let output = Command::new(exe)
                .args([
                    "bench",
                    "--json",
                    "--model",
                    &args.model.model,
                    "--precision",
                    args.model.precision.name(),
                    "--lengths",
                    &longest.to_string(),
                    "--decode-context",
                    &longest.to_string(),
                ])
                .args([
                    "--decode-tokens",
                    "32",
                    "--kv-policy",
                    kind,
                    "--kv-budget",
                    &budget.to_string(),
                    "--kv-scores",
                ])
                .arg(&args.scores)
                .args(["--kv-sink", &args.sink.to_string(), "--kv-window", &args.window.to_string()])
                .output()
                .context("running headhunt bench")?;
            if !output.status.success() {
                bail!("headhunt bench failed: {}", String::from_utf8_lossy(&output.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            println!(
                "{kind:<10} prefill {longest} tokens {:>6.1} tok/s, decode {:>5.1} tok/s, peak memory {:>6.0} MiB",
                v["results"][0]["tokens_per_s"].as_f64().unwrap_or(0.0),
                v["results"][1]["tokens_per_s"].as_f64().unwrap_or(0.0),
                v["results"][1]["peak_rss_mib"].as_f64().unwrap_or(0.0)
            );
            speed.push(json!({"policy": kind, "budget": budget, "bench": v}));
        }
    }
    write_atomic(
        &out.join("kv.json"),
        serde_json::to_string_pretty(&json!({
            "model": name, "lengths": grid.lengths, "sink": args.sink, "window": args.window, "eligible_kv_heads": n,
            "full": {"score": full.0, "kv_bytes": full.1},
            "rows": summary.rows_json(&rows),
            "smallest_budget_95": chosen,
            "speed": speed,
        }))?,
    )?;
    super::finish_with_report(&out)
}
