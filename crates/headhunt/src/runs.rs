//! The one loop every experiment runs its trials with: skip what a folder already holds, run the
//! rest (this shard's share) in order with a progress bar and ETA, append each record durably.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::niah::grid::Grid;
use crate::niah::trial::{Condition, TrialRecord, TrialRunner, TrialSpec};
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

/// Run a NIAH grid (this shard's share) under one condition into `dir`.
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
    run_pending(dir, settings, &specs, label, |spec| runner.run(spec, condition))
}
