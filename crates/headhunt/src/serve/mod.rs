//! `headhunt serve`: a local web application over a folder of runs and one loaded model.
//!
//! Pages are rendered on the server (`pages`) with a little JavaScript (`app.js`) for what a
//! person clicks: a trial's answer tokens, the heads that copied them, a head's attention over
//! the whole prompt (recomputed by the engine on demand, `engine`), and an intervention rerun
//! with chosen heads masked, its answer streamed as it is written. Everything a request names is
//! resolved inside the runs folder (`runs`); nothing is ever written there.
//!
//! Safe by default: it binds 127.0.0.1 and then answers only requests addressed to the loopback
//! (a DNS-rebinding page cannot reach it); bound elsewhere, every request must carry the token it
//! prints at start. GET never changes anything; the one POST (an intervention) must be JSON, which
//! a cross-site form cannot send without the browser's pre-flight check (which it refuses).

pub mod engine;
pub mod http;
mod pages;
pub mod runs;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use headhunt_engine::Model;
use serde_json::{json, Value};

use engine::{copying_heads, support, Engine, InterventionRequest};
use http::{read_request, Request, Response};
use runs::RunsDir;

/// Connections handled at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 64;

/// How a server is started.
pub struct Config {
    pub runs: PathBuf,
    pub host: IpAddr,
    /// 0: any free port.
    pub port: u16,
}

/// A running server; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// The token requests must carry (bound beyond the loopback), else None.
    pub token: Option<String>,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

struct State {
    runs: RunsDir,
    engine: Arc<Engine>,
    token: Option<String>,
    loopback: bool,
    port: u16,
    stopping: AtomicBool,
    connections: AtomicUsize,
}

impl Server {
    /// Bind and serve `config.runs` with `model` in background threads.
    pub fn start(config: Config, model: Model) -> Result<Server> {
        let runs = RunsDir::new(&config.runs)?;
        let listener = TcpListener::bind((config.host, config.port)).with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        let loopback = config.host.is_loopback();
        let token = (!loopback).then(new_token).transpose()?;
        let engine = Engine::new(model);
        let state = Arc::new(State {
            runs,
            engine: engine.clone(),
            token: token.clone(),
            loopback,
            port: addr.port(),
            stopping: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let worker = std::thread::Builder::new()
            .name("serve-worker".into())
            .spawn(move || engine.work())?;
        let accept_state = state.clone();
        let accept = std::thread::Builder::new()
            .name("serve-accept".into())
            .spawn(move || accept_loop(listener, accept_state))?;
        Ok(Server {
            addr,
            token,
            state,
            accept: Some(accept),
            worker: Some(worker),
        })
    }

    /// The address to open in a browser (with the token where one is needed).
    pub fn url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            self.addr.ip().to_string()
        };
        match &self.token {
            Some(t) => format!("http://{host}:{}/?token={t}", self.addr.port()),
            None => format!("http://{host}:{}/", self.addr.port()),
        }
    }

    /// Serve until the process ends.
    pub fn wait(mut self) {
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }

    pub fn stop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.engine.stop();
        // Wake the accept loop with a connection of our own.
        let wake = if self.addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), self.addr.port())
        } else {
            self.addr
        };
        let _ = TcpStream::connect(wake);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the access token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        if state.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            state.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = Response::error(503, "too many connections").write_to(&mut stream);
            continue;
        }
        let conn_state = state.clone();
        let spawned = std::thread::Builder::new().name("serve-conn".into()).spawn(move || {
            let response = match read_request(&stream) {
                Ok(request) => handle(&conn_state, &request),
                Err(refusal) => refusal,
            };
            let _ = response.write_to(&mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            conn_state.connections.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // A thread that could not start never counts its connection out.
            state.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Check who may ask, then answer.
fn handle(state: &State, request: &Request) -> Response {
    if state.loopback {
        let host = request.header("host").unwrap_or("");
        let port = state.port;
        let allowed = [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
        if !allowed.iter().any(|a| a == host) {
            return Response::error(421, "this server answers requests addressed to 127.0.0.1 or localhost only");
        }
    }
    let mut set_cookie = None;
    if let Some(token) = &state.token {
        match request.token() {
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => {
                if request.param("token").is_some() {
                    set_cookie = Some(format!("headhunt_token={token}; HttpOnly; SameSite=Strict; Path=/"));
                }
            }
            _ => return Response::error(403, "this server needs the token it printed at start (?token=...)"),
        }
    }
    let response = match route(state, request) {
        Ok(r) => r,
        Err(e) => Response::error(400, &format!("{e:#}")),
    };
    match set_cookie {
        Some(c) => response.with_header("Set-Cookie", c),
        None => response,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(state: &State, request: &Request) -> Result<Response> {
    let get = request.method == "GET";
    Ok(match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/") => Response::html(pages::runs_page(&state.runs, &state.engine.model_name())),
        ("GET", "/static/app.js") => Response::new(200, "text/javascript; charset=utf-8", pages::APP_JS),
        ("GET", "/static/app.css") => Response::new(200, "text/css; charset=utf-8", pages::APP_CSS),
        ("GET", "/api/runs") => Response::json(&Value::Array(
            state.runs.runs().iter().map(|d| runs::describe(&state.runs, d)).collect(),
        )),
        ("GET", "/run") => match run_dir(state, request) {
            Some(dir) => Response::html(pages::run_page(&state.runs, &dir)),
            None => not_found(),
        },
        ("GET", "/trial") => match run_dir(state, request) {
            Some(dir) => Response::html(pages::trial_page(&state.runs, &dir, request.param("trial").unwrap_or(""))),
            None => not_found(),
        },
        ("GET", "/api/trial") => api_trial(state, request)?,
        ("GET", "/api/attention") => api_attention(state, request)?,
        ("GET", "/api/job") => api_job(state, request),
        ("POST", "/api/intervene") => api_intervene(state, request)?,
        ("GET", p) if p.starts_with("/files/") => file(state, &p["/files/".len()..]),
        (_, "/api/intervene") => Response::error(405, "POST a JSON body").with_header("Allow", "POST".into()),
        _ if get => not_found(),
        _ => Response::error(405, "only GET, and POST to /api/intervene").with_header("Allow", "GET".into()),
    })
}

fn not_found() -> Response {
    Response::error(404, "no such page or file in the runs folder")
}

/// The run folder a request's `run` parameter names, inside the runs folder.
fn run_dir(state: &State, request: &Request) -> Option<PathBuf> {
    state.runs.resolve(request.param("run")?).filter(|p| p.is_dir())
}

/// A file of a run folder, as it is.
fn file(state: &State, rel: &str) -> Response {
    let Some(path) = state.runs.resolve(rel).filter(|p| p.is_file()) else {
        return not_found();
    };
    let kind = match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "json" | "jsonl" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "csv" | "txt" | "md" | "log" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    match std::fs::read(&path) {
        // A report carries its own inline scripts; let it run them, nothing else.
        Ok(body) if kind.starts_with("text/html") => Response::new(200, kind, body).with_header("X-Frame-Options", "DENY".into()),
        Ok(body) => Response::new(200, kind, body),
        Err(_) => not_found(),
    }
}

fn api_trial(state: &State, request: &Request) -> Result<Response> {
    let Some(dir) = run_dir(state, request) else {
        return Ok(not_found());
    };
    let key = request.param("trial").context("give ?trial=")?;
    let view = state.engine.view(&dir)?;
    let t = view.trial(key)?;
    let tok = state.engine.model.tokenizer()?;
    let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
    let n_heads = state.engine.model.config.n_heads;
    let means = view.scores.as_ref().map(|s| s.means());
    let r = &t.record;
    Ok(Response::json(&json!({
        "run": state.runs.name(&dir),
        "trial": key,
        "length": r.spec.length,
        "depth": r.spec.depth,
        "needle": view.runner.needles[r.spec.needle],
        "n_layers": state.engine.model.config.n_layers,
        "n_heads": n_heads,
        "prompt": t.prompt,
        "pieces": t.prompt.iter().map(|&id| piece(id)).collect::<Vec<_>>(),
        "needle_span": r.needle_span,
        "answer_span": r.answer_span,
        "generated": r.generated,
        "answer_pieces": r.generated.iter().map(|&id| piece(id)).collect::<Vec<_>>(),
        "answer": r.answer,
        "rouge1": r.rouge1,
        "argmax": r.argmax,
        "trial_scores": r.scores,
        "copying": copying_heads(&t.prompt, r),
        "mean_scores": means,
        "support": view.scores.as_ref().and_then(|s| support(s, &t.prompt, r)),
        "masked": view.settings["condition"]["masked_heads"],
    })))
}

fn api_attention(state: &State, request: &Request) -> Result<Response> {
    let Some(dir) = run_dir(state, request) else {
        return Ok(not_found());
    };
    let key = request.param("trial").context("give ?trial=")?;
    let head = engine_head(request.param("head").context("give ?head=LAYER-HEAD")?, state.engine.model)?;
    let step: usize = request.param("step").unwrap_or("0").parse().context("?step= is a number")?;
    let view = state.engine.view(&dir)?;
    let patterns = state.engine.attention(view, key, head.0)?;
    let row = patterns
        .rows
        .get(step)
        .with_context(|| format!("the answer has {} steps", patterns.rows.len()))?;
    let probs = &row.values[head.1 * row.n_keys..(head.1 + 1) * row.n_keys];
    let argmax = probs
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |best, (i, &p)| if p > best.1 { (i, p) } else { best })
        .0;
    Ok(Response::json(&json!({
        "head": format!("{}-{}", head.0, head.1),
        "step": step,
        "position": row.position,
        "prompt_len": patterns.prompt_len,
        "argmax": argmax,
        // Rounded to what a colour can show; the argmax is the exact one.
        "probs": probs.iter().map(|&p| (f64::from(p) * 1e5).round() / 1e5).collect::<Vec<_>>(),
    })))
}

fn engine_head(label: &str, model: &Model) -> Result<(usize, usize)> {
    let heads = crate::experiments::retrieval::masking::parse_heads(label)?;
    match heads.as_slice() {
        [h] if h.0 < model.config.n_layers && h.1 < model.config.n_heads => Ok(*h),
        _ => anyhow::bail!("`{label}` is not one head of this model"),
    }
}

fn api_job(state: &State, request: &Request) -> Response {
    let Some(id) = request.param("id").and_then(|i| i.parse().ok()) else {
        return Response::error(400, "give ?id=");
    };
    match state.engine.status(id) {
        Some((status, place)) => {
            let mut v = serde_json::to_value(status).unwrap_or_default();
            v["place"] = json!(place);
            Response::json(&v)
        }
        None => Response::error(404, "no such job"),
    }
}

fn api_intervene(state: &State, request: &Request) -> Result<Response> {
    if !request.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Ok(Response::error(415, "send the intervention as application/json"));
    }
    let body: Value = serde_json::from_slice(&request.body).context("the body is not JSON")?;
    let Some(dir) = body["run"].as_str().and_then(|r| state.runs.resolve(r)).filter(|p| p.is_dir()) else {
        return Ok(not_found());
    };
    let view = state.engine.view(&dir)?;
    let intervention = InterventionRequest::parse(&body, dir.clone(), &view)?;
    view.trial(&intervention.trial)?;
    match state.engine.submit(intervention, state.runs.name(&dir)) {
        Ok(id) => Ok(Response::new(
            202,
            "application/json",
            json!({"job": id, "queued": state.engine.queued()}).to_string(),
        )),
        Err(e) => Ok(Response::error(503, &format!("{e:#}"))),
    }
}
