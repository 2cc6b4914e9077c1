//! The model description from GGUF metadata, as llama.cpp's converters write it.

use super::*;
use crate::gguf::GgufHeader;

impl ModelConfig {
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

        let stated_experts = usize_of("expert_count").filter(|&n| n > 0);
        let family = Family::from_gguf(&arch, stated_experts.is_some())?;
        let n_layers = layer_count(require("block_count")?)?;
        let d_model = require("embedding_length")?;
        let n_heads = require("attention.head_count")?;
        let n_kv_heads = usize_of("attention.head_count_kv").unwrap_or(n_heads);
        let d_head = usize_of("attention.key_length").unwrap_or(d_model / n_heads.max(1));
        // A Mixture-of-Experts MLP's width is each expert's (every layer of a Qwen3-MoE file
        // is one, as llama.cpp builds it).
        let d_mlp = require(family.experts.map_or("feed_forward_length", |e| e.gguf_width))?;
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
        // A family without experts that states some is refused by `check_gguf_keys`.
        let moe = match (family.experts, stated_experts) {
            (None, _) => None,
            (Some(e), Some(experts)) => {
                let per_token = require("expert_used_count")?;
                if per_token == 0 || per_token > experts {
                    return Err(Error::Config(format!("{per_token} experts per token out of {experts}")));
                }
                Some(Moe {
                    experts,
                    per_token,
                    // As llama.cpp's graphs weigh the chosen experts.
                    normalize: e.gguf,
                    shared: usize_of("expert_shared_feed_forward_length").filter(|_| e.shared),
                })
            }
            (Some(_), None) => return Err(Error::Config(format!("missing {}", key("expert_count")))),
        };

        check_gguf_keys(file, family, &arch, d_head)?;
        let rms_eps = |default: f32| f32_of("attention.layer_norm_rms_epsilon").unwrap_or(default);
        let (norm_eps, activation, attn_scale, layers) = match family.body {
            Body::Rotary => {
                let window = usize_of("attention.sliding_window");
                let layers = (0..n_layers)
                    .map(|l| LayerSpec {
                        window: window.filter(|_| family.gguf_window == GgufWindow::Every || l % 2 == 0),
                        rope_base,
                        rope_scaling,
                    })
                    .collect();
                let activation = if family.swiglu_oai { SWIGLU_OAI } else { Activation::Silu };
                (rms_eps(1e-5), activation, (d_head as f32).powf(-0.5), layers)
            }
            Body::Gemma2 | Body::Gemma3 => {
                // Keys this GGUF writer leaves out take the reference implementation's defaults
                // (transformers' Gemma3TextConfig): local RoPE base 10k, one global layer in six.
                // Gemma 2 alternates local and global layers, one RoPE base for both.
                let gemma2 = family.body == Body::Gemma2;
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
                        let global = (l + 1) % pattern == 0;
                        LayerSpec {
                            window: (!global).then_some(window),
                            rope_base: if global { rope_base } else { local_base },
                            rope_scaling: rope_scaling.filter(|_| global),
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
                (rms_eps(1e-6), Activation::GeluTanh, query_scalar.powf(-0.5), layers)
            }
            Body::Gpt2 | Body::Opt => return Err(Error::UnsupportedArchitecture(arch.clone())),
        };
        family.config(Stated {
            architecture: arch.clone(),
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            d_head,
            d_mlp,
            vocab_size,
            context_length,
            norm_eps,
            activation,
            attn_scale,
            attn_logit_softcap: f32_of("attn_logit_softcapping"),
            final_logit_softcap: f32_of("final_logit_softcapping"),
            tied_embeddings: file.tensor_info("output.weight").is_none(),
            moe,
            rotary_dim,
            long_rope: None,
            layers,
        })
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
fn check_gguf_keys(file: &GgufHeader, family: &Family, arch: &str, d_head: usize) -> Result<()> {
    let prefix = format!("{arch}.");
    let long_rope = file.tensor_info("rope_factors_long.weight").is_some();
    for (full, value) in file.metadata.range(prefix.clone()..) {
        let Some(k) = full.strip_prefix(&prefix) else { break };
        let yarn = file.meta(&format!("{prefix}rope.scaling.type")).and_then(|v| v.as_str()) == Some("yarn");
        if yarn && YARN_KEYS_READ.contains(&k) {
            continue;
        }
        if GGUF_KEYS_READ.contains(&k) || family.gguf_keys.contains(&k) {
            continue;
        }
        let as_f64 = value.as_f64();
        let (harmless, why) = match k {
            // Informational: the length the scaling was tuned for, whether it was fine-tuned.
            "rope.scaling.original_context_length" | "rope.scaling.finetuned" => (true, ""),
            // Read where the family rotates part of each head (Phi-3's files state it).
            "rope.dimension_count" => (
                value.as_u64() == Some(d_head as u64) || family.partial_rotary,
                "partial rotary dimensions",
            ),
            "attention.value_length" => (
                value.as_u64() == Some(d_head as u64),
                "value heads wider or narrower than key heads",
            ),
            // Read by the families with experts (their own keys); elsewhere only none is harmless.
            "expert_count" | "expert_used_count" => (value.as_u64() == Some(0), "Mixture-of-Experts MLPs"),
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
