//! `headhunt niah`: the needle-in-a-haystack grid under any masking condition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::{Decode, DecodeArgs, ModelArg};
use crate::experiments::retrieval::failure::{classify, evidence, AnswerClass, Evidence};
use crate::experiments::retrieval::masking::{check_scores_fit, top_heads, Head, MaskArgs};
use crate::experiments::retrieval::niah::grid::{Grid, GridArgs};
use crate::experiments::retrieval::niah::needle::Needle;
use crate::experiments::retrieval::niah::trial::{TrialRecord, TrialRunner};
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::{Figure, Heatmap};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::trials::run_niah;

/// Run the needle-in-a-haystack grid (context lengths x depths), optionally with heads masked,
/// and see whether the model still retrieves.
///
/// Writes to --out: trials.jsonl (every trial with its answer, ROUGE-1 and every head's attention
/// argmax per step), niah.png/.svg (ROUGE-1 recall, 0-100, per depth and length), summary.json
/// (mean score, how many answers were complete, incomplete or hallucinated, and where the
/// strongest unmasked retrieval heads looked), failures.json (examples of each). Resumable; --shard as in
/// detect.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub grid: GridArgs,
    #[command(flatten)]
    pub mask: MaskArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Output folder (resumable). [default: runs/niah-<model>-<condition>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

/// A masking condition's name, for folders and plots.
pub fn condition_label(heads: &[Head], args: &MaskArgs) -> String {
    match (args.mask_top, args.mask_random, heads.is_empty()) {
        (_, _, true) => "none".into(),
        (Some(k), _, _) => format!("top-{k}"),
        (_, Some(k), _) => format!("random-{k}-seed{}", args.mask_seed),
        _ => format!("heads-{}", heads.len()),
    }
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve()?;
    let model = args.model.load()?;
    let scores = args.mask.load_scores()?;
    if let Some(s) = &scores {
        check_scores_fit(s, &model)?;
    }
    let heads = args.mask.heads(scores.as_ref())?;
    let label = match args.decode.decode {
        Decode::Greedy => condition_label(&heads, &args.mask),
        Decode::Contrastive => format!("decore-{}", condition_label(&heads, &args.mask)),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("niah-{}-{label}", model_stem(&args.model.model))));
    let out = run_folder(&out, grid.shard);
    super::record_provenance(&out, &model)?;
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let condition = args
        .decode
        .condition(args.mask.how.interventions(&model, &heads, runner.reference_tokens(2048))?);
    let mut settings = grid.settings();
    settings["command"] = json!("niah");
    settings["model"] = json!(args.model.model);
    settings["condition"] = args.mask.how.settings(&heads);
    if args.decode.decode == Decode::Contrastive {
        settings["decode"] = args.decode.settings();
    }
    let records = run_niah(&runner, &grid, &condition, &out, &settings, &label)?;
    let evidence_heads = scores.as_ref().map(|s| strongest_unmasked(s, &heads, 5)).unwrap_or_default();
    let summary = write_outputs(
        &out,
        &format!("{} ({label})", model_name(&model, &args.model.model)),
        &grid,
        &records,
        &evidence_heads,
    )?;
    println!("{}", summary.line(&label));
    super::finish_with_report(&out)
}

pub fn model_stem(model: &str) -> String {
    Path::new(model).file_stem().and_then(|s| s.to_str()).unwrap_or(model).to_owned()
}

pub fn model_name(model: &headhunt_engine::Model, arg: &str) -> String {
    model.source.name.clone().unwrap_or_else(|| model_stem(arg))
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
pub fn write_outputs(dir: &Path, title: &str, grid: &Grid, records: &[TrialRecord], evidence_heads: &[usize]) -> Result<NiahSummary> {
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
