//! Retrieval heads against hallucination: answers with their grounding signal, labelled by their
//! scores; how well each detector separates the hallucinated ones; decoding guided by the
//! signal, and decoding contrasted with the retrieval heads masked (DeCoRe).
//!
//! Labels (the failure classes of [`crate::experiments::retrieval::failure`]): an answer is **complete** when its
//! ROUGE-1 recall of the expected answer is at least 90, **hallucinated** when it contains no
//! content word of the expected answer (for QA, of any accepted answer); the incomplete ones in
//! between are left out of the detection study.

pub mod study;

use anyhow::Result;
use headhunt_engine::{argmax, Hooks, Model, Run};
use serde::{Deserialize, Serialize};

use crate::experiments::decore::{self, Contrastive};
use crate::experiments::grounding::{self, answer_steps, GroundedStep, Grounder, Signal};
use crate::experiments::retrieval::failure::{classify, AnswerClass};
use crate::experiments::retrieval::niah::haystack::Rng;
use crate::experiments::retrieval::niah::trial::MAX_NEW_TOKENS;
use crate::metrics::stats::{auroc, bootstrap, cross_validated, roc_curve, Logistic};

/// How guided decoding runs: chunks of `chunk` tokens, `candidates` per chunk (the greedy
/// chunk and `candidates - 1` sampled at `temperature`), the best-supported kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guide {
    pub chunk: usize,
    pub candidates: usize,
    pub temperature: f64,
    pub seed: u64,
}

/// One answer: its text, the signal of each of its tokens and of the whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decoded {
    pub answer: String,
    /// (token text, support) of the answer's tokens.
    pub tokens: Vec<(String, f64)>,
    pub signal: Signal,
    /// Every head's lookback ratio averaged over the answer's tokens (Lookback Lens's features).
    pub lookback: Vec<f64>,
}

/// A run holding the prompt but its last token, with the signal's captures: each answer forks
/// it and feeds that token, so that every decoding step is recorded in the fork.
pub fn prepared<'m>(model: &'m Model, prompt: &[u32]) -> Result<Run<'m>> {
    let mut run = grounding::run(model, prompt.len(), prompt.len() + MAX_NEW_TOKENS + 1)?;
    if prompt.len() > 1 {
        run.prefill(&prompt[..prompt.len() - 1])?;
    }
    Ok(run)
}

/// Whether generated text has ended its first non-empty line.
fn line_done(model: &Model, ids: &[u32]) -> bool {
    model
        .tokenizer()
        .ok()
        .and_then(|t| t.decode(ids, true).ok())
        .is_some_and(|t| t.trim_start().contains('\n'))
}

/// Feed `pending` to a fork of `base`, then decode up to `max_new` tokens with `choose`.
fn continue_from<'m>(
    base: &Run<'m>,
    pending: u32,
    before: &[u32],
    max_new: usize,
    choose: impl FnMut(&[f32]) -> u32,
) -> Result<(Run<'m>, Vec<GroundedStep>)> {
    let model = base.model();
    let mut run = base.fork();
    let logits = run.decode(pending)?;
    let steps = grounding::decode(&mut run, logits, max_new, choose, |ids| line_done(model, &[before, ids].concat()))?;
    Ok((run, steps))
}

/// Greedy decoding from a [`prepared`] run.
pub fn greedy(base: &Run<'_>, prompt: &[u32], g: &Grounder) -> Result<Decoded> {
    let (_, steps) = continue_from(base, *prompt.last().expect("a prompt"), &[], MAX_NEW_TOKENS, argmax)?;
    decoded(base.model(), prompt, g, &steps)
}

/// DeCoRe's contrastive decoding from a [`prepared`] run: the base fork records the signal; a
/// second fork with the retrieval heads masked feeds the same tokens, and each token is chosen
/// from the contrast of the two ([`decore::choose`]).
pub fn contrastive(base: &Run<'_>, prompt: &[u32], g: &Grounder, contrastive: &Contrastive) -> Result<Decoded> {
    let model = base.model();
    let pending = *prompt.last().expect("a prompt");
    let mut masked = base.fork();
    masked.set_hooks(Hooks {
        interventions: contrastive.masks.clone(),
        ..Default::default()
    })?;
    let mut next_masked = Some(masked.decode(pending)?);
    let mut failed: Option<headhunt_engine::Error> = None;
    let (_, steps) = continue_from(base, pending, &[], MAX_NEW_TOKENS, |logits| {
        // The masked run's logits for this step: fed the previous step's token, if any.
        let Some(lm) = next_masked.take() else { return 0 };
        let (token, _) = decore::choose(logits, &lm, &contrastive.contrast);
        match masked.decode(token) {
            Ok(l) => next_masked = Some(l),
            Err(e) => failed = Some(e),
        }
        token
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    decoded(model, prompt, g, &steps)
}

/// A token drawn from softmax(`logits` / `temperature`).
fn sample(logits: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits.iter().map(|&x| ((x as f64 - m) / temperature).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (i, x) in w.iter().enumerate() {
        u -= x;
        if u < 0.0 {
            return i as u32;
        }
    }
    (w.len() - 1) as u32
}

/// Decoding guided by the signal, from a [`prepared`] run: per chunk, the candidate whose
/// answer tokens the retrieval heads support most (one that only ends the answer keeps the
/// answer's support so far).
pub fn guided(base: &Run<'_>, prompt: &[u32], g: &Grounder, guide: Guide) -> Result<Decoded> {
    let model = base.model();
    let tok = model.tokenizer()?;
    let mut rng = Rng(guide.seed ^ prompt.iter().fold(0u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64)));
    let mut base = base.fork();
    let mut pending = *prompt.last().expect("a prompt");
    let mut steps: Vec<GroundedStep> = Vec::new();
    loop {
        let before: Vec<u32> = steps.iter().map(|s| s.token).collect();
        let room = MAX_NEW_TOKENS - steps.len();
        let so_far = answer_support(tok, prompt, g, &steps);
        let mut best: Option<(f64, Run<'_>, Vec<GroundedStep>)> = None;
        for c in 0..guide.candidates.max(1) {
            let (run, chunk) = continue_from(&base, pending, &before, guide.chunk.min(room), |l| {
                if c == 0 {
                    argmax(l)
                } else {
                    sample(l, guide.temperature, &mut rng)
                }
            })?;
            let scored: Vec<f64> = answer_steps(tok, &chunk).iter().map(|(_, s)| g.support(prompt, s)).collect();
            let score = if scored.is_empty() {
                so_far
            } else {
                scored.iter().sum::<f64>() / scored.len() as f64
            };
            if best.as_ref().is_none_or(|b| score > b.0) {
                best = Some((score, run, chunk));
            }
        }
        let (_, run, chunk) = best.expect("one candidate at least");
        steps.extend(chunk);
        let last = steps.last().map(|s| s.token);
        let ids: Vec<u32> = steps.iter().map(|s| s.token).collect();
        let done = last.is_none_or(|t| model.is_eos(t)) || steps.len() >= MAX_NEW_TOKENS || line_done(model, &ids);
        if done {
            return decoded(model, prompt, g, &steps);
        }
        base = run;
        pending = last.expect("a token");
    }
}

fn answer_support(tok: &headhunt_engine::Tokenizer, prompt: &[u32], g: &Grounder, steps: &[GroundedStep]) -> f64 {
    let kept = answer_steps(tok, steps);
    if kept.is_empty() {
        return 0.0;
    }
    kept.iter().map(|(_, s)| g.support(prompt, s)).sum::<f64>() / kept.len() as f64
}

/// The answer (first non-empty line) and its signals from decoded steps.
fn decoded(model: &Model, prompt: &[u32], g: &Grounder, steps: &[GroundedStep]) -> Result<Decoded> {
    let tok = model.tokenizer()?;
    let ids: Vec<u32> = steps.iter().map(|s| s.token).collect();
    let text = tok.decode(&ids, true)?;
    let answer = text.trim_start().lines().next().unwrap_or("").trim().to_owned();
    let kept = answer_steps(tok, steps);
    let t0 = kept.first().map_or(0, |k| k.0);
    let span: Vec<GroundedStep> = kept.iter().map(|k| k.1.clone()).collect();
    Ok(Decoded {
        answer,
        tokens: kept
            .iter()
            .map(|(_, s)| Ok((tok.decode(&[s.token], false)?, g.support(prompt, s))))
            .collect::<Result<_>>()?,
        signal: g.answer(prompt, &span, t0),
        lookback: grounding::lookback_features(&span, t0, prompt.len()),
    })
}

/// The label of an answer against its accepted answers: the best outcome over them.
pub fn outcome(expected: &[String], answer: &str) -> AnswerClass {
    expected
        .iter()
        .map(|e| classify(e, answer))
        .min()
        .unwrap_or(AnswerClass::Hallucination)
}

/// One labelled answer, as the detectors see it.
pub struct Case<'a> {
    pub task: &'a str,
    pub hallucinated: bool,
    pub decoded: &'a Decoded,
}

/// A detector's AUROC (hallucinated as the positive class) with its 95% bootstrap interval.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub detector: String,
    pub evaluated_on: String,
    pub answers: usize,
    pub hallucinated: usize,
    pub auroc: f64,
    pub ci95: (f64, f64),
    /// (false positive rate, true positive rate)
    #[serde(skip)]
    pub roc: Vec<(f64, f64)>,
}

fn detection(detector: &str, on: &str, scores: &[f64], labels: &[bool]) -> Detection {
    let ci95 = bootstrap(scores.len(), 0.95, 1000, 7, |idx| {
        let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
        let l: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
        auroc(&s, &l)
    });
    Detection {
        detector: detector.to_owned(),
        evaluated_on: on.to_owned(),
        answers: labels.len(),
        hallucinated: labels.iter().filter(|&&l| l).count(),
        auroc: auroc(scores, labels),
        ci95,
        roc: roc_curve(scores, labels),
    }
}

/// Lookback Lens's classifier strength (scikit-learn's default C).
pub const LOOKBACK_C: f64 = 1.0;
/// Folds of the within-task cross-validation.
pub const FOLDS: usize = 5;

/// Every detector on the labelled cases: the training-free signals and the confidence on all of
/// them and per task; Lookback Lens cross-validated within each task (out-of-fold predictions,
/// pooled) and trained on one task, tested on the other.
pub fn detections(cases: &[Case<'_>]) -> Result<Vec<Detection>> {
    let mut out = Vec::new();
    let tasks: Vec<&str> = {
        let mut t: Vec<&str> = cases.iter().map(|c| c.task).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let subsets: Vec<(String, Vec<usize>)> = std::iter::once(("all".to_owned(), (0..cases.len()).collect()))
        .chain(
            tasks
                .iter()
                .map(|t| (t.to_string(), (0..cases.len()).filter(|&i| cases[i].task == *t).collect())),
        )
        .collect();
    type Score = fn(&Signal) -> f64;
    let training_free: [(&str, Score); 3] = [
        ("retrieval-head support", |s| -s.support),
        ("retrieval-head lookback", |s| -s.lookback),
        ("confidence", |s| -s.confidence),
    ];
    for (on, idx) in &subsets {
        let labels: Vec<bool> = idx.iter().map(|&i| cases[i].hallucinated).collect();
        for (name, score) in training_free {
            let scores: Vec<f64> = idx.iter().map(|&i| score(&cases[i].decoded.signal)).collect();
            out.push(detection(name, on, &scores, &labels));
        }
    }
    // Lookback Lens, cross-validated within each task; the out-of-fold predictions pooled.
    let mut pooled = vec![f64::NAN; cases.len()];
    for t in &tasks {
        let idx: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].task == *t).collect();
        let labels: Vec<bool> = idx.iter().map(|&i| cases[i].hallucinated).collect();
        let minority = labels.iter().filter(|&&l| l).count().min(labels.iter().filter(|&&l| !l).count());
        if minority < 2 {
            continue;
        }
        let x: Vec<Vec<f64>> = idx.iter().map(|&i| cases[i].decoded.lookback.clone()).collect();
        let oof = cross_validated(&x, &labels, FOLDS.min(minority), LOOKBACK_C, 0)?;
        for (&i, p) in idx.iter().zip(&oof) {
            pooled[i] = *p;
        }
        out.push(detection("Lookback Lens (cross-validated)", t, &oof, &labels));
    }
    let have: Vec<usize> = (0..cases.len()).filter(|&i| !pooled[i].is_nan()).collect();
    if !have.is_empty() {
        let s: Vec<f64> = have.iter().map(|&i| pooled[i]).collect();
        let l: Vec<bool> = have.iter().map(|&i| cases[i].hallucinated).collect();
        out.push(detection("Lookback Lens (cross-validated)", "all", &s, &l));
    }
    // Trained on one task, tested on another.
    for train in &tasks {
        for test in tasks.iter().filter(|t| *t != train) {
            let pick = |t: &str| -> (Vec<Vec<f64>>, Vec<bool>) {
                cases
                    .iter()
                    .filter(|c| c.task == t)
                    .map(|c| (c.decoded.lookback.clone(), c.hallucinated))
                    .unzip()
            };
            let (xt, yt) = pick(train);
            let (xs, ys) = pick(test);
            let Ok(model) = Logistic::fit_standardised(&xt, &yt, LOOKBACK_C) else {
                continue;
            };
            let s: Vec<f64> = xs.iter().map(|x| model.predict(x)).collect();
            out.push(detection(&format!("Lookback Lens (trained on {train})"), test, &s, &ys));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_take_the_best_accepted_answer() {
        let e = vec!["Osgood Finch".to_owned(), "a retired sea captain".to_owned()];
        assert_eq!(outcome(&e, "It is guarded by Osgood Finch."), AnswerClass::Complete);
        assert_eq!(outcome(&e, "A captain guards it."), AnswerClass::Incomplete);
        assert_eq!(outcome(&e, "Nobody knows."), AnswerClass::Hallucination);
    }

    #[test]
    fn sampling_follows_the_temperature() {
        let mut rng = Rng(3);
        let logits = [0.0f32, 2.0, 0.0];
        let hits = (0..2000).filter(|_| sample(&logits, 1.0, &mut rng) == 1).count() as f64 / 2000.0;
        let p = 2f64.exp() / (2.0 + 2f64.exp());
        assert!((hits - p).abs() < 0.04, "{hits} against {p}");
        // A near-zero temperature is greedy.
        assert!((0..50).all(|_| sample(&logits, 1e-3, &mut rng) == 1));
    }
}
