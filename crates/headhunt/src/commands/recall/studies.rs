//! Each `headhunt recall` subcommand: load, call the study in `experiments::recall`, print its
//! table and write its JSON.

use std::path::Path;

use anyhow::{bail, Context, Result};
use headhunt_engine::Model;
use serde_json::json;

use super::super::niah::model_name;
use super::{EvalArgs, FinalArgs, HeadsArgs, MitigateArgs, MlpArgs, TaskArgs};
use crate::experiments::recall::movers::mover_heads;
use crate::experiments::recall::study::{final_layer_study, mitigation, mlp_study, MlpStudy};
use crate::experiments::recall::tasks;
use crate::experiments::recall::{evaluate, prompts, sample, usable};
use crate::experiments::retrieval::masking::{head_label, PhaseArg};
use crate::experiments::retrieval::pearson;
use crate::runner::store::write_atomic;

/// Write one result file, then the folder's report.
fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join(name), serde_json::to_string_pretty(value)?)?;
    println!("wrote {}", dir.join(name).display());
    super::super::finish_with_report(dir)
}

impl TaskArgs {
    /// Load the model and note it, and this invocation, in the output folder.
    fn load(&self) -> Result<Model> {
        let model = self.model.load()?;
        super::super::record_provenance(&self.out(), &model)?;
        Ok(model)
    }
}

pub(super) fn eval(args: EvalArgs) -> Result<()> {
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
                let masks = args.mask.how.get().interventions(&model, heads, &ps[0].ids)?;
                let bar = crate::runner::progress::bar(ps.len() as u64, label);
                let (p, acc) = evaluate(&model, &ps, |_| masks.clone(), Some(&bar))?;
                bar.finish_and_clear();
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

pub(super) fn heads(args: HeadsArgs) -> Result<()> {
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

pub(super) fn mlp(args: MlpArgs) -> Result<()> {
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

pub(super) fn final_layer(args: FinalArgs) -> Result<()> {
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

pub(super) fn mitigate(args: MitigateArgs) -> Result<()> {
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
