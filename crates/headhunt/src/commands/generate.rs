//! `headhunt generate`: greedy text generation.

use std::io::Write;

use anyhow::Result;
use headhunt_engine::{greedy, Hooks, RunOptions};

use super::ModelArg;

/// Continue a prompt with greedy decoding, streaming the text as it is produced.
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
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let tok = model.tokenizer()?;
    let prompt = tok.encode_prompt(&args.prompt, args.chat)?;
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
