//! `headhunt ruler`: RULER's synthetic long-context suite, and the retrieval heads of each task.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::args::{MaskSweepArgs, ShardArgs};
use super::detect::Detector;
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::qa;
use crate::experiments::retrieval::niah::grid::parse_values;
use crate::experiments::retrieval::niah::haystack::Haystack;
use crate::experiments::retrieval::niah::trial::{Condition, PrefixCache};
use crate::experiments::ruler::outputs::{masks_table, mean_score, write_outputs, write_qr_outputs};
use crate::experiments::ruler::trial::RulerRunner;
use crate::experiments::ruler::{suite, Sources, Task, Trial};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::trials::run_pending;

/// RULER (Hsieh et al. 2024): needle retrieval with distractors, several values and several
/// keys, multi-hop variable tracking, word aggregation and QA among distractor documents,
/// generated at each length in the model's own tokens, with RULER's prompts and metrics. Every
/// task that copies its answer from the context also scores every head as a retrieval head, so
/// the heads can be compared across tasks.
///
/// A trial's length is the prompt plus the task's generation budget (RULER's). Tasks with a
/// needle (and QA's gold document) run at each of --depths; the others once per length. Writes
/// to --out: trials.jsonl (resumable; --shard splits it), ruler.json (score per task and
/// length, effective lengths, retrieval heads per task), head_scores_<task>.json (the paper's
/// {"L-H": [...]} format, for `headhunt compare` and `--scores`), ruler.png/.svg (score against
/// length) and ruler_heads.png/.svg (each task's heads). With --mask-top / --mask-random /
/// --versus the suite runs once per condition, each in its own folder under --out
/// (`none`, `top-K`, `versus-top-K`, `random-K-seedS`), and ruler_masks.json holds every task's
/// score per condition.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Tasks, comma-separated (default: all twelve): niah_single_1..3, niah_multikey_1..3,
    /// niah_multivalue, niah_multiquery, vt, cwe, fwe, qa.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub tasks: Vec<Task>,
    /// Lengths in tokens (prompt and answer budget): a list or MIN:MAX:COUNT.
    #[arg(long, default_value = "1024,2048,4096")]
    pub lengths: String,
    /// Depths in percent for the tasks with a needle or gold document: a list or MIN:MAX:COUNT.
    #[arg(long, default_value = "0:100:3")]
    pub depths: String,
    /// Samples per task, length and depth (each its own keys, values and words).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Seed of every draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Essay text for the essay haystacks: a file or a folder of .txt files (RULER uses Paul
    /// Graham's essays; default: generated prose).
    #[arg(long)]
    pub haystack: Option<PathBuf>,
    /// Send prompts as plain text even when the model has a chat template.
    #[arg(long)]
    pub no_chat: bool,
    #[command(flatten)]
    pub mask: MaskSweepArgs,
    /// `wu` runs the suite (answers, RULER's scores, every copying task's retrieval heads);
    /// `qrhead` only scores heads by QRHead's calibrated attention of the query on the passages
    /// it is about (the asked needles, the chain's assignments, QA's gold document; no decoding;
    /// not cwe, fwe), writing each task's head_scores_<task>.json. [default folder for qrhead: runs/ruler-qrhead-<model>]
    #[arg(long, value_enum, default_value_t = Detector::Wu)]
    pub detector: Detector,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Output folder (resumable). [default: runs/ruler-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let tasks = if args.tasks.is_empty() {
        Task::ALL.to_vec()
    } else {
        args.tasks.clone()
    };
    let lengths: Vec<usize> = parse_values(&args.lengths, "--lengths")?.into_iter().map(|v| v as usize).collect();
    let depths = parse_values(&args.depths, "--depths")?;
    if depths.iter().any(|&d| d > 100.0) {
        bail!("--depths: depths are percentages, 0 to 100");
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let shard = args.shard.resolve()?;
    let haystack = match &args.haystack {
        Some(p) => Haystack::from_path(p)?,
        None => Haystack::Generated { seed: args.seed },
    };
    let model = args.model.load()?;
    let c = &model.config;
    let name = model_name(&model, &args.model.model);
    let folder = match args.detector {
        Detector::Wu => "ruler",
        Detector::Qrhead => "ruler-qrhead",
    };
    let out = run_folder(&args.out.clone().unwrap_or_else(|| args.model.default_out(folder)), shard);
    let settings = json!({
        "command": "ruler",
        "model": args.model.model,
        "model_name": name,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "tasks": tasks,
        "lengths": lengths,
        "depths": depths,
        "samples": args.samples,
        "seed": args.seed,
        "haystack": haystack.describe(),
        "chat": !args.no_chat,
    });
    super::record_provenance(&out, &model)?;
    // Enough essay for the longest context (a word is about 1.3 tokens; more is repeated).
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let sources = Sources::new(&haystack.text(longest * 6 + 4096)?, qa::builtin())?;
    let runner = RulerRunner::new(&model, sources, !args.no_chat)?;
    let all = suite(&tasks, &lengths, &depths, args.samples, args.seed);
    let mine: Vec<Trial> = all
        .iter()
        .enumerate()
        .filter(|(k, _)| shard.is_none_or(|s| s.takes(*k)))
        .map(|(_, t)| *t)
        .collect();
    // The prompts in lexicographic order, so that each trial continues from the prefix it shares
    // with the one before (the preamble, the haystack before the first needle).
    let spinner = crate::runner::progress::spinner(&format!("generating {} RULER prompts", mine.len()));
    let (prompts, too_short) = runner.prompts(&mine)?;
    spinner.finish_and_clear();
    for (t, smallest) in &too_short {
        eprintln!(
            "note: skipping {}: {} needs at least {smallest} tokens with its answer, more than {}",
            t.key(),
            t.task,
            t.length
        );
    }
    let mut ordered: Vec<Trial> = mine.iter().filter(|t| prompts.contains_key(&t.key())).copied().collect();
    ordered.sort_by(|a, b| prompts[&a.key()].ids.cmp(&prompts[&b.key()].ids));
    if args.detector == Detector::Qrhead {
        let mut settings = settings;
        settings["detector"] = json!("qrhead");
        ordered.retain(|t| t.task.copies());
        let records = run_pending(&out, &settings, &ordered, shard, "trials", |t| {
            runner
                .qr(t, &prompts[&t.key()])?
                .with_context(|| format!("{}: no gold passage to score", t.key()))
        })?;
        print!("{}", write_qr_outputs(&out, &name, &records, c.n_layers, c.n_heads)?);
        return super::finish_with_report(&out);
    }
    let scores = args.mask.load_scores(&model)?;
    let conditions = args.mask.conditions(scores.as_ref())?;
    // The masks' mean-ablation reference, where the mode needs one: the first prompt's context.
    let reference: Vec<u32> = ordered.first().map(|t| prompts[&t.key()].ids.clone()).unwrap_or_default();
    let mut by_condition = Vec::new();
    for (label, heads) in &conditions {
        // Unmasked alone, the run is the folder itself; with masks, a folder per condition.
        let dir = if conditions.len() == 1 { out.clone() } else { out.join(label) };
        let mut settings = settings.clone();
        if conditions.len() > 1 {
            settings["condition"] = args.mask.how.get().settings(heads);
        }
        let condition = Condition {
            interventions: args.mask.how.get().interventions(&model, heads, &reference)?,
            kv_policy: None,
            contrastive: None,
        };
        let mut cache = PrefixCache::new(longest);
        let records = run_pending(&dir, &settings, &ordered, shard, label, |t| {
            runner.run(t, &prompts[&t.key()], &condition, &mut cache)
        })?;
        let title = if conditions.len() == 1 {
            name.clone()
        } else {
            format!("{name} ({label})")
        };
        let summary = write_outputs(&dir, &title, &records, c.n_layers, c.n_heads)?;
        if conditions.len() == 1 {
            print!("{}", summary.table());
        }
        by_condition.push((label.clone(), heads.len(), summary));
    }
    if conditions.len() > 1 {
        let table = masks_table(&by_condition);
        print!("{table}");
        let json = json!({
            "model": name,
            "mask_mode": args.mask.how.mode,
            "mask_phase": args.mask.how.phase,
            "conditions": by_condition.iter().map(|(label, k, s)| json!({
                "condition": label,
                "masked_heads": k,
                "tasks": s.tasks.iter().map(|t| json!({"task": t.task, "score": mean_score(t)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        write_atomic(&out.join("ruler_masks.json"), serde_json::to_string_pretty(&json)?)?;
    }
    super::finish_with_report(&out)
}
