//! The studies: each module measures one thing the papers claim (or one use of the heads), on
//! any model the engine loads, through the trial loop of [`crate::runner`].

pub mod claims;
pub mod cot;
pub mod decore;
pub mod grounding;
pub mod hallucination;
pub mod kv;
pub mod qa;
pub mod recall;
pub mod rerank;
pub mod retrieval;
pub mod ruler;
