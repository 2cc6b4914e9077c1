//! `headhunt recall`: factual-recall mechanisms (Lv et al. 2024).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use headhunt_engine::{HookPoint, Intervention, Model};
use serde_json::json;

use super::niah::{model_name, model_stem};
use super::ModelArg;
use crate::experiments::recall::analysis::{dla, Component};
use crate::experiments::recall::movers::{mover_heads, MoverHeads};
use crate::experiments::recall::tasks::{self, RecallPrompt, Task};
use crate::experiments::recall::{
    attend_to_self_in_final_layer, decompose_all, evaluate, fit_mlp, mean_of, prompts, sample, subtract_final_intercept, top_tokens, usable,
};
use crate::experiments::retrieval::masking::{head_label, MaskSweepArgs, PhaseArg};
use crate::experiments::retrieval::pearson;
use crate::output::plot::{Figure, Heatmap, Heatmaps, Scatter};
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
    let MoverHeads {
        prompts: n_prompts,
        ablation_prompts,
        attn,
        dla_answer,
        dla_subject,
        effect,
    } = mover_heads(&model, &task, &facts, args.shots, args.ablation_prompts)?;
    let n_heads = c.n_layers * c.n_heads;
    let label = |i: usize| format!("{}-{}", i / c.n_heads, i % c.n_heads);
    let mut order: Vec<usize> = (0..n_heads).collect();
    order.sort_by(|&a, &b| effect[b].total_cmp(&effect[a]));
    println!(
        "{} on `{}` ({} prompts, {}-shot; ablation on {}):",
        model_name(&model, &args.task.model.model),
        task.name,
        n_prompts,
        args.shots,
        ablation_prompts
    );
    println!(" rank  head   ablation effect  attention to subject  DLA answer  DLA subject");
    for (r, &i) in order.iter().take(args.top).enumerate() {
        println!(
            "{:>5}  {:<6} {:>15.3}  {:>20.3}  {:>10.3}  {:>11.3}",
            r + 1,
            label(i),
            effect[i],
            attn[i],
            dla_answer[i],
            dla_subject[i]
        );
    }
    let r = pearson(&attn, &dla_answer);
    println!("Pearson r (attention to subject, DLA to answer) = {r:.3}");

    let out = args.task.out();
    let name = model_name(&model, &args.task.model.model);
    let map = |title: &str, v: &[f64], unit: &str| {
        let mut m = Heatmap::heads(title, c.n_layers, c.n_heads, v.to_vec(), unit);
        let lo = v.iter().copied().fold(0.0f64, f64::min);
        m.range = (lo, m.range.1.max(lo + 1e-9));
        m
    };
    Heatmaps(vec![
        map("attention from the last position to the subject", &attn, "attention"),
        map("direct logit attribution to the answer", &dla_answer, "logit"),
        map("effect of mean ablation on the logit difference", &effect, "logit difference"),
    ])
    .save(&out.join("heads"))?;
    let labels = order.iter().take(5).map(|&i| (i, label(i))).collect();
    Scatter {
        title: format!("{name}, {}: attention to subject vs DLA (Pearson r = {r:.2})", task.name),
        x_label: "attention from the last position to the subject".into(),
        y_label: "direct logit attribution to the answer".into(),
        points: attn.iter().zip(&dla_answer).map(|(&a, &d)| (a, d)).collect(),
        labels,
    }
    .save(&out.join("heads_scatter"))?;
    let per_head: Vec<serde_json::Value> = order
        .iter()
        .map(|&i| json!({"head": label(i), "ablation_effect": effect[i], "attention_to_subject": attn[i], "dla_answer": dla_answer[i], "dla_subject": dla_subject[i]}))
        .collect();
    write_json(
        &out,
        "heads.json",
        &json!({"model": name, "task": task.name, "shots": args.shots, "prompts": n_prompts, "ablation_prompts": ablation_prompts, "pearson_attention_dla": r, "heads": per_head}),
    )
}

fn mlp(args: MlpArgs) -> Result<()> {
    let model = args.task.load()?;
    let tok = model.tokenizer()?;
    let layer = args.layer.unwrap_or(model.config.n_layers - 1);
    let task = args.task.tasks(&["capital"])?.remove(0);
    let facts = usable(&task, &model)?;
    let ps = prompts(&task, tok, &facts, &facts, args.shots)?;
    let decomposed = decompose_all(&model, &ps, "prompts")?;
    let (names, f) = fit_mlp(&model, &decomposed, layer, args.with_mlps)?;
    let reference = mean_of(decomposed.iter().map(|d| d.final_resid.clone()));
    let intercept: Vec<f32> = f.intercept.iter().map(|&x| x as f32).collect();
    let favoured = top_tokens(&model, &intercept, &reference, 15)?;
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| f.betas[b].total_cmp(&f.betas[a]));
    let name = model_name(&model, &args.task.model.model);
    println!(
        "MLP {layer} of {name} on `{}` ({} prompts, {} components): R² = {:.4}",
        task.name,
        ps.len(),
        names.len(),
        f.r2
    );
    println!(
        "amplified (largest β):  {}",
        order
            .iter()
            .take(8)
            .map(|&i| format!("{} {:.2}", names[i], f.betas[i]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("erased (β nearest 0 or below): {}", {
        let mut by_abs = order.clone();
        by_abs.sort_by(|&a, &b| f.betas[a].total_cmp(&f.betas[b]));
        by_abs
            .iter()
            .take(8)
            .map(|&i| format!("{} {:.2}", names[i], f.betas[i]))
            .collect::<Vec<_>>()
            .join(", ")
    });
    println!(
        "the intercept b favours: {}",
        favoured.iter().map(|(t, _)| format!("{t:?}")).collect::<Vec<_>>().join(" ")
    );
    let out = args.task.out();
    write_json(
        &out,
        &format!("mlp_{layer}.json"),
        &json!({
            "model": name, "task": task.name, "layer": layer, "shots": args.shots, "prompts": ps.len(), "r2": f.r2,
            "betas": order.iter().map(|&i| json!({"component": names[i].to_string(), "beta": f.betas[i]})).collect::<Vec<_>>(),
            "intercept_top_tokens": favoured.iter().map(|(t, l)| json!({"token": t, "logit": l})).collect::<Vec<_>>(),
            "intercept_norm": f.intercept.iter().map(|x| x * x).sum::<f64>().sqrt(),
        }),
    )?;
    Ok(())
}

/// Zero a point at a prompt's last position.
fn zero_last(point: HookPoint, q: &RecallPrompt, d: usize) -> Intervention {
    Intervention::Set {
        point,
        head: None,
        rows: BTreeMap::from([(q.ids.len() - 1, vec![0.0; d])]),
    }
}

fn final_layer(args: FinalArgs) -> Result<()> {
    let model = args.task.load()?;
    let tok = model.tokenizer()?;
    let c = &model.config;
    let last_layer = c.n_layers - 1;
    let name = model_name(&model, &args.task.model.model);
    let mut report = Vec::new();
    for task in args.task.tasks(&["capital"])? {
        let facts = usable(&task, &model)?;
        let ps = prompts(&task, tok, &facts, &facts, args.shots)?;
        let d = c.d_model;
        let conditions: [(&str, Vec<HookPoint>); 4] = [
            ("full model", vec![]),
            ("without final attention", vec![HookPoint::AttnOut(last_layer)]),
            ("without final MLP", vec![HookPoint::MlpOut(last_layer)]),
            ("without both", vec![HookPoint::AttnOut(last_layer), HookPoint::MlpOut(last_layer)]),
        ];
        println!("{name}, `{}` ({} prompts, {}-shot):", task.name, ps.len(), args.shots);
        let mut rows = Vec::new();
        for (label, points) in &conditions {
            let (p, acc) = evaluate(&model, &ps, |q| points.iter().map(|&pt| zero_last(pt, q, d)).collect())?;
            println!("  {label:<26} p(answer) {:>6.2}%  accuracy {:>5.1}%", 100.0 * p, 100.0 * acc);
            rows.push(json!({"condition": label, "p_correct": p, "accuracy": acc}));
        }
        // Direct effects of the final layer's heads and MLP on the answer, and what they push.
        let decomposed = decompose_all(&model, &ps, "prompts")?;
        let mut parts: Vec<Component> = (0..c.n_heads).map(|h| Component::Head(last_layer, h)).collect();
        parts.push(Component::Mlp(last_layer));
        let reference = mean_of(decomposed.iter().map(|d| d.final_resid.clone()));
        let to_answer: Vec<_> = ps
            .iter()
            .zip(&decomposed)
            .map(|(q, dd)| dla(&model, dd, &[q.answer_token]))
            .collect();
        let mut effects = Vec::new();
        for &part in &parts {
            let on_answer: f64 = to_answer.iter().map(|per| per[&part][0] as f64).sum::<f64>() / ps.len() as f64;
            let mean_vec = mean_of(decomposed.iter().filter_map(|dd| dd.component(part).map(<[f32]>::to_vec)));
            let pushes = top_tokens(&model, &mean_vec, &reference, 8)?;
            println!(
                "  {part:<10} DLA to the answer {on_answer:>7.3}; pushes up {}",
                pushes.iter().map(|(t, _)| format!("{t:?}")).collect::<Vec<_>>().join(" ")
            );
            effects.push(json!({"component": part.to_string(), "dla_answer": on_answer, "pushes": pushes.iter().map(|(t, l)| json!({"token": t, "logit": l})).collect::<Vec<_>>()}));
        }
        report.push(json!({"task": task.name, "prompts": ps.len(), "conditions": rows, "components": effects}));
    }
    let out = args.task.out();
    write_json(
        &out,
        "final_layer.json",
        &json!({"model": name, "shots": args.shots, "tasks": report}),
    )?;
    Ok(())
}

fn mitigate(args: MitigateArgs) -> Result<()> {
    let model = args.task.load()?;
    let tok = model.tokenizer()?;
    let c = &model.config;
    let last_layer = c.n_layers - 1;
    let name = model_name(&model, &args.task.model.model);
    let mut rows = Vec::new();
    println!(
        "{:<10} {:>5}  {:<32} {:>10} {:>9}",
        "task", "shots", "condition", "p(answer)", "accuracy"
    );
    for task in args.task.tasks(tasks::BUILTIN)? {
        let facts = usable(&task, &model)?;
        // The intercept is fitted on half the subjects and evaluated on the other half.
        let fit_facts: Vec<usize> = facts.iter().copied().step_by(2).collect();
        let eval_facts: Vec<usize> = facts.iter().copied().skip(1).step_by(2).collect();
        for &shots in &args.shots {
            let fit_prompts = prompts(&task, tok, &fit_facts, &facts, shots)?;
            let decomposed = decompose_all(&model, &fit_prompts, "fitting")?;
            let (_, f) = fit_mlp(&model, &decomposed, last_layer, false)?;
            let eval_prompts = prompts(&task, tok, &eval_facts, &facts, shots)?;
            let (a, b) = (
                attend_to_self_in_final_layer(&model),
                subtract_final_intercept(&model, &f.intercept),
            );
            let both = [a.clone(), b.clone()].concat();
            let conditions = [
                ("baseline", Vec::new()),
                ("(a) final heads attend to the last token", a),
                ("(b) minus the final MLP's intercept", b),
                ("(a) + (b)", both),
            ];
            for (label, interventions) in &conditions {
                let (p, acc) = evaluate(&model, &eval_prompts, |_| interventions.clone())?;
                println!(
                    "{:<10} {shots:>5}  {label:<32} {:>9.2}% {:>8.1}%",
                    task.name,
                    100.0 * p,
                    100.0 * acc
                );
                rows.push(
                    json!({"task": task.name, "shots": shots, "condition": label, "p_correct": p, "accuracy": acc,
                                 "fit_prompts": fit_prompts.len(), "eval_prompts": eval_prompts.len(), "intercept_r2": f.r2}),
                );
            }
        }
    }
    let out = args.task.out();
    write_json(&out, "mitigate.json", &json!({"model": name, "results": rows}))?;
    Ok(())
}
