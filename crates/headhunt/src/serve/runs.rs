//! The folder the server shows: every path a request names is resolved inside it or refused, and
//! its run folders are read (never written) as they are, finished or still running.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::runner::store::{PLAN_FILE, SETTINGS_FILE, TRIALS_FILE};

const PROVENANCE_FILE: &str = "provenance.json";

/// A run counts as running while its records changed this recently.
const RUNNING_WITHIN: Duration = Duration::from_secs(120);

/// The folder of runs, canonical.
#[derive(Debug, Clone)]
pub struct RunsDir {
    root: PathBuf,
}

impl RunsDir {
    pub fn new(root: &Path) -> Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("{} is not a folder of headhunt runs", root.display()))?;
        if !root.is_dir() {
            bail!("{} is not a folder", root.display());
        }
        Ok(RunsDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file or folder a request names, relative to the root: plain names only (no `..`, no
    /// absolute path, no backslash or NUL), and after following links still inside the root.
    /// None for anything else, whether or not it exists, so that a refusal says nothing about
    /// what lies outside.
    pub fn resolve(&self, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_start_matches('/');
        if rel.contains('\\') || rel.contains('\0') {
            return None;
        }
        let path = Path::new(rel);
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return None;
        }
        let full = self.root.join(path).canonicalize().ok()?;
        full.starts_with(&self.root).then_some(full)
    }

    /// `path` (inside the root) as the root-relative name requests use.
    pub fn name(&self, path: &Path) -> String {
        let r = path.strip_prefix(&self.root).unwrap_or(path).to_string_lossy().into_owned();
        if r.is_empty() {
            ".".into()
        } else {
            r
        }
    }

    /// Every run folder (a folder with `run.json`, or a command's `provenance.json`) up to four
    /// levels down, in name order;
    /// shards of a merged run are left out (the merged run stands for them).
    pub fn runs(&self) -> Vec<PathBuf> {
        let mut all = Vec::new();
        crate::output::report::folders(&self.root, 4, &mut all);
        all.retain(|d| d.join(SETTINGS_FILE).is_file() || d.join(PROVENANCE_FILE).is_file());
        all
    }
}

pub fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The records of a run folder's `trials.jsonl`, read only: a line still being written (no
/// newline yet) is left for later, and a line of another shape is skipped.
pub fn read_records<R: DeserializeOwned>(dir: &Path) -> Vec<R> {
    let Ok(text) = std::fs::read_to_string(dir.join(TRIALS_FILE)) else {
        return Vec::new();
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// What the runs page says of a run: its command, model, progress and status.
pub fn describe(runs: &RunsDir, dir: &Path) -> Value {
    let settings = read_json(&dir.join(SETTINGS_FILE)).unwrap_or(Value::Null);
    let done = std::fs::read_to_string(dir.join(TRIALS_FILE)).map_or(0, |t| t.matches('\n').count());
    let planned = read_json(&dir.join(PLAN_FILE)).and_then(|p| p["trials"].as_u64());
    let changed = std::fs::metadata(dir.join(TRIALS_FILE))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    let has_trials = dir.join(TRIALS_FILE).is_file();
    let status = match (planned, changed) {
        // Folders of other commands (an ablation's parent, a claims table) hold no trials.
        _ if !has_trials => "-",
        (Some(p), _) if done as u64 >= p => "done",
        (_, Some(age)) if age < RUNNING_WITHIN => "running",
        (Some(_), _) => "stopped",
        (None, _) if done > 0 => "done",
        _ => "empty",
    };
    let model = read_json(&dir.join("model.json"))
        .and_then(|m| m["name"].as_str().map(str::to_owned))
        .or_else(|| settings["model_name"].as_str().map(str::to_owned))
        .or_else(|| settings["model"].as_str().map(str::to_owned))
        .unwrap_or_default();
    // Commands without run.json (ablate's parent folder, claims) are named by how they ran.
    let invoked = read_json(&dir.join(PROVENANCE_FILE)).and_then(|p| {
        let line = p.as_array()?.last()?["command"].as_str()?.to_owned();
        line.split_whitespace().nth(1).map(str::to_owned)
    });
    let command = settings["command"]
        .as_str()
        .map(str::to_owned)
        .or(invoked)
        .unwrap_or_else(|| "run".into());
    json!({
        "path": runs.name(dir),
        "command": command,
        "model": model,
        "trials_done": done,
        "trials_planned": planned,
        "status": status,
        "niah": is_niah(&settings),
        "report": dir.join(crate::output::report::REPORT_FILE).is_file(),
    })
}

/// Whether a run's records are NIAH trials (detection and NIAH runs, one folder per condition of
/// an ablation): what the trial page shows.
pub fn is_niah(settings: &Value) -> bool {
    matches!(settings["command"].as_str(), Some("detect" | "niah" | "ablate"))
        && settings["needles"].is_array()
        && settings["detector"].as_str().is_none_or(|d| d == "retrieval")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_inside_the_root_only() {
        let tmp = std::env::temp_dir().join(format!("headhunt-serve-runs-{}", std::process::id()));
        let root = tmp.join("runs");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/x.json"), "{}").unwrap();
        std::fs::write(tmp.join("secret.txt"), "secret").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(tmp.join("secret.txt"), root.join("a/out")).unwrap();
        let runs = RunsDir::new(&root).unwrap();
        assert!(runs.resolve("a/b/x.json").is_some());
        assert!(runs.resolve("/a/b/x.json").is_some(), "a leading slash is the root's");
        for bad in [
            "../secret.txt",
            "a/../../secret.txt",
            "a/b/../../../secret.txt",
            "a\\..\\x",
            "nope.json",
        ] {
            assert_eq!(runs.resolve(bad), None, "{bad}");
        }
        assert_eq!(
            runs.resolve(&tmp.join("secret.txt").display().to_string().replacen('/', "//", 1)),
            None
        );
        #[cfg(unix)]
        assert_eq!(runs.resolve("a/out"), None, "a link out of the folder");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
