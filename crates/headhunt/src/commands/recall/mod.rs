//! `headhunt recall`: factual-recall mechanisms (Lv et al. 2024). Its arguments here, each
//! subcommand's run in `studies.rs`.

mod studies;

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::args::MaskSweepArgs;
use super::ModelArg;
use crate::experiments::recall::tasks::{self, Task};

/// Factual recall: how a model gets from "The capital of France is" to " Paris".
///
/// Tasks are relations with prompt templates that end right before the answer: built in are
/// capital, language and currency (countries to their capital city, official language and
/// currency); --facts FACTS.jsonl ({"subject", "answer"} per line) with --templates FILE (one
/// template per line, containing {subject}) gives your own. Prompts are plain text; k-shot
/// prompts first show k completed examples about other subjects.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: RecallCommand,
}

#[derive(Subcommand, Debug)]
pub enum RecallCommand {
    /// Probability of the answer's first token and top-1 accuracy, per task and shot count.
    Eval(EvalArgs),
    /// Per head: attention from the last position to the subject, direct logit attribution to
    /// the answer and to the subject, and the effect of mean-ablating it (mover heads).
    Heads(HeadsArgs),
    /// Fit an MLP's output as Σ β_i c_i + b over the prompts: which heads it erases (β ≈ 0)
    /// or amplifies (β > 1), and what the shared intercept b writes.
    Mlp(MlpArgs),
    /// What the final layer does to the answer: skipping its attention, its MLP or both; each
    /// final head's and the final MLP's direct effect, and the tokens they push instead.
    FinalLayer(FinalArgs),
    /// Counter the final layer's anti-overconfidence: (a) final-layer heads attend only to the
    /// last position, (b) subtract the final MLP's intercept (fitted on other subjects), (a)+(b).
    Mitigate(MitigateArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct TaskArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Built-in tasks: capital, language, currency (comma list).
    #[arg(long, value_delimiter = ',')]
    pub task: Vec<String>,
    /// Your own facts, JSONL of {"subject", "answer"} (with --templates).
    #[arg(long, requires = "templates")]
    pub facts: Option<PathBuf>,
    /// Templates for --facts, one per line, each with {subject} and ending before the answer.
    #[arg(long, requires = "facts")]
    pub templates: Option<PathBuf>,
    /// Output folder. [default: runs/recall-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

impl TaskArgs {
    fn tasks(&self, default: &[&str]) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        if let (Some(f), Some(t)) = (&self.facts, &self.templates) {
            out.push(tasks::load(f, t)?);
        }
        let names: Vec<String> = if self.task.is_empty() && out.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            self.task.clone()
        };
        for n in names {
            out.push(tasks::builtin(&n)?);
        }
        Ok(out)
    }

    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| self.model.default_out("recall"))
    }
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Shot counts.
    #[arg(long, value_delimiter = ',', default_value = "0,3")]
    pub shots: Vec<usize>,
    /// At most this many prompts per task and shot count, evenly spaced over its facts and
    /// templates (all by default).
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// Also evaluate with heads masked (in the prompt's forward pass: --mask-phase decode is refused):
    /// closed-book recall under the same masks as NIAH and QA.
    #[command(flatten)]
    pub mask: MaskSweepArgs,
}

#[derive(clap::Args, Debug)]
pub struct HeadsArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Prompts used for the mean-ablation effects (one forward pass per head per prompt).
    #[arg(long, default_value_t = 30)]
    pub ablation_prompts: usize,
    /// Heads listed in the printed table.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

#[derive(clap::Args, Debug)]
pub struct MlpArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// The MLP to decompose. [default: the last layer]
    #[arg(long)]
    pub layer: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Also count the outputs of the MLPs below the layer as components.
    #[arg(long)]
    pub with_mlps: bool,
}

#[derive(clap::Args, Debug)]
pub struct FinalArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
}

#[derive(clap::Args, Debug)]
pub struct MitigateArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[arg(long, value_delimiter = ',', default_value = "0,3")]
    pub shots: Vec<usize>,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        RecallCommand::Eval(a) => studies::eval(a),
        RecallCommand::Heads(a) => studies::heads(a),
        RecallCommand::Mlp(a) => studies::mlp(a),
        RecallCommand::FinalLayer(a) => studies::final_layer(a),
        RecallCommand::Mitigate(a) => studies::mitigate(a),
    }
}
