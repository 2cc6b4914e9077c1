//! What a study leaves for people and programs: plots ([`plot`]), the HTML report ([`report`]),
//! hook activations as arrays for NumPy ([`activations`]).

pub mod activations;
pub mod plot;
pub mod report;
