//! Shared helpers for tests that compare against the transformers reference.

#![allow(dead_code)]

use std::path::PathBuf;

use headhunt_engine::npy::{read_npz, NpyArray};

/// Where `reference/make_reference.py` wrote its outputs.
pub fn reference_dir() -> PathBuf {
    match std::env::var_os("HEADHUNT_REFERENCE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reference"),
    }
}

/// The arrays of one reference file; a missing file is a failure that says how to make it.
pub fn expected(rel: &str) -> std::collections::BTreeMap<String, NpyArray> {
    let path = reference_dir().join(rel);
    assert!(
        path.exists(),
        "{} is missing: generate the reference with `scripts/test.sh` (or reference/make_reference.py)",
        path.display()
    );
    read_npz(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
