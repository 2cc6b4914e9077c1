//! The model description from a Hugging Face `config.json`, as transformers reads it.

use super::*;

impl ModelConfig {
    /// Read the model description from a Hugging Face `config.json`.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self> {
        let hf = HfConfig(json);
        let model_type = hf.str("model_type")?;
        let family = Family::from_hf(model_type)?;
        let stated = match family.body {
            Body::Rotary => hf.rotary(family, model_type)?,
            Body::Gemma2 | Body::Gemma3 => {
                // A multimodal Gemma 3's text model is described in its `text_config`.
                let text = if model_type == "gemma3" {
                    HfConfig(
                        json.get("text_config")
                            .ok_or_else(|| Error::Config("gemma3 config without text_config".into()))?,
                    )
                } else {
                    hf
                };
                text.gemma(family)?
            }
            Body::Gpt2 => hf.gpt2()?,
            Body::Opt => hf.opt()?,
        };
        family.config(stated)
    }
}

impl HfConfig<'_> {
    /// Llama and its relatives: what the config states beyond what the family fixes.
    fn rotary(&self, family: &Family, model_type: &str) -> Result<Stated> {
        let hf = *self;
        let moe = hf.moe(family, model_type)?;
        hf.refuse_unimplemented(moe.is_some())?;
        let d_model = hf.usize("hidden_size")?;
        let n_heads = hf.usize("num_attention_heads")?;
        let d_head = hf.opt_usize("head_dim").unwrap_or(d_model / n_heads.max(1));
        let n_layers = layer_count(hf.usize("num_hidden_layers")?)?;
        let window = match family.hf_window {
            HfWindow::Every => hf.opt_usize("sliding_window"),
            HfWindow::Qwen if hf.bool("use_sliding_window").unwrap_or(false) => hf.opt_usize("sliding_window"),
            HfWindow::Qwen | HfWindow::Never => None,
        };
        // Which layers the window applies to: `layer_types` where given, else Qwen2's rule
        // (layers from `max_window_layers` on), else every layer.
        let first_windowed = match family.hf_window {
            HfWindow::Qwen => hf.opt_usize("max_window_layers").unwrap_or(0),
            HfWindow::Every | HfWindow::Never => 0,
        };
        let windowed: Vec<bool> = match json_array(hf.0, "layer_types") {
            Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
            None => (0..n_layers).map(|l| l >= first_windowed).collect(),
        };
        if windowed.len() != n_layers {
            return Err(Error::Config("layer_types does not list every layer".into()));
        }
        let (rope_base, rope_scaling) = hf.rope(None, 10_000.0)?;
        Ok(Stated {
            architecture: model_type.to_owned(),
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: hf.opt_usize("num_key_value_heads").unwrap_or(n_heads),
            d_head,
            d_mlp: hf.usize(family.experts.map_or("intermediate_size", |e| e.hf_width))?,
            vocab_size: hf.usize("vocab_size")?,
            context_length: hf.usize("max_position_embeddings")?,
            norm_eps: hf.f32("rms_norm_eps").unwrap_or(1e-6),
            // gpt-oss's `hidden_act` names SiLU; its experts compute their own unit.
            activation: if family.swiglu_oai {
                Activation::SwigluOai {
                    alpha: hf.f32("swiglu_alpha").unwrap_or(1.702),
                    limit: hf.f32("swiglu_limit").unwrap_or(7.0),
                }
            } else {
                Activation::from_hf(hf.str("hidden_act").unwrap_or("silu"))?
            },
            attn_scale: (d_head as f32).powf(-0.5),
            attn_logit_softcap: None,
            final_logit_softcap: None,
            tied_embeddings: hf.bool("tie_word_embeddings").unwrap_or(false),
            moe,
            rotary_dim: (d_head as f64 * hf.rope_number("partial_rotary_factor").unwrap_or(1.0)) as usize,
            long_rope: hf.long_rope_factors()?,
            layers: windowed
                .iter()
                .map(|&w| LayerSpec {
                    window: window.filter(|_| w),
                    rope_base,
                    rope_scaling,
                })
                .collect(),
        })
    }

    /// Gemma 2 and 3. Gemma 2 is Gemma 3 without the Q/K norms, with one RoPE base, soft-capped
    /// attention and final logits, and local layers alternating with global ones.
    fn gemma(&self, family: &Family) -> Result<Stated> {
        let hf = *self;
        let gemma2 = family.body == Body::Gemma2;
        let d_model = hf.usize("hidden_size")?;
        let n_heads = hf.usize("num_attention_heads")?;
        let d_head = hf.opt_usize("head_dim").unwrap_or(256);
        let n_layers = layer_count(hf.usize("num_hidden_layers")?)?;
        let window = hf.opt_usize("sliding_window").unwrap_or(4096);
        let pattern = if gemma2 {
            2
        } else {
            hf.opt_usize("sliding_window_pattern")
                .or(hf.opt_usize("_sliding_window_pattern"))
                .unwrap_or(6)
                .max(1)
        };
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
        Ok(Stated {
            architecture: family.name.into(),
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: hf.opt_usize("num_key_value_heads").unwrap_or(n_heads),
            d_head,
            d_mlp: hf.usize("intermediate_size")?,
            vocab_size: hf.usize("vocab_size")?,
            context_length: hf.usize("max_position_embeddings")?,
            norm_eps: hf.f32("rms_norm_eps").unwrap_or(1e-6),
            activation: Activation::from_hf(hf.str("hidden_activation").unwrap_or("gelu_pytorch_tanh"))?,
            attn_scale: hf.f32("query_pre_attn_scalar").unwrap_or(256.0).powf(-0.5),
            attn_logit_softcap: softcap("attn_logit_softcapping", 50.0),
            final_logit_softcap: softcap("final_logit_softcapping", 30.0),
            tied_embeddings: hf.bool("tie_word_embeddings").unwrap_or(true),
            moe: None,
            rotary_dim: d_head,
            long_rope: None,
            layers: layer_types
                .iter()
                .map(|&sliding| LayerSpec {
                    window: sliding.then_some(window),
                    rope_base: if sliding { local_base } else { global_base },
                    rope_scaling: if sliding { None } else { global_scaling },
                })
                .collect(),
        })
    }

    fn gpt2(&self) -> Result<Stated> {
        let hf = *self;
        let d_model = hf.usize("n_embd")?;
        let n_heads = hf.usize("n_head")?;
        let n_layers = layer_count(hf.usize("n_layer")?)?;
        if hf.bool("scale_attn_by_inverse_layer_idx").unwrap_or(false) || hf.bool("reorder_and_upcast_attn").unwrap_or(false) {
            return Err(Error::Config("GPT-2 variants with layer-scaled attention are not supported".into()));
        }
        let d_head = d_model / n_heads.max(1);
        Ok(Stated {
            architecture: "gpt2".into(),
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            d_head,
            d_mlp: hf.opt_usize("n_inner").unwrap_or(4 * d_model),
            vocab_size: hf.usize("vocab_size")?,
            context_length: hf.usize("n_positions")?,
            norm_eps: hf.f32("layer_norm_epsilon").unwrap_or(1e-5),
            activation: Activation::from_hf(hf.str("activation_function").unwrap_or("gelu_new"))?,
            attn_scale: if hf.bool("scale_attn_weights").unwrap_or(true) {
                (d_head as f32).powf(-0.5)
            } else {
                1.0
            },
            tied_embeddings: true,
            attn_logit_softcap: None,
            final_logit_softcap: None,
            moe: None,
            rotary_dim: 0,
            long_rope: None,
            layers: vec![LayerSpec::UNROTATED; n_layers],
        })
    }

    fn opt(&self) -> Result<Stated> {
        let hf = *self;
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
        let d_head = d_model / n_heads.max(1);
        Ok(Stated {
            architecture: "opt".into(),
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            d_head,
            d_mlp: hf.usize("ffn_dim")?,
            vocab_size: hf.usize("vocab_size")?,
            context_length: hf.usize("max_position_embeddings")?,
            norm_eps: 1e-5,
            activation: Activation::from_hf(hf.str("activation_function").unwrap_or("relu"))?,
            attn_scale: (d_head as f32).powf(-0.5),
            tied_embeddings: hf.bool("tie_word_embeddings").unwrap_or(true),
            attn_logit_softcap: None,
            final_logit_softcap: None,
            moe: None,
            rotary_dim: 0,
            long_rope: None,
            layers: vec![LayerSpec::UNROTATED; n_layers],
        })
    }
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
    fn moe(&self, family: &Family, model_type: &str) -> Result<Option<Moe>> {
        let Some(rule) = family.experts else { return Ok(None) };
        let experts = self.opt_usize("num_local_experts").or_else(|| self.opt_usize("num_experts"));
        let normalize = match rule.hf {
            Renormalise::Always => true,
            Renormalise::ByConfig => self.bool("norm_topk_prob").unwrap_or(false),
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
            shared: self.opt_usize("shared_expert_intermediate_size").filter(|&w| w > 0 && rule.shared),
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
