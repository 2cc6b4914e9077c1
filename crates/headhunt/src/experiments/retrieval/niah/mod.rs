//! Needle-in-a-haystack trials: needles, haystacks, prompts, the grid, and the shared trial
//! runner every retrieval experiment uses.

pub mod grid;
pub mod haystack;
pub mod needle;
pub mod prompt;
pub mod trial;
