//! What a RULER run writes: ruler.json, each task's head scores and heads' maps, the score
//! against length, and under masks the table of each task per condition.

use std::path::Path;

use anyhow::Result;

use super::summary::{head_scores, qr_head_scores, RulerSummary, TaskSummary};
use super::trial::{RulerQrRecord, RulerRecord};
use crate::experiments::retrieval::qrhead::qr_heatmap;
use crate::experiments::retrieval::RETRIEVAL_THRESHOLD;
use crate::output::plot::{Figure, Heatmap, Heatmaps, LinePlot, Series};
use crate::runner::store::write_atomic;

/// A QRHead run's `head_scores_<task>.json` and heads' maps; the table of each task's best heads.
pub fn write_qr_outputs(dir: &Path, model: &str, records: &[RulerQrRecord], n_layers: usize, n_heads: usize) -> Result<String> {
    let heads = qr_head_scores(records, n_layers, n_heads);
    let mut table = format!(
        "{model}: QRHead scores per RULER task\n{:<18} {:>6}  best heads (mean calibrated score)\n",
        "task", "trials"
    );
    let mut maps = Vec::new();
    for (task, scores) in &heads {
        write_atomic(
            &dir.join(format!("head_scores_{task}.json")),
            serde_json::to_string(&scores.to_json())?,
        )?;
        let best: Vec<String> = scores
            .ranked()
            .into_iter()
            .take(5)
            .map(|(h, m)| format!("{} {m:.3}", scores.label(h)))
            .collect();
        table.push_str(&format!("{:<18} {:>6}  {}\n", task.name(), scores.trials(), best.join(", ")));
        maps.push(qr_heatmap(&format!("{task}: QRHead"), scores));
    }
    if !maps.is_empty() {
        Heatmaps(maps).save(&dir.join("ruler_heads"))?;
    }
    Ok(table)
}

/// A task's mean score over its lengths.
pub fn mean_score(t: &TaskSummary) -> f64 {
    t.lengths.iter().map(|l| l.score).sum::<f64>() / t.lengths.len().max(1) as f64
}

/// Each task's mean score (over lengths) under each condition: a row per task.
pub fn masks_table(by_condition: &[(String, usize, RulerSummary)]) -> String {
    let mut t = format!("{:<18}", "task");
    for (label, _, _) in by_condition {
        t.push_str(&format!(" {label:>16}"));
    }
    t.push('\n');
    let Some((_, _, first)) = by_condition.first() else { return t };
    for (i, task) in first.tasks.iter().enumerate() {
        t.push_str(&format!("{:<18}", task.task.name()));
        for (_, _, s) in by_condition {
            match s.tasks.get(i) {
                Some(ts) => t.push_str(&format!(" {:>16.1}", mean_score(ts))),
                None => t.push_str(&format!(" {:>16}", "-")),
            }
        }
        t.push('\n');
    }
    t
}

/// ruler.json, each task's head scores, the score-against-length plot and the heads' maps.
pub fn write_outputs(dir: &Path, model: &str, records: &[RulerRecord], n_layers: usize, n_heads: usize) -> Result<RulerSummary> {
    let heads = head_scores(records, n_layers, n_heads);
    for (task, scores) in &heads {
        write_atomic(
            &dir.join(format!("head_scores_{task}.json")),
            serde_json::to_string(&scores.to_json())?,
        )?;
    }
    let summary = RulerSummary::of(model, records, &heads);
    write_atomic(&dir.join("ruler.json"), serde_json::to_string_pretty(&summary)?)?;
    let series = summary
        .tasks
        .iter()
        .map(|t| Series {
            name: t.task.name().into(),
            points: t.lengths.iter().map(|l| (l.length as f64, l.score)).collect(),
            errors: None,
        })
        .collect();
    LinePlot {
        title: format!("{model}: RULER score against length"),
        x_label: "length (tokens)".into(),
        y_label: "score (0-100)".into(),
        series,
        y_range: Some((0.0, 105.0)),
    }
    .save(&dir.join("ruler"))?;
    let maps: Vec<Heatmap> = heads
        .iter()
        .filter(|(_, s)| s.trials() > 0)
        .map(|(task, s)| {
            let mut map = Heatmap::heads(
                &format!("{task} ({} answered)", s.trials()),
                n_layers,
                n_heads,
                s.means(),
                "retrieval score",
            );
            map.range.1 = map.range.1.max(RETRIEVAL_THRESHOLD);
            map
        })
        .collect();
    if !maps.is_empty() {
        Heatmaps(maps).save(&dir.join("ruler_heads"))?;
    }
    Ok(summary)
}
