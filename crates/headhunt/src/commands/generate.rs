//! `headhunt generate`: greedy or contrastive (DeCoRe) text generation.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use headhunt_engine::{argmax, greedy, Hooks, RunOptions, Tokenizer};
use serde_json::json;

use super::{Decode, DecodeArgs, ModelArg};
use crate::experiments::decore;
use crate::experiments::grounding::{self, GroundedStep, Grounder};
use crate::experiments::retrieval::masking::{check_scores_fit, top_heads, MaskHow};
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};

/// Continue a prompt with greedy decoding, streaming the text as it is produced.
///
/// With --ground, each generated token is checked against the prompt by the model's retrieval
/// heads (--scores): a token is supported in the share of them (weighted by score) whose
/// attention argmax sits on an equal token of the prompt. The answer is printed with support
/// shown (green: at least half, yellow: some, red: none; without a colour terminal, runs of
/// unsupported tokens are put in [[ ]]), and every token's signals go to --ground-out.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// The prompt text.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Send the prompt as a user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (stops earlier at end-of-sequence).
    #[arg(long, default_value_t = 64)]
    pub max_new: usize,
    /// Mark the tokens the prompt does not support, by the retrieval heads of --scores.
    #[arg(long, requires = "scores")]
    pub ground: bool,
    /// Retrieval scores (head_scores.json or its detection run folder), for --ground and for
    /// --decode contrastive.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Heads masked for --decode contrastive [default: those of --scores above 0.1].
    #[arg(long, value_name = "K")]
    pub mask_top: Option<usize>,
    /// Where --ground writes every token's signals (JSON).
    #[arg(long, default_value = "ground.json")]
    pub ground_out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    let prompt = tok.encode_prompt(&args.prompt, args.chat)?;
    if args.ground {
        return grounded(&args, &model, &prompt);
    }
    if args.decode.decode == Decode::Contrastive {
        return contrastive(&args, &model, &prompt);
    }
    let mut run = model.run(
        Hooks::default(),
        RunOptions {
            capacity: prompt.len() + args.max_new,
            ..Default::default()
        },
    )?;
    let start = std::time::Instant::now();
    let mut shown = 0;
    let mut out = std::io::stdout();
    let generated = greedy(&mut run, &prompt, args.max_new, |ids| {
        if let Ok(text) = tok.decode(ids, true) {
            // Print whole characters only: a partial UTF-8 sequence decodes as U+FFFD.
            if let (false, Some(new)) = (text.ends_with('\u{FFFD}'), text.get(shown..)) {
                let _ = write!(out, "{new}");
                let _ = out.flush();
                shown = text.len();
            }
        }
        false
    })?;
    let text = tok.decode(&generated, true)?;
    print!("{}", text.get(shown..).unwrap_or_default());
    println!();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{} prompt tokens, {} generated in {secs:.2} s", prompt.len(), generated.len());
    Ok(())
}

/// `--decode contrastive`: DeCoRe against the top retrieval heads, printed with its weights.
fn contrastive(args: &Args, model: &headhunt_engine::Model, prompt: &[u32]) -> Result<()> {
    let scores = HeadScores::load(args.scores.as_ref().context("--decode contrastive needs --scores")?)?;
    check_scores_fit(&scores, model)?;
    let k = args
        .mask_top
        .unwrap_or_else(|| scores.means().iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count());
    let heads = top_heads(&scores, k);
    let contrastive = args
        .decode
        .contrastive(MaskHow::default().interventions(model, &heads, &[])?)
        .expect("--decode contrastive");
    let start = std::time::Instant::now();
    let (generated, alphas) = decore::generate(model, prompt, &contrastive, args.max_new, |_| false)?;
    println!("{}", model.tokenizer()?.decode(&generated, true)?);
    eprintln!(
        "{} prompt tokens, {} generated in {:.2} s, contrasted against {k} masked heads (mean weight {:.3})",
        prompt.len(),
        generated.len(),
        start.elapsed().as_secs_f64(),
        alphas.iter().sum::<f64>() / alphas.len().max(1) as f64
    );
    Ok(())
}

/// `--ground`: decode with the signal recorded, print the answer marked by support, write the
/// signals.
fn grounded(args: &Args, model: &headhunt_engine::Model, prompt: &[u32]) -> Result<()> {
    let tok = model.tokenizer()?;
    let scores = HeadScores::load(args.scores.as_ref().context("--ground needs --scores")?)?;
    check_scores_fit(&scores, model)?;
    let g = Grounder::from_scores(&scores)?;
    let mut run = grounding::run(model, prompt.len(), prompt.len() + args.max_new)?;
    let logits = run.prefill(prompt)?;
    let steps = grounding::decode(&mut run, logits, args.max_new, argmax, |_| false)?;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    println!("{}", marked(tok, prompt, &g, &steps, colour)?);
    let kept = grounding::answer_steps(tok, &steps);
    let (t0, answer): (usize, Vec<GroundedStep>) = (kept.first().map_or(0, |k| k.0), kept.iter().map(|k| k.1.clone()).collect());
    let signal = g.answer(prompt, &answer, t0);
    let tokens: Vec<serde_json::Value> = steps
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let copied: Vec<String> = g
                .heads
                .iter()
                .filter(|&&(h, _)| grounding::copies(prompt, s, h))
                .map(|&(h, _)| scores.label(h))
                .collect();
            json!({
                "token": s.token,
                "text": tok.decode(&[s.token], false).unwrap_or_default(),
                "support": g.support(prompt, s),
                "lookback": g.lookback(s, t, prompt.len()),
                "logprob": s.logprob,
                "copied_by": copied,
            })
        })
        .collect();
    let out = json!({
        "prompt_tokens": prompt.len(),
        "retrieval_heads": g.heads.iter().map(|&(h, w)| json!({"head": scores.label(h), "score": w})).collect::<Vec<_>>(),
        "answer": signal,
        "tokens": tokens,
    });
    crate::runner::store::write_atomic(&args.ground_out, serde_json::to_string_pretty(&out)?)?;
    eprintln!(
        "support {:.2}, retrieval heads' lookback ratio {:.2}, mean log-probability {:.2}; per token: {}",
        signal.support,
        signal.lookback,
        signal.confidence,
        args.ground_out.display()
    );
    Ok(())
}

/// The generated text with each token's support shown: ANSI colours, or `[[ ]]` around runs of
/// unsupported tokens.
fn marked(tok: &Tokenizer, prompt: &[u32], g: &Grounder, steps: &[GroundedStep], colour: bool) -> Result<String> {
    let mut out = String::new();
    let mut open = false;
    for s in steps {
        if tok.is_special(s.token) {
            continue;
        }
        let text = tok.decode(&[s.token], false)?;
        let support = g.support(prompt, s);
        if colour {
            let code = if support >= 0.5 {
                "32"
            } else if support > 0.0 {
                "33"
            } else {
                "31"
            };
            out.push_str(&format!("\x1b[{code}m{text}\x1b[0m"));
        } else {
            let unsupported = support == 0.0 && !text.trim().is_empty();
            if unsupported && !open {
                out.push_str("[[");
                open = true;
            } else if !unsupported && open && !text.trim().is_empty() {
                out.push_str("]]");
                open = false;
            }
            out.push_str(&text);
        }
    }
    if open {
        out.push_str("]]");
    }
    Ok(out)
}
