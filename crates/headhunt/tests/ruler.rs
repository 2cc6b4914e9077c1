//! RULER's tasks in a real model's tokens: every task's prompt and answer budget fill its length
//! to within 1% (RULER's definition of a length), the positions retrieval scores count hold the
//! asked values, and a short `headhunt ruler` run resumes without repeating trials.

use std::process::Command;

use headhunt::experiments::qa;
use headhunt::experiments::retrieval::niah::haystack::Haystack;
use headhunt::experiments::ruler::trial::RulerRunner;
use headhunt::experiments::ruler::{Sources, Task, Trial};
use headhunt_engine::Model;

#[test]
fn prompts_fill_their_length_and_spans_hold_the_values() {
    let path = headhunt::models::resolve("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e:#}"));
    let model = Model::load(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let essay = Haystack::Generated { seed: 0 }.text(80_000).unwrap();
    let runner = RulerRunner::new(&model, Sources::new(&essay, qa::builtin()).unwrap(), true).unwrap();
    for task in Task::ALL {
        for (length, depth) in [(4096, 30.0), (8192, 70.0)] {
            let trial = Trial {
                task,
                length,
                depth,
                sample: 1,
                seed: 11,
            };
            let p = runner.prompt(&trial).unwrap_or_else(|e| panic!("{task} at {length}: {e:#}"));
            let used = p.ids.len() + task.tokens_to_generate();
            assert!(used <= length, "{task}: {used} tokens for a length of {length}");
            // The needle haystacks grow by a whole needle (up to ~60 tokens of a UUID pair).
            let slack = if matches!(task, Task::NiahMultikey3) && length < 8192 {
                0.02
            } else {
                0.01
            };
            assert!(
                used as f64 >= (1.0 - slack) * length as f64,
                "{task}: {used} tokens, more than {slack} short of {length}"
            );
            if task.copies() {
                assert!(!p.copy.is_empty(), "{task}: no copy positions");
                let copied: String = p
                    .copy
                    .iter()
                    .map(|r| tok.decode(&p.ids[r.clone()], false).unwrap())
                    .collect::<Vec<_>>()
                    .join(" ");
                let found = p.outputs.iter().filter(|o| copied.contains(o.as_str())).count();
                assert!(found >= 1, "{task}: the copy positions hold {copied:?}, none of {:?}", p.outputs);
                if task.name().starts_with("niah") {
                    assert_eq!(found, p.outputs.len(), "{task}: {copied:?} against {:?}", p.outputs);
                }
            }
        }
    }
}

#[test]
fn a_short_run_scores_and_resumes() {
    let out = std::env::temp_dir().join(format!("headhunt-ruler-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = || {
        let status = Command::new(env!("CARGO_BIN_EXE_headhunt"))
            .args([
                "ruler",
                "--tasks",
                "niah_single_1,niah_multivalue,cwe",
                "--lengths",
                "1024",
                "--depths",
                "20,80",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        String::from_utf8(status.stdout).unwrap()
    };
    let table = run();
    assert!(table.contains("niah_single_1") && table.contains("cwe"), "{table}");
    let lines = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    // Two depths for each needle task, one trial for cwe.
    assert_eq!(lines.lines().count(), 5);
    for line in lines.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let score = r["score"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&score));
        let heads = r["scores"].as_array().unwrap().len();
        assert_eq!(heads, if r["task"] == "cwe" { 0 } else { 30 * 9 }, "{line}");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ruler.json")).unwrap()).unwrap();
    assert_eq!(summary["tasks"].as_array().unwrap().len(), 3);
    // SmolLM2 finds a single number in noise at this length.
    assert_eq!(summary["tasks"][0]["lengths"][0]["score"], 100.0, "{summary}");
    assert!(out.join("head_scores_niah_single_1.json").exists());
    assert!(out.join("ruler.png").exists());
    // Again: nothing to run, the same records.
    run();
    assert_eq!(std::fs::read_to_string(out.join("trials.jsonl")).unwrap(), lines);
    std::fs::remove_dir_all(&out).ok();
}

/// QRHead on RULER: the content-free prompt is the trial's prompt up to its query, the gold
/// spans (the values a right answer copies) lie before it, and some head attends to them.
#[test]
fn qrhead_scores_the_copied_values_from_the_query() {
    let path = headhunt::models::resolve("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e:#}"));
    let model = Model::load(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let essay = Haystack::Generated { seed: 0 }.text(20_000).unwrap();
    let runner = RulerRunner::new(&model, Sources::new(&essay, qa::builtin()).unwrap(), true).unwrap();
    for task in [Task::NiahSingle2, Task::Vt, Task::Qa] {
        let trial = Trial {
            task,
            length: 2048,
            depth: 50.0,
            sample: 0,
            seed: 5,
        };
        let p = runner.prompt(&trial).unwrap();
        let null = runner.content_free_prompt(&trial, &p, "N/A").unwrap().expect("a query");
        let (query, _) = headhunt::experiments::retrieval::qrhead::query_spans(&p.ids, &null);
        assert!(
            !p.gold.is_empty() && p.gold.iter().all(|g| g.end <= query.start),
            "{task}: no gold span, or one after the query"
        );
        let asked = tok.decode(&p.ids[query.clone()], false).unwrap();
        assert!(tok.decode(&null[query.start..], false).unwrap().contains("N/A"), "{task}");
        let record = runner.qr(&trial, &p).unwrap().expect("a copying task");
        assert_eq!(record.scores.len(), 30 * 9);
        let best = record.scores.iter().copied().fold(f64::MIN, f64::max);
        assert!(
            best.is_finite() && best > 0.05,
            "{task}: best calibrated score {best}; query {asked:?}"
        );
    }
    let cwe = Trial {
        task: Task::Cwe,
        length: 2048,
        depth: 0.0,
        sample: 0,
        seed: 5,
    };
    assert!(runner.qr(&cwe, &runner.prompt(&cwe).unwrap()).unwrap().is_none());
}

/// `ruler --mask-top K` runs the suite once per condition and tabulates each task under each.
#[test]
fn a_masked_run_writes_a_folder_per_condition() {
    let out = std::env::temp_dir().join(format!("headhunt-ruler-masks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    // SmolLM2's strongest retrieval heads (docs/retrieval-heads.md), as a score file.
    let scores = out.join("scores.json");
    std::fs::write(
        &scores,
        r#"{"18-7": [0.72], "18-6": [0.71], "23-2": [0.69], "17-3": [0.59], "0-0": [0.0], "29-8": [0.0]}"#,
    )
    .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_headhunt"))
        .args([
            "ruler",
            "--tasks",
            "niah_single_1",
            "--lengths",
            "1024",
            "--depths",
            "50",
            "--mask-top",
            "4",
            "--scores",
        ])
        .arg(&scores)
        .arg("--out")
        .arg(out.join("run"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run/ruler_masks.json")).unwrap()).unwrap();
    let conditions = table["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 2, "{table}");
    assert_eq!(
        (conditions[0]["condition"].as_str(), conditions[1]["condition"].as_str()),
        (Some("none"), Some("top-4"))
    );
    assert_eq!(conditions[1]["masked_heads"], 4);
    for c in ["none", "top-4"] {
        assert_eq!(
            std::fs::read_to_string(out.join("run").join(c).join("trials.jsonl"))
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
    std::fs::remove_dir_all(&out).ok();
}
