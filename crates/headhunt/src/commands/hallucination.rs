//! `headhunt hallucination`: do retrieval heads tell a grounded answer from a made-up one?

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::args::GridArgs;
use super::niah::model_name;
use super::{DecodeArgs, ModelArg};
use crate::experiments::grounding::Grounder;
use crate::experiments::hallucination::study::{compare_decoding, counts, load_run, roc_plot, AnswerRecord, Answerer};
use crate::experiments::hallucination::{detections, Case, Detection, Guide, FOLDS, LOOKBACK_C};
use crate::experiments::qa::{best_f1, builtin, load_jsonl};
use crate::experiments::retrieval::failure::{AnswerClass, COMPLETE_ROUGE};
use crate::experiments::retrieval::masking::{check_scores_fit, top_heads, MaskHow};
use crate::experiments::retrieval::niah::prompt::Frame;
use crate::experiments::retrieval::niah::trial::TrialRunner;
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};
use crate::output::plot::Figure;
use crate::runner::store::{write_atomic, Keyed};
use crate::runner::trials::run_pending;

/// Answers labelled complete or hallucinated (NIAH trials of the grid, and extractive QA), each
/// with three detectors' scores: (a) the retrieval heads' support for the answer's tokens (no
/// training: the share of the retrieval heads of --scores, weighted by score, whose attention
/// argmax copies the token from the prompt), (b) Lookback Lens (every head's lookback ratio, a
/// logistic regression cross-validated within a task and trained on one task to test on the
/// other), (c) the model's confidence (mean log-probability of the answer's tokens). Prints and
/// writes each AUROC with a 95% bootstrap interval, roc.png/.svg, and hallucination.json.
///
/// Labels: complete = ROUGE-1 recall of the expected answer >= 90; hallucinated = no content
/// word of it in the answer; answers in between are left out.
///
/// With --guided, each item is also answered by decoding guided by the signal (chunks of
/// --chunk tokens; per chunk the greedy one and --candidates - 1 sampled at --temperature; the
/// best-supported kept), and NIAH ROUGE-1 and QA F1 are compared with greedy decoding, with a
/// bootstrap interval on the difference. With --decode contrastive, each item is also answered
/// by DeCoRe against the retrieval heads of --scores (those above 0.1, or --contrast-heads K),
/// compared the same way. Resumable.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Retrieval scores (head_scores.json or its detection run folder).
    #[arg(long)]
    pub scores: PathBuf,
    /// The NIAH grid. Use --per-cell 3 on the default grid for about 200 answers.
    #[command(flatten)]
    pub grid: GridArgs,
    /// QA questions as JSONL of {"context", "question", "answers"} (default: the built-in 32).
    #[arg(long)]
    pub qa_data: Option<PathBuf>,
    /// NIAH only: no QA answers (for a run pooled into another with --with).
    #[arg(long)]
    pub no_qa: bool,
    /// Also decode guided by the signal and compare with greedy decoding.
    #[arg(long)]
    pub guided: bool,
    /// Tokens per chunk of guided decoding.
    #[arg(long, default_value_t = 8)]
    pub chunk: usize,
    /// Candidates per chunk (the greedy chunk and the rest sampled).
    #[arg(long, default_value_t = 4)]
    pub candidates: usize,
    /// Sampling temperature of the candidates.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Seed of the sampled candidates.
    #[arg(long, default_value_t = 0)]
    pub guide_seed: u64,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Heads masked in the model --decode contrastive contrasts with: the top K of --scores
    /// [default: those above 0.1].
    #[arg(long, value_name = "K")]
    pub contrast_heads: Option<usize>,
    /// Pool the answers of another hallucination run of the same model (e.g. on a grid of
    /// longer contexts) into the study. Repeatable.
    #[arg(long = "with", value_name = "RUN")]
    pub with: Vec<PathBuf>,
    /// Output folder (resumable). [default: runs/hallucination-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

struct Item(String);

impl Keyed for Item {
    fn key(&self) -> String {
        self.0.clone()
    }
}

pub fn run(args: Args) -> Result<()> {
    let grid = args.grid.resolve()?;
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    let scores = HeadScores::load(&args.scores)?;
    check_scores_fit(&scores, &model)?;
    let g = Grounder::from_scores(&scores)?;
    if args.guided && (args.chunk == 0 || args.candidates == 0 || args.temperature <= 0.0) {
        bail!("--chunk, --candidates and --temperature must be positive");
    }
    let guide = args.guided.then_some(Guide {
        chunk: args.chunk,
        candidates: args.candidates,
        temperature: args.temperature,
        seed: args.guide_seed,
    });
    let k = args
        .contrast_heads
        .unwrap_or_else(|| scores.means().iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count());
    let contrast = args
        .decode
        .contrastive(MaskHow::default().interventions(&model, &top_heads(&scores, k), &[])?);
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("hallucination"));
    super::record_provenance(&out, &model)?;
    let common = json!({
        "command": "hallucination",
        "model": args.model.model,
        "scores": args.scores,
        "guide": guide,
    });
    let mut common = common;
    if contrast.is_some() {
        common["decode"] = json!({"contrastive": args.decode.settings(), "masked_heads": k});
    }
    let answerer = Answerer {
        model: &model,
        grounder: &g,
        guide,
        contrast: contrast.as_ref(),
    };
    let runner = TrialRunner::new(&model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
    let specs = grid.trials();
    let mut niah_settings = grid.settings();
    niah_settings["run"] = common.clone();
    let niah_items: Vec<Item> = specs.iter().map(|s| Item(s.key())).collect();
    let niah = run_pending(&out.join("niah"), &niah_settings, &niah_items, None, "NIAH", |item| {
        let spec = specs.iter().find(|s| s.key() == item.0).context("a planned trial")?;
        let prompt = runner.prompt(spec)?;
        let needle = &grid.needles[spec.needle];
        answerer.answer(
            item.0.clone(),
            &needle.question,
            vec![needle.real_needle.clone()],
            &prompt.ids,
            &|a: &str| runner.rouge1(spec, a),
        )
    })?;

    let qa_items = match &args.qa_data {
        _ if args.no_qa => Vec::new(),
        Some(p) => load_jsonl(p)?,
        None => builtin(),
    };
    let chat = !args.grid.no_chat;
    let qa_settings = json!({"run": common, "qa_data": args.qa_data, "chat": chat});
    let questions: Vec<Item> = (0..qa_items.len()).map(|i| Item(format!("q{i}"))).collect();
    let qa = run_pending(&out.join("qa"), &qa_settings, &questions, None, "QA", |item| {
        let i: usize = item.0[1..].parse()?;
        let it = &qa_items[i];
        let prompt = Frame::new(tok, &it.question, chat)?.wrap(&tok.encode(&it.context, false)?);
        answerer.answer(item.0.clone(), &it.question, it.answers.clone(), &prompt, &|a: &str| {
            100.0 * best_f1(a, &it.answers)
        })
    })?;

    let (mut niah, mut qa) = (niah, qa);
    for dir in &args.with {
        let (n, q) = load_run(dir, &model.source.name)?;
        niah.extend(n);
        qa.extend(q);
    }
    let name = model_name(&model, &args.model.model);
    let cases: Vec<Case<'_>> = [("niah", &niah), ("qa", &qa)]
        .into_iter()
        .flat_map(|(task, records)| {
            records.iter().filter(|r| r.outcome != AnswerClass::Incomplete).map(move |r| Case {
                task,
                hallucinated: r.outcome == AnswerClass::Hallucination,
                decoded: &r.greedy,
            })
        })
        .collect();
    let found = detections(&cases)?;
    print_detections(&name, &niah, &qa, &found);
    roc_plot(&name, &found).save(&out.join("roc"))?;
    let guided_rows = guide.map(|_| compare_decoding(&niah, &qa, "guided", |r| Some((r.guided_score?, r.guided.as_ref()?))));
    let contrastive_rows = contrast
        .as_ref()
        .map(|_| compare_decoding(&niah, &qa, "contrastive", |r| Some((r.contrastive_score?, r.contrastive.as_ref()?))));
    write_atomic(
        &out.join("hallucination.json"),
        serde_json::to_string_pretty(&json!({
            "model": name,
            "labels": {
                "complete": format!("ROUGE-1 recall of the expected answer >= {COMPLETE_ROUGE}"),
                "hallucinated": "no content word of the expected answer in the answer",
                "left_out": "incomplete answers (in between)",
            },
            "retrieval_heads": g.heads.iter().map(|&(h, w)| json!({"head": scores.label(h), "score": w})).collect::<Vec<_>>(),
            "lookback_lens": {"c": LOOKBACK_C, "folds": FOLDS, "standardised": true},
            "counts": counts(&niah, &qa),
            "detections": found,
            "guide": guide,
            "guided": guided_rows,
            "contrastive": contrastive_rows,
        }))?,
    )?;
    super::finish_with_report(&out)
}

fn print_detections(name: &str, niah: &[AnswerRecord], qa: &[AnswerRecord], found: &[Detection]) {
    let c = counts(niah, qa);
    println!("{name}: NIAH {}, QA {}", c["niah"], c["qa"]);
    println!(
        "{:<36} {:<6} {:>8} {:>6} {:>7}  95% interval",
        "detector", "on", "answers", "halluc", "AUROC"
    );
    for d in found {
        println!(
            "{:<36} {:<6} {:>8} {:>6} {:>7.3}  [{:.3}, {:.3}]",
            d.detector, d.evaluated_on, d.answers, d.hallucinated, d.auroc, d.ci95.0, d.ci95.1
        );
    }
}
