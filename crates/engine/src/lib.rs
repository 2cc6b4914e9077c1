//! headhunt's inference engine: tensors in, tensors out.
//!
//! It loads real checkpoints (GGUF files, or Hugging Face safetensors directories) and keeps their
//! weights in the file's own storage (quant blocks, F16, BF16), read by kernels chosen for the
//! CPU at run time; it tokenizes text (from GGUF metadata or `tokenizer.json`, with the model's
//! chat template), and runs an exact f32 forward pass with a KV cache whose attention is computed
//! in tiles with an online softmax, so memory grows linearly with context. [`Precision::Fast`]
//! computes decoding's matrix-vector products in int8 instead, for speed.
//!
//! Every internal activation is reachable through TransformerLens-named [`HookPoint`]s: a
//! [`Hooks`] value declares what one [`Run`] records and how it intervenes, and a [`Recording`]
//! holds the results. The engine knows nothing about needles, countries or experiments.

pub mod attention;
pub mod config;
pub mod cpu;
pub mod error;
pub mod gguf;
pub mod hooks;
pub mod kernels;
pub mod kv_cache;
pub mod linalg;
pub mod matrix;
pub mod model;
pub mod npy;
pub mod profile;
pub mod rope;
pub mod team;
pub mod tokenizer;
pub mod weights;

pub use config::{ModelConfig, RopeScaling};
pub use cpu::Isa;
pub use error::{Error, Result};
pub use hooks::{Capture, HookPoint, Hooks, Intervention, KeyRow, KeySet, MaskMode, Phase, Positions, Recording, Reduce};
pub use kernels::Precision;
pub use kv_cache::{KvCache, KvPolicy, KvStore};
pub use matrix::Matrix;
pub use model::{argmax, generate_from, greedy, greedy_from, Model, Run, RunOptions};
pub use tokenizer::{ChatMessage, Tokenizer};
