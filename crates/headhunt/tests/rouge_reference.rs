//! ROUGE-1 recall and the Porter stemmer against `rouge-score` and NLTK.

#[path = "../../engine/tests/common.rs"]
mod common;

use headhunt::metrics::rouge::{porter_stem, rouge1_recall};

fn reference() -> serde_json::Value {
    let path = common::reference_dir().join("rouge/pairs.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing: run scripts/test.sh", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn porter_stems_match_nltk() {
    let r = reference();
    let stems = r["stems"].as_object().unwrap();
    assert!(stems.len() >= 100);
    let wrong: Vec<String> = stems
        .iter()
        .filter(|(w, s)| porter_stem(w) != s.as_str().unwrap())
        .map(|(w, s)| format!("{w}: {} (NLTK {s})", porter_stem(w)))
        .collect();
    assert!(wrong.is_empty(), "stems differ: {wrong:?}");
}

#[test]
fn rouge1_recall_matches_rouge_score() {
    let r = reference();
    let pairs = r["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 200);
    for p in pairs {
        let (t, pred) = (p["target"].as_str().unwrap(), p["prediction"].as_str().unwrap());
        let want = p["recall"].as_f64().unwrap();
        let got = rouge1_recall(t, pred);
        assert!(
            (got - want).abs() < 1e-12,
            "target {t:?}, prediction {pred:?}: {got} vs rouge-score {want}"
        );
    }
}
