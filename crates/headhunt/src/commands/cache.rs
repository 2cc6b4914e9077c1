//! `headhunt cache`: run a prompt and save chosen activations as NumPy arrays.

use std::path::PathBuf;

use anyhow::Result;
use headhunt_engine::npy::NpzWriter;
use headhunt_engine::HookPoint;

use super::ModelArg;
use crate::output::activations;

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

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let c = &model.config;
    let tok = model.tokenizer()?;
    let prompt = tok.encode_prompt(&args.prompt, args.chat)?;
    let positions = activations::parse_positions(&args.positions, prompt.len())?;
    let mut names = args.hooks.clone();
    names.push(HookPoint::Logits.to_string());
    let points = activations::expand_hooks(&names, c.n_layers)?;
    let rec = activations::record(&model, &prompt, &points, &positions, Vec::new())?;

    let mut npz = NpzWriter::create(&args.out)?;
    npz.add("tokens", &[prompt.len()], &prompt)?;
    for &p in &points {
        let Some(dense) = activations::dense(&rec, p, c) else { continue };
        let mut data = vec![0.0f32; dense.len()];
        activations::fill(&rec, p, c, &mut data);
        let name = p.to_string();
        npz.add(&name, &dense.shape, &data)?;
        npz.add(&format!("{name}.positions"), &[dense.positions.len()], &dense.positions)?;
    }
    npz.finish()?;
    eprintln!("{} tokens; wrote {} hooks to {}", prompt.len(), points.len(), args.out.display());
    Ok(())
}
