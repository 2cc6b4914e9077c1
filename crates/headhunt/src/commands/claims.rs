//! `headhunt claims`: every claim of the retrieval-head paper, measured on one model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use super::ModelArg;
use crate::experiments::claims::{dynamic, markdown, shell, table, ClaimsPlan, COT_CHAINS};
use crate::experiments::cot::Style;
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};
use crate::output::plot::Figure;
use crate::runner::store::write_atomic;

/// The paper's properties of retrieval heads as a table: the claim, the paper's evidence, what
/// this model shows, the command that measured it, and a verdict by a stated rule (holds, does
/// not hold, or not measurable here and why).
///
/// Runs what is missing, each experiment into its own resumable folder under --out: detection
/// on the generated prose and on each --haystack (universal, sparse, dynamic activation), at
/// contexts of at most 1,000 and at least 3,000 tokens (intrinsic), the top-K against random-K
/// masks on NIAH, extractive QA, closed-book factual recall (knowledge against retrieval) and a
/// chain-of-thought look-up task (at the hardest difficulty the unmasked model solves at least
/// half the time with its steps written out). K defaults to the model's number of retrieval heads. Writes claims.json,
/// claims.md, activation.png/.svg (activation frequency against mean score) and the report.
/// Rerun to resume; --table-only rebuilds the table from what the folders hold.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Output folder. [default: runs/claims-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Haystacks besides the generated prose for dynamic activation (files or folders of .txt).
    /// [default: /usr/share/common-licenses where it exists]
    #[arg(long)]
    pub haystack: Vec<PathBuf>,
    /// Heads masked (top-K and K random). [default: the heads scoring above 0.1]
    #[arg(long)]
    pub k: Option<usize>,
    /// Context lengths of the long-context detection run (each at least 3,000 tokens).
    #[arg(long, default_value = "3000:4000:3")]
    pub long_lengths: String,
    /// Problems of the chain-of-thought task.
    #[arg(long, default_value_t = 40)]
    pub cot_problems: usize,
    /// Two score files of checkpoints of one family (e.g. the paper's published Qwen1.5-14B.json
    /// and Qwen1.5-14B-Chat.json) for the intrinsic claim across checkpoints.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub checkpoints: Option<Vec<PathBuf>>,
    /// Build the table from the folders as they are; run nothing.
    #[arg(long)]
    pub table_only: bool,
}

const LICENCES: &str = "/usr/share/common-licenses";

/// Run one headhunt command line in this process, unless it is `done` (its output exists).
fn step(n: &mut usize, argv: &[String], done: bool, table_only: bool) -> Result<()> {
    *n += 1;
    if done {
        eprintln!("[{n}] done: {}", shell(argv));
        return Ok(());
    }
    if table_only {
        eprintln!("[{n}] missing: {}", shell(argv));
        return Ok(());
    }
    eprintln!("[{n}] {}", shell(argv));
    let cli = crate::cli::parse(std::iter::once("headhunt".to_owned()).chain(argv.iter().cloned()))
        .with_context(|| format!("a claims step does not parse: {}", shell(argv)))?;
    crate::cli::run(cli).with_context(|| format!("running {}", shell(argv)))
}

/// The hardest chain count at which the unmasked model solves at least half the problems with
/// written steps (the easiest if none), running each unmasked calibration as needed.
fn calibrate_cot(plan: &ClaimsPlan, n: &mut usize, table_only: bool) -> Result<usize> {
    for &chains in &COT_CHAINS {
        let dir = plan.dir(&ClaimsPlan::cot_dir_name(chains));
        step(n, &plan.cot(chains, false), dir.join("cot.json").exists(), table_only)?;
        let Ok(text) = std::fs::read_to_string(dir.join("cot.json")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let none = v["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|r| r["condition"] == "none"))
            .cloned();
        let solved = |s: Style| {
            none.as_ref()
                .and_then(|r| r[format!("{}_accuracy", s.name())].as_f64())
                .unwrap_or(0.0)
        };
        eprintln!(
            "chain-of-thought at {chains} chains, unmasked: {:.0}% with steps, {:.0}% direct",
            solved(Style::Steps),
            solved(Style::Direct)
        );
        if solved(Style::Steps) >= 50.0 {
            return Ok(chains);
        }
    }
    Ok(*COT_CHAINS.last().expect("chain counts"))
}

pub fn run(args: Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("claims"));
    let haystacks = if args.haystack.is_empty() && Path::new(LICENCES).is_dir() {
        vec![PathBuf::from(LICENCES)]
    } else {
        args.haystack.clone()
    };
    let mut plan = ClaimsPlan {
        out: out.clone(),
        model_args: vec![
            "--model".into(),
            args.model.model.clone(),
            "--precision".into(),
            args.model.precision.name().into(),
        ],
        haystacks,
        long_lengths: args.long_lengths.clone(),
        k: 0,
        cot_chains: COT_CHAINS[0],
        cot_problems: args.cot_problems,
        checkpoints: args.checkpoints.as_ref().map(|c| (c[0].clone(), c[1].clone())),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let n = &mut 0;
    let detected = |name: &str| out.join(name).join("head_scores.json").exists();
    for i in 0..=plan.haystacks.len() {
        step(n, &plan.detect(i), detected(&plan.haystack_dir_name(i)), args.table_only)?;
    }
    plan.k = match args.k {
        Some(k) => k,
        None => {
            let scores = HeadScores::load(&plan.dir("detect")).context("K comes from the detection run; give --k")?;
            scores.means().iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count().max(1)
        }
    };
    eprintln!("K = {} heads masked in the masking experiments", plan.k);
    step(n, &plan.detect_short(), detected("short"), args.table_only)?;
    step(n, &plan.detect_long(), detected("long"), args.table_only)?;
    // A masking run is done when its table lists this K's top-K condition.
    let k = plan.k;
    let masked = |file: PathBuf| std::fs::read_to_string(file).is_ok_and(|t| t.contains(&format!("\"top-{k}\"")));
    step(n, &plan.niah(), masked(plan.dir("niah").join("ablation.json")), args.table_only)?;
    step(n, &plan.qa(), masked(plan.dir("qa").join("qa.json")), args.table_only)?;
    step(n, &plan.recall(), masked(plan.dir("recall").join("eval.json")), args.table_only)?;
    plan.cot_chains = calibrate_cot(&plan, n, args.table_only)?;
    // The calibration ran the unmasked condition; the masked run resumes from it.
    let cot_json = plan.dir(&ClaimsPlan::cot_dir_name(plan.cot_chains)).join("cot.json");
    step(n, &plan.cot(plan.cot_chains, true), masked(cot_json), args.table_only)?;

    let claims = table(&plan);
    let (_, activation) = dynamic(&plan);
    if let Some(act) = &activation {
        act.plot(&format!(
            "Dynamic activation: {} ({} answered trials)",
            args.model.model, act.trials
        ))
        .save(&out.join("activation"))?;
    }
    let md = markdown(&claims);
    write_atomic(&out.join("claims.md"), &md)?;
    write_atomic(
        &out.join("claims.json"),
        serde_json::to_string_pretty(&json!({
            "model": args.model.model,
            "k": plan.k,
            "cot_chains": plan.cot_chains,
            "claims": claims,
            "activation": activation,
        }))?,
    )?;
    println!("{md}");
    super::finish_with_report(&out)
}
