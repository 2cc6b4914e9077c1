//! `headhunt recall`: factual-recall mechanisms (Lv et al. 2024).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use headhunt_engine::Model;
use serde_json::json;

use super::niah::{model_name, model_stem};
use super::ModelArg;
use crate::experiments::recall::movers::mover_heads;
use crate::experiments::recall::study::{final_layer_study, mitigation, mlp_study, MlpStudy};
use crate::experiments::recall::tasks::{self, Task};
use crate::experiments::recall::{evaluate, prompts, sample, usable};
use crate::experiments::retrieval::masking::{head_label, MaskSweepArgs, PhaseArg};
use crate::experiments::retrieval::pearson;
use crate::runner::store::write_atomic;

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
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("recall-{}", model_stem(&self.model.model))))
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
        RecallCommand::Eval(a) => eval(a),
        RecallCommand::Heads(a) => heads(a),
        RecallCommand::Mlp(a) => mlp(a),
        RecallCommand::FinalLayer(a) => final_layer(a),
        RecallCommand::Mitigate(a) => mitigate(a),
    }
}

/// Write one result file, then the folder's report.
fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join(name), serde_json::to_string_pretty(value)?)?;
    println!("wrote {}", dir.join(name).display());
    super::finish_with_report(dir)
}

impl TaskArgs {
    /// Load the model and note it, and this invocation, in the output folder.
    fn load(&self) -> Result<Model> {
        let model = self.model.load()?;
        super::record_provenance(&self.out(), &model)?;
        Ok(model)
    }
}

fn eval(args: EvalArgs) -> Result<()> {
    if args.mask.how.phase == PhaseArg::Decode {
        bail!("--mask-phase decode masks nothing here: a recall answer is the next token after one forward pass over the prompt");
    }
    let model = args.task.load()?;
    let tok = model.tokenizer()?;
    let scores = args.mask.load_scores(&model)?;
    let conditions = args.mask.conditions(scores.as_ref())?;
    let mut rows = Vec::new();
    println!(
        "{:<20} {:<10} {:>5} {:>8} {:>10} {:>9}",
        "condition", "task", "shots", "prompts", "p(answer)", "accuracy"
    );
    for task in args.task.tasks(tasks::BUILTIN)? {
        let facts = usable(&task, &model)?;
        for &shots in &args.shots {
            let ps = sample(prompts(&task, tok, &facts, &facts, shots)?, args.sample);
            for (label, heads) in &conditions {
                let masks = args.mask.how.interventions(&model, heads, &ps[0].ids)?;
                let (p, acc) = evaluate(&model, &ps, |_| masks.clone())?;
                println!(
                    "{label:<20} {:<10} {shots:>5} {:>8} {:>9.2}% {:>8.1}%",
                    task.name,
                    ps.len(),
                    100.0 * p,
                    100.0 * acc
                );
                rows.push(json!({
                    "condition": label,
                    "masked_heads": heads.iter().map(|&h| head_label(h)).collect::<Vec<_>>(),
                    "task": task.name,
                    "shots": shots,
                    "facts": facts.len(),
                    "prompts": ps.len(),
                    "p_correct": p,
                    "accuracy": acc,
                }));
            }
        }
    }
    let out = args.task.out();
    write_json(
        &out,
        "eval.json",
        &json!({"model": model_name(&model, &args.task.model.model), "mask_mode": args.mask.how.mode, "results": rows}),
    )?;
    Ok(())
}

fn heads(args: HeadsArgs) -> Result<()> {
    let model = args.task.load()?;
    let c = &model.config;
    let task = args.task.tasks(&["capital"])?.remove(0);
    let facts = usable(&task, &model)?;
    let movers = mover_heads(&model, &task, &facts, args.shots, args.ablation_prompts)?;
    let name = model_name(&model, &args.task.model.model);
    let label = |i: usize| format!("{}-{}", i / c.n_heads, i % c.n_heads);
    let order = movers.by_effect();
    println!(
        "{name} on `{}` ({} prompts, {}-shot; ablation on {}):",
        task.name, movers.prompts, args.shots, movers.ablation_prompts
    );
    println!(" rank  head   ablation effect  attention to subject  DLA answer  DLA subject");
    for (r, &i) in order.iter().take(args.top).enumerate() {
        println!(
            "{:>5}  {:<6} {:>15.3}  {:>20.3}  {:>10.3}  {:>11.3}",
            r + 1,
            label(i),
            movers.effect[i],
            movers.attn[i],
            movers.dla_answer[i],
            movers.dla_subject[i]
        );
    }
    let r = pearson(&movers.attn, &movers.dla_answer);
    println!("Pearson r (attention to subject, DLA to answer) = {r:.3}");
    let out = args.task.out();
    movers.save_figures(&out, &format!("{name}, {}", task.name), c.n_layers, c.n_heads)?;
    let per_head: Vec<serde_json::Value> = order
        .iter()
        .map(|&i| json!({"head": label(i), "ablation_effect": movers.effect[i], "attention_to_subject": movers.attn[i], "dla_answer": movers.dla_answer[i], "dla_subject": movers.dla_subject[i]}))
        .collect();
    write_json(
        &out,
        "heads.json",
        &json!({"model": name, "task": task.name, "shots": args.shots, "prompts": movers.prompts, "ablation_prompts": movers.ablation_prompts, "pearson_attention_dla": r, "heads": per_head}),
    )
}

fn mlp(args: MlpArgs) -> Result<()> {
    let model = args.task.load()?;
    let layer = args.layer.unwrap_or(model.config.n_layers - 1);
    let task = args.task.tasks(&["capital"])?.remove(0);
    let MlpStudy {
        prompts,
        components: names,
        fit: f,
        favoured,
    } = mlp_study(&model, &task, args.shots, layer, args.with_mlps)?;
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| f.betas[b].total_cmp(&f.betas[a]));
    let name = model_name(&model, &args.task.model.model);
    println!(
        "MLP {layer} of {name} on `{}` ({prompts} prompts, {} components): R² = {:.4}",
        task.name,
        names.len(),
        f.r2
    );
    let betas = |idx: &[usize]| {
        idx.iter()
            .take(8)
            .map(|&i| format!("{} {:.2}", names[i], f.betas[i]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("amplified (largest β):  {}", betas(&order));
    let mut by_value = order.clone();
    by_value.sort_by(|&a, &b| f.betas[a].total_cmp(&f.betas[b]));
    println!("erased (β nearest 0 or below): {}", betas(&by_value));
    println!(
        "the intercept b favours: {}",
        favoured.iter().map(|(t, _)| format!("{t:?}")).collect::<Vec<_>>().join(" ")
    );
    write_json(
        &args.task.out(),
        &format!("mlp_{layer}.json"),
        &json!({
            "model": name, "task": task.name, "layer": layer, "shots": args.shots, "prompts": prompts, "r2": f.r2,
            "betas": order.iter().map(|&i| json!({"component": names[i].to_string(), "beta": f.betas[i]})).collect::<Vec<_>>(),
            "intercept_top_tokens": favoured.iter().map(|(t, l)| json!({"token": t, "logit": l})).collect::<Vec<_>>(),
            "intercept_norm": f.intercept.iter().map(|x| x * x).sum::<f64>().sqrt(),
        }),
    )
}

fn final_layer(args: FinalArgs) -> Result<()> {
    let model = args.task.load()?;
    let name = model_name(&model, &args.task.model.model);
    let mut report = Vec::new();
    for task in args.task.tasks(&["capital"])? {
        let study = final_layer_study(&model, &task, args.shots)?;
        println!("{name}, `{}` ({} prompts, {}-shot):", task.name, study.prompts, args.shots);
        for r in &study.conditions {
            println!(
                "  {:<26} p(answer) {:>6.2}%  accuracy {:>5.1}%",
                r.condition,
                100.0 * r.p_correct,
                100.0 * r.accuracy
            );
        }
        for e in &study.components {
            println!(
                "  {:<10} DLA to the answer {:>7.3}; pushes up {}",
                e.component,
                e.dla_answer,
                e.pushes.iter().map(|p| format!("{:?}", p.token)).collect::<Vec<_>>().join(" ")
            );
        }
        report.push(study);
    }
    write_json(
        &args.task.out(),
        "final_layer.json",
        &json!({"model": name, "shots": args.shots, "tasks": report}),
    )
}

fn mitigate(args: MitigateArgs) -> Result<()> {
    let model = args.task.load()?;
    let name = model_name(&model, &args.task.model.model);
    let mut rows = Vec::new();
    println!(
        "{:<10} {:>5}  {:<32} {:>10} {:>9}",
        "task", "shots", "condition", "p(answer)", "accuracy"
    );
    for task in args.task.tasks(tasks::BUILTIN)? {
        for &shots in &args.shots {
            for row in mitigation(&model, &task, shots)? {
                println!(
                    "{:<10} {shots:>5}  {:<32} {:>9.2}% {:>8.1}%",
                    task.name,
                    row.result.condition,
                    100.0 * row.result.p_correct,
                    100.0 * row.result.accuracy
                );
                rows.push(row);
            }
        }
    }
    write_json(&args.task.out(), "mitigate.json", &json!({"model": name, "results": rows}))
}
