//! The kv-select study: each trial's prompt prefilled once, then its cache compressed by every
//! mode, budget and policy of [`SelectStudy`] (positions chosen per head, [`super::select`]) and
//! the answer decoded from each copy; the records summarized per mode, policy and budget.

use std::time::Instant;

use anyhow::Result;
use headhunt_engine::{Hooks, Model, Run, RunOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::select::{held_visible, policy_rows, row_bytes, select, votes, window_hooks, Choice, PolicyName, Snap};
use crate::experiments::retrieval::niah::trial::{decode_from, TrialRunner, TrialSpec, MAX_NEW_TOKENS};
use crate::metrics::stats::bootstrap_mean;
use crate::runner::store::Keyed;
use crate::runner::trials::Status;

/// What a kv-select run compares: when the cache is compressed, at which budgets (shares of the
/// full cache's bytes), by which policies (random ones with `seeds` shuffles), choosing
/// positions as `snap` says.
#[derive(Debug, Clone)]
pub struct SelectStudy {
    pub budgets: Vec<f64>,
    pub policies: Vec<PolicyName>,
    pub modes: Vec<Mode>,
    pub seeds: u64,
    pub snap: Snap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Question,
    Context,
}

/// One compressed cache's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheAnswer {
    pub mode: Option<Mode>,
    pub policy: String,
    pub budget: f64,
    pub answer: String,
    pub rouge1: f64,
    pub kv_bytes: usize,
    /// Rows kept per layer and key/value head.
    pub rows: Vec<Vec<usize>>,
    /// Rows of room each head kept for what followed (the question in context mode, the answer).
    #[serde(default)]
    pub reserved: usize,
    pub decode_seconds: f64,
    pub generated: usize,
}

/// One trial: the full cache's answer and every compressed one's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvTrial {
    #[serde(flatten)]
    pub spec: TrialSpec,
    pub prompt_tokens: usize,
    pub full: CacheAnswer,
    pub compressed: Vec<CacheAnswer>,
    pub seconds: f64,
}

impl Keyed for KvTrial {
    fn key(&self) -> String {
        self.spec.key()
    }
}

impl Status for KvTrial {
    fn status(&self) -> String {
        format!("full {:>3.0}", self.full.rouge1)
    }
}

/// A policy at one budget: how many rows each head keeps and how it chooses them.
struct BudgetPlan {
    policy: String,
    budget: f64,
    rows: Vec<Vec<usize>>,
    choice: Choice,
}

/// One trial: the prompt prefilled once, the full cache's answer, and every mode, budget and
/// policy's compressed copy's answer.
pub fn trial(runner: &TrialRunner<'_>, model: &Model, spec: &TrialSpec, study: &SelectStudy, prior: &[f64]) -> Result<KvTrial> {
    let snap = &study.snap;
    let start = Instant::now();
    let c = &model.config;
    let prompt = runner.prompt(spec)?;
    let ids = &prompt.ids;
    let (n, ce) = (ids.len(), prompt.context.end);
    // The context, its last positions' attention recorded (the question-agnostic votes), and
    // the prompt's (the question-aware votes; the question may be shorter than the window).
    let obs_context = ce.saturating_sub(snap.window)..ce;
    let obs_question = n - snap.window.min(n)..n;
    let options = RunOptions {
        capacity: n + MAX_NEW_TOKENS,
        ..Default::default()
    };
    let in_context: Vec<usize> = (obs_context.start.min(obs_question.start)..ce).collect();
    let mut at_context = model.run(window_hooks(c, in_context), options)?;
    at_context.prefill(&ids[..ce])?;
    // The question on top.
    let mut at_question = at_context.fork();
    at_question.set_hooks(window_hooks(c, obs_question.clone().filter(|&p| p >= ce).collect()))?;
    let logits = at_question.prefill(&ids[ce..])?;

    let full = {
        let mut run = at_question.fork();
        run.set_hooks(Hooks::default())?;
        outcome(
            runner,
            spec,
            &mut run,
            ids,
            logits.clone(),
            None,
            ("full".into(), 1.0),
            (None, MAX_NEW_TOKENS),
        )?
    };
    // Budgets are shares of the full cache's bytes (every head's rows, as allocated: a full
    // head's prompt and room for the answer, a sliding-window head's window), in rows.
    let heads = c.n_layers * c.n_kv_heads;
    let full_rows = full.kv_bytes / row_bytes(model);
    let mut compressed = Vec::new();
    for &mode in &study.modes {
        let (base, len, obs, recordings) = match mode {
            Mode::Question => (&at_question, n, &obs_question, vec![&at_context.recording, &at_question.recording]),
            Mode::Context => (&at_context, ce, &obs_context, vec![&at_context.recording]),
        };
        let votes = votes(&recordings, c, obs, snap)?;
        let held = held_visible(base, len);
        let caps: Vec<usize> = held.iter().flatten().map(Vec::len).collect();
        // Room each head keeps for what comes after: the question (context mode) and the answer.
        let extra = MAX_NEW_TOKENS + (n - len);
        for &budget in &study.budgets {
            let total = ((budget * full_rows as f64) as usize).saturating_sub(heads * extra);
            for plan in plans(study, prior, &caps, total, budget, c.n_kv_heads) {
                let keep_rows = select(&held, len, &plan.rows, plan.choice, &votes, snap);
                let mut run = base.fork_retaining(&keep_rows, extra)?;
                run.set_hooks(Hooks::default())?;
                let logits = match mode {
                    Mode::Question => logits.clone(),
                    Mode::Context => run.prefill(&ids[ce..])?,
                };
                let kept = keep_rows.iter().map(|l| l.iter().map(Vec::len).collect()).collect();
                compressed.push(outcome(
                    runner,
                    spec,
                    &mut run,
                    ids,
                    logits,
                    Some(mode),
                    (plan.policy, plan.budget),
                    (Some(kept), extra),
                )?);
            }
        }
    }
    Ok(KvTrial {
        spec: *spec,
        prompt_tokens: n,
        full,
        compressed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every policy's rows per head at one budget of `total` kept rows.
fn plans(study: &SelectStudy, prior: &[f64], caps: &[usize], total: usize, budget: f64, n_kv: usize) -> Vec<BudgetPlan> {
    let mut out = Vec::new();
    for &p in &study.policies {
        let seeds = if p == PolicyName::Random { 0..study.seeds } else { 0..1 };
        for seed in seeds {
            let (rows, choice) = policy_rows(p, seed, total, &study.snap, caps, prior);
            let name = serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            out.push(BudgetPlan {
                policy: if p == PolicyName::Random { format!("{name}-s{seed}") } else { name },
                budget,
                rows: rows.chunks(n_kv).map(<[usize]>::to_vec).collect(),
                choice,
            });
        }
    }
    out
}

/// Decode the answer from `logits` on `run` and score it.
#[allow(clippy::too_many_arguments)]
fn outcome(
    runner: &TrialRunner<'_>,
    spec: &TrialSpec,
    run: &mut Run<'_>,
    ids: &[u32],
    logits: Vec<f32>,
    mode: Option<Mode>,
    (policy, budget): (String, f64),
    (rows, reserved): (Option<Vec<Vec<usize>>>, usize),
) -> Result<CacheAnswer> {
    let start = Instant::now();
    let answer = decode_from(run, ids, logits)?;
    let decode_seconds = start.elapsed().as_secs_f64();
    let rows = rows.unwrap_or_else(|| run.cache().rows());
    Ok(CacheAnswer {
        mode,
        policy,
        budget,
        rouge1: runner.rouge1(spec, &answer.answer),
        generated: answer.generated.len(),
        answer: answer.answer,
        kv_bytes: answer.kv_bytes,
        rows,
        reserved,
        decode_seconds,
    })
}

/// One point of the study: a mode, a policy (random seeds pooled), a budget.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub mode: Mode,
    pub policy: String,
    pub budget: f64,
    pub trials: usize,
    pub score: f64,
    pub ci95: (f64, f64),
    /// Mean of each trial's compressed bytes over its full cache's bytes.
    pub bytes_share: f64,
    /// Mean score against the full cache's, same trials.
    pub relative: f64,
    pub full_score: f64,
}

fn policy_group(name: &str) -> String {
    if name.starts_with("random-s") {
        "random".into()
    } else {
        name.to_owned()
    }
}

/// Per mode, policy (random seeds pooled) and budget: the mean score with its bootstrap
/// interval, and the bytes kept, against the full cache.
pub fn summarize(records: &[KvTrial], study: &SelectStudy) -> Vec<Point> {
    let full_scores: Vec<f64> = records.iter().map(|r| r.full.rouge1).collect();
    let full_score = full_scores.iter().sum::<f64>() / records.len().max(1) as f64;
    let mut points = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for r in records.iter().flat_map(|r| &r.compressed) {
        let g = policy_group(&r.policy);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for &mode in &study.modes {
        for g in &groups {
            for &budget in &study.budgets {
                let mut scores = Vec::new();
                let mut shares = Vec::new();
                for r in records {
                    for o in r
                        .compressed
                        .iter()
                        .filter(|o| o.mode == Some(mode) && policy_group(&o.policy) == *g && o.budget == budget)
                    {
                        scores.push(o.rouge1);
                        shares.push(o.kv_bytes as f64 / r.full.kv_bytes.max(1) as f64);
                    }
                }
                if scores.is_empty() {
                    continue;
                }
                let mean = scores.iter().sum::<f64>() / scores.len() as f64;
                points.push(Point {
                    mode,
                    policy: g.clone(),
                    budget,
                    trials: scores.len(),
                    score: mean,
                    ci95: bootstrap_mean(&scores, 0.95, 2000, 0),
                    bytes_share: shares.iter().sum::<f64>() / shares.len() as f64,
                    relative: if full_score > 0.0 { mean / full_score } else { f64::NAN },
                    full_score,
                });
            }
        }
    }
    points
}

/// Per mode and policy, the smallest budget whose mean score is at least `share` of the full
/// cache's (`null` when none is).
pub fn smallest_keeping(points: &[Point], share: f64) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for p in points {
        let name = format!("{} {}", format!("{:?}", p.mode).to_lowercase(), p.policy);
        let entry = out.entry(name).or_insert(serde_json::Value::Null);
        if p.relative >= share && entry.as_f64().is_none_or(|b| p.budget < b) {
            *entry = json!(p.budget);
        }
    }
    out
}
