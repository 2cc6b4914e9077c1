//! One model description for every family headhunt runs.
//!
//! The forward pass has a single code path; what distinguishes Llama from Gemma 3, GPT-2 or OPT
//! is data in [`ModelConfig`] (norm kind, activation, positions, per-layer attention window and
//! RoPE base, norms around sub-layers) and the presence or absence of bias tensors in the weights.

use serde::Serialize;

use crate::error::{Error, Result};

mod family;
mod gguf;
mod hf;

pub use family::{Body, Experts, Family, GgufNames, GgufWindow, HfNames, HfWindow, Renormalise, FAMILIES};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum NormKind {
    /// `x / rms(x) * w`
    RmsNorm,
    /// `(x - mean) / std * w + b`
    LayerNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, GPT-2's `gelu_new`).
    GeluTanh,
    /// Exact GELU (erf).
    Gelu,
    Relu,
    /// gpt-oss's gated unit: `g * sigmoid(alpha * g) * (clamp(up, -limit, limit) + 1)` with the
    /// gate `g` clamped above at `limit` (a gated MLP only).
    SwigluOai {
        alpha: f32,
        limit: f32,
    },
}

/// gpt-oss's activation as transformers' `GptOssConfig` defaults it and llama.cpp's graph fixes
/// it (`swiglu_oai`: alpha 1.702, limit 7).
pub const SWIGLU_OAI: Activation = Activation::SwigluOai { alpha: 1.702, limit: 7.0 };

impl Activation {
    fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_tanh" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            other => return Err(Error::Config(format!("activation `{other}` is not supported"))),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum PositionEncoding {
    /// Rotary embeddings on queries and keys (rotate-half layout; per-layer base in [`LayerSpec`]).
    Rotary,
    /// A learned position table added to the token embedding; OPT offsets its indices by 2.
    Learned { offset: usize },
}

/// How RoPE frequencies are stretched for long context.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF `linear`).
    Linear { factor: f32 },
    /// Each inverse frequency divided by its own factor, read from the checkpoint's
    /// `rope_freqs.weight` (how llama.cpp's converter stores Llama 3.x's scaling: no metadata key,
    /// only the tensor).
    FreqFactors,
    /// Llama 3's piecewise frequency scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: f32,
    },
    /// YaRN (Peng et al. 2023, as transformers computes it): frequencies that turn fewer than
    /// `beta_slow` times over the original context interpolated by `factor`, those turning more
    /// than `beta_fast` times kept, a linear ramp between; cosines and sines multiplied by
    /// `attention_factor`.
    Yarn {
        factor: f32,
        original_context: f32,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: f32,
        truncate: bool,
    },
    /// LongRoPE (Phi-3, Phi-4): each inverse frequency divided by its factor, the short set
    /// while a forward call's positions stay within `original_context` and the long set past
    /// it (transformers' rule, per call); cosines and sines times `attention_factor`. The
    /// factors are in [`ModelConfig::long_rope`] (from config.json, or from a GGUF's
    /// `rope_factors_{short,long}.weight` tensors).
    LongRope { original_context: f32, attention_factor: f32 },
}

/// LongRoPE's two sets of per-pair divisors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongRopeFactors {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
}

/// LongRoPE's attention factor where the checkpoint gives none: `sqrt(1 + ln(s) / ln(L))` for
/// the context's stretch `s` over the original `L` (transformers' default).
fn long_rope_attention_factor(context: f32, original: f32) -> f32 {
    let s = (context / original) as f64;
    if s <= 1.0 {
        1.0
    } else {
        (1.0 + s.ln() / (original as f64).ln()).sqrt() as f32
    }
}

/// RMSNorm of the queries and keys, after the projection and before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QkNorm {
    None,
    /// Over each head's vector, one weight of `d_head` shared by the heads (Qwen3, Gemma 3).
    PerHead,
    /// Over the whole projection, all heads at once, one weight per value (OLMo 2).
    Whole,
}

/// Where a block's norms sit around its attention and MLP sub-layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NormPlacement {
    /// `x + f(norm(x))` (Llama, GPT-2, ...).
    Pre,
    /// `x + post_norm(f(pre_norm(x)))` (Gemma 2/3).
    Sandwich,
    /// `x + post_norm(f(x))` (OLMo 2).
    Post,
}

impl NormPlacement {
    pub fn has_pre(self) -> bool {
        self != NormPlacement::Post
    }
    pub fn has_post(self) -> bool {
        self != NormPlacement::Pre
    }
}

/// What differs between layers of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LayerSpec {
    /// Sliding-window attention: a query at position p sees keys j with p - j < window.
    pub window: Option<usize>,
    pub rope_base: f32,
    /// Only the layers that use the model's long-context scaling carry it (Gemma 3's global ones).
    pub rope_scaling: Option<RopeScaling>,
}

impl LayerSpec {
    /// A layer of a model with learned positions: no window, no rotation.
    const UNROTATED: LayerSpec = LayerSpec {
        window: None,
        rope_base: 0.0,
        rope_scaling: None,
    };
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// Family name as the source spells it (`llama`, `gemma3`, `gpt2`, ...).
    pub architecture: String,
    /// The family's row in [`FAMILIES`] (a Mixtral GGUF's `architecture` is `llama`).
    pub family: &'static Family,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub activation: Activation,
    /// `down(act(gate(x)) * up(x))` rather than `down(act(up(x)))`.
    pub gated_mlp: bool,
    pub positions: PositionEncoding,
    /// Multiplies q·k (Gemma: `query_pre_attn_scalar^-1/2`, elsewhere `d_head^-1/2`).
    pub attn_scale: f32,
    /// Multiplies the token embedding (Gemma: `sqrt(d_model)`).
    pub embed_scale: f32,
    /// RMSNorm of the queries and keys before RoPE.
    pub qk_norm: QkNorm,
    /// Where the blocks' norms sit around attention and the MLP.
    pub norms: NormPlacement,
    pub attn_logit_softcap: Option<f32>,
    pub final_logit_softcap: Option<f32>,
    pub tied_embeddings: bool,
    /// A Mixture-of-Experts MLP in every block (`d_mlp` is then each expert's width).
    pub moe: Option<Moe>,
    /// A learned logit per head that joins every softmax row as an extra key with no value
    /// (gpt-oss's attention sinks): the row's probabilities sum to less than 1.
    pub attn_sinks: bool,
    /// The leading dimensions of each head that RoPE rotates (rotate-half within them; the
    /// rest pass through): `d_head` unless the checkpoint rotates part of each head.
    pub rotary_dim: usize,
    /// LongRoPE's factors: config.json's, or (filled in by the loader) a GGUF's
    /// `rope_factors_{short,long}.weight` tensors.
    pub long_rope: Option<LongRopeFactors>,
    pub layers: Vec<LayerSpec>,
}

/// A sparse Mixture-of-Experts MLP: a router picks `per_token` of `experts` gated MLPs for each
/// token by its softmax over their logits, and the MLP's output is their outputs weighted by
/// those probabilities (renormalised over the chosen experts when `normalize`, as Mixtral does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Moe {
    pub experts: usize,
    pub per_token: usize,
    pub normalize: bool,
    /// The width of a shared expert that every token also passes through, its output scaled by
    /// a sigmoid gate of its own (Qwen2-MoE).
    pub shared: Option<usize>,
}

impl ModelConfig {
    pub fn heads_per_kv_head(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Total parameter count implied by the shapes (biases excluded), for the model card.
    pub fn approx_parameters(&self) -> usize {
        let attn = self.d_model * (self.n_heads + 2 * self.n_kv_heads) * self.d_head + self.n_heads * self.d_head * self.d_model;
        let one = self.d_model * self.d_mlp * if self.gated_mlp { 3 } else { 2 };
        let mlp = self.moe.map_or(one, |m| m.experts * one + m.experts * self.d_model);
        let embed = self.vocab_size * self.d_model * if self.tied_embeddings { 1 } else { 2 };
        let pos = match self.positions {
            PositionEncoding::Learned { offset } => (self.context_length + offset) * self.d_model,
            PositionEncoding::Rotary => 0,
        };
        self.n_layers * (attn + mlp) + embed + pos
    }

    fn validate(self) -> Result<Self> {
        let c = &self;
        let bad = |m: String| Err(Error::Config(m));
        if c.n_layers == 0 || c.d_model == 0 || c.n_heads == 0 || c.d_head == 0 || c.vocab_size == 0 {
            return bad(format!(
                "degenerate shape: {} layers, d_model {}, {} heads of dim {}, vocabulary {}",
                c.n_layers, c.d_model, c.n_heads, c.d_head, c.vocab_size
            ));
        }
        if c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) {
            return bad(format!("{} query heads cannot share {} key/value heads", c.n_heads, c.n_kv_heads));
        }
        if c.positions == PositionEncoding::Rotary && (c.rotary_dim == 0 || !c.rotary_dim.is_multiple_of(2) || c.rotary_dim > c.d_head) {
            return bad(format!(
                "rotary embeddings need an even number of rotated dimensions within the head's {}, got {}",
                c.d_head, c.rotary_dim
            ));
        }
        if let Some(f) = &c.long_rope {
            if f.short.len() != c.rotary_dim / 2 || f.long.len() != c.rotary_dim / 2 {
                return bad(format!(
                    "LongRoPE has {} short and {} long factors for {} rotary pairs",
                    f.short.len(),
                    f.long.len(),
                    c.rotary_dim / 2
                ));
            }
        }
        // Shapes beyond these are not models headhunt can hold in memory anyway; refusing them
        // keeps a hostile header from sizing allocations.
        let limits = [
            (c.n_layers, MAX_LAYERS, "layers"),
            (c.d_model, 1 << 16, "d_model"),
            (c.n_heads, 1 << 10, "heads"),
            (c.d_head, 1 << 12, "head dim"),
            (c.d_mlp, 1 << 18, "MLP width"),
            (c.vocab_size, 1 << 22, "vocabulary"),
            (c.context_length, 1 << 24, "context length"),
        ];
        for (v, max, what) in limits {
            if v > max {
                return bad(format!("{what} {v} exceeds the supported maximum {max}"));
            }
        }
        if c.layers.len() != c.n_layers {
            return bad("per-layer spec does not match the layer count".into());
        }
        Ok(self)
    }
}

/// What a source (config.json or GGUF metadata) states about a model, read as that source's
/// reference implementation reads it; [`Family::config`] adds what the family fixes.
struct Stated {
    architecture: String,
    n_layers: usize,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    d_head: usize,
    d_mlp: usize,
    vocab_size: usize,
    context_length: usize,
    norm_eps: f32,
    activation: Activation,
    attn_scale: f32,
    attn_logit_softcap: Option<f32>,
    final_logit_softcap: Option<f32>,
    tied_embeddings: bool,
    moe: Option<Moe>,
    rotary_dim: usize,
    long_rope: Option<LongRopeFactors>,
    layers: Vec<LayerSpec>,
}

impl Family {
    /// The model description: what the source states, with what this family fixes (norm kind
    /// and placement, Q/K norms, sinks, positions, embedding scale, MLP kind).
    fn config(&'static self, s: Stated) -> Result<ModelConfig> {
        let learned = match self.body {
            Body::Gpt2 => Some(0),
            Body::Opt => Some(2),
            Body::Rotary | Body::Gemma2 | Body::Gemma3 => None,
        };
        let gemma = matches!(self.body, Body::Gemma2 | Body::Gemma3);
        ModelConfig {
            architecture: s.architecture,
            family: self,
            n_layers: s.n_layers,
            d_model: s.d_model,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            d_head: s.d_head,
            d_mlp: s.d_mlp,
            vocab_size: s.vocab_size,
            context_length: s.context_length,
            norm: if learned.is_some() {
                NormKind::LayerNorm
            } else {
                NormKind::RmsNorm
            },
            norm_eps: s.norm_eps,
            activation: s.activation,
            gated_mlp: learned.is_none(),
            positions: learned.map_or(PositionEncoding::Rotary, |offset| PositionEncoding::Learned { offset }),
            attn_scale: s.attn_scale,
            embed_scale: if gemma { (s.d_model as f32).sqrt() } else { 1.0 },
            qk_norm: self.qk_norm,
            norms: self.norms,
            attn_logit_softcap: s.attn_logit_softcap,
            final_logit_softcap: s.final_logit_softcap,
            tied_embeddings: s.tied_embeddings,
            moe: s.moe,
            attn_sinks: self.attn_sinks,
            rotary_dim: if learned.is_some() { 0 } else { s.rotary_dim },
            long_rope: s.long_rope,
            layers: s.layers,
        }
        .validate()
    }
}

/// More layers than any model headhunt could hold in memory: refused before per-layer tables are
/// allocated from a header's word.
const MAX_LAYERS: usize = 1 << 10;

fn layer_count(n: usize) -> Result<usize> {
    if n == 0 || n > MAX_LAYERS {
        return Err(Error::Config(format!("{n} layers is outside 1..={MAX_LAYERS}")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufHeader, GgufWriter, Value};

    fn unsupported(r: Result<ModelConfig>) -> bool {
        matches!(r, Err(Error::UnsupportedArchitecture(_)))
    }

    /// The lists the error message and the docs print are the families the readers match.
    #[test]
    fn the_listed_families_are_the_ones_read() {
        for t in Family::hf_model_types() {
            let json = serde_json::json!({"model_type": t, "text_config": {}});
            assert!(!unsupported(ModelConfig::from_hf_json(&json)), "{t} is listed but not read");
        }
        assert!(unsupported(ModelConfig::from_hf_json(&serde_json::json!({"model_type": "mamba"}))));
        for arch in Family::gguf_architectures().into_iter().chain(["mamba"]) {
            let bytes = GgufWriter::new()
                .meta("general.architecture", Value::String(arch.into()))
                .meta(&format!("{arch}.block_count"), Value::U32(1))
                .meta(&format!("{arch}.embedding_length"), Value::U32(8))
                .meta(&format!("{arch}.attention.head_count"), Value::U32(2))
                .meta(&format!("{arch}.feed_forward_length"), Value::U32(8))
                .meta(&format!("{arch}.context_length"), Value::U32(8))
                .meta(&format!("{arch}.vocab_size"), Value::U32(8))
                .to_bytes();
            let header = GgufHeader::parse(&bytes).unwrap();
            assert_eq!(unsupported(ModelConfig::from_gguf(&header)), arch == "mamba", "{arch}");
        }
    }
}
