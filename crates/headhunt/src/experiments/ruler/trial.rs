//! One RULER trial on a model: the task's instance grown to the trial's length in the model's
//! tokens, answered greedily after RULER's answer prefix (up to the task's generation budget or
//! the end of sequence), scored as RULER scores it, and every head scored as a retrieval head
//! on the values the answer copies.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use anyhow::{bail, Result};
use headhunt_engine::{Model, Tokenizer};
use serde::{Deserialize, Serialize};

use super::{score, Sample, Sources, Trial};
use crate::experiments::retrieval::niah::prompt::{tokens_covering, Frame};
use crate::experiments::retrieval::niah::trial::{AnswerRule, Condition, PrefixCache};
use crate::experiments::retrieval::qrhead::{qr_scores, NULL_QUESTION};
use crate::experiments::retrieval::{trial_scores, ScoreVariant};
use crate::runner::store::Keyed;
use crate::runner::trials::Status;

/// A length too short for a task's smallest instance.
#[derive(Debug, Clone, Copy)]
pub struct TooShort {
    pub smallest: usize,
}

impl std::fmt::Display for TooShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the task's smallest prompt and answer take {} tokens", self.smallest)
    }
}

impl std::error::Error for TooShort {}

/// A RULER prompt in the model's tokens.
pub struct RulerPrompt {
    pub ids: Vec<u32>,
    /// Token positions of the values a right answer copies.
    pub copy: Vec<Range<usize>>,
    /// Token positions of the passages the question is about (QRHead's gold).
    pub gold: Vec<Range<usize>>,
    pub outputs: Vec<String>,
    /// Haystack units the context holds.
    pub units: usize,
}

/// Everything a trial produced; one line of `trials.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RulerRecord {
    #[serde(flatten)]
    pub trial: Trial,
    /// Prompt tokens; with the task's generation budget at most the trial's length.
    pub prompt_tokens: usize,
    pub units: usize,
    pub outputs: Vec<String>,
    pub answer: String,
    pub generated: Vec<u32>,
    /// RULER's score, 0 to 100.
    pub score: f64,
    /// Tokens of the values the answer copies (0 for the aggregation tasks).
    pub copy_tokens: usize,
    /// Per head (`layer * n_heads + head`), the retrieval score of this trial (empty for the
    /// aggregation tasks).
    pub scores: Vec<f64>,
    pub seconds: f64,
}

impl RulerRecord {
    /// Counted in retrieval scores, as NIAH counts trials with ROUGE-1 above 50.
    pub fn answered(&self) -> bool {
        self.score > 50.0
    }
}

/// A trial's QRHead scores; one line of a QRHead RULER run's `trials.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RulerQrRecord {
    #[serde(flatten)]
    pub trial: Trial,
    pub prompt_tokens: usize,
    /// Tokens of the gold passages.
    pub gold_tokens: usize,
    /// Per head (`layer * n_heads + head`), the calibrated QR score.
    pub scores: Vec<f64>,
    pub seconds: f64,
}

/// Builds and runs RULER trials for one model.
pub struct RulerRunner<'m> {
    pub model: &'m Model,
    tok: &'m Tokenizer,
    sources: Sources,
    chat: bool,
}

impl<'m> RulerRunner<'m> {
    pub fn new(model: &'m Model, sources: Sources, chat: bool) -> Result<Self> {
        Ok(RulerRunner {
            model,
            tok: model.tokenizer()?,
            sources,
            chat,
        })
    }

    /// The trial's prompt: the largest instance whose prompt and generation budget fit its
    /// length; `Err(TooShort)` when not even the smallest does (QA's gold document alone is over
    /// 1,000 tokens).
    pub fn prompt(&self, trial: &Trial) -> Result<RulerPrompt> {
        let budget_total = trial.length.saturating_sub(trial.task.tokens_to_generate());
        // The text around the context does not depend on the haystack's size.
        let frame = self.frame(&self.sources.sample(trial, 1))?;
        let tokens = |u| -> Result<usize> { Ok(self.tok.encode(&self.sources.sample(trial, u).context, false)?.len()) };
        let smallest = frame.overhead() + tokens(1)? + trial.task.tokens_to_generate();
        if smallest > trial.length {
            return Err(TooShort { smallest }.into());
        }
        let (units, _) = super::fit_units(budget_total - frame.overhead(), tokens)?;
        let sample = self.sources.sample(trial, units);
        self.tokenize(trial, &sample, units)
    }

    /// A sample in the model's tokens, its copied values' positions located.
    fn tokenize(&self, trial: &Trial, sample: &Sample, units: usize) -> Result<RulerPrompt> {
        let frame = self.frame(sample)?;
        let (context, offsets) = self.tok.encode_with_offsets(&sample.context, false)?;
        let start = frame.context_start();
        // The tokens that overlap each byte range, as positions in the prompt.
        let in_tokens = |spans: &[Range<usize>]| -> Vec<Range<usize>> {
            spans
                .iter()
                .filter_map(|span| tokens_covering(&offsets, span).map(|t| start + t.start..start + t.end))
                .collect()
        };
        let (copy, gold) = (in_tokens(&sample.copy_spans), in_tokens(&sample.gold_spans));
        let needed = frame.overhead() + context.len() + trial.task.tokens_to_generate();
        if needed > self.model.config.context_length {
            bail!(
                "a length of {} tokens is longer than the model's context ({})",
                trial.length,
                self.model.config.context_length
            );
        }
        Ok(RulerPrompt {
            ids: frame.wrap(&context),
            copy,
            gold,
            outputs: sample.outputs.clone(),
            units,
        })
    }

    /// The trial's prompt with the content-free question `null` asked in place of its query
    /// (the same context); None for the tasks whose question asks about nothing in particular.
    pub fn content_free_prompt(&self, trial: &Trial, prompt: &RulerPrompt, null: &str) -> Result<Option<Vec<u32>>> {
        let Some(sample) = self.sources.sample(trial, prompt.units).content_free(null) else {
            return Ok(None);
        };
        Ok(Some(self.tokenize(trial, &sample, prompt.units)?.ids))
    }

    /// The trial's QRHead scores: the query's calibrated attention on the passages it is about
    /// (the asked needles, the chain's assignments, QA's gold document); None for the tasks
    /// without such passages (cwe, fwe).
    pub fn qr(&self, trial: &Trial, prompt: &RulerPrompt) -> Result<Option<RulerQrRecord>> {
        let start = Instant::now();
        if prompt.gold.is_empty() {
            return Ok(None);
        }
        let Some(null) = self.content_free_prompt(trial, prompt, NULL_QUESTION)? else {
            return Ok(None);
        };
        let scores = qr_scores(self.model, &prompt.ids, &null, &prompt.gold)?;
        Ok(Some(RulerQrRecord {
            trial: *trial,
            prompt_tokens: prompt.ids.len(),
            gold_tokens: prompt.gold.iter().map(Range::len).sum(),
            scores,
            seconds: start.elapsed().as_secs_f64(),
        }))
    }

    fn frame(&self, sample: &Sample) -> Result<Frame> {
        Frame::around(self.tok, &sample.before, &sample.after, &sample.answer_prefix, self.chat)
    }

    /// How the task's answers are decoded: RULER's budget, to the end of sequence.
    pub fn rule(trial: &Trial) -> AnswerRule {
        AnswerRule {
            max_new_tokens: trial.task.tokens_to_generate(),
            first_line: false,
        }
    }

    /// Run one trial (its prompt made by [`RulerRunner::prompt`]) under a condition, continuing
    /// from what `kept` holds of its prompt.
    pub fn run(&self, trial: &Trial, prompt: &RulerPrompt, condition: &Condition, kept: &mut PrefixCache<'m>) -> Result<RulerRecord> {
        let start = Instant::now();
        let out = kept.answer(self.model, &prompt.ids, condition, Self::rule(trial))?;
        let scores = if trial.task.copies() {
            trial_scores(&prompt.ids, &prompt.copy, &out.generated, &out.argmax, ScoreVariant::Paper)
        } else {
            Vec::new()
        };
        Ok(RulerRecord {
            trial: *trial,
            prompt_tokens: prompt.ids.len(),
            units: prompt.units,
            score: score(trial.task.metric(), &out.answer, &prompt.outputs),
            outputs: prompt.outputs.clone(),
            answer: out.answer,
            generated: out.generated,
            copy_tokens: prompt.copy.iter().map(Range::len).sum(),
            scores,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

impl Keyed for Trial {
    fn key(&self) -> String {
        Trial::key(self)
    }
}

impl Keyed for RulerRecord {
    fn key(&self) -> String {
        self.trial.key()
    }
}

impl Keyed for RulerQrRecord {
    fn key(&self) -> String {
        self.trial.key()
    }
}

impl Status for RulerQrRecord {
    fn status(&self) -> String {
        format!("{} {} tokens", self.trial.task, self.prompt_tokens)
    }
}

impl Status for RulerRecord {
    fn status(&self) -> String {
        format!("{} {:>3.0}", self.trial.task, self.score)
    }
}

/// The prompts of `trials` by key, and the trials too short for their task (with the length
/// they would need), which are left out.
pub type Prompts = (HashMap<String, RulerPrompt>, Vec<(Trial, usize)>);

impl RulerRunner<'_> {
    /// Every trial's prompt; a trial too short for its task is set aside, any other failure is
    /// the caller's.
    pub fn prompts(&self, trials: &[Trial]) -> Result<Prompts> {
        let mut prompts = HashMap::new();
        let mut too_short = Vec::new();
        for t in trials {
            match self.prompt(t) {
                Ok(p) => {
                    prompts.insert(t.key(), p);
                }
                Err(e) => match e.downcast_ref::<TooShort>() {
                    Some(s) => too_short.push((*t, s.smallest)),
                    None => return Err(e.context(format!("trial {}", t.key()))),
                },
            }
        }
        Ok((prompts, too_short))
    }
}
