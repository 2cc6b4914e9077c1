//! The measures studies report: ROUGE as `rouge-score` computes it ([`rouge`]), and AUROC,
//! bootstrap intervals and the other statistics ([`stats`]).

pub mod rouge;
pub mod stats;
