//! Durable, resumable experiment runs: an output folder holds the run's settings (`run.json`)
//! and an append-only `trials.jsonl`, one record per finished trial, each written with one
//! `write` and flushed to disk. Rerunning with the same folder skips what is done; a line torn by
//! a kill mid-write is cut off and its trial run again. `plan.json` says how many trials the
//! folder will hold (and which shard it is), so `headhunt status` and `merge --expect` can tell a
//! finished folder from an unfinished one. Every other file is replaced whole, by an atomic
//! rename: a reader on a shared filesystem sees the old file or the new one, never half of one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::runner::shard::Shard;

/// A record with a stable identity, so a resumed or merged run never holds a trial twice.
pub trait Keyed {
    fn key(&self) -> String;
}

pub const SETTINGS_FILE: &str = "run.json";
pub const TRIALS_FILE: &str = "trials.jsonl";

pub struct TrialStore<R> {
    path: PathBuf,
    pub records: Vec<R>,
    /// Trials cut off by an interrupted write and dropped on open.
    pub repaired: bool,
    /// Held while this process writes the folder (see [`TrialStore::lock`]).
    lock: Option<File>,
}

pub const PLAN_FILE: &str = "plan.json";

/// Replace `path` whole: write a temporary file beside it, flush it to disk, rename it over
/// `path`. Readers (another shard, `headhunt status`, a merge) see the old file or the new one.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(contents.as_ref())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// What a run folder is to hold: `trials` records, as shard `shard` of a split run or whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePlan {
    pub shard: Option<Shard>,
    pub trials: usize,
}

impl ResumePlan {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::json!({"shard": self.shard.map(|s| s.to_string()), "trials": self.trials});
        write_atomic(&dir.join(PLAN_FILE), serde_json::to_string_pretty(&json)?)
    }

    /// The plan of a run folder; `None` when it has none (not a run, or one from before plans).
    pub fn read(dir: &Path) -> Result<Option<ResumePlan>> {
        let path = dir.join(PLAN_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let bad = || format!("{} is not a headhunt plan", path.display());
        let json: serde_json::Value = serde_json::from_str(&text).with_context(bad)?;
        let trials = json["trials"].as_u64().with_context(bad)? as usize;
        let shard = match &json["shard"] {
            serde_json::Value::Null => None,
            v => Some(v.as_str().and_then(|s| s.parse().ok()).with_context(bad)?),
        };
        Ok(Some(ResumePlan { shard, trials }))
    }
}

/// How far a run folder has come, read without taking its lock (the run may be going on).
#[derive(Debug, Clone)]
pub struct Progress {
    pub dir: PathBuf,
    pub plan: Option<ResumePlan>,
    /// Complete records in `trials.jsonl`.
    pub done: usize,
    /// Mean of the records' `seconds`, where they have it.
    pub seconds_per_trial: Option<f64>,
    /// When the last record was written.
    pub last_write: Option<std::time::SystemTime>,
}

impl Progress {
    pub fn read(dir: &Path) -> Result<Progress> {
        let path = dir.join(TRIALS_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // Complete lines only: the last may be a record being written.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let seconds: Vec<Option<f64>> = complete
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["seconds"].as_f64())
            })
            .collect();
        let timed: Vec<f64> = seconds.iter().flatten().copied().collect();
        Ok(Progress {
            dir: dir.to_path_buf(),
            plan: ResumePlan::read(dir)?,
            done: seconds.len(),
            seconds_per_trial: (!timed.is_empty()).then(|| timed.iter().sum::<f64>() / timed.len() as f64),
            last_write: std::fs::metadata(&path).and_then(|m| m.modified()).ok(),
        })
    }

    /// Trials still to run, if the plan is known.
    pub fn left(&self) -> Option<usize> {
        self.plan.map(|p| p.trials.saturating_sub(self.done))
    }

    pub fn finished(&self) -> bool {
        self.left() == Some(0)
    }
}

/// Check `run.json` in `dir` against `settings` (writing it if absent).
pub fn check_settings(dir: &Path, settings: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(SETTINGS_FILE);
    if path.exists() {
        let old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{} is not valid JSON", path.display()))?;
        if &old != settings {
            let differing: Vec<String> = settings
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| old.get(k.as_str()) != Some(v))
                .map(|(k, _)| k.clone())
                .collect();
            bail!(
                "{} holds a run with other settings (differing: {}); use another --out or the same settings",
                dir.display(),
                differing.join(", ")
            );
        }
    } else {
        write_atomic(&path, serde_json::to_string_pretty(settings)?)?;
    }
    Ok(())
}

pub fn read_settings(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(SETTINGS_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{} is not a headhunt run folder (no {SETTINGS_FILE})", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

impl<R: Serialize + DeserializeOwned + Keyed> TrialStore<R> {
    /// Open (or create) the trials of a run folder, repairing a torn last line.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(TRIALS_FILE);
        let mut records = Vec::new();
        let mut repaired = false;
        if path.exists() {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut good_end = 0;
            let mut start = 0;
            while start < bytes.len() {
                let end = bytes[start..].iter().position(|&b| b == b'\n').map(|i| start + i);
                let line = &bytes[start..end.unwrap_or(bytes.len())];
                let parsed = std::str::from_utf8(line).ok().and_then(|l| serde_json::from_str::<R>(l).ok());
                match (parsed, end) {
                    (Some(r), Some(e)) => {
                        records.push(r);
                        good_end = e + 1;
                        start = e + 1;
                    }
                    // An unterminated or unparsable last line: a write cut short. Drop it.
                    (_, None) => {
                        repaired = true;
                        break;
                    }
                    (None, Some(_)) => {
                        let n = bytes[..start].iter().filter(|&&b| b == b'\n').count() + 1;
                        bail!(
                            "{}:{n}: not a trial record; the file was edited or belongs to another tool",
                            path.display()
                        );
                    }
                }
            }
            if repaired {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good_end as u64)?;
                f.sync_all()?;
            }
        }
        Ok(TrialStore {
            path,
            records,
            repaired,
            lock: None,
        })
    }

    /// Take the folder for this process alone until the store is dropped: a shard started twice
    /// (a requeued job whose first run still lives) must not write the same trials twice. Where
    /// the filesystem has no locks, this does nothing.
    pub fn lock(&mut self) -> Result<()> {
        let path = self.path.with_file_name(".lock");
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => self.lock = Some(f),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another process is writing {} (the same run or shard started twice?); wait for it or stop it",
                self.path.parent().unwrap_or(&self.path).display()
            ),
            Err(std::fs::TryLockError::Error(_)) => {}
        }
        Ok(())
    }

    pub fn has(&self, key: &str) -> bool {
        self.records.iter().any(|r| r.key() == key)
    }

    /// Append one record durably.
    pub fn append(&mut self, record: R) -> Result<()> {
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        let mut f: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        self.records.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct R {
        k: u32,
        v: String,
    }
    impl Keyed for R {
        fn key(&self) -> String {
            self.k.to_string()
        }
    }

    #[test]
    fn resume_repairs_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("hh-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s: TrialStore<R> = TrialStore::open(&dir).unwrap();
        s.append(R { k: 1, v: "a".into() }).unwrap();
        s.append(R { k: 2, v: "b".into() }).unwrap();
        // A kill in the middle of the third write.
        let mut f = OpenOptions::new().append(true).open(dir.join(TRIALS_FILE)).unwrap();
        f.write_all(b"{\"k\": 3, \"v\": \"c").unwrap();
        let s: TrialStore<R> = TrialStore::open(&dir).unwrap();
        assert!(s.repaired);
        assert_eq!(s.records.len(), 2);
        assert!(s.has("2") && !s.has("3"));
        let mut s: TrialStore<R> = TrialStore::open(&dir).unwrap();
        assert!(!s.repaired);
        s.append(R { k: 3, v: "c".into() }).unwrap();
        assert_eq!(TrialStore::<R>::open(&dir).unwrap().records.len(), 3);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn settings_must_match() {
        let dir = std::env::temp_dir().join(format!("hh-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        check_settings(&dir, &serde_json::json!({"a": 1, "b": 2})).unwrap();
        check_settings(&dir, &serde_json::json!({"a": 1, "b": 2})).unwrap();
        let e = check_settings(&dir, &serde_json::json!({"a": 1, "b": 3})).unwrap_err().to_string();
        assert!(e.contains("differing: b"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
