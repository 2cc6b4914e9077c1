//! A Hugging Face Hub on 127.0.0.1 for tests: it answers the requests the Hub answers, with the
//! Hub's headers, for repositories held in memory.
//!
//! - `GET /api/models/{repo}/revision/{rev}`: `{"id", "sha", "siblings": [{"rfilename"}]}`;
//!   401 `X-Error-Code: RepoNotFound` for an unknown repo, 404 `RevisionNotFound`.
//! - `HEAD|GET /{repo}/resolve/{rev}/{file}`: a small file is answered directly, `ETag` its git
//!   blob sha1; an LFS file (weights) is a 302 to the CDN (an absolute URL, `/cdn/{sha256}` here)
//!   carrying `X-Linked-Etag` (its sha256) and `X-Linked-Size`. `X-Repo-Commit` on both. 404
//!   `EntryNotFound` for a missing file; 401 `GatedRepo` for a gated repo without its token.
//! - `GET /cdn/{sha256}`: the bytes, with `Range: bytes=N-` answered 206.
//!
//! Faults for the tests: cut the connection halfway through one blob once, or serve one blob
//! with a byte changed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha1::Sha1;
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "hf_test_token";

pub struct RepoFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

pub struct Repo {
    pub commit: String,
    pub files: Vec<RepoFile>,
    pub gated: bool,
}

#[derive(Default)]
pub struct Faults {
    /// Cut the connection after half of this blob (by sha256), once.
    pub cut_once: Option<String>,
    /// Serve this blob (by sha256) with its middle byte changed.
    pub corrupt: Option<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    faults: Faults,
    /// `METHOD path [range]` of every request.
    log: Vec<String>,
}

pub struct Hub {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    pub fn start() -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, base) = (state.clone(), stop.clone(), url.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, base) = (s.clone(), base.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &s, &base);
                });
            }
        });
        Hub {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn add(&self, name: &str, repo: Repo) {
        self.state.lock().unwrap().repos.insert(name.to_owned(), repo);
    }

    pub fn faults(&self, f: Faults) {
        self.state.lock().unwrap().faults = f;
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Stop answering: the port is closed when this returns.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn git_sha1(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".gguf")
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (a lost connection).
    cut_at: Option<usize>,
}

fn reply(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response {
    Response {
        status,
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        body,
        cut_at: None,
    }
}

fn error(status: u16, code: &str) -> Response {
    reply(
        status,
        &[("X-Error-Code", code.into())],
        format!("{{\"error\":\"{code}\"}}").into_bytes(),
    )
}

fn serve(conn: TcpStream, state: &Mutex<State>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let range = headers.get("range").cloned();
    let authorized = headers.get("authorization").is_some_and(|a| a == &format!("Bearer {TOKEN}"));
    let resp = {
        let mut st = state.lock().unwrap();
        st.log.push(format!(
            "{method} {path}{}",
            range.as_ref().map(|r| format!(" {r}")).unwrap_or_default()
        ));
        route(&mut st, &path, range.as_deref(), authorized, base)
    };
    let mut out = conn;
    let reason = match resp.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Other",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let n = resp.cut_at.unwrap_or(resp.body.len());
        out.write_all(&resp.body[..n])?;
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}

fn route(st: &mut State, path: &str, range: Option<&str>, authorized: bool, base: &str) -> Response {
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let p: Vec<&str> = rest.splitn(4, '/').collect();
        let [org, name, "revision", rev] = p[..] else {
            return error(404, "EntryNotFound");
        };
        let Some(repo) = st.repos.get(&format!("{org}/{name}")) else {
            return error(401, "RepoNotFound");
        };
        let rev = decode(rev);
        if rev != "main" && rev != repo.commit {
            return error(404, "RevisionNotFound");
        }
        let siblings: Vec<serde_json::Value> = repo.files.iter().map(|f| serde_json::json!({"rfilename": f.name})).collect();
        let body = serde_json::json!({"id": format!("{org}/{name}"), "sha": repo.commit, "siblings": siblings, "gated": repo.gated});
        return reply(200, &[("Content-Type", "application/json".into())], body.to_string().into_bytes());
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(bytes) = st
            .repos
            .values()
            .flat_map(|r| &r.files)
            .find(|f| sha256(&f.bytes) == sha)
            .map(|f| f.bytes.clone())
        else {
            return error(404, "EntryNotFound");
        };
        let mut bytes = bytes;
        if st.faults.corrupt.as_deref() == Some(sha) {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        }
        let from: usize = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let total = bytes.len();
        let mut resp = if from > 0 {
            reply(
                206,
                &[("Content-Range", format!("bytes {from}-{}/{total}", total - 1))],
                bytes[from..].to_vec(),
            )
        } else {
            reply(200, &[], bytes)
        };
        if st.faults.cut_once.as_deref() == Some(sha) && from == 0 {
            st.faults.cut_once = None;
            resp.cut_at = Some(total / 2);
        }
        return resp;
    }
    let p: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", rev, file] = p[..] else {
        return error(404, "EntryNotFound");
    };
    let Some(repo) = st.repos.get(&format!("{org}/{name}")) else {
        return error(401, "RepoNotFound");
    };
    if repo.gated && !authorized {
        return error(401, "GatedRepo");
    }
    let rev = decode(rev);
    if rev != "main" && rev != repo.commit {
        return error(404, "RevisionNotFound");
    }
    let file = decode(file);
    let Some(f) = repo.files.iter().find(|f| f.name == file) else {
        return error(404, "EntryNotFound");
    };
    let commit = ("X-Repo-Commit", repo.commit.clone());
    if is_lfs(&f.name) {
        let sha = sha256(&f.bytes);
        reply(
            302,
            &[
                commit,
                ("Location", format!("{base}/cdn/{sha}")),
                ("X-Linked-Etag", format!("\"{sha}\"")),
                ("X-Linked-Size", f.bytes.len().to_string()),
                ("ETag", format!("\"{}\"", git_sha1(b"pointer"))),
            ],
            Vec::new(),
        )
    } else {
        reply(200, &[commit, ("ETag", format!("\"{}\"", git_sha1(&f.bytes)))], f.bytes.clone())
    }
}
