//! `headhunt hallucination`: do retrieval heads tell a grounded answer from a made-up one?

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::niah::{model_name, model_stem};
use super::{DecodeArgs, ModelArg};
use crate::experiments::grounding::Grounder;
use crate::experiments::hallucination::{
    contrastive, detections, greedy, guided, outcome, prepared, Case, Decoded, Detection, Guide, FOLDS, LOOKBACK_C,
};
use crate::experiments::qa::{best_f1, builtin, load_jsonl};
use crate::experiments::retrieval::failure::{AnswerClass, COMPLETE_ROUGE};
use crate::experiments::retrieval::masking::{check_scores_fit, top_heads, MaskHow};
use crate::experiments::retrieval::niah::grid::GridArgs;
use crate::experiments::retrieval::niah::prompt::Frame;
use crate::experiments::retrieval::niah::trial::TrialRunner;
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};
use crate::metrics::stats::bootstrap_mean;
use crate::output::plot::{Figure, LinePlot, Series};
use crate::runner::store::{write_atomic, Keyed};
use crate::runner::trials::{run_pending, Status};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub key: String,
    pub question: String,
    pub expected: Vec<String>,
    pub prompt_tokens: usize,
    pub greedy: Decoded,
    /// ROUGE-1 recall (NIAH) or token F1 (QA), 0-100.
    pub score: f64,
    pub outcome: AnswerClass,
    pub guided: Option<Decoded>,
    pub guided_score: Option<f64>,
    #[serde(default)]
    pub contrastive: Option<Decoded>,
    #[serde(default)]
    pub contrastive_score: Option<f64>,
    /// Seconds of each decoding (greedy, guided, contrastive), where measured.
    #[serde(default)]
    pub decode_seconds: BTreeMap<String, f64>,
    pub seconds: f64,
}

impl Keyed for AnswerRecord {
    fn key(&self) -> String {
        self.key.clone()
    }
}

impl Status for AnswerRecord {
    fn status(&self) -> String {
        format!("{} {:.2}", self.outcome.name(), self.greedy.signal.support)
    }
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
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("hallucination-{}", model_stem(&args.model.model))));
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
    // Answer one prompt greedily (and guided, and contrastively), scored by `score`.
    let answer = |key: String, question: &str, expected: Vec<String>, prompt: &[u32], score: &dyn Fn(&str) -> f64| {
        let start = Instant::now();
        let base = prepared(&model, prompt)?;
        let mut decode_seconds = BTreeMap::new();
        let mut timed = |name: &str, decode: &dyn Fn() -> Result<Decoded>| {
            let t = Instant::now();
            let d = decode();
            decode_seconds.insert(name.to_owned(), t.elapsed().as_secs_f64());
            d
        };
        let greedy = timed("greedy", &|| greedy(&base, prompt, &g))?;
        let guided = guide.map(|gd| timed("guided", &|| guided(&base, prompt, &g, gd))).transpose()?;
        let contrastive = contrast
            .as_ref()
            .map(|c| timed("contrastive", &|| contrastive(&base, prompt, &g, c)))
            .transpose()?;
        Ok(AnswerRecord {
            key,
            question: question.to_owned(),
            outcome: outcome(&expected, &greedy.answer),
            expected,
            prompt_tokens: prompt.len(),
            score: score(&greedy.answer),
            guided_score: guided.as_ref().map(|d| score(&d.answer)),
            contrastive_score: contrastive.as_ref().map(|d| score(&d.answer)),
            greedy,
            guided,
            contrastive,
            decode_seconds,
            seconds: start.elapsed().as_secs_f64(),
        })
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
        answer(
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
        answer(item.0.clone(), &it.question, it.answers.clone(), &prompt, &|a: &str| {
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

/// The records of another hallucination run (its NIAH and QA answers), checked to be of the
/// same model; their keys carry the folder's name.
fn load_run(dir: &std::path::Path, model: &Option<String>) -> Result<(Vec<AnswerRecord>, Vec<AnswerRecord>)> {
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.json")).with_context(|| format!("{} is not a hallucination run", dir.display()))?,
    )?;
    if card["name"].as_str() != Some(model.as_deref().unwrap_or("-")) {
        bail!("{} is a run of {}, not of this model", dir.display(), card["name"]);
    }
    let read = |task: &str| -> Result<Vec<AnswerRecord>> {
        let path = dir.join(task).join("trials.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut r: AnswerRecord = serde_json::from_str(l).with_context(|| format!("a record of {}", path.display()))?;
                r.key = format!("{}/{}", dir.display(), r.key);
                Ok(r)
            })
            .collect()
    };
    Ok((read("niah")?, read("qa").unwrap_or_default()))
}

fn counts(niah: &[AnswerRecord], qa: &[AnswerRecord]) -> serde_json::Value {
    let of = |rs: &[AnswerRecord]| {
        json!({
            "answers": rs.len(),
            "complete": rs.iter().filter(|r| r.outcome == AnswerClass::Complete).count(),
            "incomplete": rs.iter().filter(|r| r.outcome == AnswerClass::Incomplete).count(),
            "hallucinated": rs.iter().filter(|r| r.outcome == AnswerClass::Hallucination).count(),
        })
    };
    json!({"niah": of(niah), "qa": of(qa)})
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

/// The ROC curves of the three detectors on all labelled answers.
fn roc_plot(name: &str, found: &[Detection]) -> LinePlot {
    let series = ["retrieval-head support", "Lookback Lens (cross-validated)", "confidence"]
        .iter()
        .filter_map(|want| found.iter().find(|d| d.detector == *want && d.evaluated_on == "all"))
        .map(|d| Series {
            name: format!("{} (AUROC {:.3})", d.detector, d.auroc),
            points: d.roc.clone(),
            errors: None,
        })
        .chain(std::iter::once(Series {
            name: "chance".into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            errors: None,
        }))
        .collect();
    LinePlot {
        title: format!("{name}: detecting hallucinated answers"),
        x_label: "false positive rate (complete answers flagged)".into(),
        y_label: "true positive rate (hallucinations flagged)".into(),
        series,
        y_range: Some((0.0, 1.0)),
    }
}

/// Another decoding (`name`: guided, contrastive) against greedy decoding, per task: means, the
/// mean difference with its interval, answers changed, and the decoding's seconds against
/// greedy's.
fn compare_decoding(
    niah: &[AnswerRecord],
    qa: &[AnswerRecord],
    name: &str,
    other: impl Fn(&AnswerRecord) -> Option<(f64, &Decoded)>,
) -> serde_json::Value {
    let row = |task: &str, metric: &str, rs: &[AnswerRecord]| {
        let pairs: Vec<(f64, f64)> = rs.iter().filter_map(|r| Some((r.score, other(r)?.0))).collect();
        let n = pairs.len().max(1) as f64;
        let diffs: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
        let (lo, hi) = bootstrap_mean(&diffs, 0.95, 2000, 11);
        let seconds = |d: &str| rs.iter().filter_map(|r| r.decode_seconds.get(d)).sum::<f64>();
        let row = json!({
            "task": task,
            "metric": metric,
            "items": pairs.len(),
            "greedy": pairs.iter().map(|p| p.0).sum::<f64>() / n,
            name: pairs.iter().map(|p| p.1).sum::<f64>() / n,
            "difference": diffs.iter().sum::<f64>() / n,
            "ci95": [lo, hi],
            "changed": rs.iter().filter(|r| other(r).is_some_and(|(_, d)| d.answer != r.greedy.answer)).count(),
            "seconds_over_greedy": if seconds("greedy") > 0.0 { Some(seconds(name) / seconds("greedy")) } else { None },
        });
        println!(
            "{name} against greedy, {task}: {metric} {:.1} -> {:.1} ({:+.1}, 95% interval [{lo:+.1}, {hi:+.1}]; {} of {} answers changed)",
            row["greedy"].as_f64().unwrap_or(0.0),
            row[name].as_f64().unwrap_or(0.0),
            row["difference"].as_f64().unwrap_or(0.0),
            row["changed"],
            pairs.len()
        );
        row
    };
    json!([row("niah", "ROUGE-1 recall", niah), row("qa", "token F1", qa)])
}
