//! `headhunt merge`: join the folders of a sharded run.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::detect;
use crate::niah::trial::TrialRecord;
use crate::retrieval::ScoreVariant;
use crate::store::{check_settings, read_settings, Keyed, TrialStore};

/// Join run folders made with --shard i/n (same settings) into one folder, without repeating a
/// trial, and write that command's aggregate outputs.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shard folders.
    #[arg(required = true, num_args = 1..)]
    pub shards: Vec<PathBuf>,
    /// Folder for the merged run (may be one of the shards).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Scoring for the merged head scores (detect runs).
    #[arg(long, value_enum, default_value_t = ScoreVariant::Paper)]
    pub score_variant: ScoreVariant,
}

pub fn run(args: Args) -> Result<()> {
    let settings = read_settings(&args.shards[0])?;
    for s in &args.shards[1..] {
        if read_settings(s)? != settings {
            bail!("{} and {} were run with different settings", args.shards[0].display(), s.display());
        }
    }
    match settings["command"].as_str() {
        Some("detect") => {}
        other => bail!("merging `{}` runs is not supported", other.unwrap_or("unknown")),
    }
    check_settings(&args.out, &settings)?;
    let mut merged: TrialStore<TrialRecord> = TrialStore::open(&args.out)?;
    let mut added = 0;
    for s in &args.shards {
        if s.canonicalize().ok() == args.out.canonicalize().ok() {
            continue;
        }
        for r in TrialStore::<TrialRecord>::open(s)?.records {
            if !merged.has(&r.key()) {
                merged.append(r)?;
                added += 1;
            }
        }
    }
    let report = detect::write_outputs(&args.out, &settings, &merged.records, args.score_variant)?;
    eprintln!(
        "merged {added} new trials into {} ({} in all)",
        args.out.display(),
        merged.records.len()
    );
    print!("{}", report.table(20));
    Ok(())
}
