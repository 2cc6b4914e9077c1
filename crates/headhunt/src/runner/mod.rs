//! How a study runs: a run folder's settings and records ([`store`]), the loop that runs its
//! missing trials ([`trials`]), the share of a sharded run ([`shard`]), progress on a terminal
//! or in a log ([`progress`]), and a clean stop on Ctrl-C ([`interrupt`]).

pub mod interrupt;
pub mod progress;
pub mod shard;
pub mod store;
pub mod trials;
