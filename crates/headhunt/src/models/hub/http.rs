//! The Hub's HTTP protocol, as `huggingface_hub` speaks it: the revision API, `resolve` URLs
//! with their metadata headers and CDN redirects, and resumable, checked downloads into the
//! cache's blobs.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha1::Sha1;
use sha2::Sha256;

use super::cache::RepoCache;
use crate::models::hash_file;

/// How many times a download that lost its connection is resumed before giving up.
const RESUMES: usize = 5;

/// What the Hub says about one file of one commit (the headers of its `resolve` URL).
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// The file's sha256 for an LFS file, its git blob sha1 otherwise: the blob's name.
    pub etag: String,
    pub size: Option<u64>,
    /// Where its bytes are (the CDN, for an LFS file); `None`: the resolve URL itself.
    pub location: Option<String>,
}

/// A repository's revision: its commit and its files.
pub struct RevisionInfo {
    pub commit: String,
    pub files: Vec<String>,
}

/// The Hub's answer was an error: what a person should be told.
#[derive(Debug)]
pub struct HubError(pub String);

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HubError {}

/// The network could not be reached at all (as opposed to the Hub answering with an error).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

pub struct Client {
    pub endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed here, not by the agent: a HEAD must stop at the CDN's, and
            // a resumed GET must keep its Range header on every hop.
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(format!("headhunt/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    /// `GET /api/models/{repo}/revision/{revision}`: the commit and the file list.
    pub fn revision(&self, repo: &str, revision: &str) -> Result<RevisionInfo> {
        let url = format!("{}/api/models/{repo}/revision/{}", self.endpoint, encode(revision));
        let resp = self.call("GET", &url, None)?;
        if !resp.status().is_success() {
            return Err(self.status_error(&resp, repo, revision, None).into());
        }
        let text = resp.into_body().read_to_string().with_context(|| format!("reading {url}"))?;
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{url}: not JSON"))?;
        let commit = json["sha"]
            .as_str()
            .with_context(|| format!("{url}: the answer names no commit (sha)"))?;
        let files = json["siblings"]
            .as_array()
            .map(|s| s.iter().filter_map(|f| f["rfilename"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok(RevisionInfo {
            commit: commit.to_owned(),
            files,
        })
    }

    /// `HEAD /{repo}/resolve/{commit}/{file}`, following only the Hub's own (relative)
    /// redirects, as `huggingface_hub` does: the CDN's redirect carries the metadata.
    pub fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta> {
        let mut url = self.resolve_url(repo, commit, file);
        for _ in 0..5 {
            let resp = self.call("HEAD", &url, None)?;
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let status = resp.status().as_u16();
            let location = header("location");
            if (300..400).contains(&status) {
                if let Some(loc) = location.as_deref().filter(|l| l.starts_with('/')) {
                    url = format!("{}{loc}", self.endpoint);
                    continue;
                }
            } else if !resp.status().is_success() {
                return Err(self.status_error(&resp, repo, commit, Some(file)).into());
            }
            let etag = header("x-linked-etag")
                .or_else(|| header("etag"))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned())
                .with_context(|| format!("{url}: the Hub sent no ETag, so the file cannot be checked"))?;
            let size = header("x-linked-size")
                .or_else(|| header("content-length"))
                .and_then(|s| s.parse().ok());
            return Ok(FileMeta {
                etag,
                size,
                location: location.filter(|_| (300..400).contains(&status)),
            });
        }
        bail!("{url}: too many redirects")
    }

    /// Download a file's bytes into its blob: resumed from `.incomplete` (a Range request), also
    /// after a connection lost on the way, checked against its ETag, then renamed into place.
    pub fn download(&self, cache: &RepoCache, repo: &str, commit: &str, file: &str, meta: &FileMeta) -> Result<()> {
        let part = cache.incomplete(&meta.etag);
        std::fs::create_dir_all(part.parent().expect("blobs/ is a parent")).with_context(|| format!("creating {}", part.display()))?;
        let url = meta.location.clone().unwrap_or_else(|| self.resolve_url(repo, commit, file));
        let bar = crate::runner::progress::bytes(meta.size, file);
        let mut last_error = None;
        for attempt in 0..=RESUMES {
            let have = std::fs::metadata(&part).map_or(0, |m| m.len());
            if meta.size == Some(have) && have > 0 {
                last_error = None;
                break;
            }
            if attempt > 0 {
                bar.suspend(|| eprintln!("{file}: connection lost after {:.1} MiB; resuming", have as f64 / 1048576.0));
            }
            match self.fetch_into(&url, &part, have, &bar, repo, commit, file) {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) if e.is::<HubError>() => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        bar.finish_and_clear();
        if let Some(e) = last_error {
            return Err(e.context(format!(
                "downloading {file} of {repo} failed {} times; what arrived is kept in {} and the next run resumes it",
                RESUMES + 1,
                part.display()
            )));
        }
        if let Err(e) = check(&part, meta) {
            std::fs::remove_file(&part).ok();
            return Err(e.context(format!(
                "{file} of {repo} refused: nothing was cached; run again to download it afresh"
            )));
        }
        std::fs::rename(&part, cache.blob(&meta.etag)).with_context(|| format!("moving {} into place", part.display()))
    }

    /// One GET of `url` from byte `from`, appended to `part`.
    #[allow(clippy::too_many_arguments)]
    fn fetch_into(
        &self,
        url: &str,
        part: &Path,
        from: u64,
        bar: &indicatif::ProgressBar,
        repo: &str,
        commit: &str,
        file: &str,
    ) -> Result<()> {
        let range = (from > 0).then(|| format!("bytes={from}-"));
        let mut url = url.to_owned();
        let mut resp = None;
        for _ in 0..10 {
            let r = self.call("GET", &url, range.as_deref())?;
            let status = r.status().as_u16();
            if (300..400).contains(&status) {
                let loc = r
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .with_context(|| format!("{url}: a redirect without a Location"))?;
                url = if loc.starts_with('/') {
                    format!("{}{loc}", origin_of(&url))
                } else {
                    loc.to_owned()
                };
                continue;
            }
            resp = Some(r);
            break;
        }
        let resp = resp.with_context(|| format!("{url}: too many redirects"))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            416 if from > 0 => return Ok(()),
            _ => return Err(self.status_error(&resp, repo, commit, Some(file)).into()),
        };
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .with_context(|| format!("opening {}", part.display()))?;
        bar.set_position(if append { from } else { 0 });
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buf).map_err(|e| anyhow!("{url}: {e}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).with_context(|| format!("writing {}", part.display()))?;
            bar.inc(n as u64);
        }
        out.sync_all().with_context(|| format!("writing {}", part.display()))?;
        Ok(())
    }

    fn resolve_url(&self, repo: &str, commit: &str, file: &str) -> String {
        let file: Vec<String> = file.split('/').map(encode).collect();
        format!("{}/{repo}/resolve/{}/{}", self.endpoint, encode(commit), file.join("/"))
    }

    /// A request with the token (only ever to the endpoint's own host), as a response whatever
    /// its status; a failure to connect is [`Unreachable`].
    fn call(&self, method: &str, url: &str, range: Option<&str>) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("Accept-Encoding", "identity");
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        if let Some(token) = self.token.as_deref().filter(|_| origin_of(url) == origin_of(&self.endpoint)) {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let req = req.body(()).with_context(|| format!("{url}: not a valid URL"))?;
        self.agent.run(req).map_err(|e| match e {
            ureq::Error::Io(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => {
                Unreachable(format!("cannot reach {}: {e}", origin_of(url))).into()
            }
            e => anyhow!("{url}: {e}"),
        })
    }

    /// One line for an error status, using the Hub's `X-Error-Code`.
    fn status_error(&self, resp: &ureq::http::Response<ureq::Body>, repo: &str, revision: &str, file: Option<&str>) -> HubError {
        let code = resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or("");
        let status = resp.status().as_u16();
        let page = format!("{}/{repo}", self.endpoint);
        HubError(match (status, code) {
            (401 | 403, "GatedRepo") | (403, _) => match self.token {
                None => format!(
                    "{repo} is gated: accept its licence at {page}, then pass a token (HF_TOKEN=hf_..., or the file `hf auth login` writes, $HF_HOME/token)"
                ),
                Some(_) => format!("{repo} is gated and this token may not read it: accept the licence at {page} with the token's account"),
            },
            (401 | 404, "RepoNotFound") | (401, _) => format!(
                "no model `{repo}` on {}{}",
                self.endpoint,
                if self.token.is_none() { " (a private one needs a token: HF_TOKEN)" } else { " that this token can read" }
            ),
            (404, "RevisionNotFound") => format!("{repo} has no revision `{revision}` ({page})"),
            (404, _) => match file {
                Some(f) => format!("{repo} has no file `{f}` at {revision} ({page})"),
                None => format!("no model `{repo}` at {revision} on {}", self.endpoint),
            },
            _ => format!("{page}: the Hub answered HTTP {status} {code}"),
        })
    }
}

/// Check a downloaded file against what the Hub said: its size, and its sha256 (an LFS file's
/// ETag) or git blob sha1 (a small file's).
fn check(path: &Path, meta: &FileMeta) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if let Some(size) = meta.size.filter(|&s| s != len) {
        bail!("{len} bytes arrived, the Hub announced {size}");
    }
    let digest = match meta.etag.len() {
        64 => hash_file::<Sha256>(path, None)?,
        40 => hash_file::<Sha1>(path, Some(format!("blob {len}\0").as_bytes()))?,
        _ => return Ok(()),
    };
    if !digest.eq_ignore_ascii_case(&meta.etag) {
        bail!("the bytes' checksum is {digest}, the Hub's is {}", meta.etag);
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].find('/').map_or(url, |i| &url[..start + i])
}

/// Percent-encode one path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_origin_and_encode_revisions() {
        assert_eq!(origin_of("https://huggingface.co/api/models/x"), "https://huggingface.co");
        assert_eq!(origin_of("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        let c = Client::new("https://hub.example/", None);
        assert_eq!(
            c.resolve_url("a/b", "main", "sub dir/x.gguf"),
            "https://hub.example/a/b/resolve/main/sub%20dir/x.gguf"
        );
    }

    #[test]
    fn a_small_file_is_checked_against_its_git_blob_sha1() {
        let dir = std::env::temp_dir().join(format!("headhunt-hub-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "hello\n").unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        let meta = |etag: &str| FileMeta {
            etag: etag.into(),
            size: Some(6),
            location: None,
        };
        check(&path, &meta("ce013625030ba8dba906f756967f9e9ca394464a")).unwrap();
        assert!(check(&path, &meta("ce013625030ba8dba906f756967f9e9ca394464b")).is_err());
        // `printf 'hello\n' | sha256sum`
        check(&path, &meta("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}
