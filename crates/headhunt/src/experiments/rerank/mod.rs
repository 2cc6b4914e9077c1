//! Documents ranked by the attention a question pays them: ICR (Chen et al., ICLR 2025) with every
//! head, QRRetriever (Zhang et al., EMNLP 2025) with the query-focused retrieval heads, and the
//! same rule with Wu's retrieval heads or random heads; BM25 as the lexical baseline.
//!
//! All documents go into one prompt, numbered, followed by the question. A document's score is
//! the attention the query's tokens pay its tokens, less the same with the content-free question
//! `N/A` (both from [`calibrated_attention`]: the documents are prefilled once, each question
//! continues from them, so any number of documents costs two passes over the question and one
//! over the documents), summed over the chosen heads, then over the document's tokens without the
//! low outliers (QRRetriever's rule, [`span_score`]).

pub mod study;

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use anyhow::{bail, Context, Result};
use headhunt_engine::{Model, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::experiments::cot;
use crate::experiments::qa::QaItem;
use crate::experiments::retrieval::niah::haystack::{Prose, Rng};
use crate::experiments::retrieval::niah::prompt::{tokens_covering, Frame};
use crate::experiments::retrieval::qrhead::{calibrated_attention, span_score, NULL_QUESTION};
use crate::metrics::rouge;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    pub id: String,
    pub text: String,
}

/// One query: `{question, documents: [{id, text}], gold: [ids]}` (gold may be empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankItem {
    pub question: String,
    pub documents: Vec<Doc>,
    #[serde(default)]
    pub gold: Vec<String>,
}

/// The prompt of one query, its content-free twin and each document's token positions.
pub struct RerankPrompt {
    pub ids: Vec<u32>,
    pub null: Vec<u32>,
    pub docs: Vec<Range<usize>>,
}

fn frame(tok: &Tokenizer, question: &str, chat: bool) -> Result<Frame> {
    let after = format!("\n\nWhich of the passages above help to answer this question?\nQuestion: {question}");
    Frame::around(tok, "Passages:\n\n", &after, "", chat)
}

/// The item's prompt: `[1] text`, `[2] text`, ... then the question.
pub fn prompt(tok: &Tokenizer, item: &RerankItem, chat: bool) -> Result<RerankPrompt> {
    if item.documents.is_empty() {
        bail!("the query {:?} has no documents", item.question);
    }
    let mut context = String::new();
    let mut spans = Vec::new();
    for (i, d) in item.documents.iter().enumerate() {
        if i > 0 {
            context.push_str("\n\n");
        }
        let start = context.len();
        context.push_str(&format!("[{}] {}", i + 1, d.text.trim()));
        spans.push(start..context.len());
    }
    let (tokens, offsets) = tok.encode_with_offsets(&context, false)?;
    let (real, null) = (frame(tok, &item.question, chat)?, frame(tok, NULL_QUESTION, chat)?);
    let at = real.context_start();
    let docs = spans
        .iter()
        .map(|s| match tokens_covering(&offsets, s) {
            Some(t) => Ok(at + t.start..at + t.end),
            None => bail!("a document of {:?} has no tokens", item.question),
        })
        .collect::<Result<_>>()?;
    Ok(RerankPrompt {
        ids: real.wrap(&tokens),
        null: null.wrap(&tokens),
        docs,
    })
}

/// Per document, the calibrated attention of `calibrated` (per head, per key) summed over
/// `heads` (indices `layer * n_heads + head`), then over the document's keys without the low
/// outliers.
pub fn doc_scores(calibrated: &[Vec<f64>], heads: &[usize], docs: &[Range<usize>]) -> Vec<f64> {
    let keys = calibrated.first().map_or(0, Vec::len);
    let mut summed = vec![0.0; keys];
    for &h in heads {
        summed.iter_mut().zip(&calibrated[h]).for_each(|(s, v)| *s += v);
    }
    docs.iter().map(|d| span_score(&summed, d)).collect()
}

/// The model's calibrated attention for one item, scored under each head set.
pub fn attention_scores(model: &Model, prompt: &RerankPrompt, head_sets: &[&[usize]]) -> Result<Vec<Vec<f64>>> {
    let (_, calibrated) = calibrated_attention(model, &prompt.ids, &prompt.null)?;
    Ok(head_sets.iter().map(|heads| doc_scores(&calibrated, heads, &prompt.docs)).collect())
}

/// Document indices from the best score to the worst (ties keep the documents' order).
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The share of the gold documents among the first `k` of a ranking (0 with no gold).
pub fn recall_at(ranking: &[usize], gold: &HashSet<usize>, k: usize) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    ranking.iter().take(k).filter(|d| gold.contains(d)).count() as f64 / gold.len() as f64
}

/// nDCG at `k` with binary relevance: the sum of `1 / log2(rank + 1)` over the gold documents
/// ranked within the first `k`, over the same sum for a ranking that puts them all first.
pub fn ndcg_at(ranking: &[usize], gold: &HashSet<usize>, k: usize) -> f64 {
    let gain = |rank: usize| 1.0 / ((rank + 1) as f64).log2();
    let dcg: f64 = (1..=k.min(ranking.len()))
        .filter(|&r| gold.contains(&ranking[r - 1]))
        .map(gain)
        .sum();
    let ideal: f64 = (1..=k.min(gold.len())).map(gain).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// Lucene's default English stop words, which Pyserini's BM25 leaves out.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of", "on", "or", "such",
    "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
];

/// Lower-cased, Porter-stemmed words without stop words (stemmed as ROUGE stems).
fn terms(text: &str) -> Vec<String> {
    rouge::tokenize(text)
        .into_iter()
        .filter(|t| !STOP_WORDS.contains(&t.as_str()))
        .collect()
}

/// BM25 (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009)
/// with Lucene's idf, `ln(1 + (N - df + 0.5) / (df + 0.5))`, and Pyserini's defaults k1 = 0.9,
/// b = 0.4, over the query's own documents as the collection:
/// `score(d) = sum over query terms t of idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))`.
pub fn bm25(question: &str, documents: &[&str]) -> Vec<f64> {
    const K1: f64 = 0.9;
    const B: f64 = 0.4;
    let docs: Vec<Vec<String>> = documents.iter().map(|d| terms(d)).collect();
    let n = docs.len() as f64;
    let avgdl = docs.iter().map(Vec::len).sum::<usize>() as f64 / n.max(1.0);
    let mut df: HashMap<&str, usize> = HashMap::new();
    for d in &docs {
        for t in d.iter().map(String::as_str).collect::<HashSet<_>>() {
            *df.entry(t).or_default() += 1;
        }
    }
    let query = terms(question);
    docs.iter()
        .map(|d| {
            let mut tf: HashMap<&str, usize> = HashMap::new();
            for t in d {
                *tf.entry(t.as_str()).or_default() += 1;
            }
            query
                .iter()
                .map(|t| {
                    let f = *tf.get(t.as_str()).unwrap_or(&0) as f64;
                    let df = *df.get(t.as_str()).unwrap_or(&0) as f64;
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * d.len() as f64 / avgdl.max(1e-9)))
                })
                .sum()
        })
        .collect()
}

/// Passages of about `words` words, cut at sentence ends.
pub fn passages(text: &str, words: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for w in text.split_whitespace() {
        current.push(w);
        if current.len() >= words && (w.ends_with('.') || w.ends_with('?') || w.ends_with('!')) {
            out.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

/// Words per passage of the built-in sets (about 130 tokens: 50 documents fit SmolLM2's 8K).
const PASSAGE_WORDS: usize = 90;

/// The built-in single-hop set at `n` documents per question: each QA question with the passage
/// of its context that holds the answer, among `n - 1` passages of the other contexts and of
/// generated prose, in a seeded order. Questions whose answer spans a passage cut are left out.
pub fn builtin_single(qa: &[QaItem], n: usize, seed: u64) -> Vec<RerankItem> {
    let pools: Vec<Vec<String>> = qa.iter().map(|q| passages(&q.context, PASSAGE_WORDS)).collect();
    let mut items = Vec::new();
    for (i, q) in qa.iter().enumerate() {
        let Some(gold) = pools[i]
            .iter()
            .find(|p| q.answers.iter().any(|a| p.to_lowercase().contains(&a.to_lowercase())))
        else {
            continue;
        };
        let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let others: Vec<&String> = pools.iter().enumerate().filter(|&(j, _)| j != i).flat_map(|(_, p)| p).collect();
        let distractors = fill(&others, n.saturating_sub(1), &mut rng);
        items.push(assemble(q.question.clone(), vec![gold.clone()], distractors, &mut rng));
    }
    items
}

/// The built-in two-hop set at `n` documents per question: look-ups "In which room is Tom's
/// coin?" whose two facts ("Tom's coin is in the white bag.", "The white bag is in the cellar.")
/// each sit in a passage of prose, among passages holding the other owners' facts and prose.
pub fn builtin_two_hop(questions: usize, n: usize, seed: u64) -> Vec<RerankItem> {
    let shape = cot::Shape {
        hops: 2,
        chains: 4,
        shuffled: false,
    };
    let mut rng = Rng(seed ^ 0x2_4809);
    let mut prose = Prose::new(seed);
    cot::problems(questions, shape, seed)
        .into_iter()
        .map(|p| {
            let asked: HashSet<String> = p.steps(p.subject()).split_inclusive(". ").map(|s| s.trim().to_owned()).collect();
            let mut embed = |fact: &str| {
                let (a, b) = (prose.take_chars(200), prose.take_chars(200));
                format!("{} {fact} {}", a.replace("\n\n", " "), b.replace("\n\n", " "))
            };
            let gold: Vec<String> = p.facts.iter().filter(|f| asked.contains(*f)).map(|f| embed(f)).collect();
            let mut distractors: Vec<String> = p.facts.iter().filter(|f| !asked.contains(*f)).map(|f| embed(f)).collect();
            while distractors.len() + gold.len() < n {
                distractors.push(prose.take_chars(450).replace("\n\n", " "));
            }
            distractors.truncate(n.saturating_sub(gold.len()));
            assemble(p.question.clone(), gold, distractors, &mut rng)
        })
        .collect()
}

/// `k` of `pool`, drawn without replacement (prose when the pool runs out).
fn fill(pool: &[&String], k: usize, rng: &mut Rng) -> Vec<String> {
    let mut order: Vec<usize> = (0..pool.len()).collect();
    for i in 0..order.len().min(k) {
        let j = i + rng.below(order.len() - i);
        order.swap(i, j);
    }
    let mut out: Vec<String> = order.iter().take(k).map(|&i| pool[i].clone()).collect();
    let mut prose = Prose::new(rng.next());
    while out.len() < k {
        out.push(prose.take_chars(450).replace("\n\n", " "));
    }
    out
}

/// Gold and distractor passages in a seeded order, with ids `d1`, `d2`, ...
fn assemble(question: String, gold: Vec<String>, distractors: Vec<String>, rng: &mut Rng) -> RerankItem {
    let mut all: Vec<(bool, String)> = gold
        .into_iter()
        .map(|g| (true, g))
        .chain(distractors.into_iter().map(|d| (false, d)))
        .collect();
    for i in (1..all.len()).rev() {
        let j = rng.below(i + 1);
        all.swap(i, j);
    }
    let documents: Vec<Doc> = all
        .iter()
        .enumerate()
        .map(|(i, (_, text))| Doc {
            id: format!("d{}", i + 1),
            text: text.clone(),
        })
        .collect();
    let gold = all
        .iter()
        .zip(&documents)
        .filter(|((g, _), _)| *g)
        .map(|(_, d)| d.id.clone())
        .collect();
    RerankItem { question, documents, gold }
}

/// Read a JSONL file of items, naming the line of any malformed one.
pub fn load_jsonl(path: &std::path::Path) -> Result<Vec<RerankItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let item: RerankItem = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected {{\"question\", \"documents\": [{{\"id\", \"text\"}}], \"gold\": [ids]}}",
                path.display(),
                i + 1
            )
        })?;
        let ids: HashSet<&str> = item.documents.iter().map(|d| d.id.as_str()).collect();
        if let Some(g) = item.gold.iter().find(|g| !ids.contains(g.as_str())) {
            bail!("{} line {}: gold id {g:?} is not one of the documents' ids", path.display(), i + 1);
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("{} holds no queries", path.display());
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_ndcg_on_written_rankings() {
        let gold: HashSet<usize> = [2, 5].into();
        let r = [2, 0, 1, 5, 3, 4];
        assert_eq!(recall_at(&r, &gold, 1), 0.5);
        assert_eq!(recall_at(&r, &gold, 4), 1.0);
        // DCG = 1/log2(2) + 1/log2(5); ideal = 1 + 1/log2(3).
        let want = (1.0 + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(&r, &gold, 10) - want).abs() < 1e-12);
        assert!((ndcg_at(&r, &gold, 3) - 1.0 / (1.0 + 1.0 / 3f64.log2())).abs() < 1e-12);
        assert_eq!(ndcg_at(&[0, 1], &HashSet::new(), 10), 0.0);
    }

    /// Three documents worked by hand: after stop words and stemming they hold 2, 4 and 3 terms
    /// ("dogs" -> "dog", "loudly" -> "loudli"), so avgdl = 3; "cat" is in two of them, "sat" in
    /// one: idf(cat) = ln(1 + 1.5/2.5), idf(sat) = ln(1 + 2.5/1.5).
    #[test]
    fn bm25_on_a_worked_example() {
        let docs = ["the cat sat", "a cat and a dog ran far", "dogs bark loudly"];
        let s = bm25("cat sat", &docs);
        let (k1, b, avgdl) = (0.9, 0.4, 3.0);
        let term = |idf: f64, dl: f64| idf * (k1 + 1.0) / (1.0 + k1 * (1.0 - b + b * dl / avgdl));
        let (cat, sat) = ((1.0f64 + 1.5 / 2.5).ln(), (1.0f64 + 2.5 / 1.5).ln());
        assert!((s[0] - (term(cat, 2.0) + term(sat, 2.0))).abs() < 1e-12, "{s:?}");
        assert!((s[1] - term(cat, 4.0)).abs() < 1e-12, "{s:?}");
        assert_eq!(s[2], 0.0);
        assert_eq!(ranking(&s), vec![0, 1, 2]);
    }

    #[test]
    fn built_in_sets_hold_their_gold_among_n() {
        let qa = crate::experiments::qa::builtin();
        for n in [10, 20, 50] {
            let items = builtin_single(&qa, n, 0);
            assert!(items.len() >= qa.len() - 4, "{} of {} questions kept", items.len(), qa.len());
            for item in &items {
                assert_eq!(item.documents.len(), n);
                assert_eq!(item.gold.len(), 1);
                let gold = item.documents.iter().find(|d| d.id == item.gold[0]).unwrap();
                let source = qa.iter().find(|q| q.question == item.question).unwrap();
                assert!(source.answers.iter().any(|a| gold.text.to_lowercase().contains(&a.to_lowercase())));
                // No distractor is a passage of the question's own context.
                for d in item.documents.iter().filter(|d| d.id != item.gold[0]) {
                    assert!(!source.context.contains(&d.text), "{:?}", item.question);
                }
            }
            for item in builtin_two_hop(8, n, 1) {
                assert_eq!((item.documents.len(), item.gold.len()), (n, 2), "{item:?}");
                let subject = item.question.trim_start_matches("In which room is ").trim_end_matches('?');
                let golds: Vec<&Doc> = item.documents.iter().filter(|d| item.gold.contains(&d.id)).collect();
                assert!(golds.iter().any(|d| d.text.contains(&format!("{subject} is in the"))), "{item:?}");
            }
        }
    }
}
