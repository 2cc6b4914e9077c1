//! One needle-in-a-haystack trial, the unit every retrieval experiment is made of: build the
//! prompt, decode greedily while recording every query head's attention argmax, score the answer
//! (ROUGE-1 recall) and the heads (retrieval scores). Masking and KV-cache studies run the same
//! trial under a [`Condition`].

use std::time::Instant;

use anyhow::{bail, Context, Result};
use headhunt_engine::{greedy_from, Capture, HookPoint, Hooks, Intervention, KvPolicy, Model, Positions, Run, RunOptions, Tokenizer};
use serde::{Deserialize, Serialize};

use super::haystack::Haystack;
use super::needle::Needle;
use super::prompt::{assemble, sentence_ends, Frame, NeedleTokens, NiahPrompt};
use crate::experiments::decore::{self, Contrastive};
use crate::experiments::retrieval::{trial_scores, ScoreVariant};
use crate::metrics::rouge::rouge1_recall;

/// Most tokens an answer may take (the paper's decode length).
pub const MAX_NEW_TOKENS: usize = 50;

/// How long a greedy answer may run and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerRule {
    pub max_new_tokens: usize,
    /// End at the first non-empty line (the answer is that line); otherwise only at the end of
    /// sequence or the budget (the answer is the whole text, trimmed).
    pub first_line: bool,
}

impl AnswerRule {
    /// The paper's: at most 50 tokens, the first non-empty line.
    pub const NIAH: AnswerRule = AnswerRule {
        max_new_tokens: MAX_NEW_TOKENS,
        first_line: true,
    };
}

/// Which trial: a needle, a context length in tokens, a depth in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrialSpec {
    pub needle: usize,
    pub length: usize,
    pub depth: f64,
}

impl TrialSpec {
    /// A stable identity for resuming and merging.
    pub fn key(&self) -> String {
        format!("n{}-l{}-d{}", self.needle, self.length, self.depth)
    }
}

/// How the model is altered for a trial: head masks and other interventions, a KV-cache policy,
/// and how the answer is decoded (greedy, or contrasted with a masked model: DeCoRe).
#[derive(Debug, Clone, Default)]
pub struct Condition {
    pub interventions: Vec<Intervention>,
    pub kv_policy: Option<Vec<Vec<KvPolicy>>>,
    pub contrastive: Option<Contrastive>,
}

/// Everything a trial produced; one line of `trials.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialRecord {
    #[serde(flatten)]
    pub spec: TrialSpec,
    pub actual_depth: f64,
    pub prompt_tokens: usize,
    /// Positions of the needle statement and of its answer words in the prompt.
    pub needle_span: [usize; 2],
    pub answer_span: [usize; 2],
    pub answer: String,
    pub generated: Vec<u32>,
    /// ROUGE-1 recall of the answer against `real_needle`, 0 to 100.
    pub rouge1: f64,
    /// Per head (`layer * n_heads + head`), the paper's retrieval score for this trial.
    pub scores: Vec<f64>,
    /// The same under the released code's per-step counting.
    pub scores_per_step: Vec<f64>,
    /// Per decoding step, every query head's attention argmax (key position).
    pub argmax: Vec<Vec<u32>>,
    /// Mixture-of-Experts models: per decoding step, per layer, the experts the router chose for
    /// the token being read, by weight (absent for dense models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<Vec<Vec<u16>>>,
    pub seconds: f64,
    /// KV cache bytes allocated at the end of the trial.
    pub kv_bytes: usize,
}

impl TrialRecord {
    pub fn answered(&self) -> bool {
        self.rouge1 > crate::experiments::retrieval::SUCCESS_ROUGE
    }

    pub fn scores(&self, variant: ScoreVariant) -> &[f64] {
        match variant {
            ScoreVariant::Paper => &self.scores,
            ScoreVariant::PerStep => &self.scores_per_step,
        }
    }
}

struct Prepared {
    frame: Frame,
    needle: NeedleTokens,
    haystack: Vec<u32>,
    ends: Vec<bool>,
}

/// Builds and runs trials for one model, needle set and haystack.
pub struct TrialRunner<'m> {
    pub model: &'m Model,
    pub tok: &'m Tokenizer,
    pub needles: Vec<Needle>,
    prepared: Vec<Prepared>,
    chat: bool,
}

impl<'m> TrialRunner<'m> {
    /// Tokenize every needle's frame and haystack once, long enough for `max_length` tokens.
    /// A generated haystack gets its own seed per needle, so needles do not share a text.
    pub fn new(model: &'m Model, needles: Vec<Needle>, haystack: &Haystack, chat: bool, max_length: usize) -> Result<Self> {
        let tok = model.tokenizer()?;
        let mut prepared = Vec::with_capacity(needles.len());
        let mut shared: Option<(Vec<u32>, Vec<bool>)> = None;
        for (i, n) in needles.iter().enumerate() {
            let frame = Frame::new(tok, &n.question, chat)?;
            let needle = NeedleTokens::new(tok, n).with_context(|| format!("needle {i}"))?;
            let needed = frame.overhead() + max_length + MAX_NEW_TOKENS;
            if needed > model.config.context_length {
                anyhow::bail!(
                    "a context of {max_length} tokens needs {needed} positions with the prompt and answer; the model's context length is {}",
                    model.config.context_length
                );
            }
            let (haystack_ids, ends) = match (haystack, &shared) {
                (Haystack::Files(_), Some(s)) => s.clone(),
                _ => {
                    let h = match haystack {
                        Haystack::Generated { seed } => Haystack::Generated {
                            seed: seed.wrapping_add(i as u64),
                        },
                        other => other.clone(),
                    };
                    let ids = haystack_tokens(tok, &h, max_length)?;
                    let ends = sentence_ends(tok, &ids);
                    if matches!(haystack, Haystack::Files(_)) {
                        shared = Some((ids.clone(), ends.clone()));
                    }
                    (ids, ends)
                }
            };
            prepared.push(Prepared {
                frame,
                needle,
                haystack: haystack_ids,
                ends,
            });
        }
        Ok(TrialRunner {
            model,
            tok,
            needles,
            prepared,
            chat,
        })
    }

    /// Needle-free haystack tokens (the first needle's), for reference statistics.
    pub fn reference_tokens(&self, n: usize) -> &[u32] {
        let h = &self.prepared[0].haystack;
        &h[..n.min(h.len())]
    }

    pub fn prompt(&self, spec: &TrialSpec) -> Result<NiahPrompt> {
        let p = self.prepared.get(spec.needle).context("needle index out of range")?;
        assemble(&p.frame, &p.haystack, &p.ends, &p.needle, spec.length, spec.depth)
    }

    /// The trial's prompt with `question` asked instead of its needle's (the same haystack and
    /// needle, at the same place).
    pub fn prompt_asking(&self, spec: &TrialSpec, question: &str) -> Result<NiahPrompt> {
        let p = self.prepared.get(spec.needle).context("needle index out of range")?;
        let frame = Frame::new(self.tok, question, self.chat)?;
        assemble(&frame, &p.haystack, &p.ends, &p.needle, spec.length, spec.depth)
    }

    /// Run one trial under a condition.
    pub fn run(&self, spec: &TrialSpec, condition: &Condition) -> Result<TrialRecord> {
        self.run_from(spec, condition, None)
    }

    /// Run one trial, continuing from what `kept` holds of its prompt when it is given.
    pub fn run_from(&self, spec: &TrialSpec, condition: &Condition, kept: Option<&mut PrefixCache<'m>>) -> Result<TrialRecord> {
        let Some(kept) = kept else {
            return self.run_watching(spec, condition, &mut |_| {});
        };
        let record = self.run_each_from(spec, condition, &[condition], kept)?.pop();
        Ok(record.expect("one condition, one record"))
    }

    /// Run one trial from an empty cache, calling `watch` with the answer's tokens so far after
    /// each decoding step (to show an answer while it is written).
    pub fn run_watching(&self, spec: &TrialSpec, condition: &Condition, watch: &mut dyn FnMut(&[u32])) -> Result<TrialRecord> {
        let start = Instant::now();
        let prompt = self.prompt(spec)?;
        let out = answer_watching(self.model, &prompt.ids, condition, true, watch)?;
        Ok(self.record(spec, &prompt, out, start.elapsed().as_secs_f64()))
    }

    /// Run one trial under several conditions whose interventions act in decoding only: its
    /// prompt is prefilled once (continuing from `kept`) and each condition decodes from there.
    /// Each record's `seconds` is its decoding plus an equal share of the prefill.
    pub fn run_each(&self, spec: &TrialSpec, conditions: &[&Condition], kept: &mut PrefixCache<'m>) -> Result<Vec<TrialRecord>> {
        self.run_each_from(spec, &Condition::default(), conditions, kept)
    }

    /// [`TrialRunner::run_each`] with the prompt prefilled under `prefill`.
    fn run_each_from(
        &self,
        spec: &TrialSpec,
        prefill: &Condition,
        conditions: &[&Condition],
        kept: &mut PrefixCache<'m>,
    ) -> Result<Vec<TrialRecord>> {
        let start = Instant::now();
        let prompt = self.prompt(spec)?;
        let (prefill, answers) = kept.answer_each(self.model, &prompt.ids, prefill, conditions)?;
        let share = (prefill - start).as_secs_f64() / conditions.len().max(1) as f64;
        Ok(answers
            .into_iter()
            .map(|(out, seconds)| self.record(spec, &prompt, out, share + seconds))
            .collect())
    }

    /// ROUGE-1 recall (0 to 100) of an answer against the trial's needle.
    pub fn rouge1(&self, spec: &TrialSpec, answer: &str) -> f64 {
        100.0 * rouge1_recall(&self.needles[spec.needle].real_needle, answer)
    }

    fn record(&self, spec: &TrialSpec, prompt: &NiahPrompt, out: Answer, seconds: f64) -> TrialRecord {
        let rouge1 = self.rouge1(spec, &out.answer);
        let scores = trial_scores(
            &prompt.ids,
            std::slice::from_ref(&prompt.answer),
            &out.generated,
            &out.argmax,
            ScoreVariant::Paper,
        );
        let scores_per_step = trial_scores(
            &prompt.ids,
            std::slice::from_ref(&prompt.answer),
            &out.generated,
            &out.argmax,
            ScoreVariant::PerStep,
        );
        TrialRecord {
            spec: *spec,
            actual_depth: prompt.actual_depth,
            prompt_tokens: prompt.ids.len(),
            needle_span: [prompt.needle.start, prompt.needle.end],
            answer_span: [prompt.answer.start, prompt.answer.end],
            answer: out.answer,
            generated: out.generated,
            rouge1,
            scores,
            scores_per_step,
            argmax: out.argmax,
            experts: out.experts,
            seconds,
            kv_bytes: out.kv_bytes,
        }
    }
}

/// A greedy answer to a prompt.
pub struct Answer {
    pub generated: Vec<u32>,
    /// The first non-empty line of the generated text, trimmed.
    pub answer: String,
    /// Per decoding step, every query head's attention argmax (`layer * n_heads + head`);
    /// empty unless asked for.
    pub argmax: Vec<Vec<u32>>,
    /// Per decoding step, per layer, the chosen experts by weight (Mixture-of-Experts models,
    /// when the argmax is asked for).
    pub experts: Vec<Vec<Vec<u16>>>,
    pub kv_bytes: usize,
}

/// Decode greedily (at most `MAX_NEW_TOKENS`, stopping at the end of the first non-empty line
/// or at end-of-sequence) under a condition, optionally recording every query head's attention
/// argmax at every step.
pub fn answer(model: &Model, prompt: &[u32], condition: &Condition, capture_argmax: bool) -> Result<Answer> {
    answer_watching(model, prompt, condition, capture_argmax, &mut |_| {})
}

/// [`answer`], calling `watch` with the tokens so far after each decoding step.
fn answer_watching(
    model: &Model,
    prompt: &[u32],
    condition: &Condition,
    capture_argmax: bool,
    watch: &mut dyn FnMut(&[u32]),
) -> Result<Answer> {
    // A contrastive answer forks the run one token back: its windowed layers keep every position.
    let keep_windows = condition.contrastive.is_some();
    let mut run = start_run(model, condition, capture_argmax, prompt.len() + MAX_NEW_TOKENS, keep_windows)?;
    let logits = run.prefill(prompt)?;
    decode_answer(
        &mut run,
        prompt,
        logits,
        capture_argmax,
        false,
        AnswerRule::NIAH,
        condition.contrastive.as_ref(),
        watch,
    )
}

/// The greedy answer from the logits at `prompt`'s last position, which `run` has just fed,
/// without argmax capture; its KV bytes are what the run's cache allocated.
pub fn decode_from(run: &mut Run<'_>, prompt: &[u32], logits: Vec<f32>) -> Result<Answer> {
    decode_answer(run, prompt, logits, false, false, AnswerRule::NIAH, None, &mut |_| {})
}

/// A run for a condition's trials: its interventions and KV policy, every head's argmax
/// captured at the last position of each step if asked, room for `capacity` positions, windowed
/// heads keeping every position if `keep_windows`.
fn start_run<'m>(model: &'m Model, condition: &Condition, capture_argmax: bool, capacity: usize, keep_windows: bool) -> Result<Run<'m>> {
    let hooks = trial_hooks(model, condition, capture_argmax);
    let options = RunOptions {
        capacity,
        kv_policy: condition.kv_policy.clone(),
        keep_windows,
        ..Default::default()
    };
    Ok(model.run(hooks, options)?)
}

/// A condition's interventions, and every head's argmax (and a Mixture-of-Experts model's
/// routing) captured at the last position of each step if asked.
fn trial_hooks(model: &Model, condition: &Condition, capture_argmax: bool) -> Hooks {
    let mut hooks = Hooks {
        interventions: condition.interventions.clone(),
        ..Default::default()
    };
    if capture_argmax {
        for l in 0..model.config.n_layers {
            hooks = hooks.capture(Capture::pattern_argmax(l, Positions::Last));
            if model.config.moe.is_some() {
                hooks = hooks.capture(Capture::new(HookPoint::ExpertWeights(l), Positions::Last));
            }
        }
    }
    hooks
}

/// Per decoding step (step t read at query position `first + t`), per layer, the experts with
/// a weight, heaviest first, from the captured `hook_expert_weights`.
fn chosen_experts(run: &Run<'_>, first: usize, steps: usize) -> Vec<Vec<Vec<u16>>> {
    let c = &run.model().config;
    if c.moe.is_none() || steps == 0 {
        return Vec::new();
    }
    let captured: Option<Vec<_>> = (0..c.n_layers).map(|l| run.recording.get(HookPoint::ExpertWeights(l))).collect();
    let Some(captured) = captured else {
        return Vec::new();
    };
    let mut out = vec![vec![Vec::new(); c.n_layers]; steps];
    for (l, rows) in captured.into_iter().enumerate() {
        for (i, &pos) in rows.positions.iter().enumerate() {
            if let Some(step) = pos.checked_sub(first).filter(|&s| s < steps) {
                let w = rows.row(i);
                let mut chosen: Vec<u16> = (0..w.len()).filter(|&e| w[e] > 0.0).map(|e| e as u16).collect();
                chosen.sort_by(|&a, &b| w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b)));
                out[step][l] = chosen;
            }
        }
    }
    out
}

/// The answer from the logits at `prompt`'s last position, which `run` has just fed: greedy, or
/// contrasted with a masked fork of the run, `watch` called with the tokens so far after each
/// step. A run kept across trials (`shared`) reports the KV bytes the trial would hold alone.
#[allow(clippy::too_many_arguments)]
fn decode_answer(
    run: &mut Run<'_>,
    prompt: &[u32],
    logits: Vec<f32>,
    capture_argmax: bool,
    shared: bool,
    rule: AnswerRule,
    contrastive: Option<&Contrastive>,
    watch: &mut dyn FnMut(&[u32]),
) -> Result<Answer> {
    let model = run.model();
    let c = &model.config;
    let tok = model.tokenizer()?;
    let stop = |ids: &[u32]| {
        watch(ids);
        rule.first_line && tok.decode(ids, true).map(|t| t.trim_start().contains('\n')).unwrap_or(false)
    };
    let generated = match contrastive {
        None => greedy_from(run, logits, rule.max_new_tokens, stop)?,
        Some(contrastive) => decore::generate_from(run, prompt, logits, contrastive, rule.max_new_tokens, stop)?.0,
    };
    let text = tok.decode(&generated, true)?;
    let answer = if rule.first_line {
        text.trim_start().lines().next().unwrap_or("").trim().to_owned()
    } else {
        text.trim().to_owned()
    };
    // Step t's argmax was recorded at query position (prompt length - 1 + t), per layer.
    let n_heads = c.n_heads;
    let first = prompt.len() - 1;
    let mut argmax = if capture_argmax {
        vec![vec![0u32; c.n_layers * n_heads]; generated.len()]
    } else {
        Vec::new()
    };
    for (&l, rows) in &run.recording.argmax {
        for (pos, heads) in rows {
            if let Some(step) = pos.checked_sub(first).filter(|&s| s < generated.len()) {
                argmax[step][l * n_heads..(l + 1) * n_heads].copy_from_slice(heads);
            }
        }
    }
    let experts = if capture_argmax {
        chosen_experts(run, first, generated.len())
    } else {
        Vec::new()
    };
    let kv_bytes = if shared {
        run.kv_bytes_alone(prompt.len(), prompt.len() + rule.max_new_tokens, generated.len().saturating_sub(1))
    } else {
        run.cache().bytes()
    };
    Ok(Answer {
        generated,
        answer,
        argmax,
        experts,
        kv_bytes,
    })
}

/// The run a grid's trials pass on to each other: after a trial it is taken back to the prefix
/// its successor's prompt shares with it (the chat preamble and the haystack up to the earlier
/// needle), so the successor prefills only the rest. Its sliding-window layers keep every
/// position (their attention still sees only the window) so that it can go back anywhere. One
/// per condition: its hooks and KV policy are the condition's.
pub struct PrefixCache<'m> {
    kept: Option<Run<'m>>,
    capacity: usize,
    rule: AnswerRule,
    /// Prompt tokens that trials found in the cache, and all their prompt tokens.
    pub reused: usize,
    pub prompt_tokens: usize,
}

impl<'m> PrefixCache<'m> {
    /// A cache for prompts of at most `max_prompt` tokens, answered as the paper answers.
    pub fn new(max_prompt: usize) -> Self {
        PrefixCache::with_rule(max_prompt, AnswerRule::NIAH)
    }

    /// A cache for prompts of at most `max_prompt` tokens, answered by `rule`.
    pub fn with_rule(max_prompt: usize, rule: AnswerRule) -> Self {
        PrefixCache {
            kept: None,
            capacity: max_prompt + rule.max_new_tokens,
            rule,
            reused: 0,
            prompt_tokens: 0,
        }
    }

    /// The answer to `prompt` under `condition` by `rule` (every head's argmax captured at every
    /// step), continuing from the kept prefix. The prompt and the rule's answer must fit the
    /// cache's capacity.
    pub fn answer(&mut self, model: &'m Model, prompt: &[u32], condition: &Condition, rule: AnswerRule) -> Result<Answer> {
        if prompt.len() + rule.max_new_tokens > self.capacity {
            bail!(
                "a prompt of {} tokens and an answer of {} do not fit the prefix cache's {} positions",
                prompt.len(),
                rule.max_new_tokens,
                self.capacity
            );
        }
        self.rule = rule;
        let (_, mut answers) = self.answer_each(model, prompt, condition, &[condition])?;
        Ok(answers.pop().expect("one condition, one answer").0)
    }

    /// Tokens reused over tokens in prompts.
    pub fn hit_rate(&self) -> f64 {
        self.reused as f64 / self.prompt_tokens.max(1) as f64
    }

    /// `prompt` prefilled once under `prefill` (its interventions and KV policy), continuing
    /// from the kept prefix, then answered under each of `conditions` in turn from the same
    /// logits, the run taken back to the prompt between them: `prefill` itself alone, or
    /// conditions that differ from it in decoding only. Returns when the prefill ended and each
    /// answer with its decoding's seconds.
    fn answer_each(
        &mut self,
        model: &'m Model,
        prompt: &[u32],
        prefill: &Condition,
        conditions: &[&Condition],
    ) -> Result<(Instant, Vec<(Answer, f64)>)> {
        let mut run = match self.kept.take() {
            Some(mut run) => {
                run.set_hooks(trial_hooks(model, prefill, true))?;
                run
            }
            None => start_run(model, prefill, true, self.capacity, true)?,
        };
        // Keys cached for a prompt on the other side of LongRoPE's switch were rotated with the
        // other factors: such a prompt starts over.
        let shared = if model.same_rotary_set(run.tokens().len(), prompt.len()) {
            common_prefix(run.tokens(), prompt)
        } else {
            0
        };
        run.truncate(shared.min(prompt.len() - 1))?;
        // The first condition continues from the cache; the others reuse the whole prompt.
        self.reused += run.position() + (conditions.len().max(1) - 1) * prompt.len();
        self.prompt_tokens += conditions.len() * prompt.len();
        run.recording.clear();
        let logits = run.prefill(&prompt[run.position()..])?;
        let prefilled = Instant::now();
        let at_prompt = run.recording.clone();
        let mut answers = Vec::with_capacity(conditions.len());
        for condition in conditions {
            let start = Instant::now();
            run.set_hooks(trial_hooks(model, condition, true))?;
            run.recording = at_prompt.clone();
            let out = decode_answer(
                &mut run,
                prompt,
                logits.clone(),
                true,
                true,
                self.rule,
                condition.contrastive.as_ref(),
                &mut |_| {},
            )?;
            run.truncate(prompt.len())?;
            answers.push((out, start.elapsed().as_secs_f64()));
        }
        self.kept = Some(run);
        Ok((prefilled, answers))
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// At least `n` haystack tokens (more text is generated until there are).
fn haystack_tokens(tok: &Tokenizer, haystack: &Haystack, n: usize) -> Result<Vec<u32>> {
    let mut chars = n * 6 + 1024;
    loop {
        let ids = tok.encode(&haystack.text(chars)?, false)?;
        if ids.len() >= n {
            return Ok(ids);
        }
        chars *= 2;
    }
}

impl crate::runner::store::Keyed for TrialRecord {
    fn key(&self) -> String {
        self.spec.key()
    }
}
