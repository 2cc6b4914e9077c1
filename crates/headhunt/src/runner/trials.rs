//! The one loop every experiment runs its trials with: skip what a folder already holds, run the
//! rest (this shard's share) in order with a progress bar and ETA, append each record durably.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::experiments::retrieval::niah::grid::Grid;
use crate::experiments::retrieval::niah::trial::{Condition, PrefixCache, TrialRecord, TrialRunner, TrialSpec};
use crate::runner::shard::Shard;
use crate::runner::store::{check_settings, write_atomic, Keyed, ResumePlan, TrialStore};

/// Run the trials of `specs` (shard `shard`'s, or all) missing from the run folder `dir`;
/// returns every record there.
pub fn run_pending<S, R>(
    dir: &Path,
    settings: &serde_json::Value,
    specs: &[S],
    shard: Option<Shard>,
    label: &str,
    mut run: impl FnMut(&S) -> Result<R>,
) -> Result<Vec<R>>
where
    S: Keyed,
    R: Serialize + DeserializeOwned + Keyed + Status,
{
    let plan = ResumePlan {
        shard,
        trials: specs.len(),
    };
    let mut store: TrialStore<R> = open_store(dir, settings, plan)?;
    let todo: Vec<&S> = specs.iter().filter(|s| !store.has(&s.key())).collect();
    if !todo.is_empty() {
        let bar = crate::runner::progress::bar(specs.len() as u64, label);
        bar.set_position((specs.len() - todo.len()) as u64);
        for spec in todo {
            crate::runner::interrupt::check()?;
            let record = run(spec).with_context(|| format!("trial {}", spec.key()))?;
            bar.set_message(record.status());
            store.append(record)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    Ok(store.records)
}

/// The store of the run folder `dir`, its settings checked against `settings`, locked for this
/// process, its plan written.
fn open_store<R: Serialize + DeserializeOwned + Keyed>(
    dir: &Path,
    settings: &serde_json::Value,
    plan: ResumePlan,
) -> Result<TrialStore<R>> {
    check_settings(dir, settings)?;
    let mut store = TrialStore::open(dir)?;
    store.lock()?;
    plan.write(dir)?;
    if store.repaired {
        eprintln!(
            "note: the last record in {} was cut off mid-write; that trial runs again",
            dir.display()
        );
    }
    Ok(store)
}

/// A few characters about a finished trial, for the progress bar.
pub trait Status {
    fn status(&self) -> String;
}

impl Keyed for TrialSpec {
    fn key(&self) -> String {
        TrialSpec::key(self)
    }
}

impl Status for TrialRecord {
    fn status(&self) -> String {
        format!("ROUGE {:>3.0}", self.rouge1)
    }
}

/// Run a NIAH grid (this process's shard of it) under one condition into `dir`; returns every record
/// there, in the grid's order.
///
/// With the grid's prefix cache on, the trials run in the lexicographic order of their prompt
/// tokens: a depth-first walk of the tree of their prefixes, in which each trial continues from
/// what it shares with the one before (see [`PrefixCache`]), so every shared prefix is computed
/// once. What was reused is written to `prefix_cache.json` and printed.
pub fn run_niah(
    runner: &TrialRunner<'_>,
    grid: &Grid,
    condition: &Condition,
    dir: &Path,
    settings: &serde_json::Value,
    label: &str,
) -> Result<Vec<TrialRecord>> {
    let specs = grid.shard_trials();
    let mut records = if grid.prefix_cache {
        let (ordered, mut cache) = prompt_order(runner, &specs)?;
        let records = run_pending(dir, settings, &ordered, grid.shard, label, |spec| {
            runner.run_from(spec, condition, Some(&mut cache))
        })?;
        if cache.prompt_tokens > 0 {
            write_prefix_stats([dir], &cache)?;
        }
        records
    } else {
        let records = run_pending(dir, settings, &specs, grid.shard, label, |spec| runner.run(spec, condition))?;
        std::fs::remove_file(dir.join("prefix_cache.json")).ok();
        records
    };
    in_grid_order(grid, &mut records);
    Ok(records)
}

/// `specs` in the lexicographic order of their prompts, and a prefix cache for the longest.
fn prompt_order<'m>(runner: &TrialRunner<'m>, specs: &[TrialSpec]) -> Result<(Vec<TrialSpec>, PrefixCache<'m>)> {
    let prompts = specs.iter().map(|s| Ok(runner.prompt(s)?.ids)).collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&a, &b| prompts[a].cmp(&prompts[b]));
    let cache = PrefixCache::new(prompts.iter().map(Vec::len).max().unwrap_or(0));
    Ok((order.iter().map(|&i| specs[i]).collect(), cache))
}

fn in_grid_order(grid: &Grid, records: &mut [TrialRecord]) {
    let rank: HashMap<String, usize> = grid.trials().iter().enumerate().map(|(i, s)| (s.key(), i)).collect();
    records.sort_by_key(|r| rank.get(&r.spec.key()).copied().unwrap_or(usize::MAX));
}

/// One condition of a multi-condition run and the folder it writes.
pub struct ConditionRun {
    pub condition: Condition,
    pub dir: PathBuf,
    pub settings: serde_json::Value,
    pub label: String,
}

/// [`run_niah`] for several conditions, each into its own folder; returns each one's records.
///
/// With the prefix cache on, the conditions whose interventions act in decoding only (and that
/// keep the full cache) share more than prefixes: each trial's prompt is prefilled once and every
/// such condition decodes from it (see [`TrialRunner::run_each`]). The others run one after the
/// other.
pub fn run_niah_conditions(runner: &TrialRunner<'_>, grid: &Grid, runs: &[ConditionRun]) -> Result<Vec<Vec<TrialRecord>>> {
    let decode_only = |c: &Condition| c.kv_policy.is_none() && !c.interventions.iter().any(|i| i.acts_in_prefill());
    let shared: Vec<usize> = (0..runs.len())
        .filter(|&i| grid.prefix_cache && decode_only(&runs[i].condition))
        .collect();
    let mut out: Vec<Option<Vec<TrialRecord>>> = (0..runs.len()).map(|_| None).collect();
    if shared.len() > 1 {
        let records = run_sharing_prefill(runner, grid, &shared.iter().map(|&i| &runs[i]).collect::<Vec<_>>())?;
        for (&i, r) in shared.iter().zip(records) {
            out[i] = Some(r);
        }
    }
    for (i, run) in runs.iter().enumerate() {
        if out[i].is_none() {
            eprintln!("condition {}/{}: {}", i + 1, runs.len(), run.label);
            out[i] = Some(run_niah(runner, grid, &run.condition, &run.dir, &run.settings, &run.label)?);
        }
    }
    Ok(out.into_iter().map(|r| r.expect("every condition ran")).collect())
}

/// The trials of `runs` (conditions that act in decoding only), each prompt prefilled once for
/// all of them, resuming what each folder already holds.
fn run_sharing_prefill(runner: &TrialRunner<'_>, grid: &Grid, runs: &[&ConditionRun]) -> Result<Vec<Vec<TrialRecord>>> {
    let specs = grid.shard_trials();
    let plan = ResumePlan {
        shard: grid.shard,
        trials: specs.len(),
    };
    let mut stores = runs
        .iter()
        .map(|run| open_store::<TrialRecord>(&run.dir, &run.settings, plan))
        .collect::<Result<Vec<_>>>()?;
    let (ordered, mut cache) = prompt_order(runner, &specs)?;
    let todo = |stores: &[TrialStore<TrialRecord>], spec: &TrialSpec| -> Vec<usize> {
        (0..runs.len()).filter(|&c| !stores[c].has(&spec.key())).collect()
    };
    let total = specs.len() * runs.len();
    let missing: usize = ordered.iter().map(|s| todo(&stores, s).len()).sum();
    if missing > 0 {
        let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
        eprintln!("conditions {} share each prompt's prefill", labels.join(", "));
        let bar = crate::runner::progress::bar(total as u64, "trials");
        bar.set_position((total - missing) as u64);
        for spec in &ordered {
            let which = todo(&stores, spec);
            if which.is_empty() {
                continue;
            }
            crate::runner::interrupt::check()?;
            let conditions: Vec<&Condition> = which.iter().map(|&c| &runs[c].condition).collect();
            let records = runner
                .run_each(spec, &conditions, &mut cache)
                .with_context(|| format!("trial {}", spec.key()))?;
            for (&c, record) in which.iter().zip(records) {
                bar.set_message(format!("{}: {}", runs[c].label, record.status()));
                stores[c].append(record)?;
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        write_prefix_stats(runs.iter().map(|r| r.dir.as_path()), &cache)?;
    }
    Ok(stores
        .into_iter()
        .map(|s| {
            let mut records = s.records;
            in_grid_order(grid, &mut records);
            records
        })
        .collect())
}

/// `prefix_cache.json` in each of `dirs`: how much of the prompts of the trials this invocation
/// ran came from the cache; printed once.
fn write_prefix_stats<'a>(dirs: impl IntoIterator<Item = &'a Path>, cache: &PrefixCache<'_>) -> Result<()> {
    let stats = serde_json::json!({
        "prompt_tokens": cache.prompt_tokens,
        "reused_tokens": cache.reused,
        "hit_rate": cache.hit_rate(),
    });
    eprintln!(
        "prefix cache: {:.0}% of prompt tokens reused ({} of {})",
        100.0 * cache.hit_rate(),
        cache.reused,
        cache.prompt_tokens
    );
    for dir in dirs {
        write_atomic(&dir.join("prefix_cache.json"), serde_json::to_string_pretty(&stats)?)?;
    }
    Ok(())
}
