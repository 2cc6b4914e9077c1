//! `headhunt cache`: run a prompt and save chosen activations as NumPy arrays.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use headhunt_engine::npy::NpzWriter;
use headhunt_engine::{Capture, HookPoint, Hooks, Positions, RunOptions};

use super::ModelArg;

/// Run one prompt and write the chosen hook activations and the logits to an .npz file.
///
/// Arrays are named by hook (e.g. `blocks.3.attn.hook_z`), each with its query positions in
/// `<hook>.positions`. Shapes: residual-stream hooks `[pos, d_model]`; `hook_z` `[pos, head,
/// d_head]`; `hook_result` `[pos, head, d_model]`; `hook_pattern` `[head, pos, key]` (keys padded
/// with zeros to the longest row); `logits` `[pos, vocab]`; `tokens` the prompt's token ids.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Send the prompt through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Hook names in TransformerLens form, `*` for every layer: blocks.*.hook_resid_post,
    /// blocks.3.attn.hook_pattern, blocks.3.attn.hook_z, blocks.3.attn.hook_result,
    /// blocks.3.hook_mlp_out, blocks.3.mlp.hook_post, ln_final.hook_normalized.
    #[arg(long, num_args = 1.., required = true)]
    pub hooks: Vec<String>,
    /// Positions to record: `all`, `last`, or a comma list (negative counts from the end).
    #[arg(long, default_value = "all")]
    pub positions: String,
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

fn parse_positions(spec: &str, len: usize) -> Result<Positions> {
    match spec {
        "all" => return Ok(Positions::All),
        "last" => return Ok(Positions::Last),
        _ => {}
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        let v: i64 = part
            .trim()
            .parse()
            .with_context(|| format!("bad position `{part}` (all, last, or integers)"))?;
        let p = if v < 0 { len as i64 + v } else { v };
        if p < 0 || p >= len as i64 {
            bail!("position {v} is outside the prompt ({len} tokens)");
        }
        out.push(p as usize);
    }
    out.sort_unstable();
    out.dedup();
    Ok(Positions::At(out))
}

fn expand(name: &str, n_layers: usize) -> Result<Vec<HookPoint>> {
    if name.contains('*') {
        (0..n_layers).map(|l| Ok(name.replace('*', &l.to_string()).parse()?)).collect()
    } else {
        Ok(vec![name.parse()?])
    }
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let c = &model.config;
    let tok = model.tokenizer()?;
    let prompt = tok.encode_prompt(&args.prompt, args.chat)?;
    let positions = parse_positions(&args.positions, prompt.len())?;
    let mut points = Vec::new();
    for h in &args.hooks {
        points.extend(expand(h, c.n_layers)?);
    }
    points.push(HookPoint::Logits);
    points.sort();
    points.dedup();
    let mut hooks = Hooks::default();
    for &p in &points {
        hooks = hooks.capture(Capture::new(p, positions.clone()));
    }
    let mut run = model.run(
        hooks,
        RunOptions {
            capacity: prompt.len(),
            ..Default::default()
        },
    )?;
    run.prefill(&prompt)?;
    let rec = &run.recording;

    let mut npz = NpzWriter::create(&args.out)?;
    npz.add("tokens", &[prompt.len()], &prompt)?;
    for &p in &points {
        let name = p.to_string();
        if let HookPoint::Pattern(l) = p {
            let rows = rec.patterns.get(&l).map(Vec::as_slice).unwrap_or_default();
            let keys = rows.iter().map(|r| r.n_keys).max().unwrap_or(0);
            let mut dense = vec![0.0f32; c.n_heads * rows.len() * keys];
            for (i, r) in rows.iter().enumerate() {
                for h in 0..c.n_heads {
                    let dst = (h * rows.len() + i) * keys;
                    dense[dst..dst + r.n_keys].copy_from_slice(&r.probs[h * r.n_keys..(h + 1) * r.n_keys]);
                }
            }
            let pos: Vec<u32> = rows.iter().map(|r| r.position as u32).collect();
            npz.add(&name, &[c.n_heads, rows.len(), keys], &dense)?;
            npz.add(&format!("{name}.positions"), &[pos.len()], &pos)?;
            continue;
        }
        let Some(rows) = rec.get(p) else { continue };
        let mut shape = vec![rows.positions.len()];
        shape.extend(p.row_shape(c));
        let pos: Vec<u32> = rows.positions.iter().map(|&p| p as u32).collect();
        npz.add(&name, &shape, &rows.data)?;
        npz.add(&format!("{name}.positions"), &[pos.len()], &pos)?;
    }
    npz.finish()?;
    eprintln!("{} tokens; wrote {} hooks to {}", prompt.len(), points.len(), args.out.display());
    Ok(())
}
