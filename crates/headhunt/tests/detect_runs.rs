//! Long detection runs: killed and resumed, split in shards and merged, compared.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn headhunt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_headhunt"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("headhunt-runs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Trial keys in a run folder, with how many times each appears: its complete lines only (a
/// record being written, or torn by a kill, has no newline yet; the store drops it on resume).
fn trial_keys(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("trials.jsonl")).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}-{}-{}", v["needle"], v["length"], v["depth"])
        })
        .collect()
}

const GRID: [&str; 4] = ["--lengths", "160,240", "--depths", "0,100"];

#[test]
fn a_killed_run_resumes_without_losing_or_repeating_trials() {
    let out = scratch("resume");
    let args = |cmd: &mut Command| {
        cmd.args(["detect", "--out"])
            .arg(&out)
            .args(GRID)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut first = headhunt();
    args(&mut first);
    let mut child = first.spawn().unwrap();
    // Kill -9 as soon as one trial is on disk (or the run ends on its own).
    let start = Instant::now();
    while trial_keys(&out).is_empty() && start.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().unwrap();
    let before = trial_keys(&out);
    assert!(!before.is_empty(), "no trial was written before the kill");
    // A write cut short by a kill leaves half a line; the resumed run must drop it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("trials.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"needle\": 1, \"length\": 240, \"dep"))
        .unwrap();

    let mut second = headhunt();
    args(&mut second);
    assert!(second.status().unwrap().success());
    let after = trial_keys(&out);
    let distinct: BTreeSet<&String> = after.iter().collect();
    assert_eq!(after.len(), 4, "trials: {after:?}");
    assert_eq!(distinct.len(), 4, "a trial was repeated: {after:?}");
    assert!(before.iter().all(|k| after.contains(k)), "a finished trial was lost");
    for f in ["head_scores.json", "summary.json", "retrieval_heads.png", "retrieval_heads.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    std::fs::remove_dir_all(&out).ok();
}

/// `headhunt ARGS` (stdout discarded); its stderr when it fails.
fn run_ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) {
    let out = headhunt().args(args).stdout(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "headhunt {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `headhunt ARGS`, expected to fail: its stderr.
fn run_err<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = headhunt().args(args).output().unwrap();
    assert!(!out.status.success(), "headhunt {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A grid in three shards, each in its own folder under the run's; `merge --expect 3` refuses
/// while a shard is missing or unfinished and names it, a restarted shard resumes, and the
/// merged head scores are an unsharded run's, number for number.
#[test]
fn shards_merge_into_the_whole_grid() {
    const GRID6: [&str; 4] = ["--lengths", "160,240", "--depths", "0,50,100"];
    let (run, whole) = (scratch("sharded"), scratch("whole"));
    let detect = |out: &Path, extra: &[&str]| {
        let mut args = os(&["detect"]);
        args.extend(os(&GRID6));
        args.extend(extra.iter().map(OsStr::new));
        args.push(OsStr::new("--out"));
        args.push(out.as_os_str());
        run_ok(&args);
    };
    let merge = |extra: &[&str]| {
        let mut args = vec![OsString::from("merge"), run.clone().into_os_string()];
        args.extend(extra.iter().map(OsString::from));
        args
    };
    detect(&whole, &[]);
    detect(&run, &["--shard", "1/3"]);
    detect(&run, &["--shard", "2/3"]);
    for i in 1..=2 {
        assert_eq!(
            trial_keys(&run.join(format!("shards/{i}-of-3"))).len(),
            2,
            "shard {i}/3 ran its third"
        );
    }
    assert!(!run.join("trials.jsonl").exists(), "a shard wrote outside its folder");
    let e = run_err(&merge(&["--expect", "3"]));
    assert!(e.contains("shard 3/3 is missing"), "{e}");
    // Shard 3 stopped after one of its two trials.
    detect(&run, &["--shard", "3/3"]);
    let third = run.join("shards/3-of-3/trials.jsonl");
    let text = std::fs::read_to_string(&third).unwrap();
    std::fs::write(&third, format!("{}\n", text.lines().next().unwrap())).unwrap();
    let e = run_err(&merge(&["--expect", "3"]));
    assert!(e.contains("shard 3/3 is unfinished: 1 of 2 trials"), "{e}");
    assert!(!e.contains("1/3") && !e.contains("2/3"), "finished shards named: {e}");
    let e = run_err(&merge(&["--expect", "2"]));
    assert!(e.contains("not one of 2"), "{e}");
    let status = headhunt().arg("status").arg(&run).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("5 of 6 trials") && status.contains("2 of 3 shards finished"),
        "{status}"
    );
    // Restarted, it runs only what it lacks.
    detect(&run, &["--shard", "3/3"]);
    assert_eq!(trial_keys(&run.join("shards/3-of-3")).len(), 2);
    run_ok(&merge(&["--expect", "3"]));
    let keys = trial_keys(&run);
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), distinct.len()), (6, 6), "merged trials: {keys:?}");
    let read = |dir: &Path| std::fs::read_to_string(dir.join("head_scores.json")).unwrap();
    assert_eq!(read(&run), read(&whole), "merged head scores differ from the unsharded run's");
    // Merging again adds nothing; the finished run says so.
    run_ok(&merge(&["--expect", "3"]));
    assert_eq!(trial_keys(&run).len(), 6);
    let status = headhunt().arg("status").arg(&run).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("6 of 6 trials (100%), 3 of 3 shards finished; done"));
    // Shard folders named one by one, merged elsewhere; a folder with other settings is refused.
    let elsewhere = scratch("merged-elsewhere");
    let shard = |i: usize| run.join(format!("shards/{i}-of-3"));
    let (s1, s2, s3) = (shard(1), shard(2), shard(3));
    run_ok(&[
        OsStr::new("merge"),
        s1.as_os_str(),
        s2.as_os_str(),
        s3.as_os_str(),
        OsStr::new("--out"),
        elsewhere.as_os_str(),
    ]);
    assert_eq!(read(&elsewhere), read(&whole));
    let other = scratch("other");
    run_ok(&[
        OsStr::new("detect"),
        OsStr::new("--lengths"),
        OsStr::new("160"),
        OsStr::new("--depths"),
        OsStr::new("50"),
        OsStr::new("--out"),
        other.as_os_str(),
    ]);
    let e = run_err(&[
        OsStr::new("merge"),
        s1.as_os_str(),
        other.as_os_str(),
        OsStr::new("--out"),
        scratch("bad").as_os_str(),
    ]);
    assert!(e.contains("different settings"), "{e}");
    for d in [run, whole, elsewhere, other] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn compare_reads_the_paper_format() {
    let dir = scratch("compare");
    std::fs::create_dir_all(&dir).unwrap();
    // Two files in the published format: {"L-H": [score per trial]}; B doubles A's scores.
    let (mut a, mut b) = (serde_json::Map::new(), serde_json::Map::new());
    for l in 0..4 {
        for h in 0..3 {
            let s = (l * 3 + h) as f64 / 12.0;
            a.insert(format!("{l}-{h}"), serde_json::json!([s, s]));
            b.insert(format!("{l}-{h}"), serde_json::json!([2.0 * s]));
        }
    }
    std::fs::write(dir.join("a.json"), serde_json::Value::Object(a).to_string()).unwrap();
    std::fs::write(dir.join("b.json"), serde_json::Value::Object(b).to_string()).unwrap();
    let out = headhunt()
        .arg("compare")
        .arg(dir.join("a.json"))
        .arg(dir.join("b.json"))
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Pearson r = 1.000") && text.contains("Spearman rho = 1.000"),
        "{text}"
    );
    assert!(text.contains("top-5   overlap: 5/5"), "{text}");
    assert!(dir.join("compare.png").exists() && dir.join("compare.svg").exists());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("precision"));
    // Run folders computed at different precisions (a run from before precisions counts as
    // exact) are compared with a warning.
    for (name, provenance) in [
        ("old", r#"[{"command": "headhunt detect"}]"#),
        ("fast", r#"[{"precision": "fast"}]"#),
    ] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::copy(dir.join("a.json"), dir.join(name).join("head_scores.json")).unwrap();
        std::fs::write(dir.join(name).join("provenance.json"), provenance).unwrap();
    }
    let out = headhunt()
        .arg("compare")
        .arg(dir.join("old"))
        .arg(dir.join("fast"))
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("A was computed at precision exact and B at fast"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Command-line words as the `OsStr`s `Command::args` takes, to mix with paths.
fn os(args: &[&'static str]) -> Vec<&'static OsStr> {
    args.iter().map(|&a| OsStr::new(a)).collect()
}

/// A run folder's trials as comparable values: keyed, without the timing.
fn trials_by_key(dir: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("trials.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            (format!("{}-{}-{}", v["needle"], v["length"], v["depth"]), v)
        })
        .collect()
}

/// The prefix cache changes how long a grid takes, not what it records: the same trials, field
/// for field (timing aside), with and without it, on a model with full caches (SmolLM2: the run
/// goes back by truncation) and one with sliding-window layers (Gemma: by forking).
#[test]
fn the_prefix_cache_changes_nothing_but_time() {
    let needles = scratch("needles").with_extension("jsonl");
    // Two needles over their own haystacks, three depths each: trials of one needle share the
    // haystack up to the earlier needle.
    std::fs::write(
        &needles,
        "{\"needle\": \"The harbour master keeps the spare key under the blue anchor.\", \"question\": \"Where does the harbour master keep the spare key?\", \"real_needle\": \"under the blue anchor\"}\n\
         {\"needle\": \"The festival's opening song was written by a baker named Ilse Brandt.\", \"question\": \"Who wrote the festival's opening song?\", \"real_needle\": \"a baker named Ilse Brandt\"}\n",
    )
    .unwrap();
    for model in ["smollm2-135m-instruct", "gemma3-270m"] {
        // `headhunt ARGS --model M --needles F --out DIR`, with and without the cache: the two
        // folders.
        let both = |name: &str, args: &[&OsStr]| {
            let run = |cache: bool| {
                let out = scratch(&format!("prefix-{name}-{model}-{cache}"));
                let mut cmd = headhunt();
                cmd.args(args)
                    .args(["--model", model, "--needles"])
                    .arg(&needles)
                    .arg("--out")
                    .arg(&out);
                if !cache {
                    cmd.arg("--no-prefix-cache");
                }
                let status = cmd.stdout(Stdio::null()).status().unwrap();
                assert!(status.success(), "{model}: {name} (prefix cache {cache}) failed");
                out
            };
            (run(true), run(false))
        };
        let (with, without) = both(
            "detect",
            &os(&["detect", "--lengths", "200,360", "--depths", "0,40,100", "--per-cell", "2"]),
        );
        let (a, b) = (trials_by_key(&with), trials_by_key(&without));
        assert_eq!(a.len(), 12, "{model}: the whole grid ran");
        assert_eq!(a, b, "{model}: trials differ with the prefix cache");
        let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(with.join("prefix_cache.json")).unwrap()).unwrap();
        let hit = stats["hit_rate"].as_f64().unwrap();
        assert!(hit > 0.2, "{model}: only {hit} of the prompt tokens came from the cache");
        assert!(!without.join("prefix_cache.json").exists());
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(with.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["prefix_cache"]["hit_rate"].as_f64(), Some(hit));
        eprintln!(
            "{model}: 12 trials identical with and without the prefix cache ({:.0}% of prompt tokens reused)",
            100.0 * hit
        );
        // KV policies (heads at sink + window, the rest full) share within their condition:
        // every condition of a small `kv` sweep, with and without the cache.
        let mut kv_args = os(&["kv", "--lengths", "200,360", "--depths", "0,100", "--budgets", "0.5"]);
        kv_args.extend(os(&["--sink", "4", "--window", "48", "--no-bench", "--scores"]));
        kv_args.push(with.as_os_str());
        let (with_kv, without_kv) = both("kv", &kv_args);
        let mut conditions = 0;
        for entry in std::fs::read_dir(&with_kv).unwrap() {
            let dir = entry.unwrap().path();
            if dir.join("trials.jsonl").exists() {
                let name = dir.file_name().unwrap().to_owned();
                assert_eq!(
                    trials_by_key(&dir),
                    trials_by_key(&without_kv.join(&name)),
                    "{model}: kv condition {name:?} differs with the prefix cache"
                );
                conditions += 1;
            }
        }
        assert!(conditions >= 4, "{model}: only {conditions} kv conditions ran");
        eprintln!("{model}: {conditions} kv conditions identical with and without the prefix cache");
        // Masks in decoding only: every condition decodes from one prefill of each prompt.
        let mut ablate_args = os(&["ablate", "--lengths", "200,360", "--depths", "0,100", "--ks", "0,2"]);
        ablate_args.extend(os(&["--seeds", "1", "--mask-phase", "decode", "--scores"]));
        ablate_args.push(with.as_os_str());
        let (with_ab, without_ab) = both("ablate", &ablate_args);
        for label in ["none", "top-2", "random-2-seed0"] {
            let (a, b) = (trials_by_key(&with_ab.join(label)), trials_by_key(&without_ab.join(label)));
            assert_eq!(a.len(), 4, "{model}: ablate {label} ran the grid");
            assert_eq!(a, b, "{model}: ablate condition {label} differs with the shared prefill");
        }
    }
}

/// The experiments run on Mixture-of-Experts models as on a dense one: detection (whose trials
/// record, per decoding step and layer, the experts chosen), the masking sweep and KV compression,
/// on the tiny random Mixtral and gpt-oss GGUFs of `reference/make_reference.py` (gpt-oss: sinks,
/// windowed layers alternating with full ones, YaRN). Random weights: this checks that every stage
/// runs and records, not what the models answer.
#[test]
fn detection_masking_and_kv_compression_run_on_mixture_of_experts_models() {
    let reference = match std::env::var_os("HEADHUNT_REFERENCE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reference"),
    };
    for name in ["mixtral-moe", "gptoss-gguf"] {
        let model = reference.join("tiny").join(name).join("model.gguf");
        let m = model.to_str().unwrap();
        let out = scratch(name);
        let dir = |sub: &str| out.join(sub).to_str().unwrap().to_owned();
        let grid = ["--lengths", "300", "--no-chat"];
        run_ok(&[&["detect", "--model", m, "--depths", "0,100", "-o", &dir("detect")][..], &grid].concat());
        let text = std::fs::read_to_string(out.join("detect/trials.jsonl")).unwrap();
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records.len(), 2, "{name}");
        for r in &records {
            let (steps, experts) = (r["generated"].as_array().unwrap().len(), r["experts"].as_array().unwrap());
            assert!(
                steps > 0 && experts.len() == steps,
                "{name}: {steps} steps, {} routing records",
                experts.len()
            );
            for step in experts {
                let layers = step.as_array().unwrap();
                assert_eq!(layers.len(), 2, "{name}");
                assert!(layers.iter().all(|chosen| chosen.as_array().unwrap().len() == 2), "{name}: {step}");
            }
        }
        let scores = dir("detect");
        let ablate = [
            "ablate", "--model", m, "--scores", &scores, "--ks", "0,2", "--seeds", "1", "--depths", "50",
        ];
        run_ok(&[&ablate[..], &grid, &["-o", &dir("ablate")]].concat());
        let kv = [
            "kv",
            "--model",
            m,
            "--scores",
            &scores,
            "--budgets",
            "0,0.5",
            "--no-bench",
            "--depths",
            "50",
        ];
        run_ok(&[&kv[..], &grid, &["-o", &dir("kv")]].concat());
        assert!(
            out.join("ablate/report.html").exists() && out.join("kv/report.html").exists(),
            "{name}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}
