//! A loaded model: its configuration, weights in their file's storage, tokenizer and RoPE
//! tables, loaded from GGUF or a Hugging Face folder. The forward pass (one code path for every
//! family, with hooks) is in `forward.rs`, runs and generation in `run.rs`.

mod forward;
mod run;

pub use run::{argmax, generate_from, greedy, greedy_from, Run};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{ModelConfig, PositionEncoding, RopeScaling};
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kernels::Precision;
use crate::kv_cache::{KvPolicy, KvStore};
use crate::linalg::rms_scale;
use crate::rope::RopeTable;
use crate::tokenizer::Tokenizer;
use crate::weights::{self, SafetensorsDir, Weights};

/// Where a model came from, for its card.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceInfo {
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: String,
    pub name: Option<String>,
    /// Tensor storage types and how many tensors use each (`Q4_1: 210`, ...).
    pub tensor_types: BTreeMap<String, usize>,
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    /// `None` for a checkpoint directory without `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    pub source: SourceInfo,
    isa: Isa,
    /// One table per distinct (base, scaling); `rope_of_layer[l]` indexes it.
    rope_tables: Vec<RopeTable>,
    rope_of_layer: Vec<usize>,
}

/// How a run's KV cache is laid out and how prompts are fed.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Rows to reserve in each full KV head (prompt plus generated tokens); 0 lets caches grow.
    pub capacity: usize,
    /// Policy per layer and KV head for layers without their own sliding window; `None` keeps
    /// everything.
    pub kv_policy: Option<Vec<Vec<KvPolicy>>>,
    /// Prompt tokens processed per forward call: bounds activation memory on long prompts.
    /// 1024 by default: against 512, the larger matrix products run 7-15% faster prefill at
    /// 2048 and 4096 tokens on both models for ~20 MiB more (bench/RESULTS.md).
    pub prefill_chunk: usize,
    /// Hold every position in windowed heads too (their attention still sees only the window),
    /// so that [`Run::truncate`] can go back to any position; costs those heads a full cache.
    pub keep_windows: bool,
    /// Run only the layers below this one (TransformerLens's `stop_at_layer`): what reads one
    /// layer's activations needs none above it. Such a run computes no logits: `prefill` and
    /// `decode` return an empty vector.
    pub stop_at_layer: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            capacity: 0,
            kv_policy: None,
            prefill_chunk: 1024,
            keep_windows: false,
            stop_at_layer: None,
        }
    }
}

impl Model {
    /// Load a `.gguf` file or a Hugging Face directory (`config.json`, `*.safetensors`, and
    /// `tokenizer.json` for anything that reads or writes text), with the best kernels the CPU
    /// runs (capped by `HEADHUNT_SIMD`).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Isa::from_env())
    }

    /// [`Model::load`] with the kernels of `isa` (or the best level below it the CPU runs).
    pub fn load_with(path: &Path, isa: Isa) -> Result<Self> {
        reuse_freed_buffers();
        if path.is_dir() {
            Self::from_hf_dir(path, isa)
        } else {
            Self::from_gguf(path, isa)
        }
    }

    fn from_gguf(path: &Path, isa: Isa) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let mut config = ModelConfig::from_gguf(&file.header)?;
        let tokenizer = Tokenizer::from_gguf(&file.header)?;
        let weights = weights::load_gguf(&file, &mut config, isa)?;
        let mut tensor_types = BTreeMap::new();
        for t in file.header.tensors.values() {
            *tensor_types.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        }
        let source = SourceInfo {
            path: path.to_owned(),
            format: "gguf".into(),
            name: file.meta("general.name").and_then(|v| v.as_str()).map(str::to_owned),
            tensor_types,
        };
        // The parsed header (a large vocabulary's strings) and what building the tokenizer
        // freed lie in small holes that later, larger allocations cannot reuse.
        drop(file);
        release_free_heap();
        Ok(Self::assemble(config, weights, Some(tokenizer), source, isa))
    }

    fn from_hf_dir(dir: &Path, isa: Isa) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Checkpoint {
                path: dir.to_owned(),
                reason: "missing config.json (a Hugging Face directory needs config.json, model*.safetensors and tokenizer.json)".into(),
            },
            _ => Error::io(&config_path, e),
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: config_path.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let config = ModelConfig::from_hf_json(&json)?;
        let files = SafetensorsDir::open(dir)?;
        let weights = weights::load_safetensors(&files, &config, isa)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_hf_dir(dir)?)
        } else {
            None
        };
        let source = SourceInfo {
            path: dir.to_owned(),
            format: "safetensors".into(),
            name: json.get("_name_or_path").and_then(|v| v.as_str()).map(str::to_owned),
            tensor_types: BTreeMap::new(),
        };
        Ok(Self::assemble(config, weights, tokenizer, source, isa))
    }

    fn assemble(config: ModelConfig, weights: Weights, tokenizer: Option<Tokenizer>, source: SourceInfo, isa: Isa) -> Self {
        let mut rope_tables: Vec<RopeTable> = Vec::new();
        let mut keys: Vec<(u32, Option<String>)> = Vec::new();
        let mut rope_of_layer = Vec::new();
        if config.positions == PositionEncoding::Rotary {
            for spec in &config.layers {
                let key = (spec.rope_base.to_bits(), spec.rope_scaling.map(|s| format!("{s:?}")));
                let idx = match keys.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        keys.push(key);
                        let table = match spec.rope_scaling {
                            Some(RopeScaling::FreqFactors) => {
                                let factors = weights.rope_freq_factors.as_deref();
                                RopeTable::new(config.rotary_dim, spec.rope_base, spec.rope_scaling)
                                    .with_freq_factors(factors.expect("the loader requires rope_freqs.weight"))
                            }
                            Some(scaling @ RopeScaling::LongRope { .. }) => {
                                let factors = config.long_rope.as_ref().expect("the loader requires LongRoPE's factors");
                                RopeTable::long_rope(config.rotary_dim, spec.rope_base, scaling, factors)
                            }
                            scaling => RopeTable::new(config.rotary_dim, spec.rope_base, scaling),
                        };
                        rope_tables.push(table);
                        rope_tables.len() - 1
                    }
                };
                rope_of_layer.push(idx);
            }
        }
        Model {
            config,
            weights,
            tokenizer,
            source,
            isa: isa.supported(),
            rope_tables,
            rope_of_layer,
        }
    }

    /// LongRoPE's switch: a forward call that reaches past this many positions rotates with the
    /// long factors, one within it with the short ones (transformers' rule). Keys cached by a
    /// call on one side do not belong to a prompt on the other: runs that continue a cached
    /// prefix check [`Model::same_rotary_set`]. `None` where every call rotates alike.
    pub fn long_rope_after(&self) -> Option<usize> {
        self.rope_tables.iter().find_map(RopeTable::long_set_after)
    }

    /// Whether forward calls ending at positions `a` and `b` rotate with the same frequencies
    /// (always, except across LongRoPE's switch).
    pub fn same_rotary_set(&self, a: usize, b: usize) -> bool {
        self.long_rope_after().is_none_or(|o| (a > o) == (b > o))
    }

    /// The instruction-set level of the weight kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Compute the products with the weights at `precision` from now on ([`Precision::Fast`]:
    /// decoding's matrix-vector products in int8; dense weights stay exact).
    pub fn set_precision(&mut self, precision: Precision) {
        self.weights.set_precision(precision);
    }

    /// `Fast` when some weight product runs in integers, else `Exact`.
    pub fn precision(&self) -> Precision {
        if self.weights.matrices().any(|m| m.precision() == Precision::Fast) {
            Precision::Fast
        } else {
            Precision::Exact
        }
    }

    /// How a run's cache stores keys and values: in f16 at [`Precision::Fast`] (as llama.cpp
    /// does), else in f32.
    pub fn kv_store(&self) -> KvStore {
        match self.precision() {
            Precision::Fast => KvStore::F16,
            Precision::Exact => KvStore::F32,
        }
    }

    /// The tokenizer, or an error saying why there is none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Checkpoint {
            path: self.source.path.clone(),
            reason: "missing tokenizer.json: this command needs the model's tokenizer".into(),
        })
    }

    /// The effective KV policy per layer and KV head: a layer's own sliding window wins,
    /// elsewhere the requested policy (or full).
    pub fn kv_policies(&self, requested: Option<&[Vec<KvPolicy>]>) -> Result<Vec<Vec<KvPolicy>>> {
        let c = &self.config;
        if let Some(r) = requested {
            if r.len() != c.n_layers || r.iter().any(|l| l.len() != c.n_kv_heads) {
                return Err(Error::Run(format!(
                    "a KV policy needs {} layers x {} KV heads",
                    c.n_layers, c.n_kv_heads
                )));
            }
        }
        Ok((0..c.n_layers)
            .map(|l| match c.layers[l].window {
                Some(window) => vec![KvPolicy::SinkWindow { sink: 0, window }; c.n_kv_heads],
                None => requested.map_or_else(|| vec![KvPolicy::Full; c.n_kv_heads], |r| r[l].clone()),
            })
            .collect())
    }

    pub fn is_eos(&self, token: u32) -> bool {
        self.tokenizer.as_ref().is_some_and(|t| t.eos_ids.contains(&token))
    }
    /// Direct logit attribution: what one additive component of the final residual stream
    /// contributes to every logit, with the final norm's scale frozen at the statistics of the
    /// whole residual `final_resid` (the norm is linear once its scale is fixed; LayerNorm also
    /// removes the component's mean). The components of a residual stream, plus
    /// [`Model::logit_constant`], sum to the logits exactly (up to rounding; a final soft-cap,
    /// which no supported family uses, would make the sum the pre-cap logits).
    pub fn direct_logit_attribution(&self, component: &[f32], final_resid: &[f32]) -> Vec<f32> {
        let scaled = self.through_final_norm(component, final_resid);
        let mut logits = vec![0.0f32; self.config.vocab_size];
        self.weights.unembed_matrix().gemv(&scaled, &mut logits);
        logits
    }

    /// [`Model::direct_logit_attribution`] to a few tokens only: one unembedding row each instead
    /// of the whole vocabulary (the same values up to the order of the dot product's sum).
    pub fn direct_logit_attribution_to(&self, component: &[f32], final_resid: &[f32], tokens: &[u32]) -> Vec<f32> {
        let scaled = self.through_final_norm(component, final_resid);
        let rows: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
        self.weights.unembed_matrix().dot_rows(&rows, &scaled)
    }

    /// A residual-stream component through the final norm with its scale frozen at
    /// `final_resid`'s statistics.
    fn through_final_norm(&self, component: &[f32], final_resid: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let norm = &self.weights.final_norm;
        match c.norm {
            crate::config::NormKind::RmsNorm => {
                let s = rms_scale(final_resid, c.norm_eps);
                component.iter().zip(&norm.w).map(|(x, w)| w * (x * s)).collect()
            }
            crate::config::NormKind::LayerNorm => {
                let n = final_resid.len() as f64;
                let mean = final_resid.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = final_resid.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = (1.0 / (var + c.norm_eps as f64).sqrt()) as f32;
                let cm = (component.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
                component.iter().zip(&norm.w).map(|(x, w)| (x - cm) * inv * w).collect()
            }
        }
    }

    /// The part of the logits no residual component explains: the final norm's bias and the
    /// unembedding's bias.
    pub fn logit_constant(&self) -> Vec<f32> {
        let c = &self.config;
        let mut logits = match &self.weights.final_norm.b {
            Some(b) => {
                let mut l = vec![0.0f32; c.vocab_size];
                self.weights.unembed_matrix().gemv(b, &mut l);
                l
            }
            None => vec![0.0f32; c.vocab_size],
        };
        if let Some(b) = self.weights.unembed_bias() {
            logits.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        logits
    }

    /// Logits of one final-normed residual row.
    pub fn unembed(&self, normed: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let mut logits = vec![0.0f32; c.vocab_size];
        self.weights.unembed_matrix().gemv(normed, &mut logits);
        if let Some(b) = self.weights.unembed_bias() {
            logits.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        logits
    }
}

/// Keep large freed buffers in the heap for the next allocation, process-wide, once. A prompt's
/// forward pass allocates and frees hundreds of MB per layer (a 1.5B model's MLP activations of
/// 1,024 tokens alone are 73 MB); glibc maps blocks above its threshold (at most 32 MiB) afresh
/// and unmaps them on free, and trims the heap's top, so every layer faulted its buffers in
/// again: 1.96 M page faults and 3.5 s of system time in a 2,048-token prefill at `fast` that
/// takes 16 s. With the map threshold raised alone, the trimming still cost six detection trials
/// of 600 and 3,300 tokens 10.5 M faults and 20 s (bench/RESULTS.md). Both limits at 1 GiB keep
/// the buffers: the peak grows by what the heap's top holds free (32-67 MiB on that model).
fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes when glibc maps blocks and trims the heap.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}

/// Give the pages of freed heap memory back to the system (Gemma's 262k-piece vocabulary leaves
/// ~100 MB of freed strings after a load, which would otherwise stay resident).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
