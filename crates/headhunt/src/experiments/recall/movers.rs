//! Mover heads (Lv et al. 2024): per attention head, over a task's prompts, how much the last
//! position attends to the subject, the head's direct logit attribution to the answer and to the
//! subject, and the effect of mean-ablating it at the last position.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use headhunt_engine::{HookPoint, Intervention, Model};

use super::analysis::{dla, Component};
use super::tasks::{RecallPrompt, Task};
use super::{decompose_all, par_map, prompts};
use crate::experiments::retrieval::pearson;
use crate::output::plot::{Figure, Heatmap, Heatmaps, Scatter};

/// Per head (`layer * n_heads + head`), means over the prompts.
pub struct MoverHeads {
    pub prompts: usize,
    pub ablation_prompts: usize,
    pub attn: Vec<f64>,
    pub dla_answer: Vec<f64>,
    pub dla_subject: Vec<f64>,
    /// Drop of logit(answer) - logit(corrupted answer) when the head's output at the last
    /// position is replaced by its mean over corrupted prompts.
    pub effect: Vec<f64>,
}

impl MoverHeads {
    /// The heads, largest ablation effect first.
    pub fn by_effect(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.effect.len()).collect();
        order.sort_by(|&a, &b| self.effect[b].total_cmp(&self.effect[a]));
        order
    }

    /// heads.png/.svg (attention to the subject, DLA to the answer, ablation effect per head)
    /// and heads_scatter.png/.svg (attention against DLA, the five strongest movers named).
    pub fn save_figures(&self, dir: &Path, title: &str, n_layers: usize, n_heads: usize) -> Result<()> {
        let map = |title: &str, v: &[f64], unit: &str| {
            let mut m = Heatmap::heads(title, n_layers, n_heads, v.to_vec(), unit);
            let lo = v.iter().copied().fold(0.0f64, f64::min);
            m.range = (lo, m.range.1.max(lo + 1e-9));
            m
        };
        Heatmaps(vec![
            map("attention from the last position to the subject", &self.attn, "attention"),
            map("direct logit attribution to the answer", &self.dla_answer, "logit"),
            map("effect of mean ablation on the logit difference", &self.effect, "logit difference"),
        ])
        .save(&dir.join("heads"))?;
        let r = pearson(&self.attn, &self.dla_answer);
        Scatter {
            title: format!("{title}: attention to subject vs DLA (Pearson r = {r:.2})"),
            x_label: "attention from the last position to the subject".into(),
            y_label: "direct logit attribution to the answer".into(),
            points: self.attn.iter().zip(&self.dla_answer).map(|(&a, &d)| (a, d)).collect(),
            labels: self
                .by_effect()
                .into_iter()
                .take(5)
                .map(|i| (i, format!("{}-{}", i / n_heads, i % n_heads)))
                .collect(),
        }
        .save(&dir.join("heads_scatter"))?;
        Ok(())
    }
}

/// Decompose `shots`-shot prompts of `facts`, then mean-ablate every head on
/// `ablation_prompts` of them (one forward pass per head per prompt).
pub fn mover_heads(model: &Model, task: &Task, facts: &[usize], shots: usize, ablation_prompts: usize) -> Result<MoverHeads> {
    let tok = model.tokenizer()?;
    let c = &model.config;
    let ps = prompts(task, tok, facts, facts, shots)?;
    let decomposed = decompose_all(model, &ps, "prompts")?;
    let n_heads = c.n_layers * c.n_heads;
    let (mut attn, mut dla_answer, mut dla_subject) = (vec![0.0; n_heads], vec![0.0; n_heads], vec![0.0; n_heads]);
    for (q, d) in ps.iter().zip(&decomposed) {
        let per = dla(model, d, &[q.answer_token, q.subject_token]);
        for l in 0..c.n_layers {
            for h in 0..c.n_heads {
                let i = l * c.n_heads + h;
                attn[i] += d.attention_to_subject[i];
                dla_answer[i] += per[&Component::Head(l, h)][0] as f64;
                dla_subject[i] += per[&Component::Head(l, h)][1] as f64;
            }
        }
    }
    let n = ps.len() as f64;
    [&mut attn, &mut dla_answer, &mut dla_subject]
        .into_iter()
        .for_each(|v| v.iter_mut().for_each(|x| *x /= n));

    // Mean ablation: each head's output at the last position replaced by its mean over
    // corrupted prompts (the same template about another subject with another answer); the
    // effect is the drop in logit(answer) - logit(corrupted answer).
    let picked: Vec<usize> = (0..ps.len())
        .step_by((ps.len() / ablation_prompts.max(1)).max(1))
        .take(ablation_prompts)
        .collect();
    let corrupted: Vec<RecallPrompt> = picked
        .iter()
        .map(|&k| {
            let q = &ps[k];
            let other = facts
                .iter()
                .copied()
                .cycle()
                .skip_while(|&f| f != q.fact)
                .skip(1)
                .find(|&f| task.facts[f].answer != task.facts[q.fact].answer)
                .context("no other answer to corrupt with")?;
            task.prompt(tok, other, q.template, shots, facts)
        })
        .collect::<Result<_>>()?;
    let corrupted_runs = decompose_all(model, &corrupted, "corrupted")?;
    let mut mean_z = vec![vec![0.0f32; c.n_heads * c.d_head]; c.n_layers];
    for d in &corrupted_runs {
        for (mean, z) in mean_z.iter_mut().zip(&d.z) {
            mean.iter_mut().zip(z).for_each(|(m, &v)| *m += v / corrupted_runs.len() as f32);
        }
    }
    let bar = crate::runner::progress::bar((picked.len() * n_heads) as u64, "ablations");
    let runs: Vec<(usize, usize)> = (0..picked.len()).flat_map(|k| (0..n_heads).map(move |i| (k, i))).collect();
    let drops = par_map(&runs, |&(k, i)| {
        let (q, bad) = (&ps[picked[k]], corrupted[k].answer_token);
        let ld = |l: &[f32]| (l[q.answer_token as usize] - l[bad as usize]) as f64;
        let (l, h) = (i / c.n_heads, i % c.n_heads);
        let patch = Intervention::Set {
            point: HookPoint::Z(l),
            head: Some(h),
            rows: BTreeMap::from([(q.ids.len() - 1, mean_z[l][h * c.d_head..(h + 1) * c.d_head].to_vec())]),
        };
        let logits = model
            .run(headhunt_engine::Hooks::default().intervene(patch), Default::default())?
            .prefill(&q.ids)?;
        bar.inc(1);
        Ok(ld(&decomposed[picked[k]].logits) - ld(&logits))
    })?;
    let mut effect = vec![0.0f64; n_heads];
    for (&(_, i), drop) in runs.iter().zip(drops) {
        effect[i] += drop / picked.len() as f64;
    }
    bar.finish_and_clear();

    Ok(MoverHeads {
        prompts: ps.len(),
        ablation_prompts: picked.len(),
        attn,
        dla_answer,
        dla_subject,
        effect,
    })
}
