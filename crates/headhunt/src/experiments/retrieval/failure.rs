//! How a needle-in-a-haystack answer fails, and where the heads looked while it did.
//!
//! * **complete**: ROUGE-1 recall of at least 90;
//! * **incomplete**: below that, but the answer contains at least one content word of the
//!   needle's answer (part of the needle was retrieved);
//! * **hallucination**: no content word of the answer came from the needle.
//!
//! The evidence is where the strongest retrieval heads' attention argmax fell over the decoding
//! steps: on the needle, on the first tokens of the prompt (the attention sink), or elsewhere.

use serde::{Deserialize, Serialize};

use crate::experiments::retrieval::niah::trial::TrialRecord;
use crate::metrics::rouge::{rouge1_recall, tokenize};

/// ROUGE-1 recall (0-100) at which an answer counts as complete.
pub const COMPLETE_ROUGE: f64 = 90.0;
/// Prompt positions counted as the "first tokens" (the attention sink).
pub const FIRST_TOKENS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerClass {
    Complete,
    Incomplete,
    Hallucination,
}

impl AnswerClass {
    pub const ALL: [AnswerClass; 3] = [AnswerClass::Complete, AnswerClass::Incomplete, AnswerClass::Hallucination];

    pub fn name(self) -> &'static str {
        match self {
            AnswerClass::Complete => "complete",
            AnswerClass::Incomplete => "incomplete",
            AnswerClass::Hallucination => "hallucination",
        }
    }
}

/// Words too common to show that an answer came from the needle.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "at", "and", "or", "is", "are", "was", "were", "be", "been", "for", "with", "by", "from",
    "as", "it", "its", "this", "that", "these", "those", "he", "she", "they", "his", "her", "their", "there", "what", "which", "who",
    "when", "where", "how", "do", "doe", "did", "not", "no", "but", "if", "so", "than", "then", "into", "over", "while", "i", "you",
];

fn content_words(text: &str) -> Vec<String> {
    tokenize(text).into_iter().filter(|t| !STOPWORDS.contains(&t.as_str())).collect()
}

/// Classify an answer against the needle's answer words.
pub fn classify(real_needle: &str, answer: &str) -> AnswerClass {
    if 100.0 * rouge1_recall(real_needle, answer) >= COMPLETE_ROUGE {
        return AnswerClass::Complete;
    }
    let said = content_words(answer);
    if content_words(real_needle).iter().any(|w| said.contains(w)) {
        AnswerClass::Incomplete
    } else {
        AnswerClass::Hallucination
    }
}

/// Shares of (head, step) attention argmaxes by where they fell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub needle: f64,
    pub first_tokens: f64,
    pub elsewhere: f64,
}

/// Where the given heads (flat `layer * n_heads + head` indices) looked while the answer was
/// generated.
pub fn evidence(record: &TrialRecord, heads: &[usize]) -> Evidence {
    let (mut needle, mut first, mut other) = (0usize, 0usize, 0usize);
    let span = record.needle_span[0]..record.needle_span[1];
    for step in &record.argmax {
        for &h in heads {
            let Some(&j) = step.get(h) else { continue };
            let j = j as usize;
            if span.contains(&j) {
                needle += 1;
            } else if j < FIRST_TOKENS {
                first += 1;
            } else {
                other += 1;
            }
        }
    }
    let n = (needle + first + other).max(1) as f64;
    Evidence {
        needle: needle as f64 / n,
        first_tokens: first as f64 / n,
        elsewhere: other as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::retrieval::niah::trial::TrialSpec;

    #[test]
    fn answers_are_classified() {
        let real = "the reed marsh behind the old salt mill at dawn";
        assert_eq!(
            classify(real, "The reed marsh behind the old salt mill at dawn."),
            AnswerClass::Complete
        );
        assert_eq!(
            classify(real, "the reed marshes behind the old salt mill at dawn"),
            AnswerClass::Complete
        );
        assert_eq!(classify(real, "The reed marsh."), AnswerClass::Incomplete);
        assert_eq!(classify(real, "behind the mill"), AnswerClass::Incomplete);
        // Shares only stopwords with the needle: not retrieved from it.
        assert_eq!(
            classify(real, "The best place is the sheep pens at Crale."),
            AnswerClass::Hallucination
        );
        assert_eq!(classify("4721 9036", "The code is 4721."), AnswerClass::Incomplete);
        assert_eq!(classify("4721 9036", "I do not know."), AnswerClass::Hallucination);
        assert_eq!(classify("Elspeth Varley", ""), AnswerClass::Hallucination);
    }

    #[test]
    fn evidence_counts_where_heads_looked() {
        let record = TrialRecord {
            spec: TrialSpec {
                needle: 0,
                length: 100,
                depth: 50.0,
            },
            actual_depth: 50.0,
            prompt_tokens: 120,
            needle_span: [50, 60],
            answer_span: [52, 58],
            answer: String::new(),
            generated: vec![1, 2],
            rouge1: 0.0,
            scores: vec![0.0; 3],
            scores_per_step: vec![0.0; 3],
            // Two steps, three heads: head 0 on the needle twice, head 2 on the sink then
            // elsewhere; head 1 is not asked about.
            argmax: vec![vec![55, 0, 1], vec![50, 70, 80]],
            experts: Vec::new(),
            seconds: 0.0,
            kv_bytes: 0,
        };
        let e = evidence(&record, &[0, 2]);
        assert_eq!((e.needle, e.first_tokens, e.elsewhere), (0.5, 0.25, 0.25));
    }
}
