//! `headhunt status`: how far a run (sharded or whole) has come, and when it will end.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use indicatif::HumanDuration;

use crate::experiments::retrieval::niah::grid::GridShape;
use crate::runner::shard::{Shard, SHARDS_DIR};
use crate::runner::store::{read_settings, Progress, PLAN_FILE, TRIALS_FILE};

/// Show a run's progress: per shard (and per condition folder), trials done against planned,
/// seconds per trial, time since the last record, and an ETA. Reads the folders only, so it is
/// safe beside running shards, from any machine that sees the filesystem.
///
/// The ETA of a split run assumes its shards run at the same time, each at its own pace so far
/// (a shard with no trials yet at the others' mean); a whole run's folders run one after another.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run folder (the --out of the command, sharded or not).
    pub dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let mut folders = Vec::new();
    run_folders(&args.dir, 3, &mut folders);
    if folders.is_empty() {
        bail!(
            "{} holds no headhunt run (no {TRIALS_FILE} or {PLAN_FILE} in it or below)",
            args.dir.display()
        );
    }
    let progress = folders.iter().map(|f| Progress::read(f)).collect::<Result<Vec<_>>>()?;
    // The whole grid's size, from the settings of a run over a NIAH grid.
    let grid_trials = folders
        .iter()
        .find_map(|f| read_settings(f).ok())
        .and_then(|s| GridShape::of_settings(&s).ok())
        .map(|g| g.trials().len());
    print!("{}", render(&args.dir, &progress, grid_trials, SystemTime::now()));
    Ok(())
}

/// Folders at or below `dir` (to `depth` levels) that hold a run's trials or plan.
fn run_folders(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join(TRIALS_FILE).exists() || dir.join(PLAN_FILE).exists() {
        out.push(dir.to_path_buf());
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut subs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subs.sort();
    for s in subs {
        run_folders(&s, depth - 1, out);
    }
}

/// Which shard a folder belongs to, as its plan says.
fn shard_of(p: &Progress) -> Option<Shard> {
    p.plan.and_then(|plan| plan.shard)
}

/// The status table and its totals.
pub fn render(root: &Path, folders: &[Progress], grid_trials: Option<usize>, now: SystemTime) -> String {
    let timed: Vec<f64> = folders.iter().filter_map(|p| p.seconds_per_trial).collect();
    let pace = (!timed.is_empty()).then(|| timed.iter().sum::<f64>() / timed.len() as f64);
    // Seconds a folder still needs, if its plan and some pace are known.
    let remaining = |p: &Progress| Some(p.left()? as f64 * p.seconds_per_trial.or(pace)?);
    let mut out = format!(
        "{:<34} {:>7} {:>15} {:>9} {:>13} {:>12}\n",
        "folder", "shard", "trials", "s/trial", "last record", "ETA"
    );
    for p in folders {
        let name = p
            .dir
            .strip_prefix(root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .map_or(".".into(), |r| r.display().to_string());
        let trials = match p.plan {
            Some(plan) => format!("{} / {}", p.done, plan.trials),
            None => format!("{} / ?", p.done),
        };
        let last = p.last_write.filter(|_| p.done > 0).map_or("-".into(), |t| {
            format!("{} ago", HumanDuration(now.duration_since(t).unwrap_or_default()))
        });
        let eta = if p.finished() {
            "done".into()
        } else {
            remaining(p).map_or("?".into(), |s| HumanDuration(Duration::from_secs_f64(s)).to_string())
        };
        out.push_str(&format!(
            "{:<34} {:>7} {:>15} {:>9} {:>13} {:>12}\n",
            name,
            shard_of(p).map_or("-".into(), |s| s.to_string()),
            trials,
            p.seconds_per_trial.map_or("-".into(), |s| format!("{s:.1}")),
            last,
            eta
        ));
    }
    out.push_str(&totals(root, folders, &remaining, pace, grid_trials));
    out
}

/// One shard's folders taken together (a whole run is one "shard" of its own).
struct Part {
    done: usize,
    planned: Option<usize>,
    /// Seconds of work left, if its plan and a pace are known.
    left: Option<f64>,
    started: bool,
    finished: bool,
}

impl Part {
    fn of(folders: &[&Progress], remaining: &dyn Fn(&Progress) -> Option<f64>) -> Part {
        Part {
            done: folders.iter().map(|p| p.done).sum(),
            planned: folders.iter().map(|p| p.plan.map(|plan| plan.trials)).sum(),
            left: folders.iter().map(|p| if p.finished() { Some(0.0) } else { remaining(p) }).sum(),
            started: !folders.is_empty(),
            finished: !folders.is_empty() && folders.iter().all(|p| p.finished()),
        }
    }
}

/// The last line: trials done against planned over the shards (or the whole run) and the ETA.
/// `grid_trials`, the whole grid's trial count when the run's settings give it, sizes the shards
/// that have not started.
fn totals(
    root: &Path,
    folders: &[Progress],
    remaining: &dyn Fn(&Progress) -> Option<f64>,
    pace: Option<f64>,
    grid_trials: Option<usize>,
) -> String {
    let sharded: Vec<&Progress> = folders.iter().filter(|p| shard_of(p).is_some()).collect();
    // Split when the folder holds shards (not when it is one).
    let count = sharded
        .iter()
        .find(|p| p.dir.strip_prefix(root).is_ok_and(|r| r.starts_with(SHARDS_DIR)))
        .and_then(|p| shard_of(p))
        .map(|s| s.count);
    // A merged run's own folder repeats its shards' trials: only the shards count when there are any.
    let parts: Vec<Part> = match count {
        None => vec![Part::of(&folders.iter().collect::<Vec<_>>(), remaining)],
        Some(count) => {
            let of = |i: usize| -> Vec<&Progress> {
                sharded
                    .iter()
                    .copied()
                    .filter(|p| shard_of(p).map(|s| s.index) == Some(i))
                    .collect()
            };
            // Folders per shard: its conditions (one for detect, several for ablate).
            let conditions = (1..=count).map(|i| of(i).len()).max().unwrap_or(1);
            (1..=count)
                .map(|i| {
                    let mut part = Part::of(&of(i), remaining);
                    if !part.started {
                        part.planned = grid_trials.map(|t| Shard { index: i, count }.share(t) * conditions);
                        part.left = part.planned.zip(pace).map(|(n, s)| n as f64 * s);
                    }
                    part
                })
                .collect()
        }
    };
    let done: usize = parts.iter().map(|p| p.done).sum();
    let planned: Option<usize> = parts.iter().map(|p| p.planned).sum();
    let mut line = match planned {
        Some(total) if total > 0 => format!("{done} of {total} trials ({:.0}%)", 100.0 * done as f64 / total as f64),
        _ => format!("{done} trials"),
    };
    if let Some(count) = count {
        let finished = parts.iter().filter(|p| p.finished).count();
        line.push_str(&format!(", {finished} of {count} shards finished"));
        let missing: Vec<String> = (1..=count)
            .filter(|&i| !parts[i - 1].started)
            .map(|i| format!("{i}/{count}"))
            .collect();
        if !missing.is_empty() {
            line.push_str(&format!(", not started: {}", missing.join(" ")));
        }
    }
    if planned.is_some_and(|t| done >= t) {
        return line + "; done\n";
    }
    // Shards run side by side; a whole run's folders one after another.
    let eta = parts
        .iter()
        .map(|p| p.left)
        .collect::<Option<Vec<f64>>>()
        .map(|v| v.into_iter().fold(0.0, f64::max));
    match eta {
        Some(s) => line.push_str(&format!("; ETA {}", HumanDuration(Duration::from_secs_f64(s)))),
        None => line.push_str("; ETA unknown (no plan, or no trial finished yet)"),
    }
    line + "\n"
}
