//! `headhunt niah`: the needle-in-a-haystack grid under any masking condition.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::args::GridArgs;
use super::args::MaskArgs;
use super::{Decode, DecodeArgs, ModelArg};
use crate::experiments::retrieval::masking::{check_scores_fit, Head};
use crate::experiments::retrieval::niah::trial::TrialRunner;
use crate::experiments::retrieval::outputs::{strongest_unmasked, write_niah};
use crate::runner::shard::run_folder;
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
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("niah-{}-{label}", super::model_stem(&args.model.model))));
    let out = run_folder(&out, grid.shard);
    super::record_provenance(&out, &model)?;
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let condition = args
        .decode
        .condition(args.mask.how.get().interventions(&model, &heads, runner.reference_tokens(2048))?);
    let mut settings = grid.settings();
    settings["command"] = json!("niah");
    settings["model"] = json!(args.model.model);
    settings["condition"] = args.mask.how.get().settings(&heads);
    if args.decode.decode == Decode::Contrastive {
        settings["decode"] = args.decode.settings();
    }
    let records = run_niah(&runner, &grid, &condition, &out, &settings, &label)?;
    let evidence_heads = scores.as_ref().map(|s| strongest_unmasked(s, &heads, 5)).unwrap_or_default();
    let summary = write_niah(
        &out,
        &format!("{} ({label})", model_name(&model, &args.model.model)),
        &grid,
        &records,
        &evidence_heads,
    )?;
    println!("{}", summary.line(&label));
    super::finish_with_report(&out)
}

pub fn model_name(model: &headhunt_engine::Model, arg: &str) -> String {
    model.source.name.clone().unwrap_or_else(|| super::model_stem(arg))
}
