//! `headhunt detect`: find a model's retrieval heads with needle-in-a-haystack trials.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::args::GridArgs;
use super::ModelArg;
use crate::experiments::retrieval::niah::trial::{Condition, TrialRunner};
use crate::experiments::retrieval::outputs::{qr_table, write_detection, write_qr_detection};
use crate::experiments::retrieval::qrhead::qr_trial;
use crate::experiments::retrieval::ScoreVariant;
use crate::runner::shard::run_folder;
use crate::runner::trials::{run_niah, run_pending};

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

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve()?;
    let model = args.model.load()?;
    let c = &model.config;
    let folder = match args.detector {
        Detector::Wu => "detect",
        Detector::Qrhead => "qrhead",
    };
    let out = run_folder(&args.out.clone().unwrap_or_else(|| args.model.default_out(folder)), grid.shard);
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
        let scores = write_qr_detection(&out, &settings, &records)?;
        print!("{}", qr_table(&settings, &scores, args.top));
        return super::finish_with_report(&out);
    }
    let records = run_niah(&runner, &grid, &Condition::default(), &out, &settings, "trials")?;
    let report = write_detection(&out, &settings, &records, args.score_variant)?;
    print!("{}", report.table(args.top));
    super::finish_with_report(&out)
}
