//! One model description for every family headhunt runs.
//!
//! The forward pass has a single code path; what distinguishes Llama from Gemma 3, GPT-2 or OPT
//! is data in [`ModelConfig`] (norm kind, activation, positions, per-layer attention window and
//! RoPE base, norms around sub-layers) and the presence or absence of bias tensors in the weights.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gguf::GgufHeader;

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
    /// factors are in [`ModelConfig::long_rope`] (config.json) or the file's
    /// `rope_factors_{short,long}.weight` tensors (GGUF).
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

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// Family name as the source spells it (`llama`, `gemma3`, `gpt2`, ...).
    pub architecture: String,
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
    /// LongRoPE's factors when config.json holds them (GGUF files hold them as tensors).
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

    /// Read the model description from GGUF metadata.
    pub fn from_gguf(file: &GgufHeader) -> Result<Self> {
        let arch = file
            .meta("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Config("missing general.architecture".into()))?
            .to_owned();
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Option<usize> { file.meta(&key(k)).and_then(|v| v.as_u64()).map(|v| v as usize) };
        let f32_of = |k: &str| -> Option<f32> { file.meta(&key(k)).and_then(|v| v.as_f64()).map(|v| v as f32) };
        let require = |k: &str| usize_of(k).ok_or_else(|| Error::Config(format!("missing {}", key(k))));

        let n_layers = layer_count(require("block_count")?)?;
        let d_model = require("embedding_length")?;
        let n_heads = require("attention.head_count")?;
        let n_kv_heads = usize_of("attention.head_count_kv").unwrap_or(n_heads);
        let d_head = usize_of("attention.key_length").unwrap_or(d_model / n_heads.max(1));
        // A Mixture-of-Experts MLP's width is each expert's (every layer of a Qwen3-MoE file
        // is one, as llama.cpp builds it).
        let d_mlp = match arch.as_str() {
            "qwen3moe" | "qwen2moe" | "gpt-oss" => require("expert_feed_forward_length")?,
            _ => require("feed_forward_length")?,
        };
        let context_length = require("context_length")?;
        let vocab_size = match usize_of("vocab_size") {
            Some(v) => v,
            None => file
                .meta("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| file.tensor_info("token_embd.weight").map(|t| t.shape[0]))
                .ok_or_else(|| Error::Config("cannot tell the vocabulary size".into()))?,
        };
        let rope_base = f32_of("rope.freq_base").unwrap_or(10_000.0);
        let rope_scaling = match file.meta(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: f32_of("rope.scaling.factor").unwrap_or(1.0),
            }),
            // llama.cpp's YaRN: the ramp between the dimensions turning `beta_slow` and
            // `beta_fast` times over the original context (rounded outward), cosines and sines
            // scaled by its attention factor times 1 + 0.1 ln(factor).
            Some("yarn") => {
                let need = |k: &str| f32_of(k).ok_or_else(|| Error::Config(format!("YaRN RoPE scaling without {}", key(k))));
                let factor = need("rope.scaling.factor")?;
                let mscale = if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 };
                Some(RopeScaling::Yarn {
                    factor,
                    original_context: need("rope.scaling.original_context_length")?,
                    beta_fast: f32_of("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                    beta_slow: f32_of("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                    attention_factor: f32_of("rope.scaling.attn_factor").unwrap_or(1.0) * mscale,
                    truncate: true,
                })
            }
            Some(other) => return Err(Error::Config(format!("RoPE scaling `{other}` is not supported"))),
        };
        // Scalings stated by tensors: Llama 3's divisors (`rope_freqs.weight`), LongRoPE's two
        // sets (`rope_factors_{short,long}.weight`, as llama.cpp's Phi-3 files carry them).
        let long_rope = file.tensor_info("rope_factors_long.weight").is_some() || file.tensor_info("rope_factors_short.weight").is_some();
        let by_tensor = match (file.tensor_info("rope_freqs.weight").is_some(), long_rope) {
            (false, false) => None,
            (true, false) => Some(RopeScaling::FreqFactors),
            (false, true) => {
                let original = f32_of("rope.scaling.original_context_length")
                    .ok_or_else(|| Error::Config(format!("LongRoPE factors without {}", key("rope.scaling.original_context_length"))))?;
                Some(RopeScaling::LongRope {
                    original_context: original,
                    attention_factor: f32_of("rope.scaling.attn_factor")
                        .unwrap_or_else(|| long_rope_attention_factor(context_length as f32, original)),
                })
            }
            (true, true) => {
                return Err(Error::Config(
                    "both rope_freqs.weight and LongRoPE factors: two RoPE scalings at once".into(),
                ))
            }
        };
        let rope_scaling = match (rope_scaling, by_tensor) {
            (scaling, None) => scaling,
            (None, tensor) => tensor,
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "both rope.scaling.type and a RoPE factor tensor: two RoPE scalings at once are not supported".into(),
                ))
            }
        };
        let rotary_dim = usize_of("rope.dimension_count").unwrap_or(d_head);
        let tied = file.tensor_info("output.weight").is_none();
        // llama.cpp writes Mixtral as `llama` with experts; its Mixtral and Qwen3-MoE graphs
        // renormalise the router's weights over the chosen experts, as those models do, and its
        // OLMoE graph does not.
        let moe = match usize_of("expert_count").filter(|&n| n > 0) {
            Some(experts) if matches!(arch.as_str(), "llama" | "qwen3moe" | "qwen2moe" | "olmoe" | "gpt-oss") => {
                let per_token = require("expert_used_count")?;
                if per_token == 0 || per_token > experts {
                    return Err(Error::Config(format!("{per_token} experts per token out of {experts}")));
                }
                Some(Moe {
                    experts,
                    per_token,
                    // As llama.cpp's graphs weigh the chosen experts.
                    normalize: !matches!(arch.as_str(), "olmoe" | "qwen2moe"),
                    shared: usize_of("expert_shared_feed_forward_length").filter(|_| arch == "qwen2moe"),
                })
            }
            _ if matches!(arch.as_str(), "qwen3moe" | "qwen2moe" | "olmoe" | "gpt-oss") => {
                return Err(Error::Config(format!("missing {}", key("expert_count"))))
            }
            _ => None,
        };

        check_gguf_keys(file, &arch, d_head)?;
        let config = match arch.as_str() {
            "llama" | "mistral" | "qwen2" | "qwen3" | "qwen3moe" | "qwen2moe" | "phi3" | "olmo2" | "olmoe" | "gpt-oss" => {
                let window = usize_of("attention.sliding_window");
                ModelConfig {
                    architecture: arch.clone(),
                    n_layers,
                    d_model,
                    n_heads,
                    n_kv_heads,
                    d_head,
                    d_mlp,
                    vocab_size,
                    context_length,
                    norm: NormKind::RmsNorm,
                    norm_eps: f32_of("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
                    activation: if arch == "gpt-oss" { SWIGLU_OAI } else { Activation::Silu },
                    gated_mlp: true,
                    positions: PositionEncoding::Rotary,
                    attn_scale: (d_head as f32).powf(-0.5),
                    embed_scale: 1.0,
                    qk_norm: match arch.as_str() {
                        "qwen3" | "qwen3moe" => QkNorm::PerHead,
                        "olmo2" | "olmoe" => QkNorm::Whole,
                        _ => QkNorm::None,
                    },
                    norms: if arch == "olmo2" { NormPlacement::Post } else { NormPlacement::Pre },
                    attn_logit_softcap: None,
                    final_logit_softcap: None,
                    tied_embeddings: tied,
                    moe,
                    attn_sinks: arch == "gpt-oss",
                    rotary_dim,
                    long_rope: None,
                    layers: (0..n_layers)
                        .map(|l| LayerSpec {
                            // gpt-oss alternates windowed and full layers, the first windowed.
                            window: window.filter(|_| arch != "gpt-oss" || l % 2 == 0),
                            rope_base,
                            rope_scaling,
                        })
                        .collect(),
                }
            }
            "gemma2" | "gemma3" => {
                // Keys this GGUF writer leaves out take the reference implementation's defaults
                // (transformers' Gemma3TextConfig): local RoPE base 10k, one global layer in six.
                // Gemma 2 alternates local and global layers, one RoPE base for both.
                let gemma2 = arch == "gemma2";
                let window = usize_of("attention.sliding_window").unwrap_or(4096);
                let pattern = if gemma2 {
                    2
                } else {
                    usize_of("attention.sliding_window_pattern").unwrap_or(6).max(1)
                };
                let local_base = if gemma2 {
                    rope_base
                } else {
                    f32_of("rope.local.freq_base").unwrap_or(10_000.0)
                };
                let layers = (0..n_layers)
                    .map(|l| {
                        if (l + 1) % pattern == 0 {
                            LayerSpec {
                                window: None,
                                rope_base,
                                rope_scaling,
                            }
                        } else {
                            LayerSpec {
                                window: Some(window),
                                rope_base: local_base,
                                rope_scaling: None,
                            }
                        }
                    })
                    .collect();
                // Gemma 2 files carry no query scalar: llama.cpp takes d_model / heads for the
                // 27B shape (46 layers) and the head size for the others, as those checkpoints set it.
                let query_scalar = match f32_of("attention.query_pre_attn_scalar") {
                    Some(q) => q,
                    None if gemma2 && n_layers == 46 => (d_model / n_heads) as f32,
                    None => d_head as f32,
                };
                ModelConfig {
                    architecture: arch.clone(),
                    n_layers,
                    d_model,
                    n_heads,
                    n_kv_heads,
                    d_head,
                    d_mlp,
                    vocab_size,
                    context_length,
                    norm: NormKind::RmsNorm,
                    norm_eps: f32_of("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
                    activation: Activation::GeluTanh,
                    gated_mlp: true,
                    positions: PositionEncoding::Rotary,
                    attn_scale: query_scalar.powf(-0.5),
                    embed_scale: (d_model as f32).sqrt(),
                    qk_norm: if gemma2 { QkNorm::None } else { QkNorm::PerHead },
                    norms: NormPlacement::Sandwich,
                    attn_logit_softcap: f32_of("attn_logit_softcapping"),
                    final_logit_softcap: f32_of("final_logit_softcapping"),
                    tied_embeddings: tied,
                    moe: None,
                    attn_sinks: false,
                    rotary_dim: d_head,
                    long_rope: None,
                    layers,
                }
            }
            other => return Err(Error::UnsupportedArchitecture(other.to_owned())),
        };
        config.validate()
    }

    /// Read the model description from a Hugging Face `config.json`.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self> {
        let hf = HfConfig(json);
        let model_type = hf.str("model_type")?;
        let config = match model_type {
            "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" | "olmo2" | "smollm" | "mixtral" | "olmoe" | "qwen3_moe" | "qwen2_moe"
            | "gpt_oss" => {
                let moe = hf.moe(model_type)?;
                hf.refuse_unimplemented(moe.is_some())?;
                let d_model = hf.usize("hidden_size")?;
                let n_heads = hf.usize("num_attention_heads")?;
                let n_kv_heads = hf.opt_usize("num_key_value_heads").unwrap_or(n_heads);
                let d_head = hf.opt_usize("head_dim").unwrap_or(d_model / n_heads.max(1));
                let n_layers = layer_count(hf.usize("num_hidden_layers")?)?;
                let window = match model_type {
                    "mistral" | "phi3" | "mixtral" | "gpt_oss" => hf.opt_usize("sliding_window"),
                    "qwen2" | "qwen3" | "qwen3_moe" | "qwen2_moe" if hf.bool("use_sliding_window").unwrap_or(false) => {
                        hf.opt_usize("sliding_window")
                    }
                    _ => None,
                };
                // Which layers the window applies to: `layer_types` where given, else Qwen2's rule
                // (layers from `max_window_layers` on), else every layer.
                let first_windowed = if model_type.starts_with("qwen") {
                    hf.opt_usize("max_window_layers").unwrap_or(0)
                } else {
                    0
                };
                let windowed: Vec<bool> = match json_array(hf.0, "layer_types") {
                    Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
                    None => (0..n_layers).map(|l| l >= first_windowed).collect(),
                };
                if windowed.len() != n_layers {
                    return Err(Error::Config("layer_types does not list every layer".into()));
                }
                let (rope_base, rope_scaling) = hf.rope(None, 10_000.0)?;
                let rotary_dim = (d_head as f64 * hf.rope_number("partial_rotary_factor").unwrap_or(1.0)) as usize;
                let long_rope = hf.long_rope_factors()?;
                ModelConfig {
                    architecture: model_type.to_owned(),
                    n_layers,
                    d_model,
                    n_heads,
                    n_kv_heads,
                    d_head,
                    d_mlp: match model_type {
                        "qwen3_moe" | "qwen2_moe" => hf.usize("moe_intermediate_size")?,
                        _ => hf.usize("intermediate_size")?,
                    },
                    vocab_size: hf.usize("vocab_size")?,
                    context_length: hf.usize("max_position_embeddings")?,
                    norm: NormKind::RmsNorm,
                    norm_eps: hf.f32("rms_norm_eps").unwrap_or(1e-6),
                    // gpt-oss's `hidden_act` names SiLU; its experts compute their own unit.
                    activation: match model_type {
                        "gpt_oss" => Activation::SwigluOai {
                            alpha: hf.f32("swiglu_alpha").unwrap_or(1.702),
                            limit: hf.f32("swiglu_limit").unwrap_or(7.0),
                        },
                        _ => Activation::from_hf(hf.str("hidden_act").unwrap_or("silu"))?,
                    },
                    gated_mlp: true,
                    positions: PositionEncoding::Rotary,
                    attn_scale: (d_head as f32).powf(-0.5),
                    embed_scale: 1.0,
                    qk_norm: match model_type {
                        "qwen3" | "qwen3_moe" => QkNorm::PerHead,
                        "olmo2" | "olmoe" => QkNorm::Whole,
                        _ => QkNorm::None,
                    },
                    norms: if model_type == "olmo2" {
                        NormPlacement::Post
                    } else {
                        NormPlacement::Pre
                    },
                    attn_logit_softcap: None,
                    final_logit_softcap: None,
                    tied_embeddings: hf.bool("tie_word_embeddings").unwrap_or(false),
                    moe,
                    attn_sinks: model_type == "gpt_oss",
                    rotary_dim,
                    long_rope,
                    layers: windowed
                        .iter()
                        .map(|&w| LayerSpec {
                            window: window.filter(|_| w),
                            rope_base,
                            rope_scaling,
                        })
                        .collect(),
                }
            }
            "gemma2" | "gemma3_text" | "gemma3" => {
                // Gemma 2 is Gemma 3 without the Q/K norms, with one RoPE base, soft-capped
                // attention and final logits, and local layers alternating with global ones.
                let gemma2 = model_type == "gemma2";
                let hf = if model_type == "gemma3" {
                    HfConfig(
                        json.get("text_config")
                            .ok_or_else(|| Error::Config("gemma3 config without text_config".into()))?,
                    )
                } else {
                    hf
                };
                let d_model = hf.usize("hidden_size")?;
                let n_heads = hf.usize("num_attention_heads")?;
                let d_head = hf.opt_usize("head_dim").unwrap_or(256);
                let n_layers = layer_count(hf.usize("num_hidden_layers")?)?;
                let window = hf.opt_usize("sliding_window").unwrap_or(4096);
                let pattern = hf
                    .opt_usize("sliding_window_pattern")
                    .or(hf.opt_usize("_sliding_window_pattern"))
                    .unwrap_or(6)
                    .max(1);
                let pattern = if gemma2 { 2 } else { pattern };
                let layer_types: Vec<bool> = match json_array(hf.0, "layer_types") {
                    Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
                    None => (0..n_layers).map(|l| (l + 1) % pattern != 0).collect(),
                };
                if layer_types.len() != n_layers {
                    return Err(Error::Config("layer_types does not list every layer".into()));
                }
                let (global_base, global_scaling, local_base) = if gemma2 {
                    let (base, scaling) = hf.rope(None, 10_000.0)?;
                    (base, scaling, base)
                } else {
                    let (global_base, global_scaling) = hf.rope(Some("full_attention"), 1_000_000.0)?;
                    let local_base = match hf.rope(Some("sliding_attention"), f32::NAN)? {
                        (b, _) if !b.is_nan() => b,
                        _ => hf.f32("rope_local_base_freq").unwrap_or(10_000.0),
                    };
                    (global_base, global_scaling, local_base)
                };
                // Gemma 2's soft-caps default on (transformers' Gemma2Config); an explicit null
                // turns one off.
                let softcap = |k: &str, default: f32| match hf.0.get(k) {
                    None if gemma2 => Some(default),
                    v => v.and_then(|v| v.as_f64()).map(|v| v as f32),
                };
                let layers = layer_types
                    .iter()
                    .map(|&sliding| LayerSpec {
                        window: sliding.then_some(window),
                        rope_base: if sliding { local_base } else { global_base },
                        rope_scaling: if sliding { None } else { global_scaling },
                    })
                    .collect();
                ModelConfig {
                    architecture: if gemma2 { "gemma2" } else { "gemma3" }.into(),
                    n_layers,
                    d_model,
                    n_heads,
                    n_kv_heads: hf.opt_usize("num_key_value_heads").unwrap_or(n_heads),
                    d_head,
                    d_mlp: hf.usize("intermediate_size")?,
                    vocab_size: hf.usize("vocab_size")?,
                    context_length: hf.usize("max_position_embeddings")?,
                    norm: NormKind::RmsNorm,
                    norm_eps: hf.f32("rms_norm_eps").unwrap_or(1e-6),
                    activation: Activation::from_hf(hf.str("hidden_activation").unwrap_or("gelu_pytorch_tanh"))?,
                    gated_mlp: true,
                    positions: PositionEncoding::Rotary,
                    attn_scale: hf.f32("query_pre_attn_scalar").unwrap_or(256.0).powf(-0.5),
                    embed_scale: (d_model as f32).sqrt(),
                    qk_norm: if gemma2 { QkNorm::None } else { QkNorm::PerHead },
                    norms: NormPlacement::Sandwich,
                    attn_logit_softcap: softcap("attn_logit_softcapping", 50.0),
                    final_logit_softcap: softcap("final_logit_softcapping", 30.0),
                    tied_embeddings: hf.bool("tie_word_embeddings").unwrap_or(true),
                    moe: None,
                    attn_sinks: false,
                    rotary_dim: d_head,
                    long_rope: None,
                    layers,
                }
            }
            "gpt2" => {
                let d_model = hf.usize("n_embd")?;
                let n_heads = hf.usize("n_head")?;
                let n_layers = layer_count(hf.usize("n_layer")?)?;
                let context_length = hf.usize("n_positions")?;
                if hf.bool("scale_attn_by_inverse_layer_idx").unwrap_or(false) || hf.bool("reorder_and_upcast_attn").unwrap_or(false) {
                    return Err(Error::Config("GPT-2 variants with layer-scaled attention are not supported".into()));
                }
                ModelConfig {
                    architecture: "gpt2".into(),
                    n_layers,
                    d_model,
                    n_heads,
                    n_kv_heads: n_heads,
                    d_head: d_model / n_heads.max(1),
                    d_mlp: hf.opt_usize("n_inner").unwrap_or(4 * d_model),
                    vocab_size: hf.usize("vocab_size")?,
                    context_length,
                    norm: NormKind::LayerNorm,
                    norm_eps: hf.f32("layer_norm_epsilon").unwrap_or(1e-5),
                    activation: Activation::from_hf(hf.str("activation_function").unwrap_or("gelu_new"))?,
                    gated_mlp: false,
                    positions: PositionEncoding::Learned { offset: 0 },
                    attn_scale: if hf.bool("scale_attn_weights").unwrap_or(true) {
                        ((d_model / n_heads.max(1)) as f32).powf(-0.5)
                    } else {
                        1.0
                    },
                    embed_scale: 1.0,
                    qk_norm: QkNorm::None,
                    norms: NormPlacement::Pre,
                    attn_logit_softcap: None,
                    final_logit_softcap: None,
                    tied_embeddings: true,
                    moe: None,
                    attn_sinks: false,
                    rotary_dim: 0,
                    long_rope: None,
                    layers: vec![
                        LayerSpec {
                            window: None,
                            rope_base: 0.0,
                            rope_scaling: None,
                        };
                        n_layers
                    ],
                }
            }
            "opt" => {
                let d_model = hf.usize("hidden_size")?;
                let n_heads = hf.usize("num_attention_heads")?;
                let n_layers = layer_count(hf.usize("num_hidden_layers")?)?;
                if !hf.bool("do_layer_norm_before").unwrap_or(true) {
                    return Err(Error::Config(
                        "post-LayerNorm OPT checkpoints (opt-350m) are not supported; use opt-125m or opt-1.3b and larger".into(),
                    ));
                }
                if hf.opt_usize("word_embed_proj_dim").is_some_and(|w| w != d_model) {
                    return Err(Error::Config(
                        "OPT checkpoints with projected embeddings (word_embed_proj_dim != hidden_size) are not supported".into(),
                    ));
                }
                ModelConfig {
                    architecture: "opt".into(),
                    n_layers,
                    d_model,
                    n_heads,
                    n_kv_heads: n_heads,
                    d_head: d_model / n_heads.max(1),
                    d_mlp: hf.usize("ffn_dim")?,
                    vocab_size: hf.usize("vocab_size")?,
                    context_length: hf.usize("max_position_embeddings")?,
                    norm: NormKind::LayerNorm,
                    norm_eps: 1e-5,
                    activation: Activation::from_hf(hf.str("activation_function").unwrap_or("relu"))?,
                    gated_mlp: false,
                    positions: PositionEncoding::Learned { offset: 2 },
                    attn_scale: ((d_model / n_heads.max(1)) as f32).powf(-0.5),
                    embed_scale: 1.0,
                    qk_norm: QkNorm::None,
                    norms: NormPlacement::Pre,
                    attn_logit_softcap: None,
                    final_logit_softcap: None,
                    tied_embeddings: hf.bool("tie_word_embeddings").unwrap_or(true),
                    moe: None,
                    attn_sinks: false,
                    rotary_dim: 0,
                    long_rope: None,
                    layers: vec![
                        LayerSpec {
                            window: None,
                            rope_base: 0.0,
                            rope_scaling: None,
                        };
                        n_layers
                    ],
                }
            }
            other => return Err(Error::UnsupportedArchitecture(other.to_owned())),
        };
        config.validate()
    }
}

/// The `{arch}.*` metadata keys the GGUF reader above uses, per family.
const GGUF_KEYS_READ: &[&str] = &[
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "feed_forward_length",
    "context_length",
    "vocab_size",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "attention.layer_norm_rms_epsilon",
    "attention.sliding_window",
];
const GGUF_GEMMA2_KEYS_READ: &[&str] = &[
    "attention.query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
];
const GGUF_GEMMA3_KEYS_READ: &[&str] = &[
    "attention.sliding_window_pattern",
    "rope.local.freq_base",
    "attention.query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
];

/// The YaRN keys the reader uses when the scaling is YaRN (elsewhere the original context length
/// is informational and an attention factor other than 1 is refused).
const YARN_KEYS_READ: &[&str] = &[
    "rope.scaling.original_context_length",
    "rope.scaling.attn_factor",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
];

/// Every `{arch}.*` key of a GGUF file is either read, or known not to change the numbers at the
/// value it has; anything else refuses the file, naming the key (llama.cpp's converters add keys
/// as families gain features: a reader that skips them computes a different model silently).
fn check_gguf_keys(file: &GgufHeader, arch: &str, d_head: usize) -> Result<()> {
    let prefix = format!("{arch}.");
    let long_rope = file.tensor_info("rope_factors_long.weight").is_some();
    for (full, value) in file.metadata.range(prefix.clone()..) {
        let Some(k) = full.strip_prefix(&prefix) else { break };
        let yarn = file.meta(&format!("{prefix}rope.scaling.type")).and_then(|v| v.as_str()) == Some("yarn");
        if yarn && YARN_KEYS_READ.contains(&k) {
            continue;
        }
        let family_keys: &[&str] = match arch {
            // Gemma 2's layout is fixed (alternating layers, one RoPE base): keys for another
            // pattern or a local base are not read, so they refuse the file.
            "gemma2" => GGUF_GEMMA2_KEYS_READ,
            "gemma3" => GGUF_GEMMA3_KEYS_READ,
            "qwen3moe" => &["expert_count", "expert_used_count", "expert_feed_forward_length"],
            "olmoe" => &["expert_count", "expert_used_count"],
            "qwen2moe" => &[
                "expert_count",
                "expert_used_count",
                "expert_feed_forward_length",
                "expert_shared_feed_forward_length",
            ],
            "gpt-oss" => &["expert_count", "expert_used_count", "expert_feed_forward_length"],
            _ => &[],
        };
        if GGUF_KEYS_READ.contains(&k) || family_keys.contains(&k) {
            continue;
        }
        let as_f64 = value.as_f64();
        let (harmless, why) = match k {
            // Informational: the length the scaling was tuned for, whether it was fine-tuned.
            "rope.scaling.original_context_length" | "rope.scaling.finetuned" => (true, ""),
            // Read where the family rotates part of each head (Phi-3's files state it).
            "rope.dimension_count" => (value.as_u64() == Some(d_head as u64) || arch == "phi3", "partial rotary dimensions"),
            "attention.value_length" => (
                value.as_u64() == Some(d_head as u64),
                "value heads wider or narrower than key heads",
            ),
            // Read for `llama` (Mixtral); other families' experts are not.
            "expert_count" | "expert_used_count" => (value.as_u64() == Some(0) || arch == "llama", "Mixture-of-Experts MLPs"),
            "rope.scaling.attn_factor" => (as_f64 == Some(1.0) || long_rope, "a RoPE attention factor"),
            _ => (false, "a key this family's reader does not know"),
        };
        if !harmless {
            return Err(Error::UnsupportedKey {
                source_name: "GGUF metadata".into(),
                key: full.clone(),
                value: value.to_string(),
                why: why.into(),
            });
        }
    }
    Ok(())
}

/// The GGUF `general.architecture` values [`ModelConfig::from_gguf`] reads (a test keeps the
/// list and the match in step).
pub const GGUF_ARCHITECTURES: &[&str] = &[
    "llama", "mistral", "qwen2", "qwen3", "qwen3moe", "phi3", "olmo2", "olmoe", "gemma2", "gemma3", "gpt-oss", "qwen2moe",
];

/// The Hugging Face `model_type` values [`ModelConfig::from_hf_json`] reads.
pub const HF_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo2",
    "smollm",
    "mixtral",
    "olmoe",
    "qwen3_moe",
    "qwen2_moe",
    "gpt_oss",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "gpt2",
    "opt",
];

/// More layers than any model headhunt could hold in memory: refused before per-layer tables are
/// allocated from a header's word.
const MAX_LAYERS: usize = 1 << 10;

fn layer_count(n: usize) -> Result<usize> {
    if n == 0 || n > MAX_LAYERS {
        return Err(Error::Config(format!("{n} layers is outside 1..={MAX_LAYERS}")));
    }
    Ok(n)
}

fn json_array<'a>(json: &'a serde_json::Value, key: &str) -> Option<&'a Vec<serde_json::Value>> {
    json.get(key).and_then(|v| v.as_array())
}

/// Whether a `config.json` value is the one that leaves the forward pass as headhunt computes it.
type IsDefault = fn(&serde_json::Value) -> bool;

/// Typed access to a `config.json`, with errors naming the missing key.
#[derive(Clone, Copy)]
struct HfConfig<'a>(&'a serde_json::Value);

impl<'a> HfConfig<'a> {
    fn opt_usize(&self, k: &str) -> Option<usize> {
        self.0.get(k).and_then(|v| v.as_u64()).map(|v| v as usize)
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k).ok_or_else(|| Error::Config(format!("config.json lacks `{k}`")))
    }
    fn f32(&self, k: &str) -> Option<f32> {
        self.0.get(k).and_then(|v| v.as_f64()).map(|v| v as f32)
    }
    fn bool(&self, k: &str) -> Option<bool> {
        self.0.get(k).and_then(|v| v.as_bool())
    }
    fn str(&self, k: &str) -> Result<&'a str> {
        self.0
            .get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Config(format!("config.json lacks `{k}`")))
    }

    /// Keys of the llama family's config that would change the forward pass and that the
    /// reader above does not implement: present with a non-default value, they refuse the
    /// checkpoint by name (transformers reads them; skipping one computes another model).
    /// The Mixture-of-Experts MLP of a family that has one, `None` for the others.
    fn moe(&self, model_type: &str) -> Result<Option<Moe>> {
        let experts = self.opt_usize("num_local_experts").or_else(|| self.opt_usize("num_experts"));
        let normalize = match model_type {
            // gpt-oss takes the softmax of the chosen experts' logits: the same weights.
            "mixtral" | "gpt_oss" => true,
            "olmoe" | "qwen3_moe" | "qwen2_moe" => self.bool("norm_topk_prob").unwrap_or(false),
            _ => return Ok(None),
        };
        let unsupported = |key: &str, value: String, why: &str| Error::UnsupportedKey {
            source_name: "config.json".into(),
            key: key.into(),
            value,
            why: why.into(),
        };
        // Qwen3-MoE can keep dense MLPs in some layers; headhunt reads the all-sparse layout.
        if let Some(v) = json_array(self.0, "mlp_only_layers").filter(|l| !l.is_empty()) {
            return Err(unsupported(
                "mlp_only_layers",
                format!("{v:?}"),
                "dense MLPs in some layers of a Mixture-of-Experts model",
            ));
        }
        if let Some(step) = self.opt_usize("decoder_sparse_step").filter(|&s| s != 1) {
            return Err(unsupported(
                "decoder_sparse_step",
                step.to_string(),
                "Mixture-of-Experts MLPs in only some layers",
            ));
        }
        if let Some(v) = self.0.get("clip_qkv").filter(|v| !v.is_null()) {
            return Err(unsupported("clip_qkv", v.to_string(), "clipped query, key and value projections"));
        }
        let experts = experts.ok_or_else(|| Error::Config(format!("{model_type} config names no expert count")))?;
        let per_token = self.usize("num_experts_per_tok")?;
        if per_token == 0 || per_token > experts {
            return Err(Error::Config(format!("{per_token} experts per token out of {experts}")));
        }
        Ok(Some(Moe {
            experts,
            per_token,
            normalize,
            shared: self
                .opt_usize("shared_expert_intermediate_size")
                .filter(|&w| w > 0 && model_type == "qwen2_moe"),
        }))
    }

    fn refuse_unimplemented(&self, moe: bool) -> Result<()> {
        let no_experts: IsDefault = if moe { |_| true } else { |v| v.as_u64() == Some(0) };
        let checks: [(&str, IsDefault, &str); 5] = [
            ("num_local_experts", no_experts, "Mixture-of-Experts MLPs"),
            ("num_experts", no_experts, "Mixture-of-Experts MLPs"),
            ("attn_logit_softcapping", serde_json::Value::is_null, "attention logit soft-capping"),
            ("final_logit_softcapping", serde_json::Value::is_null, "final logit soft-capping"),
            ("attention_sink", serde_json::Value::is_null, "attention sinks"),
        ];
        // transformers v5 moves some of them into `rope_parameters`.
        let nested = |key: &str| self.0.get("rope_parameters").and_then(|p| p.get(key));
        for (key, default, why) in checks {
            if let Some(v) = self.0.get(key).or_else(|| nested(key)).filter(|v| !default(v)) {
                return Err(Error::UnsupportedKey {
                    source_name: "config.json".into(),
                    key: key.into(),
                    value: v.to_string(),
                    why: why.into(),
                });
            }
        }
        Ok(())
    }

    /// A number of the RoPE settings, at the top level or in `rope_parameters` (transformers v5
    /// moves them there).
    fn rope_number(&self, key: &str) -> Option<f64> {
        self.0
            .get(key)
            .or_else(|| self.0.get("rope_parameters").and_then(|p| p.get(key)))
            .or_else(|| self.0.get("rope_scaling").and_then(|p| p.get(key)))
            .and_then(|v| v.as_f64())
    }

    /// LongRoPE's short and long factors, where the scaling is LongRoPE.
    fn long_rope_factors(&self) -> Result<Option<LongRopeFactors>> {
        let obj = self
            .0
            .get("rope_parameters")
            .or_else(|| self.0.get("rope_scaling"))
            .filter(|v| !v.is_null());
        let Some(obj) = obj.filter(|o| {
            matches!(
                o.get("rope_type").or(o.get("type")).and_then(|v| v.as_str()),
                Some("longrope" | "su")
            )
        }) else {
            return Ok(None);
        };
        let list = |k: &str| -> Result<Vec<f32>> {
            obj.get(k)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
                .ok_or_else(|| Error::Config(format!("LongRoPE scaling without `{k}`")))
        };
        Ok(Some(LongRopeFactors {
            short: list("short_factor")?,
            long: list("long_factor")?,
        }))
    }

    /// RoPE base and scaling, from transformers v5's `rope_parameters` (optionally keyed by layer
    /// type) or the older top-level `rope_theta` / `rope_scaling`.
    fn rope(&self, layer_type: Option<&str>, default_base: f32) -> Result<(f32, Option<RopeScaling>)> {
        let params = self.0.get("rope_parameters").map(|p| match layer_type {
            Some(t) => p.get(t).unwrap_or(p),
            None => p,
        });
        let scaling_obj = match params {
            Some(p) => Some(p),
            None => self.0.get("rope_scaling").filter(|v| !v.is_null()),
        };
        let base = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .map(|v| v as f32)
            .or(self.f32("rope_theta"))
            .unwrap_or(default_base);
        let scaling = match scaling_obj {
            None => None,
            Some(obj) => {
                let kind = obj
                    .get("rope_type")
                    .or(obj.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let num = |k: &str, d: f32| obj.get(k).and_then(|v| v.as_f64()).map(|v| v as f32).unwrap_or(d);
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: num("factor", 1.0),
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: num("factor", 8.0),
                        low_freq_factor: num("low_freq_factor", 1.0),
                        high_freq_factor: num("high_freq_factor", 4.0),
                        original_context: num("original_max_position_embeddings", 8192.0),
                    }),
                    "yarn" => {
                        // transformers' defaults: the original context is the model's unless given
                        // (beside the scaling or at the top level), the factor their ratio.
                        let context = self.f32("max_position_embeddings").unwrap_or(0.0);
                        let original = obj
                            .get("original_max_position_embeddings")
                            .and_then(|v| v.as_f64())
                            .map(|v| v as f32)
                            .or(self.f32("original_max_position_embeddings"))
                            .unwrap_or(context);
                        let factor = obj.get("factor").and_then(|v| v.as_f64()).unwrap_or((context / original) as f64);
                        let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
                        let opt = |k: &str| obj.get(k).and_then(|v| v.as_f64()).filter(|&v| v != 0.0);
                        let attention_factor = match (opt("attention_factor"), opt("mscale"), opt("mscale_all_dim")) {
                            (Some(a), _, _) => a,
                            (None, Some(m), Some(all)) => mscale(m) / mscale(all),
                            _ => mscale(1.0),
                        };
                        Some(RopeScaling::Yarn {
                            factor: factor as f32,
                            original_context: original,
                            beta_fast: opt("beta_fast").unwrap_or(32.0) as f32,
                            beta_slow: opt("beta_slow").unwrap_or(1.0) as f32,
                            attention_factor: attention_factor as f32,
                            truncate: obj.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
                        })
                    }
                    // `su` is LongRoPE's name in early Phi-3 configs.
                    "longrope" | "su" => {
                        let context = self.f32("max_position_embeddings").unwrap_or(0.0);
                        let original = obj
                            .get("original_max_position_embeddings")
                            .and_then(|v| v.as_f64())
                            .map(|v| v as f32)
                            .or(self.f32("original_max_position_embeddings"))
                            .ok_or_else(|| Error::Config("LongRoPE scaling without original_max_position_embeddings".into()))?;
                        // transformers: the factor is the context's stretch unless given.
                        let factor = obj.get("factor").and_then(|v| v.as_f64()).map(|f| f as f32);
                        let attention_factor = match obj.get("attention_factor").and_then(|v| v.as_f64()) {
                            Some(a) => a as f32,
                            None => long_rope_attention_factor(factor.map_or(context, |f| f * original), original),
                        };
                        Some(RopeScaling::LongRope {
                            original_context: original,
                            attention_factor,
                        })
                    }
                    other => return Err(Error::Config(format!("RoPE scaling `{other}` is not supported"))),
                }
            }
        };
        Ok((base, scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value};

    fn unsupported(r: Result<ModelConfig>) -> bool {
        matches!(r, Err(Error::UnsupportedArchitecture(_)))
    }

    /// The lists the error message and the docs print are the families the readers match.
    #[test]
    fn the_listed_families_are_the_ones_read() {
        for &t in HF_MODEL_TYPES {
            let json = serde_json::json!({"model_type": t, "text_config": {}});
            assert!(!unsupported(ModelConfig::from_hf_json(&json)), "{t} is listed but not read");
        }
        assert!(unsupported(ModelConfig::from_hf_json(&serde_json::json!({"model_type": "mamba"}))));
        for arch in GGUF_ARCHITECTURES.iter().copied().chain(["mamba"]) {
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
