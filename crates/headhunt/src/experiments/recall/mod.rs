//! Factual recall (Lv et al. 2024): which heads move the subject to the last position, how an
//! MLP turns head outputs into the answer (a scalar per head plus a task-aware intercept), and
//! what the final layer does to the answer's probability.

pub mod analysis;
pub mod fit;
pub mod movers;
pub mod study;
pub mod tasks;

use anyhow::{bail, Result};
use headhunt_engine::{Hooks, Intervention, Model, RunOptions, Tokenizer};

use analysis::{analyse, probability, LastPosition};
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
/// (given per prompt); `progress` advances as each prompt's run finishes.
pub fn evaluate(
    model: &Model,
    prompts: &[RecallPrompt],
    interventions: impl Fn(&RecallPrompt) -> Vec<Intervention> + Sync + Send,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<(f64, f64)> {
    let scored = par_map(prompts, |q| {
        let hooks = Hooks {
            interventions: interventions(q),
            ..Default::default()
        };
        let logits = model.run(hooks, RunOptions::default())?.prefill(&q.ids)?;
        if let Some(bar) = progress {
            bar.inc(1);
        }
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

/// The facts a task can be scored on with this tokenizer.
pub fn usable(task: &Task, model: &Model) -> Result<Vec<usize>> {
    let facts = task.unambiguous(model.tokenizer()?)?;
    if facts.len() < 4 {
        bail!(
            "task `{}`: only {} facts have an unambiguous first answer token with this tokenizer",
            task.name,
            facts.len()
        );
    }
    Ok(facts)
}

/// At most `n` of `items`, evenly spaced (all without `n`).
pub fn sample<T>(items: Vec<T>, n: Option<usize>) -> Vec<T> {
    match n {
        Some(n) if n < items.len() => {
            let len = items.len();
            let keep: Vec<usize> = (0..n).map(|i| i * len / n).collect();
            items
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.binary_search(i).is_ok())
                .map(|(_, x)| x)
                .collect()
        }
        _ => items,
    }
}

/// Decompose every prompt (with a progress bar).
pub fn decompose_all(model: &Model, ps: &[RecallPrompt], what: &str) -> Result<Vec<LastPosition>> {
    let bar = crate::runner::progress::bar(ps.len() as u64, what);
    let out = par_map(ps, |q| {
        let r = analyse(model, &q.ids, q.subject.clone(), &[]);
        bar.inc(1);
        r
    });
    bar.finish_and_clear();
    out
}

/// The tokens a vector in the residual stream favours most (the final norm frozen at
/// `reference`), as (token text, logit).
pub fn top_tokens(model: &Model, v: &[f32], reference: &[f32], k: usize) -> Result<Vec<(String, f32)>> {
    let logits = model.direct_logit_attribution(v, reference);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let tok = model.tokenizer()?;
    order
        .into_iter()
        .take(k)
        .map(|t| Ok((tok.decode(&[t as u32], false)?, logits[t])))
        .collect()
}

pub fn mean_of(vs: impl Iterator<Item = Vec<f32>>) -> Vec<f32> {
    let mut n = 0usize;
    let mut acc: Vec<f64> = Vec::new();
    for v in vs {
        if acc.is_empty() {
            acc = vec![0.0; v.len()];
        }
        acc.iter_mut().zip(&v).for_each(|(a, &b)| *a += b as f64);
        n += 1;
    }
    acc.into_iter().map(|a| (a / n.max(1) as f64) as f32).collect()
}
