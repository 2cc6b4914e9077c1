//! `headhunt claims`: the claims table and the activation frequencies, computed from a fixture
//! claims folder, equal a straightforward recomputation here; the chain-of-thought and recall
//! commands write the tables the claims read, on the real model.

use std::path::{Path, PathBuf};
use std::process::Command;

use headhunt::experiments::claims::{cot_masked, dynamic, recall_masked, table, ClaimsPlan, Verdict};
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("headhunt-claims-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(v).unwrap()).unwrap();
}

/// Per-trial scores of 2 layers x 3 heads in the paper's format, and the summary beside them.
fn detection(dir: &Path, trials: &[[f64; 6]]) {
    let heads: serde_json::Map<String, Value> = (0..6)
        .map(|h| {
            (
                format!("{}-{}", h / 3, h % 3),
                json!(trials.iter().map(|t| t[h]).collect::<Vec<_>>()),
            )
        })
        .collect();
    write(&dir.join("head_scores.json"), &Value::Object(heads));
    write(
        &dir.join("summary.json"),
        &json!({"trials": trials.len() + 1, "answered": trials.len()}),
    );
}

fn plan(out: &Path, k: usize) -> ClaimsPlan {
    ClaimsPlan {
        out: out.to_owned(),
        model_args: vec!["--model".into(), "fixture".into()],
        haystacks: vec![PathBuf::from("/nowhere/licences")],
        long_lengths: "3000:4000:3".into(),
        k,
        cot_chains: 2,
        cot_problems: 10,
        checkpoints: None,
    }
}

/// Conditions none, top-2 and random-2-seed0/1 with the given scores, in `field`.
fn conditions(field: &str, none: f64, top: f64, random: [f64; 2]) -> Value {
    json!([
        {"condition": "none", field: none},
        {"condition": "top-2", field: top},
        {"condition": "random-2-seed0", field: random[0]},
        {"condition": "random-2-seed1", field: random[1]},
    ])
}

#[test]
fn the_claims_table_and_activation_equal_a_recomputation() {
    let out = scratch("table");
    // Head 1-0 above 0.1 in every trial, 0-1 in some, 0-2 barely ever; two haystacks.
    let generated = [
        [0.0, 0.5, 0.0, 0.9, 0.05, 0.0],
        [0.0, 0.0, 0.2, 0.8, 0.0, 0.1],
        [0.0, 0.4, 0.0, 1.0, 0.0, 0.0],
    ];
    let licences = [[0.0, 0.3, 0.0, 0.7, 0.11, 0.0], [0.0, 0.0, 0.0, 0.6, 0.0, 0.0]];
    detection(&out.join("detect"), &generated);
    let p = plan(&out, 2);
    detection(&out.join(p.haystack_dir_name(1)), &licences);
    // Short and long contexts: the same two best heads, in another order.
    detection(&out.join("short"), &[[0.0, 0.9, 0.0, 0.3, 0.0, 0.01]]);
    detection(&out.join("long"), &[[0.0, 0.2, 0.0, 0.8, 0.0, 0.05]]);
    write(
        &out.join("niah/ablation.json"),
        &json!({"sweep": [
            {"k": 0, "top": 80.0, "random_draws": [80.0]},
            {"k": 2, "top": 10.0, "random_draws": [70.0, 60.0]},
        ]}),
    );
    write(
        &out.join("qa/qa.json"),
        &json!({"conditions": conditions("f1", 40.0, 4.0, [30.0, 38.0])}),
    );
    let recall = |condition: &str, task: &str, acc: f64| json!({"condition": condition, "task": task, "shots": 3, "accuracy": acc});
    write(
        &out.join("recall/eval.json"),
        &json!({"results": [
            recall("none", "capital", 0.8), recall("none", "language", 0.9),
            recall("top-2", "capital", 0.7), recall("top-2", "language", 0.9),
            recall("random-2-seed0", "capital", 0.8), recall("random-2-seed0", "language", 0.8),
            recall("random-2-seed1", "capital", 0.6), recall("random-2-seed1", "language", 0.9),
        ]}),
    );
    let mut cot = conditions("steps_accuracy", 60.0, 20.0, [50.0, 55.0]);
    for (row, (direct, restated)) in cot
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip([(70.0, 40.0), (65.0, 5.0), (70.0, 30.0), (60.0, 35.0)])
    {
        row["direct_accuracy"] = json!(direct);
        row["steps_restated"] = json!(restated);
    }
    write(&out.join("cot-2-chains/cot.json"), &json!({"hops": 2, "conditions": cot}));

    // Activation, recomputed: pool the five trials, count scores above 0.1.
    let pooled: Vec<[f64; 6]> = generated.iter().chain(&licences).copied().collect();
    let freq: Vec<f64> = (0..6)
        .map(|h| pooled.iter().filter(|t| t[h] > 0.1).count() as f64 / pooled.len() as f64)
        .collect();
    let mean: Vec<f64> = (0..6).map(|h| pooled.iter().map(|t| t[h]).sum::<f64>() / 5.0).collect();
    let (row, act) = dynamic(&p);
    let act = act.expect("both haystacks load");
    assert_eq!(act.trials, 5);
    for h in 0..6 {
        assert!((act.frequency[h] - freq[h]).abs() < 1e-12, "head {h}");
        assert!((act.mean[h] - mean[h]).abs() < 1e-12, "head {h}");
    }
    // 1-0 in 5/5; 0-1 in 3/5 with mean 0.24 > 0.1; 0-2 in 1/5 with mean 0.04; 1-1 in 1/5.
    assert_eq!(act.always_on(), vec!["1-0"]);
    assert_eq!(act.sometimes(), vec!["0-1"]);
    assert_eq!(row.verdict, Verdict::Holds);
    assert!(
        row.measured.contains("always on 1 (1-0)") && row.measured.contains("some contexts 1 (0-1)"),
        "{}",
        row.measured
    );

    let claims = table(&p);
    let by = |name: &str| claims.iter().find(|c| c.claim == name).unwrap_or_else(|| panic!("no row {name}"));
    // Universal and sparse: heads with mean above 0.1 on the generated haystack: 0-1 (0.3), 1-0.
    assert_eq!(by("universal").verdict, Verdict::Holds);
    assert!(by("sparse").measured.starts_with("2 of 6 heads (33.3%)"));
    assert_eq!(by("sparse").verdict, Verdict::DoesNotHold);
    // Intrinsic: top-2 short {0-1, 1-0} against long {1-0, 0-1}.
    assert!(by("intrinsic: short contexts").measured.contains("top-2 overlap 2/2"));
    assert_eq!(by("intrinsic: short contexts").verdict, Verdict::Holds);
    assert!(matches!(
        by("intrinsic: checkpoints of a family").verdict,
        Verdict::NotMeasurable(_)
    ));
    // Causal: 10 against draws 70 and 60.
    assert_eq!(by("causal").verdict, Verdict::Holds);
    // Knowledge: recall 85 -> 80 (loses 5.9%), NIAH 80 -> 10 (87.5%), QA 40 -> 4 (90%).
    let k = by("knowledge against retrieval");
    assert!(
        k.measured.contains("recall accuracy 85.0 unmasked, 80.0 top-K (-6%)"),
        "{}",
        k.measured
    );
    assert_eq!(k.verdict, Verdict::Holds);
    // Chain of thought: steps 20 below 50 and 55.
    let c = by("chain-of-thought");
    assert!(
        c.measured.contains("2-hop look-ups among 2 chains") && c.measured.contains("steps restating the facts 40.0 unmasked, 5.0 top-K")
    );
    assert_eq!(c.verdict, Verdict::Holds);
    // Each row names the commands that measure it.
    assert!(by("causal").commands[0].starts_with("headhunt ablate --model fixture"));
    assert!(by("causal").commands[0].contains("--ks 0,2"));

    // The command rebuilds the same table from the folder and writes it with the plot.
    let status = Command::new(env!("CARGO_BIN_EXE_headhunt"))
        .args([
            "claims",
            "--table-only",
            "--k",
            "2",
            "--model",
            "fixture",
            "--haystack",
            "/nowhere/licences",
            "-o",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out.join("claims.json")).unwrap()).unwrap();
    assert_eq!(written["claims"].as_array().unwrap().len(), claims.len());
    assert_eq!(written["claims"][6]["verdict"], "holds");
    assert!(out.join("activation.png").exists());
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("knowledge against retrieval") && report.contains("Claims of the retrieval-head paper"));
    std::fs::remove_dir_all(out).ok();
}

/// `cot` and `recall eval` under masks on SmolLM2 write the tables the claims read; their
/// figures equal a recount of the records.
#[test]
fn cot_and_recall_write_what_the_claims_read() {
    let out = scratch("real");
    let scores = out.join("scores.json");
    // Two strong retrieval heads of SmolLM2 (README) and nothing else.
    let mut map = serde_json::Map::new();
    for l in 0..30 {
        for h in 0..9 {
            let s = match (l, h) {
                (18, 7) | (18, 6) => 0.7,
                _ => 0.0,
            };
            map.insert(format!("{l}-{h}"), json!([s]));
        }
    }
    write(&scores, &Value::Object(map));
    let run = |args: &[&str]| {
        let status = Command::new(env!("CARGO_BIN_EXE_headhunt"))
            .args(args)
            .args([
                "--scores",
                scores.to_str().unwrap(),
                "--mask-top",
                "2",
                "--mask-random",
                "2",
                "--seeds",
                "2",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    };
    let cot = out.join("cot");
    run(&["cot", "--problems", "3", "--chains", "1", "-o", cot.to_str().unwrap()]);
    let (hops, [steps, direct, restated]) = cot_masked(&cot, 2).unwrap();
    assert_eq!(hops, 2);
    assert_eq!(steps.random.len(), 2);
    let recount = |label: &str, style: &str, field: &str| {
        let text = std::fs::read_to_string(cot.join(label).join("trials.jsonl")).unwrap();
        let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let rows: Vec<&Value> = rows.iter().filter(|r| r["style"] == style).collect();
        assert_eq!(rows.len(), 3);
        100.0 * rows.iter().filter(|r| r[field] == true).count() as f64 / 3.0
    };
    assert_eq!(steps.none, recount("none", "steps", "correct"));
    assert_eq!(direct.top, recount("top-2", "direct", "correct"));
    assert_eq!(restated.random[1], recount("random-2-seed1", "steps", "restated"));

    let recall = out.join("recall");
    run(&[
        "recall",
        "eval",
        "--task",
        "capital,language",
        "--shots",
        "3",
        "--sample",
        "6",
        "-o",
        recall.to_str().unwrap(),
    ]);
    let m = recall_masked(&recall, 2).unwrap();
    let eval: Value = serde_json::from_str(&std::fs::read_to_string(recall.join("eval.json")).unwrap()).unwrap();
    let rows = eval["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 4, "two tasks under four conditions");
    assert!(rows.iter().all(|r| r["prompts"] == 6));
    let mean = |label: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r["condition"] == label)
            .map(|r| 100.0 * r["accuracy"].as_f64().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert_eq!(m.none, mean("none"));
    assert_eq!(m.top, mean("top-2"));
    assert_eq!(m.random, vec![mean("random-2-seed0"), mean("random-2-seed1")]);
    std::fs::remove_dir_all(out).ok();
}
