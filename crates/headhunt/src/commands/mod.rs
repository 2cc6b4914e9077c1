//! One module per subcommand; shared argument groups and model loading live here.
//!
//! The doc comments of the argument structs are the commands' `--help`, written for a terminal
//! (`runs/detect-<model>`, `ORG/NAME[@REVISION]`), so rustdoc's HTML and link checks do not apply
//! to them.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

pub mod ablate;
pub mod args;
pub mod bench;
pub mod cache;
pub mod claims;
pub mod compare;
pub mod cot;
pub mod detect;
pub mod fetch;
pub mod generate;
pub mod hallucination;
pub mod info;
pub mod kv;
pub mod kvselect;
pub mod merge;
pub mod niah;
pub mod qa;
pub mod recall;
pub mod report;
pub mod rerank;
pub mod ruler;
pub mod serve;
pub mod status;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser;
use headhunt_engine::{Model, Precision};

use crate::experiments::decore::{Contrast, Contrastive};
use crate::experiments::retrieval::niah::trial::Condition;
use crate::models;

/// `--model`, shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// A known model id (fetched on first use), a .gguf file, a Hugging Face directory
    /// (config.json, *.safetensors, tokenizer.json), or a Hub id: ORG/NAME[@REVISION] for a
    /// safetensors repo, ORG/NAME-GGUF[:QUANT] (Q4_K_M when none) or ORG/NAME-GGUF:FILE.gguf for
    /// a GGUF repo; downloaded into the Hub's cache ($HF_HUB_CACHE, $HF_HOME/hub) unless there.
    #[arg(long, short = 'm', default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// How products with the weights are computed. `exact`: in f32 on the stored weights, the
    /// reference implementation's numbers. `fast`: products with quantised weights in int8
    /// (activations quantised in blocks of 32, integer dot products with the stored quant
    /// blocks, as llama.cpp does), in decoding and in prompts, and the KV cache held in f16
    /// (llama.cpp's default): up to ~2x faster on quantised GGUFs, half the cache's memory, at a
    /// small cost to agreement with the reference (docs/performance.md, "Precision").
    /// F16/BF16/F32 weights stay exact.
    #[arg(long, default_value = "exact", value_parser = clap::builder::PossibleValuesParser::new(["exact", "fast"]).map(|s| s.parse::<Precision>().expect("listed values parse")))]
    pub precision: Precision,
}

/// `--decode`, `--alpha-cap`, `--plausibility`: how answers are decoded, shared by the commands
/// that answer under masks.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DecodeArgs {
    /// `greedy`, or `contrastive`: DeCoRe (Gema et al. 2025), each token chosen from the
    /// log-probabilities contrasted with those of the model with the masked heads masked (the
    /// model itself runs unmasked), the contrast weighted by the entropy of the unmasked
    /// distribution; the mask acts in decoding only and shares the prompt's cache.
    #[arg(long, value_enum, default_value_t = Decode::Greedy)]
    pub decode: Decode,
    /// --decode contrastive: the contrast's largest weight (default: the entropy, uncapped).
    #[arg(long)]
    pub alpha_cap: Option<f64>,
    /// --decode contrastive: leave out tokens below this share of the most likely token's
    /// probability (contrastive decoding's plausibility floor).
    #[arg(long, default_value_t = 0.1)]
    pub plausibility: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    Greedy,
    Contrastive,
}

impl DecodeArgs {
    /// The contrast of `--decode contrastive` against the model with `masks`; None for greedy.
    pub fn contrastive(&self, masks: Vec<headhunt_engine::Intervention>) -> Option<Contrastive> {
        (self.decode == Decode::Contrastive).then_some(Contrastive {
            masks,
            contrast: Contrast {
                alpha_cap: self.alpha_cap,
                plausibility: self.plausibility,
            },
        })
    }

    /// A trial condition with `masks`: the masks on the model (greedy), or the model unmasked
    /// and contrasted with the masked one.
    pub fn condition(&self, masks: Vec<headhunt_engine::Intervention>) -> Condition {
        match self.contrastive(masks.clone()) {
            Some(c) => Condition {
                contrastive: Some(c),
                ..Default::default()
            },
            None => Condition {
                interventions: masks,
                ..Default::default()
            },
        }
    }

    /// What identifies the decoding in a run's settings.
    pub fn settings(&self) -> serde_json::Value {
        match self.decode {
            Decode::Greedy => serde_json::json!("greedy"),
            Decode::Contrastive => {
                serde_json::json!({"contrastive": {"alpha_cap": self.alpha_cap, "plausibility": self.plausibility}})
            }
        }
    }
}

/// A run folder's name for a model argument: the known id as it is (`qwen2.5-coder-1.5b-instruct`,
/// dots kept), a file's name without `.gguf`/`.safetensors`, a folder's or a Hub repo's last
/// component, `@revision` and `:quant` joined with `-`.
pub fn model_stem(model: &str) -> String {
    let last = model.trim_end_matches('/').rsplit('/').next().unwrap_or(model);
    let lower = last.to_ascii_lowercase();
    let bare = [".gguf", ".safetensors"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map_or(last, |ext| &last[..last.len() - ext.len()]);
    bare.replace([':', '@'], "-")
}

impl ModelArg {
    /// `runs/<command>-<model stem>`: where a command writes when no `--out` is given.
    pub fn default_out(&self, command: &str) -> std::path::PathBuf {
        std::path::PathBuf::from("runs").join(format!("{command}-{}", model_stem(&self.model)))
    }

    /// Resolve (fetching if needed) and load the model.
    pub fn load(&self) -> Result<Model> {
        let path = models::resolve(&self.model)?;
        let spinner = crate::runner::progress::spinner(&format!("loading {}", path.display()));
        let model = Model::load(&path).with_context(|| format!("loading {}", self.model));
        spinner.finish_and_clear();
        let mut model = model?;
        model.set_precision(self.precision);
        if self.precision == Precision::Fast && model.precision() != Precision::Fast {
            eprintln!("note: --precision fast: this model's weights are not quantised (F16/BF16/F32), so its products stay exact");
        }
        // A GGUF's internal name is often a training run's ("Smollm2 135M 8k Lc100K Mix1 Ep2").
        if let Some(known) = models::known_by_arg(&self.model) {
            model.source.name = Some(known.name.to_owned());
        }
        Ok(model)
    }
}

/// Record, in an output folder, the model card and how this command was invoked (appended, so
/// a resumed run lists every invocation), for the report.
pub fn record_provenance(out: &std::path::Path, model: &Model) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let card: serde_json::Map<String, serde_json::Value> = info::card(model).into_iter().map(|(k, v)| (k, v.into())).collect();
    crate::runner::store::write_atomic(&out.join("model.json"), serde_json::to_string_pretty(&card)?)?;
    let path = out.join("provenance.json");
    let mut list: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    list.push(serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "headhunt": env!("CARGO_PKG_VERSION"),
        "unix_time": seconds,
        "threads": rayon::current_num_threads(),
        "precision": model.precision().name(),
        "model": model.source.path.display().to_string(),
        "hub": crate::models::hub::provenance(&model.source.path),
    }));
    crate::runner::store::write_atomic(&path, serde_json::to_string_pretty(&list)?)?;
    Ok(())
}

/// Write the run's HTML report and say where it is (the last line a command prints).
pub fn finish_with_report(dir: &std::path::Path) -> Result<()> {
    let path = crate::output::report::write(dir)?;
    println!("report: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::model_stem;

    #[test]
    fn a_model_stem_keeps_the_dots_of_an_id_and_drops_a_file_extension() {
        // A known id's dots are part of its name, not an extension.
        assert_eq!(model_stem("qwen2.5-coder-1.5b-instruct"), "qwen2.5-coder-1.5b-instruct");
        assert_eq!(model_stem("smollm2-135m-instruct"), "smollm2-135m-instruct");
        assert_eq!(model_stem("/models/Llama-3.2-1B.Q4_K_M.gguf"), "Llama-3.2-1B.Q4_K_M");
        assert_eq!(model_stem("weights/model.SAFETENSORS"), "model");
        assert_eq!(model_stem("models/Qwen2.5-1.5B/"), "Qwen2.5-1.5B");
        assert_eq!(model_stem("Qwen/Qwen2.5-1.5B-Instruct@main"), "Qwen2.5-1.5B-Instruct-main");
        assert_eq!(
            model_stem("Qwen/Qwen2.5-1.5B-Instruct-GGUF:Q8_0"),
            "Qwen2.5-1.5B-Instruct-GGUF-Q8_0"
        );
    }
}
