//! The factual-recall studies `headhunt recall` runs, as results: the MLP's decomposition, the
//! final layer's effect on the answer, and the mitigation of its anti-overconfidence.

use std::collections::BTreeMap;

use anyhow::Result;
use headhunt_engine::{HookPoint, Intervention, Model};
use serde::Serialize;

use super::analysis::{dla, Component};
use super::fit::Fit;
use super::tasks::{RecallPrompt, Task};
use super::{
    attend_to_self_in_final_layer, decompose_all, evaluate, fit_mlp, mean_of, prompts, subtract_final_intercept, top_tokens, usable,
};

/// An MLP's output fitted as its inputs' components times a scalar each, plus an intercept.
pub struct MlpStudy {
    pub prompts: usize,
    pub components: Vec<Component>,
    pub fit: Fit,
    /// The tokens the intercept pushes up most (against the mean final residual).
    pub favoured: Vec<(String, f32)>,
}

pub fn mlp_study(model: &Model, task: &Task, shots: usize, layer: usize, with_mlps: bool) -> Result<MlpStudy> {
    let facts = usable(task, model)?;
    let ps = prompts(task, model.tokenizer()?, &facts, &facts, shots)?;
    let decomposed = decompose_all(model, &ps, "prompts")?;
    let (components, fit) = fit_mlp(model, &decomposed, layer, with_mlps)?;
    let reference = mean_of(decomposed.iter().map(|d| d.final_resid.clone()));
    let intercept: Vec<f32> = fit.intercept.iter().map(|&x| x as f32).collect();
    Ok(MlpStudy {
        prompts: ps.len(),
        components,
        favoured: top_tokens(model, &intercept, &reference, 15)?,
        fit,
    })
}

/// Probability of the answer's first token and top-1 accuracy under one condition.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionResult {
    pub condition: String,
    pub p_correct: f64,
    pub accuracy: f64,
}

/// A final-layer part's direct effect on the answer and the tokens it pushes up.
#[derive(Debug, Clone, Serialize)]
pub struct PartEffect {
    pub component: String,
    pub dla_answer: f64,
    pub pushes: Vec<Pushed>,
}

/// A token a component pushes up, and by how much (logit).
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    pub token: String,
    pub logit: f32,
}

/// What the final layer does to the answer on one task.
#[derive(Debug, Clone, Serialize)]
pub struct FinalLayerStudy {
    pub task: String,
    pub prompts: usize,
    pub conditions: Vec<ConditionResult>,
    pub components: Vec<PartEffect>,
}

/// Zero a point at a prompt's last position.
fn zero_last(point: HookPoint, q: &RecallPrompt, d: usize) -> Intervention {
    Intervention::Set {
        point,
        head: None,
        rows: BTreeMap::from([(q.ids.len() - 1, vec![0.0; d])]),
    }
}

/// The answer with the final layer's attention, MLP or both skipped at the last position; each
/// final head's and the final MLP's direct effect on the answer and what they push instead.
pub fn final_layer_study(model: &Model, task: &Task, shots: usize) -> Result<FinalLayerStudy> {
    let c = &model.config;
    let last = c.n_layers - 1;
    let facts = usable(task, model)?;
    let ps = prompts(task, model.tokenizer()?, &facts, &facts, shots)?;
    let skipped: [(&str, Vec<HookPoint>); 4] = [
        ("full model", vec![]),
        ("without final attention", vec![HookPoint::AttnOut(last)]),
        ("without final MLP", vec![HookPoint::MlpOut(last)]),
        ("without both", vec![HookPoint::AttnOut(last), HookPoint::MlpOut(last)]),
    ];
    let mut conditions = Vec::new();
    for (label, points) in &skipped {
        let (p, acc) = evaluate(model, &ps, |q| points.iter().map(|&pt| zero_last(pt, q, c.d_model)).collect(), None)?;
        conditions.push(ConditionResult {
            condition: (*label).into(),
            p_correct: p,
            accuracy: acc,
        });
    }
    let decomposed = decompose_all(model, &ps, "prompts")?;
    let mut parts: Vec<Component> = (0..c.n_heads).map(|h| Component::Head(last, h)).collect();
    parts.push(Component::Mlp(last));
    let reference = mean_of(decomposed.iter().map(|d| d.final_resid.clone()));
    let to_answer: Vec<_> = ps
        .iter()
        .zip(&decomposed)
        .map(|(q, dd)| dla(model, dd, &[q.answer_token]))
        .collect();
    let mut components = Vec::new();
    for &part in &parts {
        let on_answer = to_answer.iter().map(|per| per[&part][0] as f64).sum::<f64>() / ps.len() as f64;
        let mean_vec = mean_of(decomposed.iter().filter_map(|dd| dd.component(part).map(<[f32]>::to_vec)));
        components.push(PartEffect {
            component: part.to_string(),
            dla_answer: on_answer,
            pushes: top_tokens(model, &mean_vec, &reference, 8)?
                .into_iter()
                .map(|(token, logit)| Pushed { token, logit })
                .collect(),
        });
    }
    Ok(FinalLayerStudy {
        task: task.name.clone(),
        prompts: ps.len(),
        conditions,
        components,
    })
}

/// One mitigation condition on one task and shot count.
#[derive(Debug, Clone, Serialize)]
pub struct MitigationRow {
    pub task: String,
    pub shots: usize,
    #[serde(flatten)]
    pub result: ConditionResult,
    pub fit_prompts: usize,
    pub eval_prompts: usize,
    pub intercept_r2: f64,
}

/// The final layer's anti-overconfidence countered: (a) its heads attend only to the last
/// position, (b) the final MLP's intercept (fitted on half the subjects) subtracted there,
/// (a)+(b), each evaluated on the other half against the baseline.
pub fn mitigation(model: &Model, task: &Task, shots: usize) -> Result<Vec<MitigationRow>> {
    let tok = model.tokenizer()?;
    let facts = usable(task, model)?;
    let fit_facts: Vec<usize> = facts.iter().copied().step_by(2).collect();
    let eval_facts: Vec<usize> = facts.iter().copied().skip(1).step_by(2).collect();
    let fit_prompts = prompts(task, tok, &fit_facts, &facts, shots)?;
    let decomposed = decompose_all(model, &fit_prompts, "fitting")?;
    let (_, f) = fit_mlp(model, &decomposed, model.config.n_layers - 1, false)?;
    let eval_prompts = prompts(task, tok, &eval_facts, &facts, shots)?;
    let (a, b) = (attend_to_self_in_final_layer(model), subtract_final_intercept(model, &f.intercept));
    let both = [a.clone(), b.clone()].concat();
    let conditions = [
        ("baseline", Vec::new()),
        ("(a) final heads attend to the last token", a),
        ("(b) minus the final MLP's intercept", b),
        ("(a) + (b)", both),
    ];
    let mut rows = Vec::new();
    let bar = crate::runner::progress::bar((conditions.len() * eval_prompts.len()) as u64, "evaluating");
    for (label, interventions) in &conditions {
        let (p, acc) = evaluate(model, &eval_prompts, |_| interventions.clone(), Some(&bar))?;
        rows.push(MitigationRow {
            task: task.name.clone(),
            shots,
            result: ConditionResult {
                condition: (*label).into(),
                p_correct: p,
                accuracy: acc,
            },
            fit_prompts: fit_prompts.len(),
            eval_prompts: eval_prompts.len(),
            intercept_r2: f.r2,
        });
    }
    bar.finish_and_clear();
    Ok(rows)
}
