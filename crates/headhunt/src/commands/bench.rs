//! `headhunt bench`: prefill and decode speed, and peak memory.

use std::time::Instant;

use anyhow::{Context, Result};
use headhunt_engine::{profile, Hooks, Model, RunOptions};

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
    /// Context length before the decode measurement (0 skips it; at most the model's context less
    /// --decode-tokens). When the last of --lengths is this long, decoding goes on from that
    /// prefill (whose cache then has room for the decoded tokens) rather than prefilling the same
    /// prompt again: `--lengths 32768 --decode-context 32768` measures both with one prefill.
    #[arg(long, default_value_t = 2048)]
    pub decode_context: usize,
    /// Tokens generated in the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also break each measurement down by stage of the forward pass (matmuls, attention,
    /// norms, RoPE, cache, copies).
    #[arg(long)]
    pub profile: bool,
    /// Prompt tokens per forward call (the engine's default unless given; larger chunks make
    /// larger matrix products and use more activation memory).
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    #[command(flatten)]
    pub kv: super::kv::KvPolicyArgs,
}

/// The stage breakdown since the last reset, as printable lines and JSON.
fn profile_report(total: f64) -> (String, serde_json::Value) {
    let stages = profile::snapshot();
    let mut text = String::new();
    let mut json = serde_json::Map::new();
    let accounted: f64 = stages.iter().map(|s| s.1).sum();
    for (stage, secs) in stages.iter().filter(|s| s.1 > 0.0) {
        text.push_str(&format!(
            "    {:<30} {:>8.3} s {:>5.1}%\n",
            stage.name(),
            secs,
            100.0 * secs / total
        ));
        json.insert(stage.name().into(), serde_json::json!(secs));
    }
    text.push_str(&format!(
        "    {:<30} {:>8.3} s {:>5.1}%\n",
        "other (loop, allocation)",
        total - accounted,
        100.0 * (total - accounted) / total
    ));
    profile::reset();
    (text, serde_json::Value::Object(json))
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
    let chunk = args.prefill_chunk.unwrap_or(RunOptions::default().prefill_chunk);
    if chunk == 0 {
        anyhow::bail!("--prefill-chunk must be at least 1");
    }
    let model = args.model.load()?;
    let ctx = model.config.context_length;
    profile::enable(args.profile);
    let kv_policy = args.kv.build(&model)?;
    let mut rows = Vec::new();
    // One measurement: a line, the stage breakdown when asked, a JSON row.
    let mut report = |mut row: serde_json::Value, line: String, secs: f64| {
        let rss = peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0;
        let (breakdown, stages) = profile_report(secs);
        row["seconds"] = serde_json::json!(secs);
        row["peak_rss_mib"] = serde_json::json!(rss);
        if args.profile {
            row["stages"] = stages;
        }
        if !args.json {
            println!("{line}  peak RSS {rss:>7.0} MiB");
            if args.profile {
                print!("{breakdown}");
            }
        }
        rows.push(row);
    };
    let decode_at =
        (args.decode_context > 0 && args.decode_tokens > 0).then(|| args.decode_context.min(ctx.saturating_sub(args.decode_tokens)));
    let start_run = |capacity: usize| {
        model.run(
            Hooks::default(),
            RunOptions {
                capacity,
                kv_policy: kv_policy.clone(),
                prefill_chunk: chunk,
                ..Default::default()
            },
        )
    };
    // When the last prefill is as long as the decode measurement's context (or up to its
    // tokens longer: the context was clamped to the model's), the decoding goes on from it, taken
    // back to that context, instead of prefilling the same tokens again.
    let mut prefilled = None;
    for (i, &n) in args.lengths.iter().enumerate() {
        if n > ctx {
            eprintln!("skipping prefill of {n} tokens: the model's context is {ctx}");
            continue;
        }
        let goes_on = i + 1 == args.lengths.len() && decode_at.is_some_and(|d| d <= n && n <= d + args.decode_tokens);
        let tokens = bench_tokens(&model, n);
        let mut run = start_run(match decode_at {
            Some(d) if goes_on => d + args.decode_tokens,
            _ => n,
        })?;
        profile::reset();
        let start = Instant::now();
        run.prefill(&tokens).with_context(|| format!("prefill of {n} tokens"))?;
        let secs = start.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        report(
            serde_json::json!({"phase": "prefill", "tokens": n, "tokens_per_s": rate, "kv_bytes": run.cache().bytes()}),
            format!("prefill {n:>6} tokens                {secs:>8.2} s  {rate:>8.1} tok/s"),
            secs,
        );
        if goes_on {
            prefilled = Some(run);
        }
    }
    if let Some(n) = decode_at {
        let tokens = bench_tokens(&model, n + args.decode_tokens);
        let mut run = match prefilled.and_then(|mut run| run.truncate(n).ok().map(|()| run)) {
            Some(run) => run,
            None => {
                let mut run = start_run(n + args.decode_tokens)?;
                run.prefill(&tokens[..n])?;
                run
            }
        };
        profile::reset();
        let start = Instant::now();
        for &t in &tokens[n..] {
            run.decode(t)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = args.decode_tokens as f64 / secs;
        report(
            serde_json::json!({"phase": "decode", "context": n, "tokens": args.decode_tokens, "tokens_per_s": rate, "kv_bytes": run.cache().bytes()}),
            format!(
                "decode  {:>6} tokens after {n:>6}  {secs:>8.2} s  {rate:>8.1} tok/s",
                args.decode_tokens
            ),
            secs,
        );
    }
    if args.json {
        let out = serde_json::json!({
            "model": args.model.model,
            "threads": rayon::current_num_threads(),
            "precision": model.precision().name(),
            "prefill_chunk": chunk,
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
