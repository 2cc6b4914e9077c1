//! `headhunt rerank`: rank documents by the attention a question pays them, with every head
//! (ICR), the retrieval heads, the QRHeads or random heads, against BM25.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::detect::default_out;
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::qa;
use crate::experiments::rerank::{self, RerankItem};
use crate::experiments::retrieval::masking::{check_scores_fit, top_heads};
use crate::experiments::retrieval::niah::grid::parse_values;
use crate::experiments::retrieval::niah::haystack::Rng;
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};
use crate::output::plot::{Figure, LinePlot, Series};
use crate::runner::shard::{run_folder, ShardArgs};
use crate::runner::store::{write_atomic, Keyed};
use crate::runner::trials::{run_pending, Status};

/// Rank each question's documents by the attention its tokens pay them, less that of the
/// content-free question "N/A" (ICR, Chen et al. 2025; QRRetriever, Zhang et al. 2025): one
/// prompt holds every document, and the documents are computed once for both questions. Ranked
/// with every head (ICR), the top-K heads of --scores (Wu's retrieval heads), the top-K of
/// --qr-scores (QRHeads, from `detect --detector qrhead`), K random heads, and BM25 (k1 0.9,
/// b 0.4). Scored by Recall@1, Recall@5 and nDCG@10 against the gold ids.
///
/// The built-in set: every built-in QA question with the passage of its document that holds
/// the answer among --docs passages of the other documents and of generated prose; with
/// --two-hop, look-ups whose two facts lie in two passages among other owners' facts. --data
/// reads JSONL of {"question", "documents": [{"id", "text"}], "gold": [ids]}. Writes
/// trials.jsonl (resumable, --shard), rerank.json and rerank.png/.svg to --out.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Queries as JSONL (default: the built-in set).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Documents per question in the built-in set: a list or MIN:MAX:COUNT.
    #[arg(long, default_value = "10,20,50")]
    pub docs: String,
    /// The built-in two-hop set instead of the single-hop one.
    #[arg(long)]
    pub two_hop: bool,
    /// Questions per size (the first N; default: all, 32 two-hop questions).
    #[arg(long)]
    pub questions: Option<usize>,
    /// Wu retrieval scores (head_scores.json or its run folder): rank with their top-K heads.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// QRHead scores (`detect --detector qrhead`): rank with their top-K heads.
    #[arg(long)]
    pub qr_scores: Option<PathBuf>,
    /// K, the heads of each head set [default: --scores' heads above 0.1, else 16].
    #[arg(long)]
    pub heads: Option<usize>,
    /// Seed of the built-in set and of the random heads.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send prompts as plain text even when the model has a chat template.
    #[arg(long)]
    pub no_chat: bool,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Output folder. [default: runs/rerank-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

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
struct Query {
    key: String,
    item: RerankItem,
}

impl Keyed for Query {
    fn key(&self) -> String {
        self.key.clone()
    }
}

/// A ranking method and its heads (`layer * n_heads + head`; none for BM25).
struct Method {
    name: String,
    heads: Option<Vec<usize>>,
}

fn methods(scores: Option<&HeadScores>, qr: Option<&HeadScores>, k: usize, n_layers: usize, n_heads: usize, seed: u64) -> Vec<Method> {
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

pub fn run(args: Args) -> Result<()> {
    let shard = args.shard.resolve()?;
    let model = args.model.load()?;
    let c = &model.config;
    let tok = model.tokenizer()?;
    let load = |p: &Option<PathBuf>| -> Result<Option<HeadScores>> {
        let s = p.as_ref().map(|p| HeadScores::load(p)).transpose()?;
        if let Some(s) = &s {
            check_scores_fit(s, &model)?;
        }
        Ok(s)
    };
    let (scores, qr) = (load(&args.scores)?, load(&args.qr_scores)?);
    let k = args.heads.unwrap_or_else(|| {
        scores
            .as_ref()
            .map_or(16, |s| s.means().iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count().max(1))
    });
    if k == 0 || k > c.n_layers * c.n_heads {
        bail!("--heads must be between 1 and the model's {} heads", c.n_layers * c.n_heads);
    }
    let methods = methods(scores.as_ref(), qr.as_ref(), k, c.n_layers, c.n_heads, args.seed);

    let mut queries = Vec::new();
    if let Some(path) = &args.data {
        for (i, item) in rerank::load_jsonl(path)?.into_iter().enumerate() {
            queries.push(Query {
                key: format!("q{i}"),
                item,
            });
        }
    } else {
        let sizes = parse_values(&args.docs, "--docs")?;
        for n in sizes.into_iter().map(|v| v as usize) {
            if n < 2 {
                bail!("--docs: at least 2 documents per question");
            }
            let items = if args.two_hop {
                rerank::builtin_two_hop(args.questions.unwrap_or(32), n, args.seed)
            } else {
                rerank::builtin_single(&qa::builtin(), n, args.seed)
            };
            for (i, item) in items.into_iter().take(args.questions.unwrap_or(usize::MAX)).enumerate() {
                queries.push(Query {
                    key: format!("n{n}-q{i}"),
                    item,
                });
            }
        }
    }
    let name = model_name(&model, &args.model.model);
    let folder = if args.two_hop { "rerank-two-hop" } else { "rerank" };
    let out = run_folder(&args.out.clone().unwrap_or_else(|| default_out(folder, &args.model.model)), shard);
    let settings = json!({
        "command": "rerank",
        "model": args.model.model,
        "model_name": name,
        "data": args.data.as_ref().map_or(if args.two_hop { "built-in two-hop" } else { "built-in" }.to_owned(), |p| p.display().to_string()),
        "docs": args.docs,
        "seed": args.seed,
        "heads": k,
        "methods": methods.iter().map(|m| json!({"name": m.name, "heads": m.heads.as_ref().map(|h| h.iter().map(|i| format!("{}-{}", i / c.n_heads, i % c.n_heads)).collect::<Vec<_>>())})).collect::<Vec<_>>(),
        "chat": !args.no_chat,
    });
    super::record_provenance(&out, &model)?;
    let mine: Vec<Query> = queries
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| s.takes(*i)))
        .map(|(_, q)| q)
        .collect();
    let head_sets: Vec<&[usize]> = methods.iter().filter_map(|m| m.heads.as_deref()).collect();
    let records = run_pending(&out, &settings, &mine, shard, "queries", |q| {
        let prompt = rerank::prompt(tok, &q.item, !args.no_chat)?;
        if prompt.ids.len() + 8 > c.context_length {
            bail!(
                "{}: the prompt has {} tokens, more than the model's context of {}",
                q.key,
                prompt.ids.len(),
                c.context_length
            );
        }
        let start = Instant::now();
        let mut by_heads = rerank::attention_scores(&model, &prompt, &head_sets)?.into_iter();
        let seconds = start.elapsed().as_secs_f64();
        let texts: Vec<&str> = q.item.documents.iter().map(|d| d.text.as_str()).collect();
        let rankings = methods
            .iter()
            .map(|m| {
                let s = match m.heads {
                    None => rerank::bm25(&q.item.question, &texts),
                    Some(_) => by_heads.next().expect("a score per head set"),
                };
                (m.name.clone(), rerank::ranking(&s))
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
    })?;
    let summary = summarize(&records, &methods);
    print!("{}", table(&name, k, &summary));
    write_atomic(
        &out.join("rerank.json"),
        serde_json::to_string_pretty(&json!({"model": name, "heads": k, "settings": settings, "results": summary}))?,
    )?;
    plot(&out, &name, &summary, &methods)?;
    super::finish_with_report(&out)
}

/// One method at one size, averaged over its queries with gold documents.
#[derive(Debug, Clone, Serialize)]
struct Row {
    docs: usize,
    method: String,
    queries: usize,
    recall_at_1: f64,
    recall_at_5: f64,
    ndcg_at_10: f64,
    /// Mean seconds of the model's two passes per query (none for BM25), and prompt tokens.
    seconds: Option<f64>,
    tokens: f64,
}

fn summarize(records: &[RerankRecord], methods: &[Method]) -> Vec<Row> {
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
                recall_at_1: mean(&|r, g| rerank::recall_at(r, g, 1)),
                recall_at_5: mean(&|r, g| rerank::recall_at(r, g, 5)),
                ndcg_at_10: mean(&|r, g| rerank::ndcg_at(r, g, 10)),
                seconds: m.heads.as_ref().map(|_| mine.iter().map(|r| r.seconds).sum::<f64>() / q),
                tokens: mine.iter().map(|r| r.prompt_tokens as f64).sum::<f64>() / q,
            });
        }
    }
    rows
}

fn table(model: &str, k: usize, rows: &[Row]) -> String {
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

fn plot(dir: &std::path::Path, model: &str, rows: &[Row], methods: &[Method]) -> Result<()> {
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
