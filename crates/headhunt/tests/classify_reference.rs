//! The hallucination detectors' statistics against scikit-learn: AUROC on fixed score lists
//! (ties included) and the L2 logistic regression Lookback Lens trains
//! (`reference/make_reference.py`, part `classify`).

#[path = "../../engine/tests/common.rs"]
mod common;

use headhunt::metrics::stats::{auroc, Logistic};
use serde_json::Value;

fn reference() -> Value {
    let path = common::reference_dir().join("classify/fixture.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing: run scripts/test.sh", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn auroc_equals_scikit_learn() {
    let r = reference();
    for case in r["auroc"].as_array().unwrap() {
        let scores = floats(&case["scores"]);
        let labels: Vec<bool> = case["labels"].as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect();
        let expected = case["auroc"].as_f64().unwrap();
        let got = auroc(&scores, &labels);
        assert!((got - expected).abs() < 1e-12, "{} scores: {got} against {expected}", scores.len());
    }
}

#[test]
fn logistic_regression_equals_scikit_learn() {
    let r = &reference()["logistic"];
    let x: Vec<Vec<f64>> = r["x"].as_array().unwrap().iter().map(floats).collect();
    let y: Vec<bool> = r["y"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    let m = Logistic::fit(&x, &y, r["c"].as_f64().unwrap()).unwrap();
    for (got, want) in m.weights.iter().zip(floats(&r["weights"])) {
        assert!((got - want).abs() < 1e-6, "weight {got} against {want}");
    }
    assert!((m.intercept - r["intercept"].as_f64().unwrap()).abs() < 1e-6);
    let test: Vec<Vec<f64>> = r["test"].as_array().unwrap().iter().map(floats).collect();
    for (row, want) in test.iter().zip(floats(&r["probabilities"])) {
        assert!((m.predict(row) - want).abs() < 1e-7, "{} against {want}", m.predict(row));
    }
}
