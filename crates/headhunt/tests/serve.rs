//! `headhunt serve` against real runs of SmolLM2: what its pages and endpoints say equals the
//! run folders and the commands that made them; it refuses what it must; many clients browse
//! while interventions run, and nothing in the runs folder changes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use headhunt::serve::{Config, Server};
use headhunt_engine::Model;
use serde_json::{json, Value};

const GRID: [&str; 4] = ["--lengths", "160,240", "--depths", "0,100"];

/// A runs folder made once for every test: a detection run and a NIAH run with its top 5 heads
/// masked (as the commands make them), and a secret beside the folder.
fn fixture() -> &'static PathBuf {
    static RUNS: OnceLock<PathBuf> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    let _guard = MAKING.lock().unwrap();
    RUNS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("headhunt-serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let runs = base.join("runs");
        let detect = runs.join("detect");
        let masked = runs.join("niah-top5");
        let bin = env!("CARGO_BIN_EXE_headhunt");
        let ok = |args: &[&str]| {
            let out = Command::new(bin).args(args).output().unwrap();
            assert!(out.status.success(), "headhunt {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ok(&[&["detect"], &GRID[..], &["--out", detect.to_str().unwrap()]].concat());
        ok(&[
            &["niah"],
            &GRID[..],
            &[
                "--scores",
                detect.to_str().unwrap(),
                "--mask-top",
                "5",
                "--out",
                masked.to_str().unwrap(),
            ],
        ]
        .concat());
        std::fs::write(base.join("secret.txt"), "SECRET-OUTSIDE-THE-RUNS").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), runs.join("detect/leak.txt")).unwrap();
        std::os::unix::fs::symlink(&base, runs.join("up")).unwrap();
        runs
    })
}

fn model() -> Model {
    let path = headhunt::models::resolve("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e:#}"));
    let mut model = Model::load(&path).unwrap();
    model.source.name = Some("SmolLM2-135M-Instruct".into());
    model
}

fn start(host: [u8; 4]) -> Server {
    let config = Config {
        runs: fixture().clone(),
        host: host.into(),
        port: 0,
    };
    Server::start(config, model()).unwrap()
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One raw request (`head` without the final blank line), its reply.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", addr.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    s.write_all(format!("{head}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
        .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Reply {
        status: headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    raw(addr, &format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}", addr.port()), b"")
}

fn get_json(addr: SocketAddr, target: &str) -> Value {
    let r = get(addr, target);
    assert_eq!(r.status, 200, "{target}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn post(addr: SocketAddr, target: &str, body: &Value, extra: &str) -> Reply {
    raw(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json{extra}",
            addr.port()
        ),
        body.to_string().as_bytes(),
    )
}

fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn key(r: &Value) -> String {
    format!("n{}-l{}-d{}", r["needle"], r["length"], r["depth"].as_f64().unwrap())
}

/// Every file under the folder (links not followed) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn wait_job(addr: SocketAddr, job: u64) -> Value {
    let start = Instant::now();
    loop {
        let s = get_json(addr, &format!("/api/job?id={job}"));
        match s["state"].as_str() {
            Some("done") => return s,
            Some("failed") => panic!("job {job} failed: {}", s["error"]),
            _ => assert!(start.elapsed() < Duration::from_secs(600), "job {job} never finished"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn intervene(addr: SocketAddr, body: Value) -> u64 {
    let r = post(addr, "/api/intervene", &body, "");
    assert_eq!(r.status, 202, "{}", r.body);
    serde_json::from_str::<Value>(&r.body).unwrap()["job"].as_u64().unwrap()
}

/// The trial page's data, attention and interventions against the run folders and the commands
/// that made them.
#[test]
fn trials_answer_as_their_runs_recorded() {
    let runs = fixture();
    let server = start([127, 0, 0, 1]);
    let addr = server.addr;
    let listed = get_json(addr, "/api/runs");
    let names: BTreeSet<&str> = listed.as_array().unwrap().iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["detect", "niah-top5"]), "the link `up` is not followed");
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "done" && r["trials_done"] == 4));
    let page = get(addr, "/");
    assert!(page.body.contains("href=\"/run?run=detect\"") && page.body.contains("niah-top5"));
    let run_page = get(addr, "/run?run=detect");
    assert!(run_page.body.contains("/trial?run=detect&amp;trial=n"), "{}", run_page.body);

    // The heads `niah --mask-top 5` chose.
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(runs.join("niah-top5/run.json")).unwrap()).unwrap();
    let top5: Vec<String> = settings["condition"]["masked_heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(top5.len(), 5);
    let masked_run = records(&runs.join("niah-top5"));
    for r in records(&runs.join("detect")) {
        let k = key(&r);
        let t = get_json(addr, &format!("/api/trial?run=detect&trial={k}"));
        let prompt: Vec<u64> = t["prompt"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(prompt.len() as u64, r["prompt_tokens"].as_u64().unwrap(), "{k}");
        assert_eq!(t["answer"], r["answer"]);
        let n_heads = 9;
        // The copying heads: by the record's argmax and tokens.
        for (step, (token, argmax)) in r["generated"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["argmax"].as_array().unwrap())
            .enumerate()
        {
            let expected: Vec<u64> = argmax
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(_, j)| prompt.get(j.as_u64().unwrap() as usize) == token.as_u64().as_ref())
                .map(|(h, _)| h as u64)
                .collect();
            let served: Vec<u64> = t["copying"][step].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(served, expected, "{k} step {step}");
        }
        // Attention recomputed in one pass: a distribution over the keys the step saw, its
        // largest weight where the trial's own decoding put its argmax.
        for head in top5.iter().take(3) {
            let (l, h) = head.split_once('-').unwrap();
            let flat = l.parse::<usize>().unwrap() * n_heads + h.parse::<usize>().unwrap();
            for step in 0..r["generated"].as_array().unwrap().len() {
                let a = get_json(addr, &format!("/api/attention?run=detect&trial={k}&head={head}&step={step}"));
                let probs: Vec<f64> = a["probs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                assert_eq!(probs.len(), prompt.len() + step, "{k} {head} step {step}");
                assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-3);
                let recorded = r["argmax"][step][flat].as_u64().unwrap() as usize;
                let best = probs.iter().cloned().fold(0.0, f64::max);
                assert!(
                    probs[recorded] >= best - 1e-4,
                    "{k} {head} step {step}: argmax {recorded} against {}",
                    a["argmax"]
                );
            }
        }
        // Masking the top 5 reruns the trial as `headhunt niah --scores detect --mask-top 5` ran it.
        let job = intervene(addr, json!({"run": "detect", "trial": k, "top": 5}));
        let done = wait_job(addr, job);
        let reference = masked_run.iter().find(|m| key(m) == k).unwrap();
        assert_eq!(done["result"]["answer"], reference["answer"], "{k}");
        assert_eq!(done["result"]["rouge1"], reference["rouge1"]);
        assert_eq!(done["heads"], json!(top5));
        let text = done["text"].as_str().unwrap();
        assert!(
            text.trim_start().starts_with(done["result"]["answer"].as_str().unwrap()),
            "the streamed text ends as the answer"
        );
    }
    // The same heads named one by one, on a trial of the masked run itself.
    let k = key(&masked_run[0]);
    let job = intervene(
        addr,
        json!({"run": "niah-top5", "trial": k, "heads": top5.join(","), "mode": "uniform", "phase": "all"}),
    );
    assert_eq!(wait_job(addr, job)["result"]["answer"], masked_run[0]["answer"]);
}

/// What the server must refuse, and that refusing reads and writes nothing.
#[test]
fn requests_outside_the_rules_are_refused() {
    let runs = fixture();
    let before = snapshot(runs);
    let server = start([127, 0, 0, 1]);
    let addr = server.addr;
    assert_eq!(get(addr, "/files/detect/head_scores.json").status, 200);
    let outside = [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/detect/..%2F..%2Fsecret.txt",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/detect/leak.txt",
        "/files/up/secret.txt",
        "/files/detect%5C..%5C..%5Csecret.txt",
        "/run?run=..",
        "/run?run=%2Fetc",
        "/trial?run=../runs/detect&trial=x",
        "/api/trial?run=up/runs/detect&trial=x",
    ];
    for target in outside {
        let r = get(addr, target);
        assert!(matches!(r.status, 400 | 404), "{target}: {}", r.status);
        assert!(!r.body.contains("SECRET") && !r.body.contains("root:"), "{target} leaked");
    }
    let r = raw(addr, "GET /files/../secret.txt HTTP/1.1\r\nHost: localhost:1", b"");
    assert_eq!(r.status, 421, "a request addressed to another host (DNS rebinding)");
    let r = raw(addr, &format!("GET / HTTP/1.1\r\nHost: evil.example:{}", addr.port()), b"");
    assert_eq!(r.status, 421);
    // Oversized headers, body; a body that is not JSON; GET on the POST endpoint.
    let big = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Pad: {}", addr.port(), "a".repeat(20_000));
    assert_eq!(raw(addr, &big, b"").status, 431);
    let huge = vec![b'x'; 100_000];
    let r = raw(
        addr,
        &format!(
            "POST /api/intervene HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json",
            addr.port()
        ),
        &huge,
    );
    assert_eq!(r.status, 413);
    let r = raw(
        addr,
        &format!(
            "POST /api/intervene HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded",
            addr.port()
        ),
        b"run=detect&trial=x&top=5",
    );
    assert_eq!(r.status, 415, "a cross-site form cannot start work");
    assert_eq!(get(addr, "/api/intervene").status, 405);
    assert_eq!(
        post(
            addr,
            "/api/intervene",
            &json!({"run": "../runs/detect", "trial": "x", "top": 1}),
            ""
        )
        .status,
        404
    );
    assert_eq!(
        post(
            addr,
            "/api/intervene",
            &json!({"run": "detect", "trial": "n0-l160-d0", "heads": "99-0"}),
            ""
        )
        .status,
        400
    );
    drop(server);
    assert!(snapshot(runs) == before, "the runs folder changed");
}

/// Bound beyond the loopback, every request needs the printed token.
#[test]
fn beyond_the_loopback_the_token_is_required() {
    let server = start([0, 0, 0, 0]);
    let addr = server.addr;
    let token = server.token.clone().expect("a token off the loopback");
    assert!(server.url().contains(&token));
    assert_eq!(get(addr, "/").status, 403);
    assert_eq!(get(addr, "/api/runs").status, 403);
    let body = json!({"run": "detect", "trial": "n0-l160-d0", "top": 1});
    assert_eq!(post(addr, "/api/intervene", &body, "").status, 403, "a POST without the token");
    assert_eq!(post(addr, "/api/intervene", &body, "\r\nX-Headhunt-Token: wrong").status, 403);
    let r = get(addr, &format!("/?token={token}"));
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("Set-Cookie: headhunt_token="), "{}", r.headers);
    let r = raw(
        addr,
        &format!("GET /api/runs HTTP/1.1\r\nHost: x\r\nCookie: headhunt_token={token}"),
        b"",
    );
    assert_eq!(r.status, 200);
    let r = post(addr, "/api/intervene", &body, &format!("\r\nX-Headhunt-Token: {token}"));
    assert_eq!(r.status, 202, "{}", r.body);
}

/// Twenty clients browse for `HEADHUNT_SERVE_LOAD_SECONDS` (30 by default) while two
/// interventions run: every page is answered within the bound, and no record changes.
#[test]
fn twenty_clients_browse_while_interventions_run() {
    let runs = fixture();
    let before = snapshot(runs);
    let server = start([127, 0, 0, 1]);
    let addr = server.addr;
    let seconds: u64 = std::env::var("HEADHUNT_SERVE_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let trials: Vec<String> = records(&runs.join("detect")).iter().map(key).collect();
    let jobs = [
        intervene(addr, json!({"run": "detect", "trial": trials[0], "top": 5})),
        intervene(addr, json!({"run": "detect", "trial": trials[3], "random": 5, "seed": 1})),
    ];
    let pages: Vec<String> = [
        "/",
        "/api/runs",
        "/run?run=detect",
        "/run?run=niah-top5",
        "/static/app.js",
        "/files/detect/summary.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(trials.iter().map(|t| format!("/api/trial?run=detect&trial={t}")))
    .chain(trials.iter().map(|t| format!("/trial?run=detect&trial={t}")))
    .collect();
    let end = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let pages = pages.clone();
            std::thread::spawn(move || {
                let (mut n, mut slowest, mut i) = (0usize, Duration::ZERO, c);
                while Instant::now() < end {
                    let target = &pages[i % pages.len()];
                    let t0 = Instant::now();
                    let r = get(addr, target);
                    slowest = slowest.max(t0.elapsed());
                    assert_eq!(r.status, 200, "{target}: {}", r.body);
                    n += 1;
                    i += 7;
                }
                (n, slowest)
            })
        })
        .collect();
    let results: Vec<(usize, Duration)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for job in jobs {
        wait_job(addr, job);
    }
    let answered: usize = results.iter().map(|r| r.0).sum();
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    println!("{answered} pages in {seconds} s by 20 clients beside 2 interventions; slowest {slowest:?}");
    assert!(answered >= 20 * seconds as usize, "only {answered} pages answered");
    assert!(slowest < Duration::from_secs(5), "a page took {slowest:?}");
    drop(server);
    assert!(snapshot(runs) == before, "the runs folder changed");
}
