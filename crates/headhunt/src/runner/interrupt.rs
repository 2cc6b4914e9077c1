//! Stopping a long experiment between trials from outside: a program that embeds headhunt (the
//! Python package, where Ctrl-C must reach a run that holds no GIL) installs a check, and every
//! trial loop asks it before the next trial. The CLI installs none: there Ctrl-C ends the process,
//! and the run folder resumes as after any kill.

use std::sync::OnceLock;

static CHECK: OnceLock<fn() -> bool> = OnceLock::new();

/// Install the check (the first one installed stays).
pub fn install(check: fn() -> bool) {
    let _ = CHECK.set(check);
}

/// The error a stopped experiment returns.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted between trials")
    }
}

impl std::error::Error for Interrupted {}

/// `Err(Interrupted)` when the installed check asks to stop.
pub fn check() -> anyhow::Result<()> {
    match CHECK.get() {
        Some(stop) if stop() => Err(Interrupted.into()),
        _ => Ok(()),
    }
}
