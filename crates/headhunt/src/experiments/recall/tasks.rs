//! Factual-recall tasks: a relation as (subject, answer) pairs and prompt templates that end
//! right before the answer. Zero-shot prompts are one template; k-shot prompts first show k
//! completed examples about other subjects.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use headhunt_engine::Tokenizer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub subject: String,
    pub answer: String,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub facts: Vec<Fact>,
    /// Each holds `{subject}` once and ends right before the answer.
    pub templates: Vec<String>,
}

const CAPITALS: &[(&str, &str)] = &[
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Poland", "Warsaw"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"),
    ("Turkey", "Ankara"),
    ("Kenya", "Nairobi"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"),
    ("Cuba", "Havana"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("the Czech Republic", "Prague"),
    ("Saudi Arabia", "Riyadh"),
    ("Nigeria", "Abuja"),
    ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"),
    ("Venezuela", "Caracas"),
    ("Pakistan", "Islamabad"),
    ("the Philippines", "Manila"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
];

const CAPITAL_TEMPLATES: &[&str] = &[
    "The capital of {subject} is",
    "The capital city of {subject} is",
    "{subject}'s capital city is",
    "{subject} has its capital in",
    "The name of the capital of {subject} is",
    "Fact: the capital of {subject} is",
    "The city that serves as the capital of {subject} is",
    "In {subject}, the national government sits in the capital,",
    "If you fly to the capital of {subject}, you land in",
    "Q: What is the capital of {subject}?\nA:",
    "Every schoolchild in {subject} knows that the capital is",
];

const LANGUAGES: &[(&str, &str)] = &[
    ("France", "French"),
    ("Germany", "German"),
    ("Italy", "Italian"),
    ("Spain", "Spanish"),
    ("Portugal", "Portuguese"),
    ("Japan", "Japanese"),
    ("China", "Chinese"),
    ("Russia", "Russian"),
    ("Greece", "Greek"),
    ("Hungary", "Hungarian"),
    ("Poland", "Polish"),
    ("Sweden", "Swedish"),
    ("Finland", "Finnish"),
    ("Denmark", "Danish"),
    ("Norway", "Norwegian"),
    ("Turkey", "Turkish"),
    ("Thailand", "Thai"),
    ("Vietnam", "Vietnamese"),
    ("South Korea", "Korean"),
    ("Indonesia", "Indonesian"),
    ("Iran", "Persian"),
    ("Israel", "Hebrew"),
    ("Ukraine", "Ukrainian"),
    ("Romania", "Romanian"),
    ("the Czech Republic", "Czech"),
    ("Bulgaria", "Bulgarian"),
    ("Serbia", "Serbian"),
    ("Croatia", "Croatian"),
    ("the Netherlands", "Dutch"),
    ("Brazil", "Portuguese"),
    ("Mexico", "Spanish"),
    ("Egypt", "Arabic"),
];

const LANGUAGE_TEMPLATES: &[&str] = &[
    "The official language of {subject} is",
    "In {subject}, most people speak",
    "The language spoken in {subject} is",
    "{subject}'s official language is",
    "People in {subject} speak",
    "Fact: the main language of {subject} is",
    "If you move to {subject}, you should learn",
    "Q: What language is spoken in {subject}?\nA:",
    "Schools in {subject} teach in",
    "The newspapers of {subject} are printed in",
];

const CURRENCIES: &[(&str, &str)] = &[
    ("Japan", "yen"),
    ("China", "yuan"),
    ("Russia", "ruble"),
    ("India", "rupee"),
    ("the United Kingdom", "pound"),
    ("the United States", "dollar"),
    ("Mexico", "peso"),
    ("South Korea", "won"),
    ("Thailand", "baht"),
    ("Poland", "zloty"),
    ("Sweden", "krona"),
    ("Norway", "krone"),
    ("Switzerland", "franc"),
    ("Turkey", "lira"),
    ("Brazil", "real"),
    ("South Africa", "rand"),
    ("Vietnam", "dong"),
    ("Hungary", "forint"),
    ("Israel", "shekel"),
    ("Iran", "rial"),
    ("Ukraine", "hryvnia"),
    ("Indonesia", "rupiah"),
    ("the Philippines", "peso"),
    ("Nigeria", "naira"),
    ("Germany", "euro"),
    ("Malaysia", "ringgit"),
    ("Bangladesh", "taka"),
    ("Kenya", "shilling"),
    ("the Czech Republic", "koruna"),
    ("Croatia", "euro"),
    ("Egypt", "pound"),
    ("Canada", "dollar"),
];

const CURRENCY_TEMPLATES: &[&str] = &[
    "The currency of {subject} is the",
    "In {subject}, people pay with the",
    "The official currency of {subject} is the",
    "{subject}'s currency is called the",
    "Prices in {subject} are given in the local currency, the",
    "Fact: the money used in {subject} is the",
    "If you travel to {subject}, you need to exchange money for the",
    "Q: What is the currency of {subject}?\nA: The",
    "Shops in {subject} take payment in the",
    "The central bank of {subject} issues the",
];

fn facts(pairs: &[(&str, &str)]) -> Vec<Fact> {
    pairs
        .iter()
        .map(|(s, a)| Fact {
            subject: s.to_string(),
            answer: a.to_string(),
        })
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub const BUILTIN: &[&str] = &["capital", "language", "currency"];

/// A built-in task by name (`capital`, `language`, `currency`).
pub fn builtin(name: &str) -> Result<Task> {
    let (facts, templates) = match name {
        "capital" => (facts(CAPITALS), strings(CAPITAL_TEMPLATES)),
        "language" => (facts(LANGUAGES), strings(LANGUAGE_TEMPLATES)),
        "currency" => (facts(CURRENCIES), strings(CURRENCY_TEMPLATES)),
        other => bail!(
            "unknown task `{other}` (built in: {}; or give --facts and --templates)",
            BUILTIN.join(", ")
        ),
    };
    Ok(Task {
        name: name.into(),
        facts,
        templates,
    })
}

/// A user task: JSONL of {"subject", "answer"} and a text file of templates, one per line.
pub fn load(facts_path: &Path, templates_path: &Path) -> Result<Task> {
    let text = std::fs::read_to_string(facts_path).with_context(|| format!("reading {}", facts_path.display()))?;
    let mut facts = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Fact = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: expected {{\"subject\", \"answer\"}}", facts_path.display(), i + 1))?;
        facts.push(f);
    }
    let templates: Vec<String> = std::fs::read_to_string(templates_path)
        .with_context(|| format!("reading {}", templates_path.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.replace("\\n", "\n"))
        .collect();
    if let Some(t) = templates.iter().find(|t| t.matches("{subject}").count() != 1) {
        bail!("{}: template {t:?} must contain {{subject}} exactly once", templates_path.display());
    }
    if facts.len() < 2 || templates.is_empty() {
        bail!("a task needs at least two facts and one template");
    }
    let name = facts_path.file_stem().and_then(|s| s.to_str()).unwrap_or("task").to_owned();
    Ok(Task { name, facts, templates })
}

/// One prompt, with what the analyses need to know about it.
#[derive(Debug, Clone)]
pub struct RecallPrompt {
    pub ids: Vec<u32>,
    pub fact: usize,
    pub template: usize,
    /// Positions of the queried subject's tokens.
    pub subject: Range<usize>,
    /// The first token of the answer (with its leading space).
    pub answer_token: u32,
    /// The first token of the subject as a word (with its leading space), for DLA to the subject.
    pub subject_token: u32,
}

/// The first token of `" {word}"`.
pub fn first_token(tok: &Tokenizer, word: &str) -> Result<u32> {
    tok.encode(&format!(" {word}"), false)?.first().copied().context("an empty answer")
}

impl Task {
    /// Facts whose answer's first token no other fact shares (with a different answer): those
    /// the last position can be scored on unambiguously with this tokenizer.
    pub fn unambiguous(&self, tok: &Tokenizer) -> Result<Vec<usize>> {
        let firsts: Vec<u32> = self.facts.iter().map(|f| first_token(tok, &f.answer)).collect::<Result<_>>()?;
        Ok((0..self.facts.len())
            .filter(|&i| (0..self.facts.len()).all(|j| j == i || firsts[j] != firsts[i] || self.facts[j].answer == self.facts[i].answer))
            .collect())
    }

    /// The prompt for fact `i` with template `t`, after `shots` demonstrations drawn from
    /// `pool` (other facts), deterministically per (i, t).
    pub fn prompt(&self, tok: &Tokenizer, i: usize, t: usize, shots: usize, pool: &[usize]) -> Result<RecallPrompt> {
        let template = &self.templates[t];
        let others: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&j| j != i && self.facts[j].subject != self.facts[i].subject)
            .collect();
        if others.len() < shots {
            bail!("{shots}-shot prompts need {shots} other facts, the task has {}", others.len());
        }
        let mut text = String::new();
        for s in 0..shots {
            let j = others[(i * 7 + t * 3 + s * 11) % others.len()];
            let demo = template.replace("{subject}", &self.facts[j].subject);
            text.push_str(&format!("{demo} {}.\n", self.facts[j].answer));
        }
        let (before, after) = template.split_once("{subject}").context("template without {subject}")?;
        text.push_str(before);
        let start = text.len();
        text.push_str(&self.facts[i].subject);
        let end = text.len();
        text.push_str(after);
        let (ids, offsets) = tok.encode_with_offsets(&text, true)?;
        let inside: Vec<usize> = (0..ids.len())
            .filter(|&k| offsets[k].0 < end && offsets[k].1 > start && offsets[k].1 > offsets[k].0)
            .collect();
        let (Some(&a), Some(&b)) = (inside.first(), inside.last()) else {
            bail!("cannot find the subject {:?} among the prompt's tokens", self.facts[i].subject);
        };
        Ok(RecallPrompt {
            ids,
            fact: i,
            template: t,
            subject: a..b + 1,
            answer_token: first_token(tok, &self.facts[i].answer)?,
            subject_token: first_token(tok, self.facts[i].subject.trim_start_matches("the "))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tasks_are_big_enough() {
        for name in BUILTIN {
            let t = builtin(name).unwrap();
            assert!(t.templates.len() >= 10, "{name}");
            assert!(t.facts.len() >= 30, "{name}");
            assert!(t.templates.iter().all(|s| s.matches("{subject}").count() == 1 && !s.ends_with(' ')));
        }
        assert!(builtin("nope").is_err());
    }
}
