//! Needle-in-a-haystack trials against the transformers reference, which assembles the same
//! prompts independently and decodes as the retrieval-head paper's code does: identical prompt
//! tokens and spans, identical answers and ROUGE-1, identical per-head retrieval scores (heads
//! whose attention argmax was a near-tie in the reference aside).

#[path = "../../engine/tests/common.rs"]
mod common;

use std::path::PathBuf;

use headhunt::experiments::retrieval::niah::haystack::Haystack;
use headhunt::experiments::retrieval::niah::needle::load_jsonl;
use headhunt::experiments::retrieval::niah::trial::{Condition, TrialRunner, TrialSpec};
use headhunt_engine::Model;

fn texts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../reference/texts")
}

/// Every trial of the reference file of `id`; `min_compared` head scores must be checked.
fn trials_match_reference(id: &str, min_compared: usize) {
    let path = common::reference_dir().join(format!("niah/{id}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing: run scripts/test.sh", path.display()));
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let trials = reference["trials"].as_array().unwrap();
    let model = Model::load(&headhunt::models::resolve(id).unwrap()).unwrap();
    let n_heads = model.config.n_heads;
    let needles = load_jsonl(&texts().join("needles.jsonl")).unwrap();
    let haystack = Haystack::from_path(&texts().join("lighthouse.txt")).unwrap();
    let max = trials.iter().map(|t| t["length"].as_u64().unwrap() as usize).max().unwrap();
    let runner = TrialRunner::new(&model, needles, &haystack, true, max).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u64> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect() };
    let mut compared = 0;
    for t in trials {
        let spec = TrialSpec {
            needle: t["needle"].as_u64().unwrap() as usize,
            length: t["length"].as_u64().unwrap() as usize,
            depth: t["depth"].as_f64().unwrap(),
        };
        let prompt = runner.prompt(&spec).unwrap();
        assert_eq!(
            prompt.ids.iter().map(|&x| x as u64).collect::<Vec<_>>(),
            ids(&t["prompt"]),
            "{spec:?}: prompt tokens"
        );
        assert_eq!(
            [prompt.needle.start as u64, prompt.needle.end as u64].to_vec(),
            ids(&t["needle_span"]),
            "{spec:?}"
        );
        assert_eq!(
            [prompt.answer.start as u64, prompt.answer.end as u64].to_vec(),
            ids(&t["answer_span"]),
            "{spec:?}"
        );

        let rec = runner.run(&spec, &Condition::default()).unwrap();
        assert_eq!(
            rec.generated.iter().map(|&x| x as u64).collect::<Vec<_>>(),
            ids(&t["generated"]),
            "{spec:?}: generated tokens"
        );
        assert_eq!(rec.answer, t["answer"].as_str().unwrap(), "{spec:?}");
        assert!((rec.rouge1 - t["rouge1"].as_f64().unwrap()).abs() < 1e-9, "{spec:?}: ROUGE-1");

        let ties: Vec<usize> = t["near_tie"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        for (key, ours) in [("scores", &rec.scores), ("scores_per_step", &rec.scores_per_step)] {
            let want: Vec<f64> = t[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(ours.len(), want.len());
            for (h, (a, b)) in ours.iter().zip(&want).enumerate() {
                if !ties.contains(&h) {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{spec:?}: {key} of head {}-{}: {a} vs reference {b}",
                        h / n_heads,
                        h % n_heads
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > min_compared, "too few heads compared: {compared}");
}

#[test]
fn smollm2_trials_match_reference() {
    trials_match_reference("smollm2-135m-instruct", 2000);
}

/// The 1.5B model's trial: the same answer, and the same retrieval heads with the same scores.
#[test]
fn qwen2_5_1_5b_trial_matches_reference() {
    trials_match_reference("qwen2.5-coder-1.5b-instruct", 600);
}
