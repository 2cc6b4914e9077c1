//! A RULER run's aggregate: each task's score against length, where its effective length ends,
//! and the retrieval heads of each task that copies its answer (which heads retrieve numbers,
//! UUIDs, multi-hop values, and which only sentence needles).

use std::collections::BTreeMap;

use serde::Serialize;

use super::trial::{RulerQrRecord, RulerRecord};
use super::Task;
use crate::experiments::retrieval::{pearson, HeadScores, RETRIEVAL_THRESHOLD};

/// RULER's threshold for a length to count as effective: Llama-2-7B's mean score at 4K, 85.6.
pub const EFFECTIVE_THRESHOLD: f64 = 85.6;

#[derive(Debug, Clone, Serialize)]
pub struct LengthScore {
    pub length: usize,
    pub trials: usize,
    /// Mean RULER score, 0 to 100.
    pub score: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub task: Task,
    pub group: &'static str,
    pub lengths: Vec<LengthScore>,
    /// The longest length up to which every length scores at least the threshold (None: not even
    /// the shortest).
    pub effective_length: Option<usize>,
    /// Retrieval heads (mean over answered trials above 0.1), for tasks that copy their answer.
    pub answered: usize,
    pub retrieval_heads: Option<usize>,
    /// The best ten heads and their mean scores.
    pub top: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RulerSummary {
    pub model: String,
    pub threshold: f64,
    pub tasks: Vec<TaskSummary>,
    /// The mean over tasks at each length, and its effective length.
    pub average: Vec<LengthScore>,
    pub effective_length: Option<usize>,
    /// Heads above 0.1 in every task that has retrieval scores.
    pub shared_heads: Vec<String>,
    /// Correlation of the per-head mean scores between each pair of copying tasks.
    pub correlations: Vec<(Task, Task, f64)>,
}

/// The longest length of an ascending list before the first that scores below the threshold.
fn effective(lengths: &[LengthScore]) -> Option<usize> {
    lengths
        .iter()
        .take_while(|l| l.score >= EFFECTIVE_THRESHOLD)
        .last()
        .map(|l| l.length)
}

fn mean(values: impl Iterator<Item = f64>) -> (usize, f64) {
    let (n, sum) = values.fold((0, 0.0), |(n, s), v| (n + 1, s + v));
    (n, if n == 0 { 0.0 } else { sum / n as f64 })
}

/// Per task, the QRHead scores of every trial (QRHead counts every example: it needs no answer).
pub fn qr_head_scores(records: &[RulerQrRecord], n_layers: usize, n_heads: usize) -> BTreeMap<Task, HeadScores> {
    let mut out: BTreeMap<Task, HeadScores> = BTreeMap::new();
    for r in records.iter().filter(|r| r.scores.len() == n_layers * n_heads) {
        out.entry(r.trial.task)
            .or_insert_with(|| HeadScores::new(n_layers, n_heads))
            .push_trial(&r.scores);
    }
    out
}

/// Per task, the scores of its answered trials that copy (the `{"L-H": [...]}` sets).
pub fn head_scores(records: &[RulerRecord], n_layers: usize, n_heads: usize) -> BTreeMap<Task, HeadScores> {
    let mut out: BTreeMap<Task, HeadScores> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.trial.task.copies() && r.answered() && r.scores.len() == n_layers * n_heads)
    {
        out.entry(r.trial.task)
            .or_insert_with(|| HeadScores::new(n_layers, n_heads))
            .push_trial(&r.scores);
    }
    out
}

impl RulerSummary {
    pub fn of(model: &str, records: &[RulerRecord], heads: &BTreeMap<Task, HeadScores>) -> Self {
        let mut tasks = Vec::new();
        let mut by_length: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for task in Task::ALL {
            let mine: Vec<&RulerRecord> = records.iter().filter(|r| r.trial.task == task).collect();
            if mine.is_empty() {
                continue;
            }
            let mut lengths: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            for r in &mine {
                lengths.entry(r.trial.length).or_default().push(r.score);
            }
            let lengths: Vec<LengthScore> = lengths
                .into_iter()
                .map(|(length, s)| {
                    let (trials, score) = mean(s.into_iter());
                    by_length.entry(length).or_default().push(score);
                    LengthScore { length, trials, score }
                })
                .collect();
            let scores = heads.get(&task);
            let top = scores.map_or_else(Vec::new, |s| {
                s.ranked().into_iter().take(10).map(|(i, m)| (s.label(i), m)).collect()
            });
            tasks.push(TaskSummary {
                task,
                group: task.group(),
                effective_length: effective(&lengths),
                lengths,
                answered: mine.iter().filter(|r| r.answered()).count(),
                retrieval_heads: scores.map(|s| s.means().iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count()),
                top,
            });
        }
        let average: Vec<LengthScore> = by_length
            .into_iter()
            .map(|(length, s)| {
                let (trials, score) = mean(s.into_iter());
                LengthScore { length, trials, score }
            })
            .collect();
        let with_heads: Vec<(&Task, &HeadScores)> = heads.iter().filter(|(_, s)| s.trials() > 0).collect();
        let shared_heads = match with_heads.first() {
            None => Vec::new(),
            Some((_, first)) => (0..first.scores.len())
                .filter(|&i| with_heads.iter().all(|(_, s)| s.means()[i] > RETRIEVAL_THRESHOLD))
                .map(|i| first.label(i))
                .collect(),
        };
        let mut correlations = Vec::new();
        for (a, (ta, sa)) in with_heads.iter().enumerate() {
            for (tb, sb) in &with_heads[a + 1..] {
                correlations.push((**ta, **tb, pearson(&sa.means(), &sb.means())));
            }
        }
        RulerSummary {
            model: model.to_owned(),
            threshold: EFFECTIVE_THRESHOLD,
            effective_length: effective(&average),
            tasks,
            average,
            shared_heads,
            correlations,
        }
    }

    /// The printed table: a row per task, a column per length, then the effective length and
    /// the task's retrieval heads.
    pub fn table(&self) -> String {
        let lengths: Vec<usize> = self.average.iter().map(|l| l.length).collect();
        let mut t = format!("{}: RULER score (0-100) by length\n{:<16}", self.model, "task");
        for l in &lengths {
            t.push_str(&format!("{l:>8}"));
        }
        t.push_str("  effective  heads>0.1  top heads\n");
        let cell = |ls: &[LengthScore], l: usize| {
            ls.iter()
                .find(|x| x.length == l)
                .map_or_else(|| format!("{:>8}", "-"), |x| format!("{:>8.1}", x.score))
        };
        let eff = |e: Option<usize>| {
            e.map_or_else(
                || "<".to_owned() + &lengths.first().copied().unwrap_or(0).to_string(),
                |e| e.to_string(),
            )
        };
        for s in &self.tasks {
            t.push_str(&format!("{:<16}", s.task.name()));
            for &l in &lengths {
                t.push_str(&cell(&s.lengths, l));
            }
            let top: Vec<&str> = s.top.iter().take(3).map(|(h, _)| h.as_str()).collect();
            t.push_str(&format!(
                "  {:>9}  {:>9}  {}\n",
                eff(s.effective_length),
                s.retrieval_heads.map_or("-".into(), |n| n.to_string()),
                top.join(" ")
            ));
        }
        t.push_str(&format!("{:<16}", "mean"));
        for &l in &lengths {
            t.push_str(&cell(&self.average, l));
        }
        t.push_str(&format!("  {:>9}\n", eff(self.effective_length)));
        t.push_str(&format!(
            "effective length: the longest length before a score below {} (RULER's threshold)\n",
            self.threshold
        ));
        if !self.correlations.is_empty() {
            t.push_str(&format!("heads above 0.1 in every copying task: {}\n", self.shared_heads.join(" ")));
        }
        t
    }
}
