//! Every architecture headhunt runs, one row each: its names in Hugging Face's `config.json` and
//! in llama.cpp's GGUF files, and what sets it apart (norm placement, Q/K norms, sinks, experts,
//! which tensor names and which sliding-window rule). The readers (`hf.rs`, `gguf.rs`), the
//! weight loader and the error that lists what is supported all read this table; adding a family
//! is a row here (and, for new tensor names, a variant of [`GgufNames`] or [`HfNames`]).

use serde::Serialize;

use super::{NormPlacement, QkNorm};
use crate::error::{Error, Result};

/// The shape of a family's blocks, which decides how its config is read and which fields the
/// forward pass gets (everything else in a row refines it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// RMSNorm, a gated MLP, rotary positions (Llama and its many relatives).
    Rotary,
    /// Gemma 2: RMSNorm with a `1 + w` scale, soft-caps, local and global layers alternating,
    /// the embedding scaled by `sqrt(d_model)`.
    Gemma2,
    /// Gemma 3: Gemma 2's body with Q/K norms, one global layer in six, two RoPE bases.
    Gemma3,
    /// LayerNorm, a plain MLP, learned positions.
    Gpt2,
    /// GPT-2's body, positions offset by 2.
    Opt,
}

/// How the chosen experts' router weights are combined, as each source's reference computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renormalise {
    /// Over the chosen experts (Mixtral).
    Always,
    /// As config.json's `norm_topk_prob` says (false when absent, as transformers defaults it).
    ByConfig,
}

/// A family's Mixture-of-Experts MLP (in every block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Experts {
    /// transformers' rule.
    pub hf: Renormalise,
    /// llama.cpp's graph's rule.
    pub gguf: bool,
    /// The config.json key of each expert's width.
    pub hf_width: &'static str,
    /// The `{arch}.*` GGUF key of each expert's width.
    pub gguf_width: &'static str,
    /// A shared expert behind a sigmoid gate beside the routed ones (Qwen2-MoE).
    pub shared: bool,
}

/// Which layers a Hugging Face config's `sliding_window` applies to (when it has no
/// `layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfWindow {
    /// The family has no sliding window (a `sliding_window` key is not read).
    Never,
    /// Every layer, when `sliding_window` is set.
    Every,
    /// Qwen2's rule: only with `use_sliding_window`, from layer `max_window_layers` on.
    Qwen,
}

/// Which of a GGUF file's layers are windowed, when it states `attention.sliding_window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWindow {
    Every,
    /// Even layers windowed, odd ones full (gpt-oss).
    Alternating,
}

/// llama.cpp's tensor names for a block, by family (`weights.rs` maps each to its names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufNames {
    Standard,
    /// Fused `attn_qkv`, gate and up fused as `ffn_up`.
    Phi3,
    /// The MLP's input norm is `post_attention_norm`.
    GptOss,
}

/// transformers' tensor names, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfNames {
    Llama,
    /// Llama's, with `pre_feedforward_layernorm` as the MLP's input norm and `1 + w` norms.
    Gemma,
    Gpt2,
    Opt,
}

/// One architecture.
#[derive(Debug)]
pub struct Family {
    /// headhunt's name for it (docs, `headhunt info`).
    pub name: &'static str,
    /// config.json `model_type` values.
    pub hf: &'static [&'static str],
    /// GGUF `general.architecture`, where llama.cpp writes the family.
    pub gguf: Option<&'static str>,
    pub body: Body,
    pub qk_norm: QkNorm,
    pub norms: NormPlacement,
    /// A learned logit per head in every softmax row (gpt-oss).
    pub attn_sinks: bool,
    pub experts: Option<Experts>,
    /// gpt-oss's clamped gated unit instead of the config's activation.
    pub swiglu_oai: bool,
    pub hf_window: HfWindow,
    pub gguf_window: GgufWindow,
    pub gguf_names: GgufNames,
    pub hf_names: HfNames,
    /// GGUF files store each head's Q/K rows with the rotary halves interleaved.
    pub gguf_interleaved_rope: bool,
    /// RoPE turns part of each head (`partial_rotary_factor`, GGUF `rope.dimension_count`).
    pub partial_rotary: bool,
    /// `{arch}.*` GGUF keys this family reads beyond the common ones (`gguf.rs`).
    pub gguf_keys: &'static [&'static str],
}

impl Serialize for Family {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// The common row: a Llama.
const LLAMA: Family = Family {
    name: "llama",
    hf: &["llama", "smollm"],
    gguf: Some("llama"),
    body: Body::Rotary,
    qk_norm: QkNorm::None,
    norms: NormPlacement::Pre,
    attn_sinks: false,
    experts: None,
    swiglu_oai: false,
    hf_window: HfWindow::Never,
    gguf_window: GgufWindow::Every,
    gguf_names: GgufNames::Standard,
    hf_names: HfNames::Llama,
    gguf_interleaved_rope: true,
    partial_rotary: false,
    gguf_keys: &[],
};

const EXPERT_KEYS: &[&str] = &["expert_count", "expert_used_count", "expert_feed_forward_length"];
const GEMMA_KEYS: &[&str] = &[
    "attention.query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
];

/// Every family, in the order the docs list them.
pub static FAMILIES: &[Family] = &[
    LLAMA,
    Family {
        name: "mistral",
        hf: &["mistral"],
        gguf: Some("mistral"),
        hf_window: HfWindow::Every,
        ..LLAMA
    },
    // llama.cpp files Mixtral as `llama` with experts.
    Family {
        name: "mixtral",
        hf: &["mixtral"],
        experts: Some(Experts {
            hf: Renormalise::Always,
            gguf: true,
            hf_width: "intermediate_size",
            gguf_width: "feed_forward_length",
            shared: false,
        }),
        hf_window: HfWindow::Every,
        gguf_keys: &["expert_count", "expert_used_count"],
        ..LLAMA
    },
    Family {
        name: "qwen2",
        hf: &["qwen2"],
        gguf: Some("qwen2"),
        hf_window: HfWindow::Qwen,
        gguf_interleaved_rope: false,
        ..LLAMA
    },
    Family {
        name: "qwen2moe",
        hf: &["qwen2_moe"],
        gguf: Some("qwen2moe"),
        experts: Some(Experts {
            hf: Renormalise::ByConfig,
            gguf: false,
            hf_width: "moe_intermediate_size",
            gguf_width: "expert_feed_forward_length",
            shared: true,
        }),
        hf_window: HfWindow::Qwen,
        gguf_interleaved_rope: false,
        gguf_keys: &[
            "expert_count",
            "expert_used_count",
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
        ],
        ..LLAMA
    },
    Family {
        name: "qwen3",
        hf: &["qwen3"],
        gguf: Some("qwen3"),
        qk_norm: QkNorm::PerHead,
        hf_window: HfWindow::Qwen,
        gguf_interleaved_rope: false,
        ..LLAMA
    },
    Family {
        name: "qwen3moe",
        hf: &["qwen3_moe"],
        gguf: Some("qwen3moe"),
        qk_norm: QkNorm::PerHead,
        experts: Some(Experts {
            hf: Renormalise::ByConfig,
            gguf: true,
            hf_width: "moe_intermediate_size",
            gguf_width: "expert_feed_forward_length",
            shared: false,
        }),
        hf_window: HfWindow::Qwen,
        gguf_interleaved_rope: false,
        gguf_keys: EXPERT_KEYS,
        ..LLAMA
    },
    Family {
        name: "phi3",
        hf: &["phi3"],
        gguf: Some("phi3"),
        hf_window: HfWindow::Every,
        gguf_names: GgufNames::Phi3,
        gguf_interleaved_rope: false,
        partial_rotary: true,
        ..LLAMA
    },
    Family {
        name: "olmo2",
        hf: &["olmo2"],
        gguf: Some("olmo2"),
        qk_norm: QkNorm::Whole,
        norms: NormPlacement::Post,
        gguf_interleaved_rope: false,
        ..LLAMA
    },
    Family {
        name: "olmoe",
        hf: &["olmoe"],
        gguf: Some("olmoe"),
        qk_norm: QkNorm::Whole,
        experts: Some(Experts {
            hf: Renormalise::ByConfig,
            gguf: false,
            hf_width: "intermediate_size",
            gguf_width: "feed_forward_length",
            shared: false,
        }),
        gguf_interleaved_rope: false,
        gguf_keys: &["expert_count", "expert_used_count"],
        ..LLAMA
    },
    Family {
        name: "gpt-oss",
        hf: &["gpt_oss"],
        gguf: Some("gpt-oss"),
        attn_sinks: true,
        // transformers takes the softmax of the chosen experts' logits: the same weights.
        experts: Some(Experts {
            hf: Renormalise::Always,
            gguf: true,
            hf_width: "intermediate_size",
            gguf_width: "expert_feed_forward_length",
            shared: false,
        }),
        swiglu_oai: true,
        hf_window: HfWindow::Every,
        gguf_window: GgufWindow::Alternating,
        gguf_names: GgufNames::GptOss,
        gguf_interleaved_rope: false,
        gguf_keys: EXPERT_KEYS,
        ..LLAMA
    },
    // Gemma 2's layout is fixed (alternating layers, one RoPE base): keys for another pattern
    // or a local base are not read, so they refuse the file.
    Family {
        name: "gemma2",
        hf: &["gemma2"],
        gguf: Some("gemma2"),
        body: Body::Gemma2,
        norms: NormPlacement::Sandwich,
        hf_names: HfNames::Gemma,
        gguf_interleaved_rope: false,
        gguf_keys: GEMMA_KEYS,
        ..LLAMA
    },
    Family {
        name: "gemma3",
        hf: &["gemma3_text", "gemma3"],
        gguf: Some("gemma3"),
        body: Body::Gemma3,
        qk_norm: QkNorm::PerHead,
        norms: NormPlacement::Sandwich,
        hf_names: HfNames::Gemma,
        gguf_interleaved_rope: false,
        gguf_keys: &[
            "attention.sliding_window_pattern",
            "rope.local.freq_base",
            "attention.query_pre_attn_scalar",
            "attn_logit_softcapping",
            "final_logit_softcapping",
        ],
        ..LLAMA
    },
    Family {
        name: "gpt2",
        hf: &["gpt2"],
        gguf: None,
        // No GGUF reader and no rotary positions: the GGUF rows and RoPE layout do not apply.
        gguf_interleaved_rope: false,
        body: Body::Gpt2,
        hf_names: HfNames::Gpt2,
        ..LLAMA
    },
    Family {
        name: "opt",
        hf: &["opt"],
        gguf: None,
        gguf_interleaved_rope: false,
        body: Body::Opt,
        hf_names: HfNames::Opt,
        ..LLAMA
    },
];

impl Family {
    /// The family of a config.json `model_type`.
    pub fn from_hf(model_type: &str) -> Result<&'static Family> {
        FAMILIES
            .iter()
            .find(|f| f.hf.contains(&model_type))
            .ok_or_else(|| Error::UnsupportedArchitecture(model_type.to_owned()))
    }

    /// The family of a GGUF `general.architecture`; `experts` tells a Mixtral from a Llama, which
    /// llama.cpp files under the same name.
    pub fn from_gguf(arch: &str, experts: bool) -> Result<&'static Family> {
        let mut named = FAMILIES.iter().filter(|f| f.gguf == Some(arch)).peekable();
        let first = *named.peek().ok_or_else(|| Error::UnsupportedArchitecture(arch.to_owned()))?;
        Ok(named.find(|f| f.experts.is_some() == experts).unwrap_or(first))
    }

    /// Every GGUF `general.architecture` headhunt reads, once each.
    pub fn gguf_architectures() -> Vec<&'static str> {
        let mut out: Vec<&str> = Vec::new();
        for name in FAMILIES.iter().filter_map(|f| f.gguf) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Every config.json `model_type` headhunt reads.
    pub fn hf_model_types() -> Vec<&'static str> {
        FAMILIES.iter().flat_map(|f| f.hf.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_belongs_to_one_family() {
        let types = Family::hf_model_types();
        for t in &types {
            assert_eq!(types.iter().filter(|u| u == &t).count(), 1, "{t}");
        }
        // Only `llama` is shared, between Llama and Mixtral, told apart by their experts.
        for arch in Family::gguf_architectures() {
            let rows: Vec<&Family> = FAMILIES.iter().filter(|f| f.gguf == Some(arch)).collect();
            assert!(rows.len() == 1 || arch == "llama", "{arch}");
        }
        assert_eq!(Family::from_gguf("llama", true).unwrap().name, "mixtral");
        assert_eq!(Family::from_gguf("llama", false).unwrap().name, "llama");
        assert_eq!(Family::from_gguf("qwen3moe", true).unwrap().name, "qwen3moe");
        assert!(Family::from_gguf("mamba", false).is_err());
        assert!(Family::from_hf("mamba").is_err());
    }
}
