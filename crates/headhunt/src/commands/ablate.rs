//! `headhunt ablate`: mask the top-K retrieval heads against K random non-retrieval heads, K in
//! a sweep.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::args::{GridArgs, MaskHowArgs};
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::retrieval::masking::{check_scores_fit, load_versus, random_heads, top_heads, Head};
use crate::experiments::retrieval::niah::trial::{Condition, TrialRunner};
use crate::experiments::retrieval::outputs::{strongest_unmasked, write_niah, NiahSummary};
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::{Figure, LinePlot, Series};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::trials::{run_niah_conditions, ConditionRun};

/// The ablation grid is smaller than detection's: it runs once per condition.
const ABLATE_LENGTHS: &str = "600:2400:4";
const ABLATE_DEPTHS: &str = "0:100:5";

/// The causal test of retrieval heads: for each K, run the needle-in-a-haystack grid with the K
/// best heads of --scores masked, and with K random heads drawn from those scoring at or below
/// 0.1 (one draw per seed). Writes one run folder per condition (resumable, each with its heatmap
/// and failure analysis), ablation.png/.svg (score against K) and ablation.json.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// The grid. [default: --lengths 600:2400:4 --depths 0:100:5]
    #[command(flatten)]
    pub grid: GridArgs,
    /// Retrieval scores (head_scores.json, its run folder, or a published score file).
    #[arg(long)]
    pub scores: PathBuf,
    /// The K values.
    #[arg(long, value_delimiter = ',', default_value = "0,5,10,20,50,100")]
    pub ks: Vec<usize>,
    /// Random draws per K.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// A second score file (QRHead's from `detect --detector qrhead`, say): its top-K heads are
    /// masked too at every K (conditions `versus-top-K`, a third curve).
    #[arg(long, value_name = "SCORES")]
    pub versus: Option<PathBuf>,
    #[command(flatten)]
    pub mask: MaskHowArgs,
    /// Output folder. [default: runs/ablate-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve_with(ABLATE_LENGTHS, ABLATE_DEPTHS)?;
    let model = args.model.load()?;
    let scores = HeadScores::load(&args.scores)?;
    check_scores_fit(&scores, &model)?;
    let versus = args.versus.as_deref().map(|p| load_versus(p, &scores)).transpose()?;
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("ablate"));
    let out = run_folder(&out, grid.shard);
    let total = model.config.n_layers * model.config.n_heads;
    let ks: Vec<usize> = args.ks.iter().copied().filter(|&k| k <= total).collect();
    if ks.is_empty() {
        bail!("no K in --ks fits the model's {total} heads");
    }
    super::record_provenance(&out, &model)?;
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let reference = runner.reference_tokens(2048).to_vec();
    let name = model_name(&model, &args.model.model);

    let mut conditions: Vec<(String, usize, Option<u64>, Vec<Head>)> = Vec::new();
    for &k in &ks {
        if k == 0 {
            conditions.push(("none".into(), 0, None, Vec::new()));
            continue;
        }
        conditions.push((format!("top-{k}"), k, None, top_heads(&scores, k)));
        if let Some(v) = &versus {
            conditions.push((format!("versus-top-{k}"), k, None, top_heads(v, k)));
        }
        for seed in 0..args.seeds {
            let heads = random_heads(&scores, k, seed).with_context(|| format!("K = {k}"))?;
            conditions.push((format!("random-{k}-seed{seed}"), k, Some(seed), heads));
        }
    }
    let mut runs = Vec::with_capacity(conditions.len());
    for (label, _, _, heads) in &conditions {
        let mut settings = grid.settings();
        settings["command"] = json!("niah");
        settings["model"] = json!(args.model.model);
        settings["condition"] = args.mask.get().settings(heads);
        runs.push(ConditionRun {
            condition: Condition {
                interventions: args.mask.get().interventions(&model, heads, &reference)?,
                kv_policy: None,
                contrastive: None,
            },
            dir: out.join(label),
            settings,
            label: label.clone(),
        });
    }
    let all_records = run_niah_conditions(&runner, &grid, &runs)?;
    let mut results: Vec<(String, usize, Option<u64>, NiahSummary)> = Vec::new();
    for ((label, k, seed, heads), (run, records)) in conditions.iter().zip(runs.iter().zip(&all_records)) {
        let summary = write_niah(
            &run.dir,
            &format!("{name}: {label}"),
            &grid,
            records,
            &strongest_unmasked(&scores, heads, 5),
        )?;
        println!("{}", summary.line(label));
        results.push((label.clone(), *k, *seed, summary));
    }

    // Score against K: top-K, and the random draws' mean with their standard deviation.
    let baseline = results.iter().find(|r| r.1 == 0).map(|r| r.3.mean_rouge);
    let mut top = Vec::new();
    let mut versus_top = Vec::new();
    let mut random = Vec::new();
    let mut table = Vec::new();
    for &k in &ks {
        let at = |label: String| {
            if k == 0 {
                baseline
            } else {
                results.iter().find(|r| r.0 == label).map(|r| r.3.mean_rouge)
            }
        };
        let (t, v) = (at(format!("top-{k}")), at(format!("versus-top-{k}")).filter(|_| versus.is_some()));
        let draws: Vec<f64> = if k == 0 {
            baseline.into_iter().collect()
        } else {
            results
                .iter()
                .filter(|r| r.1 == k && r.2.is_some())
                .map(|r| r.3.mean_rouge)
                .collect()
        };
        let mean = draws.iter().sum::<f64>() / draws.len().max(1) as f64;
        let std = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len().max(1) as f64).sqrt();
        let (lo, hi) = draws
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &d| (a.min(d), b.max(d)));
        if let Some(t) = t {
            top.push((k as f64, t));
        }
        if let Some(v) = v {
            versus_top.push((k as f64, v));
        }
        random.push((k as f64, mean, std));
        table.push(
            json!({"k": k, "top": t, "versus_top": v, "random_mean": mean, "random_std": std, "random_min": lo, "random_max": hi, "random_draws": draws}),
        );
    }
    let plot = LinePlot {
        title: format!("{name}: masking retrieval heads vs random heads"),
        x_label: "K (heads masked)".into(),
        y_label: "NIAH score (mean ROUGE-1 recall)".into(),
        series: [
            Some(Series {
                name: "top-K retrieval heads".into(),
                points: top.clone(),
                errors: None,
            }),
            args.versus.as_ref().map(|p| Series {
                name: format!("top-K of {}", p.display()),
                points: versus_top,
                errors: None,
            }),
            Some(Series {
                name: format!("K random non-retrieval heads ({} seeds, ±1 sd)", args.seeds),
                points: random.iter().map(|r| (r.0, r.1)).collect(),
                errors: Some(random.iter().map(|r| r.2).collect()),
            }),
        ]
        .into_iter()
        .flatten()
        .collect(),
        y_range: Some((0.0, 100.0)),
    };
    plot.save(&out.join("ablation"))?;
    write_atomic(
        &out.join("ablation.json"),
        serde_json::to_string_pretty(&json!({
            "model": name,
            "scores": args.scores,
            "versus": args.versus,
            "mask_mode": args.mask.mode,
            "mask_phase": args.mask.phase,
            "sweep": table,
            "conditions": results.iter().map(|r| json!({"label": r.0, "k": r.1, "seed": r.2, "summary": r.3})).collect::<Vec<_>>(),
        }))?,
    )?;
    let versus_column = if versus.is_some() { "  versus-top-K" } else { "" };
    println!("\n    K   top-K{versus_column}   random-K (mean ± sd over {} seeds)", args.seeds);
    for row in &table {
        let v = match row["versus_top"].as_f64() {
            Some(v) => format!("  {v:>12.1}"),
            None => String::new(),
        };
        println!(
            "{:>5}  {:>6.1}{v}   {:>6.1} ± {:.1}",
            row["k"],
            row["top"].as_f64().unwrap_or(f64::NAN),
            row["random_mean"].as_f64().unwrap_or(f64::NAN),
            row["random_std"].as_f64().unwrap_or(0.0)
        );
    }
    super::finish_with_report(&out)
}
