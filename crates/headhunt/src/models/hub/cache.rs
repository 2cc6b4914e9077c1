//! The Hub's cache as `huggingface_hub` keeps it, so that what transformers downloaded is used
//! here and what headhunt downloads is used there:
//!
//! ```text
//! $HF_HUB_CACHE/models--ORG--NAME/
//!     blobs/<etag>                      each file's bytes, named by its ETag (LFS: the sha256)
//!     blobs/<etag>.incomplete           a download in progress (resumed from its length)
//!     refs/<revision>                   the commit a branch or tag pointed at when last fetched
//!     snapshots/<commit>/<file>         a relative link to ../../blobs/<etag>
//! ```

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

/// One repository's folder in the cache.
pub struct RepoCache {
    pub root: PathBuf,
}

impl RepoCache {
    pub fn new(cache: &Path, repo: &str) -> Self {
        RepoCache {
            root: cache.join(folder_name(repo)),
        }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// The commit `revision` names: itself when it is a full commit sha, else the cached ref.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return self.snapshot(revision).is_dir().then(|| revision.to_owned());
        }
        let text = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        Some(text.trim().to_owned()).filter(|c| is_commit(c))
    }

    /// Record that `revision` (a branch or tag) points at `commit`.
    pub fn set_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        std::fs::create_dir_all(path.parent().expect("refs/ is a parent")).with_context(|| format!("creating {}", path.display()))?;
        crate::runner::store::write_atomic(&path, commit)
    }

    /// Put `file` of `commit` into the snapshot: a relative link to its blob.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<()> {
        let path = self.snapshot(commit).join(file);
        std::fs::create_dir_all(path.parent().expect("a snapshot file has a folder"))
            .with_context(|| format!("creating {}", path.display()))?;
        let depth = Path::new(file).components().count() + 1;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        let _ = std::fs::remove_file(&path);
        symlink(&target, &path).with_context(|| format!("linking {} to its blob", path.display()))
    }

    /// Every file of a cached snapshot, as paths relative to it (`/`-separated).
    pub fn files(&self, commit: &str) -> Vec<String> {
        let dir = self.snapshot(commit);
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.exists() {
                    if let Ok(rel) = p.strip_prefix(&dir) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    // huggingface_hub copies where links are not allowed; so does this.
    let blob = link.parent().expect("a snapshot file has a folder").join(target);
    std::fs::copy(blob, link).map(|_| ())
}

/// `models--ORG--NAME`, as `huggingface_hub` names a model repository's folder.
pub fn folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where a path inside a snapshot came from: `(repo, commit, file)`, `file` empty for the
/// snapshot folder itself. `None` for a path outside the Hub's cache.
pub fn origin(path: &Path) -> Option<(String, String, String)> {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let at = parts.iter().rposition(|p| p == "snapshots")?;
    let repo = parts.get(at.checked_sub(1)?)?.strip_prefix("models--")?.replacen("--", "/", 1);
    let commit = parts.get(at + 1).filter(|c| is_commit(c))?;
    Some((repo, commit.clone(), parts[at + 2..].join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_path_names_its_repo_commit_and_file() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let p = PathBuf::from(format!("/h/hub/models--Qwen--Qwen2.5-1.5B/snapshots/{c}/sub/model.gguf"));
        assert_eq!(origin(&p), Some(("Qwen/Qwen2.5-1.5B".into(), c.into(), "sub/model.gguf".into())));
        let dir = PathBuf::from(format!("/h/hub/models--a--b/snapshots/{c}"));
        assert_eq!(origin(&dir), Some(("a/b".into(), c.into(), String::new())));
        assert_eq!(origin(Path::new("/models/x.gguf")), None);
        assert_eq!(origin(Path::new("/h/models--a--b/snapshots/main/x")), None);
    }
}
