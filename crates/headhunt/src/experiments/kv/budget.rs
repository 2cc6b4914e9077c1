//! The `headhunt kv` study: at each budget (the share of eligible key/value heads kept full),
//! the retrieval heads full against as many random heads and against a uniform window that
//! spends the same bytes; each condition's NIAH score and KV bytes, the smallest budget keeping
//! 95% of the full cache's score, and the score-against-bytes curve.

use anyhow::{Context, Result};
use headhunt_engine::Model;
use serde_json::json;

use super::{eligible, full_count, matching_uniform_window, KvChoice};
use crate::output::plot::{LinePlot, Series};

/// The share of the full cache's NIAH score a budget must keep to be chosen.
pub const KEEP: f64 = 0.95;

/// One condition's result.
pub struct BudgetRow {
    pub budget: f64,
    /// `full`, `retrieval`, `random` or `uniform`.
    pub policy: &'static str,
    pub label: String,
    /// Mean ROUGE-1 recall of its NIAH trials.
    pub score: f64,
    /// The KV cache's bytes at the grid's longest length.
    pub kv_bytes: usize,
}

/// The conditions in the order they run: the full cache, then per budget the retrieval heads,
/// random heads (seeded) and the uniform window of the same bytes at `longest` tokens.
pub fn budget_choices(
    model: &Model,
    budgets: &[f64],
    seed: u64,
    longest: usize,
    sink: usize,
    window: usize,
) -> Vec<(f64, &'static str, KvChoice)> {
    let n = eligible(model).len();
    let mut choices: Vec<(f64, &'static str, KvChoice)> = vec![(1.0, "full", KvChoice::Full)];
    for &budget in budgets {
        let k = full_count(model, budget);
        choices.push((budget, "retrieval", KvChoice::Retrieval { budget }));
        choices.push((budget, "random", KvChoice::Random { budget, seed }));
        let window = matching_uniform_window(n, k, longest, sink, window);
        choices.push((budget, "uniform", KvChoice::Uniform { window }));
    }
    choices
}

/// What the rows amount to: the full cache's (score, bytes) and the smallest retrieval budget
/// keeping [`KEEP`] of its score, if any.
pub struct BudgetSummary {
    pub full: (f64, usize),
    pub chosen: Option<f64>,
}

impl BudgetSummary {
    pub fn of(rows: &[BudgetRow]) -> Result<Self> {
        let full = rows
            .iter()
            .find(|r| r.policy == "full")
            .map(|r| (r.score, r.kv_bytes))
            .context("the full cache ran")?;
        let chosen = rows
            .iter()
            .filter(|r| r.policy == "retrieval" && r.score >= KEEP * full.0)
            .min_by(|a, b| a.budget.total_cmp(&b.budget))
            .map(|r| r.budget);
        Ok(BudgetSummary { full, chosen })
    }

    fn share(&self, bytes: usize) -> f64 {
        bytes as f64 / self.full.1.max(1) as f64
    }

    /// The table of every row, and the chosen budget's line.
    pub fn table(&self, rows: &[BudgetRow], model: &Model, longest: usize) -> String {
        let mut t = format!("\n budget  policy      NIAH score  KV at {longest} tokens\n");
        for r in rows {
            t.push_str(&format!(
                "{:>7}  {:<10} {:>10.1}  {:>8.1} MiB ({:>5.1}% of full)\n",
                r.budget,
                r.policy,
                r.score,
                r.kv_bytes as f64 / 1048576.0,
                100.0 * self.share(r.kv_bytes)
            ));
        }
        let full = self.full.0;
        match self.chosen {
            Some(b) => {
                let at = |p: &str| rows.iter().find(|r| r.policy == p && r.budget == b);
                let ret = at("retrieval").expect("chosen from the retrieval rows");
                t.push_str(&format!(
                    "smallest budget keeping 95% of the full cache's score ({full:.1}): {b} ({} of {} KV heads full): score {:.1} with {:.1}% of the KV bytes; random heads {:.1}, uniform window {:.1}\n",
                    full_count(model, b),
                    eligible(model).len(),
                    ret.score,
                    100.0 * self.share(ret.kv_bytes),
                    at("random").map_or(f64::NAN, |r| r.score),
                    at("uniform").map_or(f64::NAN, |r| r.score)
                ));
            }
            None => t.push_str(&format!("no budget kept 95% of the full cache's score ({full:.1})\n")),
        }
        t
    }

    /// The rows as kv.json lists them.
    pub fn rows_json(&self, rows: &[BudgetRow]) -> Vec<serde_json::Value> {
        rows.iter()
            .map(|r| {
                json!({"budget": r.budget, "policy": r.policy, "label": r.label, "score": r.score, "kv_bytes": r.kv_bytes,
                       "kv_fraction": self.share(r.kv_bytes)})
            })
            .collect()
    }
}

/// NIAH score against the KV cache's MiB, one line per policy (each starting from the full cache).
pub fn budget_plot(rows: &[BudgetRow], model_name: &str, longest: usize) -> LinePlot {
    let series = |p: &str, name: &str| Series {
        name: name.into(),
        points: rows
            .iter()
            .filter(|r| r.policy == p || r.policy == "full")
            .map(|r| (r.kv_bytes as f64 / 1048576.0, r.score))
            .collect(),
        errors: None,
    };
    LinePlot {
        title: format!("{model_name}: NIAH score against KV cache size ({longest} tokens)"),
        x_label: format!("KV cache at {longest} tokens (MiB)"),
        y_label: "NIAH score (mean ROUGE-1 recall)".into(),
        series: vec![
            series("retrieval", "retrieval heads full"),
            series("random", "random heads full"),
            series("uniform", "uniform sink + window"),
        ],
        y_range: Some((0.0, 100.0)),
    }
}
