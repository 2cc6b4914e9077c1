//! `headhunt cot`: chain-of-thought look-ups with and without masked heads.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args::MaskSweepArgs;
use super::niah::model_name;
use super::ModelArg;
use crate::experiments::cot::{is_correct, problems, prompt, restates_facts, Shape, Style};
use crate::experiments::retrieval::niah::trial::{answer, Condition};
use crate::runner::store::{write_atomic, Keyed};
use crate::runner::trials::{run_pending, Status};

/// Reasoning that must read the context back at every step: multi-hop look-ups ("Tom's coin is
/// in the white bag. The white bag is in the cellar. In which room is Tom's coin?"), generated
/// with a seed. Each problem is asked twice: for the steps (write each fact used, then the
/// answer) and for the room directly, each after one solved demonstration. Scores accuracy, and
/// how often the written steps restate the asked chain's facts (every place on it, in order,
/// none from another chain); unmasked, with the top-K retrieval heads and with K random
/// non-retrieval heads masked. One resumable folder per condition, and cot.json with the table.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub mask: MaskSweepArgs,
    /// Problems (each asked in both styles).
    #[arg(long, default_value_t = 40)]
    pub problems: usize,
    /// Look-ups per answer: 2 (thing -> container -> room) or 3 (-> furniture -> room).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub hops: u8,
    /// Owners whose chains the facts list (the asked one and distractors).
    #[arg(long, default_value_t = 3)]
    pub chains: usize,
    /// List the facts of all chains shuffled together (harder) instead of chain by chain, each
    /// chain's facts in look-up order.
    #[arg(long)]
    pub shuffled: bool,
    /// Solved demonstrations before each problem.
    #[arg(long, default_value_t = 2)]
    pub shots: usize,
    /// Seed of the generated problems.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send the prompt as a user message through the model's chat template (default: plain
    /// text, which small chat models follow better when the prompt holds a demonstration).
    #[arg(long)]
    pub chat: bool,
    /// Output folder (resumable). [default: runs/cot-<model>]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CotRecord {
    pub id: usize,
    pub style: Style,
    pub question: String,
    pub expected: String,
    /// The first non-empty line the model wrote.
    pub answer: String,
    pub correct: bool,
    /// Whether the text before the answer restates the asked chain (steps style only).
    pub restated: Option<bool>,
    pub prompt_tokens: usize,
}

impl Keyed for CotRecord {
    fn key(&self) -> String {
        format!("{}-{}", self.style.name(), self.id)
    }
}

impl Status for CotRecord {
    fn status(&self) -> String {
        (if self.correct { "right" } else { "wrong" }).to_owned()
    }
}

struct Ask(Style, usize);

impl Keyed for Ask {
    fn key(&self) -> String {
        format!("{}-{}", self.0.name(), self.1)
    }
}

/// Accuracy and restated share of one condition and style.
pub fn tally(records: &[CotRecord], style: Style) -> (usize, f64, Option<f64>) {
    let rs: Vec<&CotRecord> = records.iter().filter(|r| r.style == style).collect();
    let n = rs.len().max(1) as f64;
    let accuracy = 100.0 * rs.iter().filter(|r| r.correct).count() as f64 / n;
    let restated = (style == Style::Steps).then(|| 100.0 * rs.iter().filter(|r| r.restated == Some(true)).count() as f64 / n);
    (rs.len(), accuracy, restated)
}

pub fn run(args: Args) -> Result<()> {
    if args.chains < 1 || args.chains > 8 {
        bail!("--chains must be 1 to 8 (the word lists hold 8 colours)");
    }
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    let scores = args.mask.load_scores(&model)?;
    let conditions = args.mask.conditions(scores.as_ref())?;
    let hops = args.hops as usize;
    let shape = Shape {
        hops,
        chains: args.chains,
        shuffled: args.shuffled,
    };
    // The demonstrations come from another seed, so they never repeat a problem.
    let demos = problems(args.shots, shape, args.seed.wrapping_add(1 << 32));
    let set = problems(args.problems, shape, args.seed);
    let styles = [Style::Steps, Style::Direct];
    let prompts: Vec<Vec<Vec<u32>>> = styles
        .iter()
        .map(|&s| set.iter().map(|p| tok.encode_prompt(&prompt(p, &demos, s), args.chat)).collect())
        .collect::<Result<_, _>>()?;
    let asks: Vec<Ask> = styles.iter().flat_map(|&s| (0..set.len()).map(move |i| Ask(s, i))).collect();
    let out = args.out.clone().unwrap_or_else(|| args.model.default_out("cot"));
    super::record_provenance(&out, &model)?;
    let name = model_name(&model, &args.model.model);
    println!(
        "{name}: {} problems of {hops} look-ups among {} chains\n{:<20} {:>14} {:>14} {:>16}",
        set.len(),
        args.chains,
        "condition",
        "steps: right",
        "direct: right",
        "steps restated"
    );
    let mut table = Vec::new();
    for (label, heads) in &conditions {
        let condition = Condition {
            interventions: args.mask.how.get().interventions(&model, heads, &prompts[0][0])?,
            kv_policy: None,
            contrastive: None,
        };
        let settings = json!({
            "command": "cot",
            "model": args.model.model,
            "problems": args.problems,
            "hops": hops,
            "chains": args.chains,
            "shuffled": args.shuffled,
            "shots": args.shots,
            "seed": args.seed,
            "chat": args.chat,
            "condition": args.mask.how.get().settings(heads),
        });
        let records = run_pending(&out.join(label), &settings, &asks, None, label, |ask| {
            let Ask(style, i) = *ask;
            let ids = &prompts[if style == Style::Steps { 0 } else { 1 }][i];
            let a = answer(&model, ids, &condition, false)?;
            let p = &set[i];
            Ok(CotRecord {
                id: i,
                style,
                question: p.question.clone(),
                expected: p.answer().to_owned(),
                correct: is_correct(&a.answer, p),
                restated: (style == Style::Steps).then(|| restates_facts(&a.answer, p)),
                answer: a.answer,
                prompt_tokens: ids.len(),
            })
        })?;
        let (n, steps, restated) = tally(&records, Style::Steps);
        let (_, direct, _) = tally(&records, Style::Direct);
        let restated = restated.unwrap_or(0.0);
        println!("{label:<20} {steps:>13.1}% {direct:>13.1}% {restated:>15.1}%");
        table.push(json!({
            "condition": label,
            "masked_heads": heads.len(),
            "problems": n,
            "steps_accuracy": steps,
            "direct_accuracy": direct,
            "steps_restated": restated,
        }));
    }
    write_atomic(
        &out.join("cot.json"),
        serde_json::to_string_pretty(&json!({
            "model": name,
            "hops": hops,
            "chains": args.chains,
            "shuffled": args.shuffled,
            "chat": args.chat,
            "mask_mode": args.mask.how.mode,
            "mask_phase": args.mask.how.phase,
            "example_prompt": prompt(&set[0], &demos, Style::Steps),
            "conditions": table,
        }))?,
    )?;
    super::finish_with_report(&out)
}
