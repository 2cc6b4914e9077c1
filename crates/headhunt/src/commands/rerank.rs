//! `headhunt rerank`: rank documents by the attention a question pays them, with every head
//! (ICR), the retrieval heads, the QRHeads or random heads, against BM25.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

use super::args::ShardArgs;
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::rerank::study::{self, Query, QuerySet};
use crate::experiments::retrieval::masking::check_scores_fit;
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::trials::run_pending;

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

pub fn run(args: Args) -> Result<()> {
    let shard = args.shard.resolve()?;
    let model = args.model.load()?;
    let c = &model.config;
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
    let methods = study::methods(scores.as_ref(), qr.as_ref(), k, c.n_layers, c.n_heads, args.seed);
    let queries = QuerySet {
        data: args.data.as_deref(),
        docs: &args.docs,
        two_hop: args.two_hop,
        questions: args.questions,
        seed: args.seed,
    }
    .queries()?;
    let name = model_name(&model, &args.model.model);
    let folder = if args.two_hop { "rerank-two-hop" } else { "rerank" };
    let out = run_folder(&args.out.clone().unwrap_or_else(|| args.model.default_out(folder)), shard);
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
    let records = run_pending(&out, &settings, &mine, shard, "queries", |q| {
        study::rank_query(&model, q, &methods, !args.no_chat)
    })?;
    let summary = study::summarize(&records, &methods);
    print!("{}", study::table(&name, k, &summary));
    write_atomic(
        &out.join("rerank.json"),
        serde_json::to_string_pretty(&json!({"model": name, "heads": k, "settings": settings, "results": summary}))?,
    )?;
    study::plot(&out, &name, &summary, &methods)?;
    super::finish_with_report(&out)
}
