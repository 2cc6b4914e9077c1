//! headhunt's experiments and command-line interface, on top of `headhunt-engine`.
//!
//! The engine runs models and exposes hooks; everything here is experiment logic: fetching known
//! models, needle-in-a-haystack trials and retrieval scores, masking studies, factual recall,
//! KV-cache compression, reports, and the `headhunt` subcommands.

pub mod activations;
pub mod claims;
pub mod cli;
pub mod commands;
pub mod cot;
pub mod failure;
pub mod ground;
pub mod hallucination;
pub mod interrupt;
pub mod kvpolicy;
pub mod kvselect;
pub mod masking;
pub mod models;
pub mod niah;
pub mod plot;
pub mod progress;
pub mod qa;
pub mod recall;
pub mod report;
pub mod retrieval;
pub mod rouge;
pub mod runs;
pub mod shard;
pub mod stats;
pub mod store;
