//! `headhunt kv`: a KV cache that keeps full memory only where retrieval happens.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::niah::{model_name, model_stem};
use super::ModelArg;
use crate::experiments::kv::{eligible, full_count, matching_uniform_window, policy, KvChoice};
use crate::experiments::retrieval::masking::{check_scores_fit, MaskHow};
use crate::experiments::retrieval::niah::grid::GridArgs;
use crate::experiments::retrieval::niah::trial::{Condition, TrialRecord, TrialRunner};
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::{Figure, LinePlot, Series};
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

struct Row {
    budget: f64,
    policy: &'static str,
    label: String,
    score: f64,
    kv_bytes: usize,
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve_with(KV_LENGTHS, KV_DEPTHS)?;
    let model = args.model.load()?;
    let scores = HeadScores::load(&args.scores)?;
    check_scores_fit(&scores, &model)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("kv-{}", model_stem(&args.model.model))));
    let out = run_folder(&out, grid.shard);
    super::record_provenance(&out, &model)?;
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let n = eligible(&model).len();
    let longest = grid.max_length();

    let mut choices: Vec<(f64, &'static str, KvChoice)> = vec![(1.0, "full", KvChoice::Full)];
    for &b in &args.budgets {
        let k = full_count(&model, b);
        choices.push((b, "retrieval", KvChoice::Retrieval { budget: b }));
        choices.push((
            b,
            "random",
            KvChoice::Random {
                budget: b,
                seed: args.kv_seed,
            },
        ));
        let window = matching_uniform_window(n, k, longest, args.sink, args.window);
        choices.push((b, "uniform", KvChoice::Uniform { window }));
    }
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
        rows.push(Row {
            budget: *budget,
            policy: kind,
            label,
            score,
            kv_bytes,
        });
    }
    let full = rows
        .iter()
        .find(|r| r.policy == "full")
        .map(|r| (r.score, r.kv_bytes))
        .context("the full cache ran")?;
    let chosen = rows
        .iter()
        .filter(|r| r.policy == "retrieval" && r.score >= 0.95 * full.0)
        .min_by(|a, b| a.budget.total_cmp(&b.budget))
        .map(|r| r.budget);

    println!("\n budget  policy      NIAH score  KV at {longest} tokens");
    for r in &rows {
        println!(
            "{:>7}  {:<10} {:>10.1}  {:>8.1} MiB ({:>5.1}% of full)",
            r.budget,
            r.policy,
            r.score,
            r.kv_bytes as f64 / 1048576.0,
            100.0 * r.kv_bytes as f64 / full.1.max(1) as f64
        );
    }
    match chosen {
        Some(b) => {
            let at = |p: &str| rows.iter().find(|r| r.policy == p && r.budget == b);
            let ret = at("retrieval").expect("chosen from the retrieval rows");
            println!(
                "smallest budget keeping 95% of the full cache's score ({:.1}): {b} ({} of {n} KV heads full): score {:.1} with {:.1}% of the KV bytes; random heads {:.1}, uniform window {:.1}",
                full.0,
                full_count(&model, b),
                ret.score,
                100.0 * ret.kv_bytes as f64 / full.1.max(1) as f64,
                at("random").map_or(f64::NAN, |r| r.score),
                at("uniform").map_or(f64::NAN, |r| r.score)
            );
        }
        None => println!("no budget kept 95% of the full cache's score ({:.1})", full.0),
    }

    let series = |p: &str, name: &str| Series {
        name: name.into(),
        points: rows
            .iter()
            .filter(|r| r.policy == p || r.policy == "full")
            .map(|r| (r.kv_bytes as f64 / 1048576.0, r.score))
            .collect(),
        errors: None,
    };
    let name = model_name(&model, &args.model.model);
    LinePlot {
        title: format!("{name}: NIAH score against KV cache size ({longest} tokens)"),
        x_label: format!("KV cache at {longest} tokens (MiB)"),
        y_label: "NIAH score (mean ROUGE-1 recall)".into(),
        series: vec![
            series("retrieval", "retrieval heads full"),
            series("random", "random heads full"),
            series("uniform", "uniform sink + window"),
        ],
        y_range: Some((0.0, 100.0)),
    }
    .save(&out.join("kv_budget"))?;

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
            "rows": rows.iter().map(|r| json!({"budget": r.budget, "policy": r.policy, "label": r.label, "score": r.score, "kv_bytes": r.kv_bytes,
                                                "kv_fraction": r.kv_bytes as f64 / full.1.max(1) as f64})).collect::<Vec<_>>(),
            "smallest_budget_95": chosen,
            "speed": speed,
        }))?,
    )?;
    super::finish_with_report(&out)
}
