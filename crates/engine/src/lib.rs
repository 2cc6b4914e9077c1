//! headhunt's inference engine: tensors in, tensors out.
//!
//! It loads real checkpoints (GGUF files of every quant type candle reads, or Hugging Face
//! safetensors directories), tokenizes text (from GGUF metadata or `tokenizer.json`, with the
//! model's chat template), and runs an exact f32 forward pass with a KV cache whose attention is
//! computed in tiles with an online softmax, so memory grows linearly with context.
//!
//! Every internal activation is reachable through TransformerLens-named [`HookPoint`]s: a
//! [`Hooks`] value declares what one [`Run`] records and how it intervenes, and a [`Recording`]
//! holds the results. The engine knows nothing about needles, countries or experiments.

pub mod attention;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hooks;
pub mod kv_cache;
pub mod linalg;
pub mod model;
pub mod npy;
pub mod profile;
pub mod quant;
pub mod rope;
pub mod team;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use hooks::{Capture, HookPoint, Hooks, Intervention, KeySet, MaskMode, Phase, Positions, Recording, Reduce};
pub use kv_cache::{KvCache, KvPolicy};
pub use model::{argmax, greedy, Model, Run, RunOptions};
pub use tokenizer::{ChatMessage, Tokenizer};
