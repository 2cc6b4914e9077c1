//! The one loop every experiment runs its trials with: skip what a folder already holds, run the
//! rest (this shard's share) in order with a progress bar and ETA, append each record durably.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::niah::grid::Grid;
use crate::niah::trial::{Condition, PrefixCache, TrialRecord, TrialRunner, TrialSpec};
use crate::store::{check_settings, Keyed, Shard, TrialStore};

/// Run the trials of `specs` missing from the run folder `dir`; returns every record there.
pub fn run_pending<S, R>(
    dir: &Path,
    settings: &serde_json::Value,
    specs: &[S],
    label: &str,
    mut run: impl FnMut(&S) -> Result<R>,
) -> Result<Vec<R>>
where
    S: Keyed,
    R: Serialize + DeserializeOwned + Keyed + Status,
{
    check_settings(dir, settings)?;
    let mut store: TrialStore<R> = TrialStore::open(dir)?;
    if store.repaired {
        eprintln!(
            "note: the last record in {} was cut off mid-write; that trial runs again",
            dir.display()
        );
    }
    let todo: Vec<&S> = specs.iter().filter(|s| !store.has(&s.key())).collect();
    if !todo.is_empty() {
        let bar = crate::progress::bar(specs.len() as u64, label);
        bar.set_position((specs.len() - todo.len()) as u64);
        for spec in todo {
            let record = run(spec).with_context(|| format!("trial {}", spec.key()))?;
            bar.set_message(record.status());
            store.append(record)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    Ok(store.records)
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

/// Run a NIAH grid (this shard's share) under one condition into `dir`; returns every record
/// there, in the grid's order.
///
/// With the grid's prefix cache on, the trials run in the lexicographic order of their prompt
/// tokens: a depth-first walk of the tree of their prefixes, in which each trial continues from
/// what it shares with the one before (see [`PrefixCache`]), so every shared prefix is computed
/// once. What was reused is written to `prefix_cache.json` and printed.
pub fn run_niah(
    runner: &TrialRunner<'_>,
    grid: &Grid,
    shard: Option<Shard>,
    condition: &Condition,
    dir: &Path,
    settings: &serde_json::Value,
    label: &str,
) -> Result<Vec<TrialRecord>> {
    let specs = grid.shard_trials(shard);
    let mut records = if grid.prefix_cache {
        let prompts = specs.iter().map(|s| Ok(runner.prompt(s)?.ids)).collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by(|&a, &b| prompts[a].cmp(&prompts[b]));
        let ordered: Vec<TrialSpec> = order.iter().map(|&i| specs[i]).collect();
        let mut cache = PrefixCache::new(prompts.iter().map(Vec::len).max().unwrap_or(0));
        let records = run_pending(dir, settings, &ordered, label, |spec| {
            runner.run_from(spec, condition, Some(&mut cache))
        })?;
        if cache.prompt_tokens > 0 {
            write_prefix_stats(dir, &cache)?;
        }
        records
    } else {
        let records = run_pending(dir, settings, &specs, label, |spec| runner.run(spec, condition))?;
        std::fs::remove_file(dir.join("prefix_cache.json")).ok();
        records
    };
    let rank: HashMap<String, usize> = grid.trials().iter().enumerate().map(|(i, s)| (s.key(), i)).collect();
    records.sort_by_key(|r| rank.get(&r.spec.key()).copied().unwrap_or(usize::MAX));
    Ok(records)
}

/// `prefix_cache.json`: how much of the prompts of the trials this invocation ran came from the
/// cache.
fn write_prefix_stats(dir: &Path, cache: &PrefixCache<'_>) -> Result<()> {
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
    std::fs::write(dir.join("prefix_cache.json"), serde_json::to_string_pretty(&stats)?)
        .with_context(|| format!("writing {}", dir.join("prefix_cache.json").display()))
}
