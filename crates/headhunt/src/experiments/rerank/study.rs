//! A re-ranking study: the ranking methods (BM25 and head sets), the query sets, one query
//! ranked by each method, and the summary over queries (Recall@1/@5, nDCG@10), its table and
//! plot. `headhunt rerank` runs it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use headhunt_engine::Model;
use serde::{Deserialize, Serialize};

use super::RerankItem;
use crate::experiments::qa;
use crate::experiments::retrieval::masking::top_heads;
use crate::experiments::retrieval::niah::grid::parse_values;
use crate::experiments::retrieval::niah::haystack::Rng;
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::{Figure, LinePlot, Series};
use crate::runner::store::Keyed;
use crate::runner::trials::Status;

/// One query at one size: each method's ranking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankRecord {
    pub key: String,
    pub docs: usize,
    pub question: String,
    /// Gold documents' indices.
    pub gold: Vec<usize>,
    /// Method name -> document indices, best first.
    pub rankings: BTreeMap<String, Vec<usize>>,
    pub prompt_tokens: usize,
    /// The model's two passes (documents and question, then the content-free question).
    pub seconds: f64,
}

impl Keyed for RerankRecord {
    fn key(&self) -> String {
        self.key.clone()
    }
}

impl Status for RerankRecord {
    fn status(&self) -> String {
        format!("{} docs, {} tokens", self.docs, self.prompt_tokens)
    }
}

#[derive(Debug, Clone)]
pub struct Query {
    pub key: String,
    pub item: RerankItem,
}

impl Keyed for Query {
    fn key(&self) -> String {
        self.key.clone()
    }
}

/// A ranking method and its heads (`layer * n_heads + head`; none for BM25).
pub struct Method {
    pub name: String,
    pub heads: Option<Vec<usize>>,
}

/// BM25, every head (ICR), the top-K of each score file, and K random heads (seeded).
pub fn methods(scores: Option<&HeadScores>, qr: Option<&HeadScores>, k: usize, n_layers: usize, n_heads: usize, seed: u64) -> Vec<Method> {
    let index = |hs: Vec<(usize, usize)>| hs.into_iter().map(|(l, h)| l * n_heads + h).collect();
    let mut out = vec![
        Method {
            name: "bm25".into(),
            heads: None,
        },
        Method {
            name: "icr (all heads)".into(),
            heads: Some((0..n_layers * n_heads).collect()),
        },
    ];
    if let Some(s) = scores {
        out.push(Method {
            name: format!("retrieval heads (top {k})"),
            heads: Some(index(top_heads(s, k))),
        });
    }
    if let Some(s) = qr {
        out.push(Method {
            name: format!("qrheads (top {k})"),
            heads: Some(index(top_heads(s, k))),
        });
    }
    let mut rng = Rng(seed ^ 0x5EED_4EAD);
    let mut all: Vec<usize> = (0..n_layers * n_heads).collect();
    for i in 0..k.min(all.len()) {
        let j = i + rng.below(all.len() - i);
        all.swap(i, j);
    }
    all.truncate(k);
    out.push(Method {
        name: format!("random {k} heads"),
        heads: Some(all),
    });
    out
}

/// Where the queries come from: a JSONL file, or the built-in sets at each size.
pub struct QuerySet<'a> {
    pub data: Option<&'a Path>,
    /// Documents per question in the built-in set: a list or MIN:MAX:COUNT.
    pub docs: &'a str,
    pub two_hop: bool,
    pub questions: Option<usize>,
    pub seed: u64,
}

impl QuerySet<'_> {
    pub fn queries(&self) -> Result<Vec<Query>> {
        let mut queries = Vec::new();
        if let Some(path) = self.data {
            for (i, item) in super::load_jsonl(path)?.into_iter().enumerate() {
                queries.push(Query {
                    key: format!("q{i}"),
                    item,
                });
            }
            return Ok(queries);
        }
        for n in parse_values(self.docs, "--docs")?.into_iter().map(|v| v as usize) {
            if n < 2 {
                bail!("--docs: at least 2 documents per question");
            }
            let items = if self.two_hop {
                super::builtin_two_hop(self.questions.unwrap_or(32), n, self.seed)
            } else {
                super::builtin_single(&qa::builtin(), n, self.seed)
            };
            for (i, item) in items.into_iter().take(self.questions.unwrap_or(usize::MAX)).enumerate() {
                queries.push(Query {
                    key: format!("n{n}-q{i}"),
                    item,
                });
            }
        }
        Ok(queries)
    }
}

/// One query ranked by every method: the model's two passes score the documents for every head
/// set at once.
pub fn rank_query(model: &Model, q: &Query, methods: &[Method], chat: bool) -> Result<RerankRecord> {
    let c = &model.config;
    let prompt = super::prompt(model.tokenizer()?, &q.item, chat)?;
    if prompt.ids.len() + 8 > c.context_length {
        bail!(
            "{}: the prompt has {} tokens, more than the model's context of {}",
            q.key,
            prompt.ids.len(),
            c.context_length
        );
    }
    let head_sets: Vec<&[usize]> = methods.iter().filter_map(|m| m.heads.as_deref()).collect();
    let start = Instant::now();
    let mut by_heads = super::attention_scores(model, &prompt, &head_sets)?.into_iter();
    let seconds = start.elapsed().as_secs_f64();
    let texts: Vec<&str> = q.item.documents.iter().map(|d| d.text.as_str()).collect();
    let rankings = methods
        .iter()
        .map(|m| {
            let s = match m.heads {
                None => super::bm25(&q.item.question, &texts),
                Some(_) => by_heads.next().expect("a score per head set"),
            };
            (m.name.clone(), super::ranking(&s))
        })
        .collect();
    Ok(RerankRecord {
        key: q.key.clone(),
        docs: q.item.documents.len(),
        question: q.item.question.clone(),
        gold: q
            .item
            .documents
            .iter()
            .enumerate()
            .filter(|(_, d)| q.item.gold.contains(&d.id))
            .map(|(i, _)| i)
            .collect(),
        rankings,
        prompt_tokens: prompt.ids.len(),
        seconds,
    })
}

/// One method at one size, averaged over its queries with gold documents.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub docs: usize,
    pub method: String,
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub ndcg_at_10: f64,
    /// Mean seconds of the model's two passes per query (none for BM25), and prompt tokens.
    pub seconds: Option<f64>,
    pub tokens: f64,
}

pub fn summarize(records: &[RerankRecord], methods: &[Method]) -> Vec<Row> {
    let sizes: std::collections::BTreeSet<usize> = records.iter().map(|r| r.docs).collect();
    let mut rows = Vec::new();
    for n in sizes {
        let mine: Vec<&RerankRecord> = records.iter().filter(|r| r.docs == n && !r.gold.is_empty()).collect();
        let q = mine.len().max(1) as f64;
        for m in methods {
            let mean = |f: &dyn Fn(&[usize], &HashSet<usize>) -> f64| {
                100.0
                    * mine
                        .iter()
                        .map(|r| f(&r.rankings[&m.name], &r.gold.iter().copied().collect()))
                        .sum::<f64>()
                    / q
            };
            rows.push(Row {
                docs: n,
                method: m.name.clone(),
                queries: mine.len(),
                recall_at_1: mean(&|r, g| super::recall_at(r, g, 1)),
                recall_at_5: mean(&|r, g| super::recall_at(r, g, 5)),
                ndcg_at_10: mean(&|r, g| super::ndcg_at(r, g, 10)),
                seconds: m.heads.as_ref().map(|_| mine.iter().map(|r| r.seconds).sum::<f64>() / q),
                tokens: mine.iter().map(|r| r.prompt_tokens as f64).sum::<f64>() / q,
            });
        }
    }
    rows
}

/// The summary as a text table.
pub fn table(model: &str, k: usize, rows: &[Row]) -> String {
    let mut t = format!(
        "{model}: re-ranking by calibrated attention (head sets of {k})\n{:>5}  {:<26} {:>7} {:>9} {:>9} {:>8} {:>12}\n",
        "docs", "method", "queries", "Recall@1", "Recall@5", "nDCG@10", "s per query"
    );
    for r in rows {
        t.push_str(&format!(
            "{:>5}  {:<26} {:>7} {:>9.1} {:>9.1} {:>8.1} {:>12}\n",
            r.docs,
            r.method,
            r.queries,
            r.recall_at_1,
            r.recall_at_5,
            r.ndcg_at_10,
            r.seconds.map_or("-".to_owned(), |s| format!("{s:.2}"))
        ));
    }
    t
}

/// nDCG@10 against documents per question, one line per method.
pub fn plot(dir: &Path, model: &str, rows: &[Row], methods: &[Method]) -> Result<()> {
    let series = methods
        .iter()
        .map(|m| Series {
            name: m.name.clone(),
            points: rows
                .iter()
                .filter(|r| r.method == m.name)
                .map(|r| (r.docs as f64, r.ndcg_at_10))
                .collect(),
            errors: None,
        })
        .collect();
    LinePlot {
        title: format!("{model}: nDCG@10 against documents per question"),
        x_label: "documents".into(),
        y_label: "nDCG@10".into(),
        series,
        y_range: Some((0.0, 100.0)),
    }
    .save(&dir.join("rerank"))?;
    Ok(())
}
