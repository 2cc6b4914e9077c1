//! `headhunt merge`: join the folders of a sharded run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::experiments::retrieval::niah::trial::TrialRecord;
use crate::experiments::retrieval::outputs::write_detection;
use crate::experiments::retrieval::ScoreVariant;
use crate::runner::shard::{shard_folders, Shard};
use crate::runner::store::{check_settings, read_settings, Keyed, Progress, ResumePlan, TrialStore};

/// Join the shards of a split run (`--shard`) into one run folder, without repeating a trial, and
/// write the command's aggregate outputs (head scores, summary, heatmap, report).
///
///   headhunt merge runs/detect-x --expect 8    # runs/detect-x/shards/*, into runs/detect-x
///   headhunt merge A B C --out M               # shard folders named one by one
///
/// Merging again after more trials finished adds only those.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder whose `shards/` holds the shards (merged into it), or the shard folders
    /// themselves (with --out).
    #[arg(required = true, num_args = 1..)]
    pub folders: Vec<PathBuf>,
    /// Folder for the merged run (may be one of the shards). [default: the run folder, when one
    /// is given]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Merge only when shards 1 to N are all there and finished; otherwise name the missing and
    /// unfinished ones and stop (for a job that runs after the shards, e.g. a Slurm dependency).
    #[arg(long, value_name = "N")]
    pub expect: Option<usize>,
    /// Scoring for the merged head scores (detect runs).
    #[arg(long, value_enum, default_value_t = ScoreVariant::Paper)]
    pub score_variant: ScoreVariant,
}

pub fn run(args: Args) -> Result<()> {
    let (shards, out) = match (&args.folders[..], &args.out) {
        ([run], None) => {
            let shards = shard_folders(run)?;
            if shards.is_empty() {
                bail!(
                    "{} holds no shards (no {}/*); name the shard folders, or run with --shard",
                    run.display(),
                    crate::runner::shard::SHARDS_DIR
                );
            }
            (shards, run.clone())
        }
        ([run], Some(out)) if run.join(crate::runner::shard::SHARDS_DIR).is_dir() => (shard_folders(run)?, out.clone()),
        (folders, Some(out)) => (folders.to_vec(), out.clone()),
        (_, None) => bail!("name the merged run's folder with --out"),
    };
    let progress = shards.iter().map(|s| Progress::read(s)).collect::<Result<Vec<_>>>()?;
    match args.expect {
        Some(n) => check_complete(&progress, n, &out)?,
        None => {
            for p in progress.iter().filter(|p| !p.finished()) {
                eprintln!("note: {} is not finished ({}); merging what it has", p.dir.display(), done_of(p));
            }
        }
    }
    let settings = read_settings(&shards[0])?;
    for s in &shards[1..] {
        if read_settings(s)? != settings {
            bail!("{} and {} were run with different settings", shards[0].display(), s.display());
        }
    }
    match settings["command"].as_str() {
        Some("detect") => {}
        other => bail!("merging `{}` runs is not supported", other.unwrap_or("unknown")),
    }
    check_settings(&out, &settings)?;
    let mut merged: TrialStore<TrialRecord> = TrialStore::open(&out)?;
    merged.lock()?;
    let mut added = 0;
    for s in &shards {
        if s.canonicalize().ok() == out.canonicalize().ok() {
            continue;
        }
        for r in TrialStore::<TrialRecord>::open(s)?.records {
            if !merged.has(&r.key()) {
                merged.append(r)?;
                added += 1;
            }
        }
    }
    if let Some(plan) = whole_plan(&progress) {
        plan.write(&out)?;
    }
    carry_model_card(&shards, &out)?;
    let report = write_detection(&out, &settings, &merged.records, args.score_variant)?;
    eprintln!(
        "merged {added} new trials from {} shards into {} ({} in all)",
        shards.len(),
        out.display(),
        merged.records.len()
    );
    print!("{}", report.table(20));
    super::finish_with_report(&out)
}

fn done_of(p: &Progress) -> String {
    match p.plan {
        Some(plan) => format!("{} of {} trials", p.done, plan.trials),
        None => format!("{} trials, no {}", p.done, crate::runner::store::PLAN_FILE),
    }
}

/// Refuse unless shards 1/n to n/n are among `shards`, each finished; the error names every
/// shard that is missing or unfinished.
fn check_complete(shards: &[Progress], n: usize, run: &Path) -> Result<()> {
    if n == 0 {
        bail!("--expect takes the number of shards, at least 1");
    }
    let mut problems = Vec::new();
    for p in shards {
        match p.plan {
            None => problems.push(format!(
                "{}: no {} (not a shard, or from an older headhunt)",
                p.dir.display(),
                crate::runner::store::PLAN_FILE
            )),
            Some(ResumePlan { shard: Some(s), .. }) if s.count == n => {}
            Some(ResumePlan { shard, .. }) => problems.push(format!(
                "{} is {}, not one of {n}",
                p.dir.display(),
                shard.map_or("a whole run".to_owned(), |s| format!("shard {s}"))
            )),
        }
    }
    for index in 1..=n {
        let shard = Shard { index, count: n };
        let found: Vec<&Progress> = shards.iter().filter(|p| p.plan.and_then(|p| p.shard) == Some(shard)).collect();
        match found[..] {
            [] => problems.push(format!("shard {shard} is missing (no {})", shard.folder(run).display())),
            [p] if !p.finished() => problems.push(format!("shard {shard} is unfinished: {} in {}", done_of(p), p.dir.display())),
            [_] => {}
            _ => problems.push(format!("shard {shard} is there {} times", found.len())),
        }
    }
    if !problems.is_empty() {
        bail!("not merging: {}", problems.join("; "));
    }
    Ok(())
}

/// The merged folder's plan, when the shards are every shard of one split (the sum of theirs).
fn whole_plan(shards: &[Progress]) -> Option<ResumePlan> {
    let plans: Vec<ResumePlan> = shards.iter().map(|p| p.plan).collect::<Option<_>>()?;
    let count = plans.first()?.shard?.count;
    let mut indices: Vec<usize> = plans
        .iter()
        .map(|p| p.shard.filter(|s| s.count == count).map(|s| s.index))
        .collect::<Option<_>>()?;
    indices.sort_unstable();
    indices.dedup();
    (indices.len() == count).then(|| ResumePlan {
        shard: None,
        trials: plans.iter().map(|p| p.trials).sum(),
    })
}

/// The shards' model card, for the merged run's report.
fn carry_model_card(shards: &[PathBuf], out: &Path) -> Result<()> {
    let target = out.join("model.json");
    match shards.iter().map(|s| s.join("model.json")).find(|c| c.exists()) {
        Some(card) if card != target => {
            let text = std::fs::read(&card).with_context(|| format!("reading {}", card.display()))?;
            crate::runner::store::write_atomic(&target, text)
        }
        _ => Ok(()),
    }
}
