//! One module per subcommand; shared argument groups and model loading live here.

pub mod ablate;
pub mod bench;
pub mod cache;
pub mod compare;
pub mod detect;
pub mod fetch;
pub mod generate;
pub mod info;
pub mod kv;
pub mod merge;
pub mod niah;
pub mod qa;
pub mod recall;

use anyhow::{Context, Result};
use headhunt_engine::Model;

use crate::models;

/// `--model`, shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// A known model id (fetched on first use), a .gguf file, or a Hugging Face directory
    /// (config.json, *.safetensors, tokenizer.json).
    #[arg(long, short = 'm', default_value = models::DEFAULT_MODEL)]
    pub model: String,
}

impl ModelArg {
    /// Resolve (fetching if needed) and load the model.
    pub fn load(&self) -> Result<Model> {
        let path = models::resolve(&self.model)?;
        let spinner = crate::progress::spinner(&format!("loading {}", path.display()));
        let model = Model::load(&path).with_context(|| format!("loading {}", self.model));
        spinner.finish_and_clear();
        model
    }
}
