//! Models on the Hugging Face Hub by their id, kept in the Hub's own cache.
//!
//! `ORG/NAME[@REVISION]` is a safetensors repository (the files the engine reads: config,
//! weights or their shards, tokenizer); `ORG/NAME[@REVISION]:QUANT` or `:FILE.gguf` one GGUF of
//! a GGUF repository, chosen by its quant tag as llama.cpp's `-hf` chooses it, with every part of
//! a split GGUF. The settings are the Hub clients' own: `HF_ENDPOINT`, `HF_HOME`,
//! `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN` (else the token file).
//!
//! The protocol is written here on `ureq` rather than taken from the `hf-hub` crate: hf-hub 1.x
//! brings tokio, reqwest and the Xet client (hundreds of crates to build on two cores), and
//! neither it nor 0.4 checks a download against the Hub's sha256, resumes after a lost
//! connection within a run, or works offline from the cache.

pub mod cache;
pub mod http;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use cache::RepoCache;
use http::{Client, Unreachable};

/// llama.cpp's choice when `-hf` names no quant.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// Files of a safetensors repository the engine reads besides the weights, when present.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// A model named by its Hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    /// A branch, tag or commit; `main` when none is given.
    pub revision: String,
    /// The GGUF asked for, by quant tag or file name.
    pub gguf: Option<String>,
}

impl HubId {
    /// `ORG/NAME[@REVISION][:QUANT|:FILE.gguf]`; `None` when `arg` is not of that form.
    pub fn parse(arg: &str) -> Option<HubId> {
        let (rest, gguf) = match arg.rsplit_once(':') {
            Some((r, q)) if !q.is_empty() && !q.contains('/') => (r, Some(q.to_owned())),
            _ => (arg, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev.to_owned()),
            Some(_) => return None,
            None => (rest, "main".to_owned()),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !s.starts_with(['.', '-'])
                && !s.contains("--")
                && !s.contains("..")
        };
        // `models/x.gguf` that does not exist is a mistyped path, not a repository.
        let file_like = [".gguf", ".safetensors", ".bin", ".json"]
            .iter()
            .any(|e| name.to_ascii_lowercase().ends_with(e));
        (ok(org) && ok(name) && !file_like).then(|| HubId {
            repo: repo.to_owned(),
            revision,
            gguf,
        })
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        if let Some(q) = &self.gguf {
            write!(f, ":{q}")?;
        }
        Ok(())
    }
}

/// A model's files in the cache.
#[derive(Debug)]
pub struct Snapshot {
    pub commit: String,
    /// The files fetched, relative to the snapshot.
    pub files: Vec<String>,
    /// What the engine loads: the snapshot folder (safetensors) or the GGUF (its first part).
    pub model: PathBuf,
}

/// The Hub as this process's environment configures it.
pub struct Hub {
    pub endpoint: String,
    pub cache: PathBuf,
    pub offline: bool,
    token: Option<String>,
}

impl Hub {
    /// A Hub at `endpoint` with its cache at `cache` (the settings [`Hub::from_env`] reads).
    pub fn new(endpoint: &str, cache: PathBuf, token: Option<String>, offline: bool) -> Hub {
        Hub {
            endpoint: endpoint.to_owned(),
            cache,
            offline,
            token,
        }
    }

    pub fn from_env() -> Result<Hub> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = match var("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => match var("XDG_CACHE_HOME") {
                Some(x) => PathBuf::from(x).join("huggingface"),
                None => PathBuf::from(var("HOME").context("cannot find the Hugging Face cache: set HF_HOME or HOME")?)
                    .join(".cache")
                    .join("huggingface"),
            },
        };
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map_or_else(|| home.join("hub"), PathBuf::from);
        let token_file = var("HF_TOKEN_PATH").map_or_else(|| home.join("token"), PathBuf::from);
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| ["1", "true", "yes", "on"].contains(&v.to_ascii_lowercase().as_str()));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        Ok(Hub::new(&endpoint, cache, token, offline))
    }

    /// The model's files, from the cache where they are there (with no request when offline),
    /// else downloaded into it.
    pub fn snapshot(&self, id: &HubId) -> Result<Snapshot> {
        if self.offline {
            return self.cached(id).context("HF_HUB_OFFLINE is set, so nothing is downloaded");
        }
        let client = Client::new(&self.endpoint, self.token.clone());
        let info = match client.revision(&id.repo, &id.revision) {
            Ok(info) => info,
            Err(e) if e.is::<Unreachable>() => {
                let cached = self.cached(id).with_context(|| e.to_string())?;
                eprintln!("note: {e}; using {id} as cached (commit {})", cached.commit);
                return Ok(cached);
            }
            Err(e) => return Err(e),
        };
        let repo = RepoCache::new(&self.cache, &id.repo);
        let snapshot = gather(choose(id, &info.files)?, &repo, info.commit.clone(), |file| {
            self.fetch_file(&client, &repo, &id.repo, &info.commit, file)
        })?;
        repo.set_ref(&id.revision, &info.commit)?;
        Ok(snapshot)
    }

    /// Download one file unless its snapshot already has it.
    fn fetch_file(&self, client: &Client, repo: &RepoCache, name: &str, commit: &str, file: &str) -> Result<()> {
        if repo.snapshot(commit).join(file).exists() {
            return Ok(());
        }
        let meta = client.file_meta(name, commit, file)?;
        if !repo.blob(&meta.etag).exists() {
            client.download(repo, name, commit, file, &meta)?;
        }
        repo.link(commit, file, &meta.etag)
    }

    /// The model's files from the cache alone.
    pub fn cached(&self, id: &HubId) -> Result<Snapshot> {
        let repo = RepoCache::new(&self.cache, &id.repo);
        let commit = repo.commit_of(&id.revision).with_context(|| {
            format!(
                "{id} is not in the Hugging Face cache ({}): fetch it where there is network (`headhunt fetch {id}`), or point HF_HUB_CACHE at a cache that has it",
                self.cache.display()
            )
        })?;
        let dir = repo.snapshot(&commit);
        let wanted = choose(id, &repo.files(&commit)).with_context(|| format!("in the cached snapshot {}", dir.display()))?;
        gather(wanted, &repo, commit, |file| {
            if !dir.join(file).exists() {
                bail!(
                    "{id}: the cached snapshot {} lacks {file}: fetch it again with network",
                    dir.display()
                );
            }
            Ok(())
        })
    }
}

/// Bring every wanted file into the snapshot of `commit` with `get` (a safetensors index adds
/// the shards it names), and say what the engine loads.
fn gather(mut wanted: Wanted, repo: &RepoCache, commit: String, mut get: impl FnMut(&str) -> Result<()>) -> Result<Snapshot> {
    let dir = repo.snapshot(&commit);
    let mut files = Vec::new();
    while let Some(file) = wanted.files.pop_front() {
        get(&file)?;
        if file == "model.safetensors.index.json" {
            wanted.files.extend(shards(&dir.join(&file))?);
        }
        files.push(file);
    }
    files.sort();
    Ok(Snapshot {
        model: dir.join(&wanted.model),
        commit,
        files,
    })
}

/// `REPO @ COMMIT: FILES` for a model loaded from the Hub's cache (what reproduces a run), `None`
/// for any other path.
pub fn provenance(path: &std::path::Path) -> Option<String> {
    let (repo, commit, file) = cache::origin(path)?;
    let snapshot = path.ancestors().find(|a| a.parent().is_some_and(|p| p.ends_with("snapshots")))?;
    let mut files = RepoCache {
        root: snapshot.parent()?.parent()?.to_owned(),
    }
    .files(&commit);
    if !file.is_empty() {
        let model = model_of(&file);
        files.retain(|f| f.to_ascii_lowercase().ends_with(".gguf") && model_of(f) == model);
    }
    Some(format!("{repo} @ {commit}: {}", files.join(", ")))
}

/// What to fetch of a repository and what the engine then loads.
struct Wanted {
    files: std::collections::VecDeque<String>,
    /// Relative to the snapshot; empty for the snapshot folder.
    model: String,
}

/// The files of `have` that `id` asks for.
fn choose(id: &HubId, have: &[String]) -> Result<Wanted> {
    let ggufs: Vec<&String> = have
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf") && !f.to_ascii_lowercase().contains("mmproj"))
        .collect();
    let has = |f: &str| have.iter().any(|h| h == f);
    if id.gguf.is_none()
        && has("config.json")
        && have
            .iter()
            .any(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
    {
        let weights = if has("model.safetensors.index.json") {
            "model.safetensors.index.json"
        } else if has("model.safetensors") {
            "model.safetensors"
        } else {
            bail!("{id}: neither model.safetensors nor model.safetensors.index.json is in the repo (other weight layouts are not read)");
        };
        let mut files: std::collections::VecDeque<String> = ["config.json", weights].iter().map(|s| s.to_string()).collect();
        files.extend(SIDE_FILES.iter().filter(|f| has(f)).map(|f| f.to_string()));
        return Ok(Wanted {
            files,
            model: String::new(),
        });
    }
    if ggufs.is_empty() {
        bail!("{id}: the repo has no .gguf file and no config.json with safetensors weights: it is not a model headhunt reads");
    }
    let chosen: Vec<&String> = match id.gguf.as_deref() {
        Some(f) if f.to_ascii_lowercase().ends_with(".gguf") => {
            let Some(file) = ggufs.iter().find(|g| g.as_str() == f || g.rsplit('/').next() == Some(f)) else {
                bail!("{id}: the repo has no file {f}; its GGUFs: {}", list(&ggufs));
            };
            ggufs.iter().copied().filter(|g| model_of(g) == model_of(file)).collect()
        }
        Some(tag) => by_quant(&ggufs, tag),
        None => {
            let default = by_quant(&ggufs, DEFAULT_QUANT);
            let models: std::collections::BTreeSet<String> = ggufs.iter().map(|g| model_of(g)).collect();
            if !default.is_empty() {
                default
            } else if models.len() == 1 {
                ggufs.clone()
            } else {
                bail!(
                    "{id}: the repo has several GGUFs and no {DEFAULT_QUANT}; name one, as {}:QUANT ({})",
                    id.repo,
                    list(&ggufs)
                );
            }
        }
    };
    let models: std::collections::BTreeSet<String> = chosen.iter().map(|g| model_of(g)).collect();
    if chosen.is_empty() {
        bail!(
            "{id}: the repo has no {} GGUF; it has {}",
            id.gguf.as_deref().unwrap_or(DEFAULT_QUANT),
            list(&ggufs)
        );
    }
    if models.len() > 1 {
        bail!("{id}: {} GGUFs match; name one by its file ({})", models.len(), list(&chosen));
    }
    let mut files: Vec<String> = chosen.into_iter().cloned().collect();
    files.sort();
    Ok(Wanted {
        model: files[0].clone(),
        files: files.into(),
    })
}

/// The GGUFs whose name ends in the quant tag (`...-Q4_K_M.gguf`, `...-q4_k_m-00001-of-00002.gguf`)
/// or that lie in a folder named by it (`Q4_K_M/...`), as llama.cpp matches `-hf REPO:TAG`.
fn by_quant<'a>(ggufs: &[&'a String], tag: &str) -> Vec<&'a String> {
    let tag = tag.to_ascii_lowercase();
    ggufs
        .iter()
        .copied()
        .filter(|g| {
            let stem = model_of(g).to_ascii_lowercase();
            let name = stem.rsplit('/').next().unwrap_or(&stem);
            let in_folder = stem.split('/').rev().skip(1).any(|d| d == tag);
            in_folder || name.strip_suffix(tag.as_str()).is_some_and(|head| head.ends_with(['-', '.', '_']))
        })
        .collect()
}

/// A GGUF's name without `.gguf` and without a split suffix (`-00001-of-00003`): the parts of
/// one split model share it.
fn model_of(file: &str) -> String {
    let stem = &file[..file.len() - ".gguf".len()];
    match split_suffix(stem) {
        Some(at) => stem[..at].to_owned(),
        None => stem.to_owned(),
    }
}

/// Where `-NNNNN-of-MMMMM` starts at the end of a stem.
fn split_suffix(stem: &str) -> Option<usize> {
    let b = stem.as_bytes();
    let n = b.len();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (n >= 15 && b[n - 15] == b'-' && digits(n - 14..n - 9) && &stem[n - 9..n - 5] == "-of-" && digits(n - 5..n)).then_some(n - 15)
}

/// The GGUF models among `files`, one file each (a split one by its first part), sorted.
fn list(files: &[&String]) -> String {
    let mut sorted: Vec<&str> = files.iter().map(|f| f.as_str()).collect();
    sorted.sort();
    sorted.dedup_by_key(|f| model_of(f));
    sorted.join(", ")
}

/// The shard files a `model.safetensors.index.json` names.
fn shards(index: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", index.display()))?;
    let map = json["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no weight_map", index.display()))?;
    let set: std::collections::BTreeSet<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    Ok(set.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> HubId {
        HubId::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn ids_parse_with_revision_and_quant() {
        assert_eq!(
            id("Qwen/Qwen2.5-1.5B-Instruct"),
            HubId {
                repo: "Qwen/Qwen2.5-1.5B-Instruct".into(),
                revision: "main".into(),
                gguf: None
            }
        );
        let q = id("bartowski/Llama-3.2-1B-Instruct-GGUF@v2:Q4_K_M");
        assert_eq!(
            (q.repo.as_str(), q.revision.as_str(), q.gguf.as_deref()),
            ("bartowski/Llama-3.2-1B-Instruct-GGUF", "v2", Some("Q4_K_M"))
        );
        assert_eq!(id("a/b:model-q8_0.gguf").gguf.as_deref(), Some("model-q8_0.gguf"));
        assert_eq!(q.to_string(), "bartowski/Llama-3.2-1B-Instruct-GGUF@v2:Q4_K_M");
        for bad in [
            "gpt2",
            "a/b/c",
            "./x",
            "a/",
            "/abs/path",
            "a/b@",
            "models/x.gguf/y",
            "a/../b",
            "a--b/c",
            "models/x.gguf",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_quant_tag_picks_its_gguf_and_every_part_of_a_split_one() {
        let repo = names(&[
            "README.md",
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
            "Llama-3.2-1B-Instruct-Q8_0.gguf",
            "Llama-3.2-1B-Instruct-IQ4_XS.gguf",
            "big/Llama-Q6_K-00002-of-00002.gguf",
            "big/Llama-Q6_K-00001-of-00002.gguf",
            "mmproj-Q4_K_M.gguf",
        ]);
        let pick = |s: &str| Vec::from(choose(&id(s), &repo).map(|w| w.files).map_err(|e| e.to_string()).unwrap());
        assert_eq!(pick("a/b:q8_0"), names(&["Llama-3.2-1B-Instruct-Q8_0.gguf"]));
        assert_eq!(pick("a/b"), names(&["Llama-3.2-1B-Instruct-Q4_K_M.gguf"]));
        assert_eq!(
            pick("a/b:Q6_K"),
            names(&["big/Llama-Q6_K-00001-of-00002.gguf", "big/Llama-Q6_K-00002-of-00002.gguf"])
        );
        assert_eq!(pick("a/b:Llama-Q6_K-00002-of-00002.gguf").len(), 2);
        let e = choose(&id("a/b:Q2_K"), &repo).err().unwrap().to_string();
        assert!(e.contains("no Q2_K GGUF") && e.contains("IQ4_XS"), "{e}");
        assert!(choose(&id("a/b:4_K_M"), &repo).is_err(), "a tag matches whole, after a separator");
    }

    #[test]
    fn a_safetensors_repo_fetches_config_weights_and_tokenizer() {
        let repo = names(&[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "README.md",
            "pytorch_model.bin",
            "onnx/model.onnx",
        ]);
        let w = choose(&id("a/b"), &repo).unwrap();
        assert_eq!(Vec::from(w.files), names(&["config.json", "model.safetensors", "tokenizer.json"]));
        assert_eq!(w.model, "");
        let sharded = names(&["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"]);
        assert_eq!(
            Vec::from(choose(&id("a/b"), &sharded).unwrap().files),
            names(&["config.json", "model.safetensors.index.json"])
        );
        let e = choose(&id("a/b"), &names(&["config.json", "pytorch_model.bin"]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a model headhunt reads"), "{e}");
    }
}
