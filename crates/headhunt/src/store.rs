//! Durable, resumable experiment runs: an output folder holds the run's settings (`run.json`)
//! and an append-only `trials.jsonl`, one record per finished trial, each written with one
//! `write` and flushed to disk. Rerunning with the same folder skips what is done; a line torn by
//! a kill mid-write is cut off and its trial run again. Shards write separate folders that
//! `headhunt merge` joins.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
}

/// `--shard i/n`: this process runs trials `k` with `k % n == i - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: write i/n with 1 <= i <= n, e.g. 2/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index - 1
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
        std::fs::write(&path, serde_json::to_string_pretty(settings)?)?;
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
        Ok(TrialStore { path, records, repaired })
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

    #[test]
    fn shards_partition_the_grid() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for k in 0..30 {
            assert_eq!(shards.iter().filter(|s| s.takes(k)).count(), 1);
        }
        assert!("0/3".parse::<Shard>().is_err() && "4/3".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
    }
}
