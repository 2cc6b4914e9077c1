//! `headhunt bench`: prefill and decode speed, and peak memory.

use std::time::Instant;

use anyhow::{Context, Result};
use headhunt_engine::{Hooks, Model, RunOptions};

use super::ModelArg;

/// Measure prefill tokens/s at several prompt lengths, decode tokens/s after a long prompt, and
/// the process's peak memory. Prompts are deterministic pseudo-random non-special tokens.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt lengths to prefill, in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,2048,4096,8192")]
    pub lengths: Vec<usize>,
    /// Context length before the decode measurement (0 skips it).
    #[arg(long, default_value_t = 2048)]
    pub decode_context: usize,
    /// Tokens generated in the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A deterministic prompt of `n` ordinary tokens.
pub fn bench_tokens(model: &Model, n: usize) -> Vec<u32> {
    let vocab = model.config.vocab_size as u64;
    let special = |t: u32| model.tokenizer.as_ref().is_some_and(|tok| tok.is_special(t));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let t = ((state >> 33) % vocab) as u32;
        if !special(t) {
            out.push(t);
        }
    }
    out
}

/// Peak resident memory of this process, in bytes (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let ctx = model.config.context_length;
    let mut rows = Vec::new();
    for &n in &args.lengths {
        if n > ctx {
            eprintln!("skipping prefill of {n} tokens: the model's context is {ctx}");
            continue;
        }
        let tokens = bench_tokens(&model, n);
        let mut run = model.run(
            Hooks::default(),
            RunOptions {
                capacity: n,
                ..Default::default()
            },
        )?;
        let start = Instant::now();
        run.prefill(&tokens).with_context(|| format!("prefill of {n} tokens"))?;
        let secs = start.elapsed().as_secs_f64();
        let rss = peak_rss_bytes().unwrap_or(0);
        rows.push(serde_json::json!({"phase": "prefill", "tokens": n, "seconds": secs, "tokens_per_s": n as f64 / secs, "peak_rss_mib": rss as f64 / 1048576.0}));
        if !args.json {
            println!(
                "prefill {n:>6} tokens  {secs:>8.2} s  {:>8.1} tok/s  peak RSS {:>7.0} MiB",
                n as f64 / secs,
                rss as f64 / 1048576.0
            );
        }
    }
    if args.decode_context > 0 && args.decode_tokens > 0 {
        let n = args.decode_context.min(ctx - args.decode_tokens);
        let tokens = bench_tokens(&model, n + args.decode_tokens);
        let mut run = model.run(
            Hooks::default(),
            RunOptions {
                capacity: n + args.decode_tokens,
                ..Default::default()
            },
        )?;
        run.prefill(&tokens[..n])?;
        let start = Instant::now();
        for &t in &tokens[n..] {
            run.decode(t)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = args.decode_tokens as f64 / secs;
        let rss = peak_rss_bytes().unwrap_or(0);
        rows.push(serde_json::json!({"phase": "decode", "context": n, "tokens": args.decode_tokens, "seconds": secs, "tokens_per_s": rate, "peak_rss_mib": rss as f64 / 1048576.0}));
        if !args.json {
            println!(
                "decode  {:>6} tokens after {n} context  {secs:>6.2} s  {rate:>8.1} tok/s  peak RSS {:>7.0} MiB",
                args.decode_tokens,
                rss as f64 / 1048576.0
            );
        }
    }
    if args.json {
        let out = serde_json::json!({
            "model": args.model.model,
            "threads": rayon::current_num_threads(),
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
