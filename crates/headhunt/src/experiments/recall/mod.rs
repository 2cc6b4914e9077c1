//! Factual recall (Lv et al. 2024): which heads move the subject to the last position, how an
//! MLP turns head outputs into the answer (a scalar per head plus a task-aware intercept), and
//! what the final layer does to the answer's probability.

pub mod analysis;
pub mod fit;
pub mod tasks;

use anyhow::{bail, Result};
use headhunt_engine::{Hooks, Intervention, Model, RunOptions, Tokenizer};

use analysis::{probability, LastPosition};
use fit::Fit;
use tasks::{RecallPrompt, Task};

/// Prompts for every (fact, template) of a task, over the facts in `facts`, with `shots`
/// demonstrations drawn from `pool`.
pub fn prompts(task: &Task, tok: &Tokenizer, facts: &[usize], pool: &[usize], shots: usize) -> Result<Vec<RecallPrompt>> {
    let mut out = Vec::new();
    for &i in facts {
        for t in 0..task.templates.len() {
            out.push(task.prompt(tok, i, t, shots, pool)?);
        }
    }
    if out.is_empty() {
        bail!("task `{}` has no prompts with this tokenizer", task.name);
    }
    Ok(out)
}

/// `f` over every item, in parallel across the cores (prompts are short, so one forward pass
/// barely uses a second core), results in the items' order.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync + Send) -> Result<Vec<R>> {
    use rayon::prelude::*;
    items.par_iter().map(f).collect()
}

/// Mean probability of the answer's first token and top-1 accuracy, under interventions
/// (given per prompt).
pub fn evaluate(
    model: &Model,
    prompts: &[RecallPrompt],
    interventions: impl Fn(&RecallPrompt) -> Vec<Intervention> + Sync + Send,
) -> Result<(f64, f64)> {
    let scored = par_map(prompts, |q| {
        let hooks = Hooks {
            interventions: interventions(q),
            ..Default::default()
        };
        let logits = model.run(hooks, RunOptions::default())?.prefill(&q.ids)?;
        Ok((
            probability(&logits, q.answer_token),
            headhunt_engine::argmax(&logits) == q.answer_token,
        ))
    })?;
    // Summed in the prompts' order, so the result does not depend on the threads.
    let p: f64 = scored.iter().map(|(p, _)| p).sum();
    let hits = scored.iter().filter(|(_, hit)| *hit).count();
    let n = prompts.len().max(1) as f64;
    Ok((p / n, hits as f64 / n))
}

/// Mitigation (a): every head of the last layer attends only to the query's own position.
pub fn attend_to_self_in_final_layer(model: &Model) -> Vec<Intervention> {
    let c = &model.config;
    (0..c.n_heads)
        .map(|h| Intervention::RestrictKeys {
            layer: c.n_layers - 1,
            head: h,
            keys: headhunt_engine::KeySet::SelfOnly,
            phase: headhunt_engine::Phase::Both,
        })
        .collect()
}

/// Mitigation (b): subtract a fitted intercept from the last layer's MLP output at the last
/// position.
pub fn subtract_final_intercept(model: &Model, intercept: &[f64]) -> Vec<Intervention> {
    vec![Intervention::Add {
        point: headhunt_engine::HookPoint::MlpOut(model.config.n_layers - 1),
        positions: headhunt_engine::Positions::Last,
        vector: intercept.iter().map(|&x| -x as f32).collect(),
    }]
}

/// Fit the MLP of `layer` as `Σ β_i c_i + b` over the prompts' last positions, the components
/// being every head of layers up to `layer`, the embeddings and, with `with_mlps`, the MLPs
/// below `layer`.
pub fn fit_mlp(model: &Model, decomposed: &[LastPosition], layer: usize, with_mlps: bool) -> Result<(Vec<analysis::Component>, Fit)> {
    use analysis::Component;
    if layer >= model.config.n_layers {
        bail!("layer {layer} does not exist (the model has {})", model.config.n_layers);
    }
    let keep = |c: &Component| match *c {
        Component::Embed | Component::PosEmbed => true,
        Component::Head(l, _) => l <= layer,
        Component::Mlp(l) => with_mlps && l < layer,
        Component::AttnBias(_) => false,
    };
    let names: Vec<Component> = decomposed[0].components.iter().map(|(c, _)| *c).filter(keep).collect();
    let components: Vec<Vec<Vec<f32>>> = decomposed
        .iter()
        .map(|d| d.components.iter().filter(|(c, _)| keep(c)).map(|(_, v)| v.clone()).collect())
        .collect();
    let targets: Vec<Vec<f32>> = decomposed
        .iter()
        .map(|d| d.component(Component::Mlp(layer)).map(<[f32]>::to_vec))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("the MLP output of layer {layer} was not captured"))?;
    Ok((names, fit::fit(&components, &targets)?))
}
