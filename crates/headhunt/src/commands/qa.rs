//! `headhunt qa`: extractive question answering with and without masked heads.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args::{MaskSweepArgs, ShardArgs};
use super::niah::model_name;
use super::{Decode, DecodeArgs, ModelArg};
use crate::experiments::kv::select::{compressed_answer, kv_prior, PolicyName, Snap};
use crate::experiments::qa::{best_f1, builtin, exact_match, load_jsonl, QaItem};
use crate::experiments::retrieval::masking::Head;
use crate::experiments::retrieval::niah::prompt::Frame;
use crate::experiments::retrieval::niah::trial::{answer, Condition};
use crate::runner::shard::run_folder;
use crate::runner::store::write_atomic;
use crate::runner::store::Keyed;
use crate::runner::trials::{run_pending, Status};

/// Answer questions about long documents (token F1, SQuAD normalisation), unmasked and with the
/// top-K retrieval heads or K random non-retrieval heads masked. The built-in set has 32
/// questions about facts that exist only in their 1,000+-token contexts; --data reads your own
/// JSONL of {"context", "question", "answers": [...]}. One resumable folder per condition, and
/// qa.json with the table.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Questions as JSONL (default: the built-in set).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub mask: MaskSweepArgs,
    /// With --decode contrastive, every masked condition is also run unmasked and contrasted
    /// with its masked model (`decore-<condition>`), beside the greedy answers.
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Send prompts as plain text even when the model has a chat template.
    #[arg(long)]
    pub no_chat: bool,
    /// Also answer from a KV cache compressed by token selection (as `kv-select`, after the
    /// question): POLICY:BUDGET, e.g. headkv:0.2 or snapkv:0.2 (a budget is a share of the full
    /// cache's bytes; needs --scores). Repeatable.
    #[arg(long, value_name = "POLICY:BUDGET")]
    pub kv_select: Vec<String>,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Write the built-in question set as JSONL to this file and stop.
    #[arg(long)]
    pub export_builtin: Option<PathBuf>,
    /// Output folder. [default: runs/qa-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaRecord {
    pub id: usize,
    pub question: String,
    pub answers: Vec<String>,
    pub answer: String,
    pub f1: f64,
    pub exact: bool,
    pub prompt_tokens: usize,
    pub seconds: f64,
}

impl Keyed for QaRecord {
    fn key(&self) -> String {
        format!("q{}", self.id)
    }
}

impl Status for QaRecord {
    fn status(&self) -> String {
        format!("F1 {:>3.0}", 100.0 * self.f1)
    }
}

/// What a QA condition changes: heads masked, the answer contrasted with the model with heads
/// masked (DeCoRe), or the cache compressed by token selection.
enum QaCondition {
    Masked(Vec<Head>),
    Contrastive(Vec<Head>),
    KvSelect { policy: PolicyName, budget: f64, prior: Vec<f64> },
}

/// `POLICY:BUDGET`, e.g. `headkv:0.2`.
fn parse_kv_select(spec: &str) -> Result<(PolicyName, f64)> {
    use clap::ValueEnum;
    let bad = || format!("--kv-select {spec:?}: write POLICY:BUDGET, e.g. headkv:0.2 (policies: snapkv, headkv, random, streaming, duo)");
    let (name, budget) = spec.split_once(':').with_context(bad)?;
    let policy = PolicyName::from_str(name, true).map_err(|_| anyhow::anyhow!(bad()))?;
    let budget: f64 = budget.parse().ok().filter(|b: &f64| *b > 0.0 && *b <= 1.0).with_context(bad)?;
    Ok((policy, budget))
}

struct Question(usize);

impl Keyed for Question {
    fn key(&self) -> String {
        format!("q{}", self.0)
    }
}

pub fn run(args: Args) -> Result<()> {
    let items: Vec<QaItem> = match &args.data {
        Some(p) => load_jsonl(p)?,
        None => builtin(),
    };
    if let Some(path) = &args.export_builtin {
        let lines: Vec<String> = items.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} questions to {}", items.len(), path.display());
        return Ok(());
    }
    let shard = args.shard.resolve()?;
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    let scores = args.mask.load_scores(&model)?;
    let masked = args.mask.conditions(scores.as_ref())?;
    let mut conditions: Vec<(String, QaCondition)> = Vec::new();
    if args.decode.decode == Decode::Contrastive {
        for (label, heads) in masked.iter().filter(|(_, h)| !h.is_empty()) {
            conditions.push((format!("decore-{label}"), QaCondition::Contrastive(heads.clone())));
        }
    }
    conditions.splice(0..0, masked.into_iter().map(|(label, heads)| (label, QaCondition::Masked(heads))));
    for spec in &args.kv_select {
        let (policy, budget) = parse_kv_select(spec)?;
        let prior = kv_prior(&model.config, &scores.as_ref().context("--kv-select needs --scores")?.means());
        let label = format!("kv-{spec}").replace(':', "-");
        conditions.push((label, QaCondition::KvSelect { policy, budget, prior }));
    }
    // Prompts once: the document as the "book", the question after it.
    let prompts: Vec<Vec<u32>> = items
        .iter()
        .map(|it| Ok(Frame::new(tok, &it.question, !args.no_chat)?.wrap(&tok.encode(&it.context, false)?)))
        .collect::<Result<_>>()?;
    if let Some(p) = prompts.iter().find(|p| p.len() + 64 > model.config.context_length) {
        anyhow::bail!(
            "a question's prompt has {} tokens, too many for the model's context of {}",
            p.len(),
            model.config.context_length
        );
    }
    let reference = tok.encode(&items[0].context, false)?;
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("qa"));
    let out = run_folder(&out, shard);
    super::record_provenance(&out, &model)?;
    let questions: Vec<Question> = (0..items.len())
        .filter(|&i| shard.is_none_or(|s| s.takes(i)))
        .map(Question)
        .collect();
    let mut table = Vec::new();
    let snap = Snap::default();
    for (label, kind) in &conditions {
        let heads: &[Head] = match kind {
            QaCondition::Masked(heads) | QaCondition::Contrastive(heads) => heads,
            QaCondition::KvSelect { .. } => &[],
        };
        let masks = args.mask.how.get().interventions(&model, heads, &reference)?;
        let condition = match kind {
            QaCondition::Contrastive(_) => args.decode.condition(masks),
            _ => Condition {
                interventions: masks,
                ..Default::default()
            },
        };
        let described = match kind {
            QaCondition::Masked(heads) => args.mask.how.get().settings(heads),
            QaCondition::Contrastive(heads) => {
                json!({"contrasted_with": args.mask.how.get().settings(heads), "decode": args.decode.settings()})
            }
            QaCondition::KvSelect { policy, budget, .. } => json!({"kv_select": policy, "budget": budget, "snap": snap}),
        };
        let settings = json!({
            "command": "qa",
            "model": args.model.model,
            "data": args.data.as_ref().map_or("built-in".to_owned(), |p| p.display().to_string()),
            "chat": !args.no_chat,
            "condition": described,
        });
        let records = run_pending(&out.join(label), &settings, &questions, shard, label, |q| {
            let start = Instant::now();
            let item = &items[q.0];
            let a = match kind {
                QaCondition::Masked(_) | QaCondition::Contrastive(_) => answer(&model, &prompts[q.0], &condition, false)?,
                QaCondition::KvSelect { policy, budget, prior } => {
                    compressed_answer(&model, &prompts[q.0], (*policy, 0, *budget), prior, &snap)?
                }
            };
            Ok(QaRecord {
                id: q.0,
                question: item.question.clone(),
                answers: item.answers.clone(),
                f1: best_f1(&a.answer, &item.answers),
                exact: exact_match(&a.answer, &item.answers),
                answer: a.answer,
                prompt_tokens: prompts[q.0].len(),
                seconds: start.elapsed().as_secs_f64(),
            })
        })?;
        let n = records.len().max(1) as f64;
        let f1 = 100.0 * records.iter().map(|r| r.f1).sum::<f64>() / n;
        let em = 100.0 * records.iter().filter(|r| r.exact).count() as f64 / n;
        println!("{label:<20} {:>3} questions  F1 {f1:>5.1}  exact match {em:>5.1}", records.len());
        table.push(json!({"condition": label, "masked_heads": heads.len(), "questions": records.len(), "f1": f1, "exact_match": em}));
    }
    write_atomic(
        &out.join("qa.json"),
        serde_json::to_string_pretty(
            &json!({"model": model_name(&model, &args.model.model), "mask_mode": args.mask.how.mode, "mask_phase": args.mask.how.phase, "conditions": table}),
        )?,
    )?;
    super::finish_with_report(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_select_specs_parse() {
        assert_eq!(parse_kv_select("headkv:0.2").unwrap(), (PolicyName::Headkv, 0.2));
        assert_eq!(parse_kv_select("SnapKV:1").unwrap(), (PolicyName::Snapkv, 1.0));
        for bad in ["headkv", "headkv:0", "headkv:1.5", "lru:0.2", "headkv:x"] {
            assert!(parse_kv_select(bad).unwrap_err().to_string().contains("POLICY:BUDGET"), "{bad}");
        }
    }
}
