//! Extractive question answering: a long context, a question whose answer is a span of it, and
//! token F1 with SQuAD's normalisation (lower case, no punctuation, no articles).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::experiments::retrieval::niah::haystack::Prose;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaItem {
    pub context: String,
    pub question: String,
    pub answers: Vec<String>,
}

/// SQuAD's answer normalisation.
pub fn normalize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

/// Token F1 of a prediction against one gold answer.
pub fn f1(prediction: &str, gold: &str) -> f64 {
    let (p, g) = (normalize(prediction), normalize(gold));
    if p.is_empty() || g.is_empty() {
        return if p == g { 1.0 } else { 0.0 };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str()).filter(|c| **c > 0) {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let (precision, recall) = (same as f64 / p.len() as f64, same as f64 / g.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// The best F1 over the gold answers.
pub fn best_f1(prediction: &str, answers: &[String]) -> f64 {
    answers.iter().map(|a| f1(prediction, a)).fold(0.0, f64::max)
}

pub fn exact_match(prediction: &str, answers: &[String]) -> bool {
    answers.iter().any(|a| normalize(a) == normalize(prediction))
}

pub fn load_jsonl(path: &Path) -> Result<Vec<QaItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: QaItem = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected {{\"context\", \"question\", \"answers\": [...]}}",
                path.display(),
                i + 1
            )
        })?;
        if item.answers.is_empty() || item.context.trim().is_empty() || item.question.trim().is_empty() {
            bail!("{}:{}: context, question and at least one answer are needed", path.display(), i + 1);
        }
        out.push(item);
    }
    if out.is_empty() {
        bail!("{}: no items", path.display());
    }
    Ok(out)
}

/// Facts written for headhunt about places and people that do not exist, so no model knows
/// them: (fact, question, answers).
const FACTS: &[(&str, &str, &[&str])] = &[
    (
        "The Harlow Trust's seed vault is guarded by a retired beekeeper called Osgood Finch.",
        "Who guards the Harlow Trust's seed vault?",
        &["Osgood Finch", "a retired beekeeper called Osgood Finch"],
    ),
    (
        "The village of Mardle Cross holds its lantern parade on the ninth of March.",
        "When does the village of Mardle Cross hold its lantern parade?",
        &["the ninth of March", "9 March"],
    ),
    (
        "The tallest chimney at the Brenmoor copper works measures 74 metres.",
        "How tall is the tallest chimney at the Brenmoor copper works?",
        &["74 metres", "74 meters"],
    ),
    (
        "The ferry between Oxley and Tarn Holm carries exactly eleven cars on each crossing.",
        "How many cars does the ferry between Oxley and Tarn Holm carry on each crossing?",
        &["eleven", "eleven cars", "11"],
    ),
    (
        "The official flower of the Pellam valley is the marsh violet.",
        "What is the official flower of the Pellam valley?",
        &["the marsh violet"],
    ),
    (
        "Captain Imogen Slade named her schooner the Grey Wren after her mother's favourite bird.",
        "What did Captain Imogen Slade name her schooner?",
        &["the Grey Wren"],
    ),
    (
        "The Corvell Library keeps its rarest atlas in a cedar cabinet on the third floor.",
        "Where does the Corvell Library keep its rarest atlas?",
        &["in a cedar cabinet on the third floor", "a cedar cabinet"],
    ),
    (
        "The blacksmith Aldous Penrye charges four shillings to shoe a carthorse.",
        "How much does the blacksmith Aldous Penrye charge to shoe a carthorse?",
        &["four shillings"],
    ),
    (
        "The Wenlow choir rehearses every Thursday in the old malt house.",
        "Where does the Wenlow choir rehearse?",
        &["in the old malt house"],
    ),
    (
        "The first telegraph line to Saltmere was completed in 1868.",
        "When was the first telegraph line to Saltmere completed?",
        &["1868", "in 1868"],
    ),
    (
        "Professor Ruth Calloway found the nesting site of the amber plover on Skerrin Island.",
        "Where did Professor Ruth Calloway find the nesting site of the amber plover?",
        &["on Skerrin Island"],
    ),
    (
        "The waterwheel of the Duncombe mill is painted dark green with yellow spokes.",
        "What colours is the waterwheel of the Duncombe mill painted?",
        &["dark green with yellow spokes", "dark green and yellow"],
    ),
    (
        "Tickets for the Farrowby summer regatta cost three pounds for adults.",
        "How much do adult tickets for the Farrowby summer regatta cost?",
        &["three pounds", "3 pounds"],
    ),
    (
        "The mayor of Quillon keeps a tame jackdaw called Pepper.",
        "What is the name of the mayor of Quillon's tame jackdaw?",
        &["Pepper"],
    ),
    (
        "The old toll road to Haverscombe was closed after a landslide in 1923.",
        "Why was the old toll road to Haverscombe closed?",
        &["after a landslide in 1923", "a landslide"],
    ),
    (
        "The Brightwater orchard grows a rare pear variety known as Lady Anselm.",
        "What rare pear variety does the Brightwater orchard grow?",
        &["Lady Anselm"],
    ),
    (
        "The night train from Carrick Junction leaves at twenty past eleven.",
        "When does the night train from Carrick Junction leave?",
        &["at twenty past eleven", "11:20"],
    ),
    (
        "The Ellery sisters sold their bakery to a young couple from Norwich.",
        "To whom did the Ellery sisters sell their bakery?",
        &["a young couple from Norwich"],
    ),
    (
        "The stained-glass window in St Bride's chapel shows a fox carrying a lantern.",
        "What does the stained-glass window in St Bride's chapel show?",
        &["a fox carrying a lantern"],
    ),
    (
        "Dr. Halvard Moss keeps his field notes in a waterproof tin shaped like a tortoise.",
        "Where does Dr. Halvard Moss keep his field notes?",
        &["in a waterproof tin shaped like a tortoise", "a waterproof tin"],
    ),
    (
        "The pavilion of the Ashby cricket club was rebuilt with timber from a wrecked brig.",
        "What was the pavilion of the Ashby cricket club rebuilt with?",
        &["timber from a wrecked brig"],
    ),
    (
        "The annual ploughing match at Kettleby is judged by the oldest farmer in the parish.",
        "Who judges the annual ploughing match at Kettleby?",
        &["the oldest farmer in the parish"],
    ),
    (
        "The well at Nether Stowe was sealed after a goat fell into it.",
        "Why was the well at Nether Stowe sealed?",
        &["after a goat fell into it", "a goat fell into it"],
    ),
    (
        "The harbour master's logbook for 1901 records 214 passing ships.",
        "How many passing ships does the harbour master's logbook for 1901 record?",
        &["214", "214 passing ships"],
    ),
    (
        "The Mossgate quarry produces a blue slate prized by roofers in Bristol.",
        "Which roofers prize the blue slate from the Mossgate quarry?",
        &["roofers in Bristol", "Bristol"],
    ),
    (
        "The weaver Constance Drury invented a loom that works with a single pedal.",
        "What did the weaver Constance Drury invent?",
        &["a loom that works with a single pedal", "a loom"],
    ),
    (
        "The toll on the Fenwick bridge was abolished on the first of June 1897.",
        "When was the toll on the Fenwick bridge abolished?",
        &["on the first of June 1897", "1 June 1897"],
    ),
    (
        "The village school at Pennock has exactly thirty-seven pupils this term.",
        "How many pupils does the village school at Pennock have this term?",
        &["thirty-seven", "37"],
    ),
    (
        "The hermit of Grisdale Fell lived on nettle soup and barley bread.",
        "What did the hermit of Grisdale Fell live on?",
        &["nettle soup and barley bread"],
    ),
    (
        "The Carnaby Arms is famous for a pie made with rabbit and prunes.",
        "What is the Carnaby Arms famous for?",
        &["a pie made with rabbit and prunes", "rabbit and prune pie"],
    ),
    (
        "The surveyor Matthias Krell mapped the marshes with a compass borrowed from a bishop.",
        "From whom did the surveyor Matthias Krell borrow a compass?",
        &["a bishop", "from a bishop"],
    ),
    (
        "The clock on the Hexley town hall runs exactly six minutes fast.",
        "How fast does the clock on the Hexley town hall run?",
        &["exactly six minutes fast", "six minutes fast"],
    ),
];

/// Characters of prose around each fact: enough for more than 1,000 tokens with any of
/// headhunt's tokenizers.
const CONTEXT_CHARS: usize = 7_000;

/// The built-in set: each fact hidden at its own depth in its own stretch of generated prose.
pub fn builtin() -> Vec<QaItem> {
    FACTS
        .iter()
        .enumerate()
        .map(|(i, (fact, question, answers))| {
            let prose = Prose::new(10_000 + i as u64).take_chars(CONTEXT_CHARS);
            let paragraphs: Vec<&str> = prose.split("\n\n").collect();
            let at = (paragraphs.len() * ((i * 37) % 100)) / 100;
            let mut parts: Vec<String> = paragraphs.iter().map(|p| p.to_string()).collect();
            parts[at] = format!("{} {fact}", parts[at]);
            QaItem {
                context: parts.join("\n\n"),
                question: question.to_string(),
                answers: answers.iter().map(|a| a.to_string()).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_f1_on_hand_made_cases() {
        assert_eq!(f1("The marsh violet", "the marsh violet"), 1.0);
        assert_eq!(f1("a marsh violet.", "The Marsh Violet"), 1.0);
        assert_eq!(f1("violet", "the marsh violet"), 2.0 * (1.0 * 0.5) / 1.5);
        assert_eq!(f1("Pepper the jackdaw", "Pepper"), 2.0 * (0.5 * 1.0) / 1.5);
        assert_eq!(f1("nothing alike", "Pepper"), 0.0);
        assert_eq!(f1("", "Pepper"), 0.0);
        assert_eq!(f1("74 74", "74"), 2.0 * (0.5 * 1.0) / 1.5);
        assert_eq!(best_f1("11", &["eleven".into(), "11".into()]), 1.0);
        assert!(exact_match("The Grey Wren!", &["the Grey Wren".into()]));
        assert!(!exact_match("Grey", &["the Grey Wren".into()]));
    }

    #[test]
    fn builtin_set_is_long_and_answerable_only_from_context() {
        let items = builtin();
        assert!(items.len() >= 30);
        for it in &items {
            assert!(it.context.len() >= CONTEXT_CHARS);
            assert!(
                it.answers.iter().any(|a| it.context.contains(a.as_str())),
                "answer not in context: {:?}",
                it.answers
            );
        }
    }
}
