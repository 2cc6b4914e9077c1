//! RULER's synthetic long-context tasks (Hsieh et al., COLM 2024), generated here at any length
//! in the model's own tokens.
//!
//! Thirteen tasks in four groups, each with RULER's prompt, answer prefix, generation budget and
//! metric (NVIDIA/RULER `scripts/data/synthetic/constants.py`, `synthetic.yaml`):
//!
//! - **retrieval** (`niah_*`): needles `One of the special magic {values} for {key} is: {value}.`
//!   in a haystack of repeated noise sentences, of essay text, or of other needles only; one key
//!   and value (single), distractor keys (multikey), four values for one key (multivalue), four
//!   keys asked at once (multiquery); keys are `adjective-noun` words or UUIDs, values 7-digit
//!   numbers or UUIDs;
//! - **multi-hop tracing** (`vt`): a chain `VAR A = 12345`, `VAR B = VAR A`, ... of four hops in
//!   noise; every variable holding the value is asked for (with one worked example first, as
//!   RULER);
//! - **aggregation**: the ten most common words of a numbered word list (`cwe`, after one worked
//!   example) and the three most frequent coded words of a Zipf-distributed text (`fwe`);
//! - **question answering** (`qa`): a question of the built-in QA set with its document among
//!   distractor documents (the set's other documents, then generated prose).
//!
//! A trial's length is RULER's: the prompt's tokens plus the task's generation budget, at most
//! the asked length (the haystack is grown by binary search to the largest that fits). Where a
//! task has a needle, the trial's depth places it (the first needle of the first asked key; the
//! other needles go to random depths, as RULER places them all); the chain, the word lists and the
//! distractor needles' keys come from the trial's seed.
//!
//! Scored as RULER scores: `string_match_all` (the share of expected values that appear in the
//! answer, case-insensitive) for all but QA, `string_match_part` (any expected answer) for QA.

pub mod outputs;
pub mod summary;
pub mod trial;
mod words;

use std::ops::Range;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::experiments::qa::QaItem;
use crate::experiments::retrieval::niah::haystack::{Prose, Rng};
use words::{coded_word, distinct_words, key_word, number, shuffle, uuid};

/// RULER's tasks, by RULER's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
pub enum Task {
    #[value(name = "niah_single_1")]
    #[serde(rename = "niah_single_1")]
    NiahSingle1,
    #[value(name = "niah_single_2")]
    #[serde(rename = "niah_single_2")]
    NiahSingle2,
    #[value(name = "niah_single_3")]
    #[serde(rename = "niah_single_3")]
    NiahSingle3,
    #[value(name = "niah_multikey_1")]
    #[serde(rename = "niah_multikey_1")]
    NiahMultikey1,
    #[value(name = "niah_multikey_2")]
    #[serde(rename = "niah_multikey_2")]
    NiahMultikey2,
    #[value(name = "niah_multikey_3")]
    #[serde(rename = "niah_multikey_3")]
    NiahMultikey3,
    #[value(name = "niah_multivalue")]
    #[serde(rename = "niah_multivalue")]
    NiahMultivalue,
    #[value(name = "niah_multiquery")]
    #[serde(rename = "niah_multiquery")]
    NiahMultiquery,
    #[value(name = "vt")]
    #[serde(rename = "vt")]
    Vt,
    #[value(name = "cwe")]
    #[serde(rename = "cwe")]
    Cwe,
    #[value(name = "fwe")]
    #[serde(rename = "fwe")]
    Fwe,
    #[value(name = "qa")]
    #[serde(rename = "qa")]
    Qa,
}

/// What a needle's key or value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Words,
    Numbers,
    Uuids,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Words => "words",
            Kind::Numbers => "numbers",
            Kind::Uuids => "uuids",
        }
    }

    fn draw(self, rng: &mut Rng) -> String {
        match self {
            Kind::Words => key_word(rng),
            Kind::Numbers => number(rng),
            Kind::Uuids => uuid(rng),
        }
    }
}

/// What a needle task's haystack is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hay {
    /// RULER's five noise sentences, repeated.
    Noise,
    /// Essay text (the run's haystack: generated prose or the user's files).
    Essay,
    /// Other needles only.
    Needles,
}

/// The shape of a needle task (RULER's `synthetic.yaml` arguments).
#[derive(Debug, Clone, Copy)]
struct NiahShape {
    hay: Hay,
    key: Kind,
    value: Kind,
    keys: usize,
    values: usize,
    queries: usize,
}

enum Shape {
    Niah(NiahShape),
    Vt,
    Cwe,
    Fwe,
    Qa,
}

/// How an answer is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The share of expected values found in the answer.
    All,
    /// Whether any expected answer is found in it.
    Part,
}

const NOISE: [&str; 5] = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
];

/// RULER's 40 needle depths, `round(linspace(0, 100, 40))`.
fn ruler_depth(rng: &mut Rng) -> f64 {
    (rng.below(40) as f64 * 100.0 / 39.0).round()
}

impl Task {
    pub const ALL: [Task; 12] = [
        Task::NiahSingle1,
        Task::NiahSingle2,
        Task::NiahSingle3,
        Task::NiahMultikey1,
        Task::NiahMultikey2,
        Task::NiahMultikey3,
        Task::NiahMultivalue,
        Task::NiahMultiquery,
        Task::Vt,
        Task::Cwe,
        Task::Fwe,
        Task::Qa,
    ];

    /// RULER's name of the task (also its `--tasks` value and its name in records).
    pub fn name(self) -> &'static str {
        match self {
            Task::NiahSingle1 => "niah_single_1",
            Task::NiahSingle2 => "niah_single_2",
            Task::NiahSingle3 => "niah_single_3",
            Task::NiahMultikey1 => "niah_multikey_1",
            Task::NiahMultikey2 => "niah_multikey_2",
            Task::NiahMultikey3 => "niah_multikey_3",
            Task::NiahMultivalue => "niah_multivalue",
            Task::NiahMultiquery => "niah_multiquery",
            Task::Vt => "vt",
            Task::Cwe => "cwe",
            Task::Fwe => "fwe",
            Task::Qa => "qa",
        }
    }

    fn shape(self) -> Shape {
        let niah = |hay, key, value, keys, values, queries| {
            Shape::Niah(NiahShape {
                hay,
                key,
                value,
                keys,
                values,
                queries,
            })
        };
        use Kind::*;
        match self {
            Task::NiahSingle1 => niah(Hay::Noise, Words, Numbers, 1, 1, 1),
            Task::NiahSingle2 => niah(Hay::Essay, Words, Numbers, 1, 1, 1),
            Task::NiahSingle3 => niah(Hay::Essay, Words, Uuids, 1, 1, 1),
            Task::NiahMultikey1 => niah(Hay::Essay, Words, Numbers, 4, 1, 1),
            Task::NiahMultikey2 => niah(Hay::Needles, Words, Numbers, 1, 1, 1),
            Task::NiahMultikey3 => niah(Hay::Needles, Uuids, Uuids, 1, 1, 1),
            Task::NiahMultivalue => niah(Hay::Essay, Words, Numbers, 1, 4, 1),
            Task::NiahMultiquery => niah(Hay::Essay, Words, Numbers, 4, 1, 4),
            Task::Vt => Shape::Vt,
            Task::Cwe => Shape::Cwe,
            Task::Fwe => Shape::Fwe,
            Task::Qa => Shape::Qa,
        }
    }

    /// RULER's generation budget, in tokens.
    pub fn tokens_to_generate(self) -> usize {
        match self.shape() {
            Shape::Niah(_) => 128,
            Shape::Vt => 30,
            Shape::Cwe => 120,
            Shape::Fwe => 50,
            Shape::Qa => 32,
        }
    }

    /// Whether a trial's depth places something (a needle, the gold document).
    pub fn has_depth(self) -> bool {
        matches!(self.shape(), Shape::Niah(_) | Shape::Qa)
    }

    pub fn metric(self) -> Metric {
        match self.shape() {
            Shape::Qa => Metric::Part,
            _ => Metric::All,
        }
    }

    /// Whether the answer is copied from one place of the prompt (so that retrieval scores mean
    /// what they mean on NIAH): not for the aggregation tasks, whose answers occur many times.
    pub fn copies(self) -> bool {
        !matches!(self.shape(), Shape::Cwe | Shape::Fwe)
    }

    /// RULER's category of the task.
    pub fn group(self) -> &'static str {
        match self.shape() {
            Shape::Niah(_) => "retrieval",
            Shape::Vt => "multi-hop tracing",
            Shape::Cwe | Shape::Fwe => "aggregation",
            Shape::Qa => "question answering",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One trial of the suite: a task at a length (RULER's: prompt plus generation budget, in
/// tokens), a depth in percent where the task has one, and its sample number (the seed of its
/// draws, and the QA question).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub task: Task,
    pub length: usize,
    pub depth: f64,
    pub sample: usize,
    pub seed: u64,
}

impl Trial {
    /// A stable identity for resuming and merging.
    pub fn key(&self) -> String {
        format!("{}-l{}-d{}-s{}", self.task, self.length, self.depth, self.sample)
    }
}

/// One generated task instance, before tokenization.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The user message around the context.
    pub before: String,
    pub after: String,
    /// What the model's answer starts with (after the chat template's assistant turn).
    pub answer_prefix: String,
    pub context: String,
    /// Byte ranges of `context` that a right answer copies (the asked values).
    pub copy_spans: Vec<Range<usize>>,
    /// The expected values.
    pub outputs: Vec<String>,
    /// Byte ranges of `context` that the question is about, QRHead's gold passages: the asked
    /// needles, the chain's assignments, QA's gold document (empty for cwe, fwe).
    pub gold_spans: Vec<Range<usize>>,
    /// What the question asks about, as it is written in `after` and `answer_prefix` (the key,
    /// the value traced, QA's question); empty where the question is fixed (cwe, fwe).
    pub query: String,
}

impl Sample {
    /// The same sample asking the content-free question `null` (QRHead's calibration): the query
    /// replaced wherever the question and the answer prefix name it. None where there is no query.
    pub fn content_free(&self, null: &str) -> Option<Sample> {
        if self.query.is_empty() {
            return None;
        }
        Some(Sample {
            after: self.after.replace(&self.query, null),
            answer_prefix: self.answer_prefix.replace(&self.query, null),
            ..self.clone()
        })
    }
}

/// Where the tasks' texts come from: the essay haystack and the QA set.
pub struct Sources {
    essay: Vec<String>,
    qa: Vec<QaItem>,
}

impl Sources {
    /// `essay`: haystack text for the essay tasks (split into words, repeated when a context needs
    /// more); `qa`: the questions of the QA task.
    pub fn new(essay: &str, qa: Vec<QaItem>) -> Result<Self> {
        let essay: Vec<String> = essay.split_whitespace().map(str::to_owned).collect();
        if essay.is_empty() {
            bail!("the essay haystack is empty");
        }
        if qa.is_empty() {
            bail!("the QA task needs at least one question");
        }
        Ok(Sources { essay, qa })
    }

    pub fn questions(&self) -> usize {
        self.qa.len()
    }

    /// `trial`'s instance with `units` units of haystack (sentences of noise, words of essay or
    /// of distractor documents, distractor needles, list entries): its needle (or gold document)
    /// at the trial's depth, everything else drawn from its seed.
    pub fn sample(&self, trial: &Trial, units: usize) -> Sample {
        let mut rng = Rng(trial.seed ^ 0x5255_4C45_5200_0000);
        match trial.task.shape() {
            Shape::Niah(shape) => self.niah(shape, units, trial.depth, &mut rng),
            Shape::Vt => vt(units, &mut rng),
            // RULER's settings for contexts of 4,096 tokens and more: 30 and 3 repetitions.
            Shape::Cwe => cwe(units, &mut rng, trial.length >= 4096),
            Shape::Fwe => fwe(units, trial.length, &mut rng),
            Shape::Qa => self.qa(units, trial.depth, trial.sample % self.qa.len(), &mut rng),
        }
    }

    fn niah(&self, s: NiahShape, units: usize, depth: f64, rng: &mut Rng) -> Sample {
        let keys = s.keys.max(s.queries);
        let mut needles: Vec<(usize, String)> = Vec::new(); // (key index, value)
        let mut key_texts: Vec<String> = Vec::new();
        while key_texts.len() < keys {
            let k = s.key.draw(rng);
            if !key_texts.contains(&k) {
                key_texts.push(k);
            }
        }
        for k in 0..keys {
            for _ in 0..s.values {
                needles.push((k, s.value.draw(rng)));
            }
        }
        shuffle(rng, &mut needles);
        let mut asked: Vec<usize> = (0..keys).collect();
        shuffle(rng, &mut asked);
        asked.truncate(s.queries);
        // The first needle of the first asked key at the trial's depth, the others at RULER's.
        let first = needles.iter().position(|(k, _)| *k == asked[0]).expect("every key has a needle");
        let depths: Vec<f64> = (0..needles.len())
            .map(|i| if i == first { depth } else { ruler_depth(rng) })
            .collect();
        let type_v = s.value.plural();
        let texts: Vec<String> = needles
            .iter()
            .map(|(k, v)| format!("One of the special magic {type_v} for {} is: {v}.", key_texts[*k]))
            .collect();
        let haystack = match s.hay {
            Hay::Noise => Pieces::noise(units),
            Hay::Essay => Pieces::essay(&self.essay, units),
            Hay::Needles => {
                let lines = (0..units)
                    .map(|_| loop {
                        let k = s.key.draw(rng);
                        if !key_texts.contains(&k) {
                            break format!("One of the special magic {type_v} for {k} is: {}.", s.value.draw(rng));
                        }
                    })
                    .collect();
                Pieces::lines(lines)
            }
        };
        let asked_values: Vec<&str> = asked
            .iter()
            .flat_map(|&a| needles.iter().filter(move |(k, _)| *k == a).map(|(_, v)| v.as_str()))
            .collect();
        let (context, spans) = haystack.insert(&texts, &depths, |i, text| {
            let (k, v) = &needles[i];
            if asked.contains(k) {
                let at = text.rfind(v.as_str()).expect("the value is in its needle");
                std::iter::once(at..at + v.len()).collect()
            } else {
                Vec::new()
            }
        });
        // RULER orders the expected values by asked key, each key's values in needle order.
        let outputs = asked_values.iter().map(|v| v.to_string()).collect();
        let query = match asked.len() {
            1 => key_texts[asked[0]].clone(),
            n => {
                let names: Vec<&str> = asked.iter().map(|&a| key_texts[a].as_str()).collect();
                format!("{}, and {}", names[..n - 1].join(", "), names[n - 1])
            }
        };
        let mut template = String::from(
            "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. I will quiz you about \
             the {type_v} afterwards.\n{context}\nWhat are all the special magic {type_v} for {query} mentioned in the provided \
             text?{prefix} The special magic {type_v} for {query} mentioned in the provided text are",
        );
        let mut type_v = type_v.to_owned();
        if s.queries * s.values == 1 {
            // RULER's singular form of the same template.
            for (from, to) in [("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")] {
                template = template.replace(from, to);
            }
            type_v.pop();
        }
        let filled = template.replace("{type_v}", &type_v).replace("{query}", &query);
        let gold_spans = located(
            &context,
            texts.iter().zip(&needles).filter(|(_, (k, _))| asked.contains(k)).map(|(t, _)| t),
        );
        Sample {
            gold_spans,
            ..split_template(&filled, context, spans, outputs, query)
        }
    }

    fn qa(&self, units: usize, depth: f64, item: usize, rng: &mut Rng) -> Sample {
        let gold = &self.qa[item];
        // Distractors: the set's other documents in a seeded order, then generated prose.
        let mut others: Vec<&QaItem> = self.qa.iter().enumerate().filter(|(i, _)| *i != item).map(|(_, q)| q).collect();
        shuffle(rng, &mut others);
        let mut prose = Prose::new(rng.next());
        let mut docs: Vec<String> = Vec::new();
        let mut left = units;
        let mut pool = others.iter().map(|q| q.context.clone());
        while left > 0 {
            let doc = pool.next().unwrap_or_else(|| prose.take_chars(1500));
            let words: Vec<&str> = doc.split_whitespace().collect();
            let take = words.len().min(left);
            docs.push(words[..take].join(" "));
            left -= take;
        }
        let at = ((docs.len() as f64 * depth / 100.0).round() as usize).min(docs.len());
        docs.insert(at, gold.context.clone());
        let mut context = String::new();
        let mut spans = Vec::new();
        let mut gold_span = 0..0;
        for (i, doc) in docs.iter().enumerate() {
            if i > 0 {
                context.push_str("\n\n");
            }
            context.push_str(&format!("Document {}:\n", i + 1));
            if i == at {
                gold_span = context.len()..context.len() + doc.len();
                for answer in &gold.answers {
                    spans.extend(
                        doc.match_indices(answer.as_str())
                            .map(|(s, a)| context.len() + s..context.len() + s + a.len()),
                    );
                }
            }
            context.push_str(doc);
        }
        let template = format!(
            "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n\
             The following are given documents.\n\n{{context}}\n\nAnswer the question based on the given documents. Only give me \
             the answer and do not output any other words.\n\nQuestion: {}{{prefix}} Answer:",
            gold.question
        );
        Sample {
            gold_spans: vec![gold_span],
            ..split_template(&template, context, spans, gold.answers.clone(), gold.question.clone())
        }
    }
}

/// A filled template, `... {context} ... {prefix} answer prefix`, cut into a sample.
fn split_template(template: &str, context: String, copy_spans: Vec<Range<usize>>, outputs: Vec<String>, query: String) -> Sample {
    let (before, rest) = template.split_once("{context}").expect("templates hold {context}");
    let (after, prefix) = rest.split_once("{prefix}").expect("templates hold {prefix}");
    Sample {
        before: before.to_owned(),
        after: after.to_owned(),
        answer_prefix: prefix.to_owned(),
        context,
        copy_spans,
        gold_spans: Vec::new(),
        outputs,
        query,
    }
}

/// Where each of `texts` first lies in `context`, in bytes.
fn located<'a>(context: &str, texts: impl Iterator<Item = &'a String>) -> Vec<Range<usize>> {
    texts.filter_map(|t| context.find(t.as_str()).map(|at| at..at + t.len())).collect()
}

/// A haystack in pieces between which needles may go: sentences joined by `sep` (essay words
/// end sentences; noise and needle haystacks are lines).
struct Pieces {
    pieces: Vec<String>,
    /// Whether a needle may go before piece i (a sentence or line starts there).
    starts: Vec<bool>,
    sep: &'static str,
}

impl Pieces {
    /// `units` noise sentences, five to a line as RULER repeats them.
    fn noise(units: usize) -> Self {
        let lines: Vec<String> = (0..units.div_ceil(5))
            .map(|l| {
                let n = (units - 5 * l).min(5);
                NOISE[..n].join(" ")
            })
            .collect();
        Pieces::lines(lines)
    }

    fn lines(lines: Vec<String>) -> Self {
        let starts = vec![true; lines.len()];
        Pieces {
            pieces: lines,
            starts,
            sep: "\n",
        }
    }

    /// The first `units` words of the essay (repeated when short), needles between sentences.
    fn essay(words: &[String], units: usize) -> Self {
        let pieces: Vec<String> = (0..units).map(|i| words[i % words.len()].clone()).collect();
        let starts = (0..pieces.len())
            .map(|i| i == 0 || pieces[i - 1].ends_with(['.', '!', '?']))
            .collect();
        Pieces { pieces, starts, sep: " " }
    }

    /// The haystack with `needles[i]` inserted at `depths[i]` percent (at the last place a
    /// needle may go at or before it), and the byte ranges `spans(i, needle)` gives inside each
    /// needle, moved to where the needle landed.
    fn insert(self, needles: &[String], depths: &[f64], spans: impl Fn(usize, &str) -> Vec<Range<usize>>) -> (String, Vec<Range<usize>>) {
        let n = self.pieces.len();
        let place = |d: f64| {
            let mut at = ((n as f64 * d / 100.0) as usize).min(n);
            while at > 0 && at < n && !self.starts[at] {
                at -= 1;
            }
            at
        };
        let mut order: Vec<(usize, usize)> = depths.iter().enumerate().map(|(i, &d)| (place(d), i)).collect();
        order.sort_unstable();
        let mut text = String::new();
        let mut out = Vec::new();
        let mut next = order.iter().peekable();
        for p in 0..=n {
            while let Some(&&(at, i)) = next.peek() {
                if at != p {
                    break;
                }
                if !text.is_empty() {
                    text.push_str(self.sep);
                }
                out.extend(spans(i, &needles[i]).into_iter().map(|r| text.len() + r.start..text.len() + r.end));
                text.push_str(&needles[i]);
                next.next();
            }
            if p < n {
                if !text.is_empty() {
                    text.push_str(self.sep);
                }
                text.push_str(&self.pieces[p]);
            }
        }
        (text, out)
    }
}

/// Variable tracking: one chain of four hops in `units` noise sentences, after one worked
/// example (three-letter variables in 80 sentences), as RULER's default.
fn vt(units: usize, rng: &mut Rng) -> Sample {
    let (example, example_vars) = chain_text(80, 3, rng);
    let (text, vars) = chain_text(units, 5, rng);
    let question = |value: &str| {
        (
            "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n".to_owned(),
            format!("\nQuestion: Find all variables that are assigned the value {value} in the text above."),
            format!(
                " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the value {value}, they are: "
            ),
        )
    };
    let (eb, ea, ep) = question(&example.value);
    let worked = format!("{eb}{}{ea}{ep}{}\n", example.context, example_vars.join(" "));
    let (before, after, prefix) = question(&text.value);
    Sample {
        before: format!("{worked}\n{before}"),
        after,
        answer_prefix: prefix,
        gold_spans: located(&text.context, text.lines.iter()),
        context: text.context,
        copy_spans: text.spans,
        outputs: vars,
        query: text.value,
    }
}

struct Chain {
    context: String,
    value: String,
    spans: Vec<Range<usize>>,
    /// The assignments, as written.
    lines: Vec<String>,
}

/// A chain `VAR v0 = value`, `VAR v1 = VAR v0 `, ... (four hops, `letters`-letter names) at
/// random lines of `units` noise sentences; the spans of every variable name in it.
fn chain_text(units: usize, letters: usize, rng: &mut Rng) -> (Chain, Vec<String>) {
    let mut vars: Vec<String> = Vec::new();
    while vars.len() < 5 {
        let v: String = (0..letters).map(|_| (b'A' + rng.below(26) as u8) as char).collect();
        if !vars.contains(&v) {
            vars.push(v);
        }
    }
    let value = (10_000 + rng.below(90_000)).to_string();
    let mut lines = vec![format!("VAR {} = {value}", vars[0])];
    for j in 0..4 {
        lines.push(format!("VAR {} = VAR {} ", vars[j + 1], vars[j]));
    }
    let mut depths: Vec<f64> = (0..5).map(|_| 100.0 * rng.below(1000) as f64 / 1000.0).collect();
    depths.sort_by(f64::total_cmp);
    let names = vars.clone();
    let (context, spans) = Pieces::noise(units).insert(&lines, &depths, |_, line| {
        names
            .iter()
            .flat_map(|v| {
                line.match_indices(&format!(" {v} "))
                    .map(|(s, _)| s + 1..s + 1 + v.len())
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    (
        Chain {
            context,
            value,
            spans,
            lines,
        },
        vars,
    )
}

/// Common words: `units` distinct words, ten of them repeated 30 times and the rest 3 (6 and 1
/// for a short list), shuffled and numbered; after one worked example.
fn cwe(units: usize, rng: &mut Rng, long: bool) -> Sample {
    let (example_sizes, sizes) = if long {
        ((40, 10, 3), (units, 30, 3))
    } else {
        ((20, 3, 1), (units, 6, 1))
    };
    let template = |list: &str| {
        format!(
            "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear \
             most often.\n{list}\nQuestion: What are the 10 most common words in the above list?"
        )
    };
    let prefix = " Answer: The top 10 words that appear most often in the list are:";
    let (example, example_common) = word_list(example_sizes, rng);
    let enumerate = |w: &[String]| {
        w.iter()
            .enumerate()
            .map(|(i, w)| format!("{}. {w}", i + 1))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let worked = format!("{}{prefix} {}", template(&example), enumerate(&example_common));
    let (context, common) = word_list(sizes, rng);
    let full = format!("{worked}\n{}", template("{context}")) + "{prefix}" + prefix;
    split_template(&full, context, Vec::new(), common, String::new())
}

/// A numbered list of `n` distinct words, the first ten `common` times each and the others
/// `rare` times, shuffled; and the ten.
fn word_list((n, common, rare): (usize, usize, usize), rng: &mut Rng) -> (String, Vec<String>) {
    let words = distinct_words(rng, n.max(10));
    let mut list: Vec<&String> = Vec::new();
    for (i, w) in words.iter().enumerate() {
        list.extend(std::iter::repeat_n(w, if i < 10 { common } else { rare }));
    }
    shuffle(rng, &mut list);
    let text = list
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect::<Vec<_>>()
        .join(" ");
    (text, words[..10].to_vec())
}

/// Frequent words: `units` words drawn by Zipf's law (alpha 2) over a vocabulary of six-letter
/// coded words whose most frequent is the noise `...`; the next three are the answer.
fn fwe(units: usize, length: usize, rng: &mut Rng) -> Sample {
    const ALPHA: f64 = 2.0;
    let zeta2 = std::f64::consts::PI * std::f64::consts::PI / 6.0;
    // RULER's vocabulary: a word per 50 tokens of the length.
    let vocab_size = (length / 50).max(10);
    let mut vocab: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while vocab.len() < vocab_size {
        let w = coded_word(rng, 6);
        if seen.insert(w.clone()) {
            vocab.push(w);
        }
    }
    vocab[0] = "...".into();
    let mut text: Vec<&str> = Vec::new();
    for (k, w) in vocab.iter().enumerate() {
        let count = (units as f64 * ((k + 1) as f64).powf(-ALPHA) / zeta2) as usize;
        text.extend(std::iter::repeat_n(w.as_str(), count));
    }
    shuffle(rng, &mut text);
    let template = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared \
                    coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three \
                    most frequently appeared words in the above coded text?{prefix} Answer: According to the coded text above, the \
                    three most frequently appeared words are:";
    split_template(template, text.join(" "), Vec::new(), vocab[1..4].to_vec(), String::new())
}

/// RULER's score of one answer, 0 to 100.
pub fn score(metric: Metric, answer: &str, outputs: &[String]) -> f64 {
    let answer = answer.to_lowercase();
    let found = outputs.iter().filter(|o| answer.contains(&o.to_lowercase())).count();
    match metric {
        Metric::All => 100.0 * found as f64 / outputs.len().max(1) as f64,
        Metric::Part => {
            if found > 0 {
                100.0
            } else {
                0.0
            }
        }
    }
}

/// The largest number of haystack units whose context takes at most `budget` tokens (by
/// `tokens`, monotone in the units), found by doubling then bisection; and its token count.
pub fn fit_units(budget: usize, mut tokens: impl FnMut(usize) -> Result<usize>) -> Result<(usize, usize)> {
    let first = tokens(1)?;
    if first > budget {
        bail!("the task's smallest context takes {first} tokens, more than the {budget} the length leaves for it");
    }
    let (mut lo, mut lo_tokens) = (1, first);
    let mut hi = 2;
    loop {
        let t = tokens(hi)?;
        if t > budget {
            break;
        }
        (lo, lo_tokens) = (hi, t);
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let t = tokens(mid)?;
        if t <= budget {
            (lo, lo_tokens) = (mid, t);
        } else {
            hi = mid;
        }
    }
    Ok((lo, lo_tokens))
}

/// The suite's trials, in task, length, depth, sample order. A sample's draws are the same at
/// every length and depth (its keys, values and words), so that only the length or the depth
/// changes along a row.
pub fn suite(tasks: &[Task], lengths: &[usize], depths: &[f64], samples: usize, seed: u64) -> Vec<Trial> {
    let mut out = Vec::new();
    for &task in tasks {
        for &length in lengths {
            let task_depths: &[f64] = if task.has_depth() { depths } else { &[0.0] };
            for &depth in task_depths {
                for sample in 0..samples {
                    let seed = seed
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add((Task::ALL.iter().position(|t| *t == task).unwrap_or(0) as u64) << 32)
                        .wrapping_add(sample as u64);
                    out.push(Trial {
                        task,
                        length,
                        depth,
                        sample,
                        seed,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
