//! A wall-clock profile of the forward pass by stage, off unless [`enable`]d: a disabled span
//! costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Embed,
    Norms,
    QkvProjection,
    /// Rotary embeddings (the Q/K norms count as norms).
    Rope,
    KvCache,
    Attention,
    OutProjection,
    MlpUp,
    MlpActivation,
    MlpDown,
    Residual,
    Hooks,
    Unembed,
}

pub const STAGES: [Stage; 13] = [
    Stage::Embed,
    Stage::Norms,
    Stage::QkvProjection,
    Stage::Rope,
    Stage::KvCache,
    Stage::Attention,
    Stage::OutProjection,
    Stage::MlpUp,
    Stage::MlpActivation,
    Stage::MlpDown,
    Stage::Residual,
    Stage::Hooks,
    Stage::Unembed,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Embed => "embedding",
            Stage::Norms => "norms",
            Stage::QkvProjection => "QKV projection (matmul)",
            Stage::Rope => "q/k norm + RoPE",
            Stage::KvCache => "KV cache append",
            Stage::Attention => "attention (QK, softmax, PV)",
            Stage::OutProjection => "output projection (matmul)",
            Stage::MlpUp => "MLP gate/up (matmul)",
            Stage::MlpActivation => "MLP activation",
            Stage::MlpDown => "MLP down (matmul)",
            Stage::Residual => "residual adds, copies",
            Stage::Hooks => "hooks",
            Stage::Unembed => "final norm + unembedding",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 13] = [const { AtomicU64::new(0) }; 13];

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn reset() {
    NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
}

/// Seconds spent per stage since the last reset.
pub fn snapshot() -> Vec<(Stage, f64)> {
    STAGES
        .iter()
        .map(|&s| (s, NANOS[s as usize].load(Ordering::Relaxed) as f64 * 1e-9))
        .collect()
}

/// Times the rest of its scope when profiling is on.
pub struct Span(Option<(Stage, Instant)>);

#[inline]
pub fn span(stage: Stage) -> Span {
    Span(ENABLED.load(Ordering::Relaxed).then(|| (stage, Instant::now())))
}

/// Run `f`, timing it as `stage`.
#[inline]
pub fn timed<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let _t = span(stage);
    f()
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((stage, start)) = self.0 {
            NANOS[stage as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}
