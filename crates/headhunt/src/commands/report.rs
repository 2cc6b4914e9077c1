//! `headhunt report`: one self-contained HTML page of every run under a folder.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Write DIR/report.html: the model card, retrieval heatmaps (values on hover), top heads, NIAH
/// heatmaps per condition, the K sweep, failure examples, factual-recall tables and plots, the
/// KV budget curve, and the commands that made each part. Opens in any browser, offline.
/// detect, niah, ablate, qa, recall and kv write one for their own folder when they finish.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The folder holding headhunt runs (searched four levels deep).
    #[arg(default_value = "runs")]
    pub dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    if !args.dir.is_dir() {
        bail!("{} is not a folder of headhunt runs", args.dir.display());
    }
    super::finish_with_report(&args.dir)
}
