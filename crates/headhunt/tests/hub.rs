//! Models by Hub id, against a Hub the test starts on 127.0.0.1 (`hub/server.rs`): a tiny
//! safetensors checkpoint and a GGUF repo with several quants and a split GGUF are downloaded
//! and run, and run again offline from the cache; an interrupted download is resumed; a
//! corrupted one is refused; a missing repo, quant or file and a gated repo give one line each;
//! and `huggingface_hub` itself reads the cache headhunt wrote.
//!
//! The checkpoints are `reference/make_reference.py`'s tiny Llama (transformers-made); its logits
//! here must equal those of the same files loaded from their folder.

#[path = "hub/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use headhunt::models::hub::{Hub as HubClient, HubId};
use headhunt_engine::gguf::{GgufFile, GgufWriter, Value};
use headhunt_engine::{Hooks, Model, RunOptions};
use server::{Faults, Hub, Repo, RepoFile};

const COMMIT: &str = "1111111111111111111111111111111111111111";
const GGUF_COMMIT: &str = "2222222222222222222222222222222222222222";

fn tiny_dir() -> PathBuf {
    let base = match std::env::var_os("HEADHUNT_REFERENCE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reference"),
    };
    let dir = base.join("tiny/llama-gqa");
    assert!(
        dir.join("model.gguf").exists(),
        "{} is missing: run scripts/test.sh (it makes the reference)",
        dir.display()
    );
    dir
}

fn file(dir: &Path, name: &str) -> RepoFile {
    RepoFile {
        name: name.into(),
        bytes: std::fs::read(dir.join(name)).unwrap(),
    }
}

/// The tiny Llama as a safetensors repository.
fn safetensors_repo(gated: bool) -> Repo {
    let dir = tiny_dir();
    let mut files: Vec<RepoFile> = ["config.json", "model.safetensors", "generation_config.json"]
        .iter()
        .map(|f| file(&dir, f))
        .collect();
    files.push(RepoFile {
        name: "README.md".into(),
        bytes: b"# tiny\n".to_vec(),
    });
    Repo {
        commit: COMMIT.into(),
        files,
        gated,
    }
}

/// The tiny Llama's GGUF split in two as llama.cpp's `gguf-split` splits one: every metadata
/// key in the first part, the tensors shared out, `split.*` keys in each.
fn split_gguf(path: &Path) -> [Vec<u8>; 2] {
    let f = GgufFile::open(path).unwrap();
    let names: Vec<&String> = f.header.tensors.keys().collect();
    let half = names.len() / 2;
    let split = |w: GgufWriter, no: u16| {
        w.meta("split.no", Value::U16(no))
            .meta("split.count", Value::U16(2))
            .meta("split.tensors.count", Value::I32(names.len() as i32))
    };
    let mut first = split(GgufWriter::new(), 0);
    for (k, v) in &f.header.metadata {
        first = first.meta(k, v.clone());
    }
    let mut second = split(GgufWriter::new(), 1);
    for (i, name) in names.iter().enumerate() {
        let (data, shape) = f.tensor_f32(name).unwrap();
        if i < half {
            first = first.tensor(name, &shape, data);
        } else {
            second = second.tensor(name, &shape, data);
        }
    }
    [first.to_bytes(), second.to_bytes()]
}

/// A GGUF repository with three quants (the same tiny file under each name: the test is of the
/// choice, not of the quant) and an F32 split in two, in a folder, beside an mmproj.
fn gguf_repo() -> Repo {
    let gguf = std::fs::read(tiny_dir().join("model.gguf")).unwrap();
    let mut bytes = gguf.clone();
    bytes.extend_from_slice(&[0; 32]); // another blob for the other quant
    let [p1, p2] = split_gguf(&tiny_dir().join("model.gguf"));
    let f = |name: &str, bytes: Vec<u8>| RepoFile { name: name.into(), bytes };
    Repo {
        commit: GGUF_COMMIT.into(),
        files: vec![
            f("README.md", b"# GGUF\n".to_vec()),
            f("tiny-llama-Q4_K_M.gguf", gguf.clone()),
            f("tiny-llama-Q8_0.gguf", bytes),
            f("tiny-llama-IQ4_XS.gguf", gguf.clone()),
            f("F32/tiny-llama-F32-00001-of-00002.gguf", p1),
            f("F32/tiny-llama-F32-00002-of-00002.gguf", p2),
            f("mmproj-tiny-F16.gguf", gguf),
        ],
        gated: false,
    }
}

fn logits(path: &Path) -> Vec<f32> {
    let model = Model::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut run = model.run(Hooks::default(), RunOptions::default()).unwrap();
    run.prefill(&[1, 7, 3, 42, 9, 15, 2, 30]).unwrap()
}

struct Home(PathBuf);

impl Home {
    fn new(name: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("headhunt-hub-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Home(dir)
    }

    fn cache(&self) -> PathBuf {
        self.0.join("hub")
    }

    fn client(&self, hub: &Hub, token: Option<&str>) -> HubClient {
        HubClient::new(&hub.url, self.cache(), token.map(str::to_owned), false)
    }

    /// headhunt with this home and endpoint, no token, online unless `offline`.
    fn headhunt(&self, endpoint: &str, offline: bool, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_headhunt"));
        cmd.args(args)
            .env("HF_HOME", &self.0)
            .env("HF_ENDPOINT", endpoint)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd.output().unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "headhunt failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

/// One `error:` line containing `needle`.
fn one_error_line(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected a failure: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "`{needle}` not in: {stderr}"
    );
}

fn cdn_requests(hub: &Hub) -> usize {
    hub.log().iter().filter(|l| l.starts_with("GET /cdn/")).count()
}

#[test]
fn a_safetensors_repo_downloads_runs_and_runs_offline_and_transformers_reads_its_cache() {
    let mut hub = Hub::start();
    hub.add("tiny/llama-gqa", safetensors_repo(false));
    let home = Home::new("safetensors");

    let out = ok(&home.headhunt(&hub.url, false, &["fetch", "tiny/llama-gqa"]));
    let snapshot = home.cache().join(format!("models--tiny--llama-gqa/snapshots/{COMMIT}"));
    assert!(out.contains(&snapshot.display().to_string()), "{out}");
    let mut got = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    got.sort();
    assert_eq!(
        got,
        ["config.json", "generation_config.json", "model.safetensors"],
        "only what the engine reads"
    );
    assert_eq!(
        std::fs::read_to_string(home.cache().join("models--tiny--llama-gqa/refs/main")).unwrap(),
        COMMIT
    );
    assert!(std::fs::read_link(snapshot.join("model.safetensors"))
        .unwrap()
        .starts_with("../../blobs"));
    assert_eq!(logits(&snapshot), logits(&tiny_dir()));
    assert_eq!(cdn_requests(&hub), 1, "the weights come from the CDN redirect: {:?}", hub.log());

    // Fetched again: no file is downloaded again.
    ok(&home.headhunt(&hub.url, false, &["fetch", "tiny/llama-gqa"]));
    assert_eq!(cdn_requests(&hub), 1);

    // The cache as huggingface_hub keeps it: its own reader finds the snapshot and the file.
    let py = Command::new("python3")
        .args([
            "-c",
            "from huggingface_hub import snapshot_download, hf_hub_download\n\
             print(snapshot_download('tiny/llama-gqa', local_files_only=True))\n\
             print(hf_hub_download('tiny/llama-gqa', 'model.safetensors', local_files_only=True))",
        ])
        .env("HF_HOME", &home.0)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "huggingface_hub could not read the cache: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        [
            snapshot.display().to_string(),
            snapshot.join("model.safetensors").display().to_string()
        ]
    );

    // The card names the repo, the commit and the files.
    let info = ok(&home.headhunt(&hub.url, false, &["info", "--model", "tiny/llama-gqa"]));
    assert!(
        info.contains(&format!(
            "tiny/llama-gqa @ {COMMIT}: config.json, generation_config.json, model.safetensors"
        )),
        "{info}"
    );

    // With the Hub gone: offline, and online with the network unreachable.
    let requests = hub.log().len();
    hub.stop();
    let offline = ok(&home.headhunt(&hub.url, true, &["info", "--model", "tiny/llama-gqa"]));
    assert!(offline.contains(COMMIT), "{offline}");
    let unreachable = ok(&home.headhunt(&hub.url, false, &["info", "--model", &format!("tiny/llama-gqa@{COMMIT}")]));
    assert!(
        unreachable.contains("cannot reach") && unreachable.contains("using tiny/llama-gqa"),
        "{unreachable}"
    );
    assert_eq!(hub.log().len(), requests);
    one_error_line(
        &home.headhunt(&hub.url, true, &["info", "--model", "tiny/other"]),
        "is not in the Hugging Face cache",
    );
}

#[test]
fn a_gguf_repo_is_read_by_quant_tag_and_a_split_gguf_whole() {
    let hub = Hub::start();
    hub.add("tiny/llama-GGUF", gguf_repo());
    let home = Home::new("gguf");
    let client = home.client(&hub, None);
    let want = logits(&tiny_dir().join("model.gguf"));
    let snapshot = |arg: &str| {
        client
            .snapshot(&HubId::parse(arg).unwrap())
            .unwrap_or_else(|e| panic!("{arg}: {e:#}"))
    };

    let default = snapshot("tiny/llama-GGUF");
    assert_eq!(
        default.files,
        ["tiny-llama-Q4_K_M.gguf"],
        "Q4_K_M when no quant is named, as llama.cpp"
    );
    assert_eq!(logits(&default.model), want);
    assert_eq!(snapshot("tiny/llama-GGUF:q8_0").files, ["tiny-llama-Q8_0.gguf"]);
    assert_eq!(snapshot("tiny/llama-GGUF:tiny-llama-IQ4_XS.gguf").files, ["tiny-llama-IQ4_XS.gguf"]);

    let split = snapshot("tiny/llama-GGUF:F32");
    assert_eq!(
        split.files,
        ["F32/tiny-llama-F32-00001-of-00002.gguf", "F32/tiny-llama-F32-00002-of-00002.gguf"]
    );
    assert!(split.model.ends_with("F32/tiny-llama-F32-00001-of-00002.gguf"));
    assert_eq!(GgufFile::open(&split.model).unwrap().parts(), 2);
    assert_eq!(logits(&split.model), want, "a split GGUF computes as the whole file");

    one_error_line(&home.headhunt(&hub.url, false, &["fetch", "tiny/llama-GGUF:Q2_K"]), "has no Q2_K GGUF; it has F32/tiny-llama-F32-00001-of-00002.gguf, tiny-llama-IQ4_XS.gguf, tiny-llama-Q4_K_M.gguf, tiny-llama-Q8_0.gguf");
    one_error_line(
        &home.headhunt(&hub.url, false, &["fetch", "tiny/llama-GGUF:x.gguf"]),
        "has no file x.gguf",
    );
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let hub = Hub::start();
    let repo = safetensors_repo(false);
    let weights = server::sha256(&repo.files[1].bytes);
    let size = repo.files[1].bytes.len();
    hub.add("tiny/llama-gqa", repo);
    hub.faults(Faults {
        cut_once: Some(weights),
        corrupt: None,
    });
    let home = Home::new("resume");
    let snap = home.client(&hub, None).snapshot(&HubId::parse("tiny/llama-gqa").unwrap()).unwrap();
    let log = hub.log();
    let ranged: Vec<&String> = log.iter().filter(|l| l.starts_with("GET /cdn/")).collect();
    assert_eq!(ranged.len(), 2, "{log:?}");
    assert!(
        ranged[1].ends_with(&format!("bytes={}-", size / 2)),
        "resumed from the half that arrived: {log:?}"
    );
    assert_eq!(logits(&snap.model), logits(&tiny_dir()));
}

#[test]
fn a_corrupted_download_is_refused_and_nothing_is_cached() {
    let hub = Hub::start();
    let repo = safetensors_repo(false);
    let weights = server::sha256(&repo.files[1].bytes);
    hub.add("tiny/llama-gqa", repo);
    hub.faults(Faults {
        cut_once: None,
        corrupt: Some(weights.clone()),
    });
    let home = Home::new("corrupt");
    let out = home.headhunt(&hub.url, false, &["fetch", "tiny/llama-gqa"]);
    one_error_line(&out, &format!("the Hub's is {weights}"));
    let blobs = home.cache().join("models--tiny--llama-gqa/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with(&weights)), "{left:?}");
    let snapshot = home.cache().join(format!("models--tiny--llama-gqa/snapshots/{COMMIT}"));
    assert!(!snapshot.join("model.safetensors").exists());
}

#[test]
fn missing_repos_revisions_and_gated_repos_say_so_in_one_line() {
    let hub = Hub::start();
    hub.add("tiny/llama-gqa", safetensors_repo(false));
    hub.add("meta/gated", safetensors_repo(true));
    let home = Home::new("errors");
    one_error_line(
        &home.headhunt(&hub.url, false, &["fetch", "tiny/nothing"]),
        "no model `tiny/nothing`",
    );
    one_error_line(
        &home.headhunt(&hub.url, false, &["fetch", "tiny/llama-gqa@v9"]),
        "has no revision `v9`",
    );
    one_error_line(
        &home.headhunt(&hub.url, false, &["info", "--model", "meta/gated"]),
        &format!(
            "meta/gated is gated: accept its licence at {}/meta/gated, then pass a token (HF_TOKEN",
            hub.url
        ),
    );
    // With the token (as HF_TOKEN or in the token file), it downloads.
    std::fs::write(home.0.join("token"), format!("{}\n", server::TOKEN)).unwrap();
    ok(&home.headhunt(&hub.url, false, &["fetch", "meta/gated"]));
}
