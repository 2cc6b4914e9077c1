//! QRHead's score on a real NIAH prompt equals a recomputation from attention patterns captured
//! in two separate whole-prompt runs (the real question's and the content-free one's), reduced
//! here by plain loops as QRHead's detection reduces them: the shared-prefix run, its truncation
//! and the mean, calibration and outlier cut add nothing.

use std::ops::Range;

use headhunt::experiments::retrieval::niah::haystack::Haystack;
use headhunt::experiments::retrieval::niah::needle;
use headhunt::experiments::retrieval::niah::trial::{TrialRunner, TrialSpec};
use headhunt::experiments::retrieval::qrhead::{qr_trial, query_spans, NULL_QUESTION};
use headhunt_engine::{Capture, HookPoint, Hooks, Model, Positions, RunOptions};

/// `[layer * n_heads + head][key of gold]`: the attention `gold`'s keys receive from `queries`,
/// averaged over them, from a fresh run of the whole `prompt`.
fn attention_on_gold(model: &Model, prompt: &[u32], queries: Range<usize>, gold: Range<usize>) -> Vec<Vec<f64>> {
    let c = &model.config;
    let mut hooks = Hooks::default();
    for l in 0..c.n_layers {
        hooks = hooks.capture(Capture::new(HookPoint::Pattern(l), Positions::At(queries.clone().collect())));
    }
    let options = RunOptions {
        capacity: prompt.len(),
        ..Default::default()
    };
    let mut run = model.run(hooks, options).unwrap();
    run.prefill(prompt).unwrap();
    let mut out = vec![vec![0.0; gold.len()]; c.n_layers * c.n_heads];
    for (l, rows) in &run.recording.patterns {
        assert_eq!(rows.len(), queries.len());
        for row in rows {
            for h in 0..c.n_heads {
                for (i, k) in gold.clone().enumerate() {
                    out[l * c.n_heads + h][i] += f64::from(row.values[h * row.n_keys + k]) / queries.len() as f64;
                }
            }
        }
    }
    out
}

#[test]
fn qr_scores_equal_a_recomputation_from_captured_patterns() {
    let path = headhunt::models::resolve("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e:#}"));
    let model = Model::load(&path).unwrap();
    let runner = TrialRunner::new(&model, needle::builtin(), &Haystack::Generated { seed: 0 }, true, 900).unwrap();
    let spec = TrialSpec {
        needle: 2,
        length: 900,
        depth: 40.0,
    };
    let record = qr_trial(&runner, &spec).unwrap();
    let prompt = runner.prompt(&spec).unwrap();
    let null = runner.prompt_asking(&spec, NULL_QUESTION).unwrap();
    let (query, null_query) = query_spans(&prompt.ids, &null.ids);
    assert_eq!([query.start, query.end], record.query_span);
    assert_eq!(query.end, prompt.ids.len());
    let tok = model.tokenizer().unwrap();
    let text = tok.decode(&prompt.ids[query.clone()], false).unwrap();
    assert!(
        text.contains("access code for the observatory") && text.contains("Answer:"),
        "the query is the question and what follows it: {text:?}"
    );
    assert!(tok.decode(&null.ids[null_query.clone()], false).unwrap().contains("N/A"));
    let real = attention_on_gold(&model, &prompt.ids, query, prompt.needle.clone());
    let calibration = attention_on_gold(&model, &null.ids, null_query, prompt.needle.clone());
    let (mut largest, mut cut) = (0.0f64, 0);
    for (h, s) in record.scores.iter().enumerate() {
        let values: Vec<f64> = real[h].iter().zip(&calibration[h]).map(|(r, c)| r - c).collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt();
        let kept: Vec<f64> = values.iter().copied().filter(|v| *v > mean - 2.0 * sd).collect();
        cut += values.len() - kept.len();
        let want: f64 = kept.iter().sum();
        assert!((s - want).abs() < 1e-5, "head {h}: {s} against {want}");
        largest = largest.max(want.abs());
    }
    // Some head does attend to the needle from the question, and the outlier cut did act.
    assert!(largest > 0.05, "largest calibrated score {largest}");
    assert!(cut > 0, "no outlier left out on any head");
}

/// ICR's document scores (every head) equal a recomputation from two whole-prompt captures: per
/// key, the real question's mean attention less the content-free one's, summed over heads, then
/// over each document's keys without those below the mean minus two sample deviations.
#[test]
fn rerank_scores_equal_a_recomputation_from_captured_patterns() {
    use headhunt::experiments::rerank;
    let path = headhunt::models::resolve("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e:#}"));
    let model = Model::load(&path).unwrap();
    let item = rerank::builtin_single(&headhunt::experiments::qa::builtin(), 6, 3).remove(0);
    let prompt = rerank::prompt(model.tokenizer().unwrap(), &item, true).unwrap();
    let all: Vec<usize> = (0..model.config.n_layers * model.config.n_heads).collect();
    let scores = rerank::attention_scores(&model, &prompt, &[&all]).unwrap().remove(0);
    let (query, null_query) = query_spans(&prompt.ids, &prompt.null);
    let whole = 0..query.start;
    let real = attention_on_gold(&model, &prompt.ids, query, whole.clone());
    let calibration = attention_on_gold(&model, &prompt.null, null_query, whole.clone());
    let summed: Vec<f64> = whole
        .map(|k| (0..all.len()).map(|h| real[h][k] - calibration[h][k]).sum())
        .collect();
    for (d, span) in prompt.docs.iter().enumerate() {
        let values = &summed[span.clone()];
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt();
        let want: f64 = values.iter().filter(|&&v| v > mean - 2.0 * sd).sum();
        assert!((scores[d] - want).abs() < 1e-4, "document {d}: {} against {want}", scores[d]);
    }
    // The gold passage is the best-scored document.
    let gold = item.documents.iter().position(|d| d.id == item.gold[0]).unwrap();
    assert_eq!(rerank::ranking(&scores)[0], gold, "{scores:?}");
}
