//! Progress on stderr: bars and spinners on a terminal; off one (a Slurm node, `nohup`, CI) a
//! plain line every [`LOG_EVERY`] while work advances, as tqdm does, so that the log of an
//! hour-long run shows how far it got.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

/// How often a log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// A bar for `total` steps of `what`, with rate and ETA.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let template = if std::io::stderr().is_terminal() {
        "{msg:>10} [{bar:30}] {pos}/{len} ({elapsed} elapsed, ETA {mean_eta})"
    } else {
        pb.set_draw_target(log_target());
        "{pos}/{len} done ({msg}), {elapsed} elapsed, ETA {mean_eta}"
    };
    let style = ProgressStyle::with_template(template).expect("valid template");
    pb.set_style(style.with_key("mean_eta", write_mean_eta).progress_chars("=> "));
    pb.set_message(what.to_owned());
    pb
}

/// A bar for a download of `total` bytes (unknown: a spinner with the bytes so far) of `what`,
/// with rate and ETA; off a terminal, a line every [`LOG_BYTES_EVERY`].
pub fn bytes(total: Option<u64>, what: &str) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if std::io::stderr().is_terminal() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta})"
    } else {
        // A log gains nothing from a small file's progress: the first line comes after the
        // first interval.
        let lines = LogLines::new(LOG_BYTES_EVERY);
        *lines.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        pb.set_draw_target(ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1));
        "{msg}: {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta})"
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// How often a download writes a log line when stderr is not a terminal.
pub const LOG_BYTES_EVERY: Duration = Duration::from_secs(5);

/// The time left at the mean pace so far. indicatif's own ETA follows the last few seconds'
/// rate, which between steps of minutes (a long trial) decays towards zero and printed ETAs of
/// centuries.
fn write_mean_eta(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = match mean_eta(state.pos(), state.len(), state.elapsed()) {
        Some(eta) => write!(w, "{:#}", HumanDuration(eta)),
        None => write!(w, "-"),
    };
}

/// `elapsed / done * left`; `None` before the first step.
fn mean_eta(done: u64, total: Option<u64>, elapsed: Duration) -> Option<Duration> {
    let left = total?.saturating_sub(done);
    (done > 0).then(|| elapsed.mul_f64(left as f64 / done as f64))
}

/// A spinner for work of unknown length (on a terminal only: a log gains nothing from it).
pub fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn log_target() -> ProgressDrawTarget {
    ProgressDrawTarget::term_like_with_hz(Box::new(LogLines::new(LOG_EVERY)), 1)
}

/// A [`TermLike`] that turns redraws into log lines: the first drawn state, then at most one
/// line per `every`; cursor movements and clears are dropped (a log has no cursor).
#[derive(Debug)]
struct LogLines {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    fn new(every: Duration) -> Self {
        LogLines {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether a line drawn now is due, and if so, start the next interval.
    fn due(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if now.duration_since(t) < self.every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        160
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let line = s.trim();
        if line.is_empty() || !self.due(Instant::now()) {
            return Ok(());
        }
        writeln!(std::io::stderr().lock(), "{line}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_follows_the_mean_pace() {
        assert_eq!(mean_eta(0, Some(30), Duration::from_secs(100)), None);
        assert_eq!(mean_eta(10, Some(30), Duration::from_secs(100)), Some(Duration::from_secs(200)));
        assert_eq!(mean_eta(30, Some(30), Duration::from_secs(100)), Some(Duration::ZERO));
        assert_eq!(mean_eta(3, None, Duration::from_secs(1)), None);
    }

    #[test]
    fn log_lines_are_written_at_most_once_per_interval() {
        let log = LogLines::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(log.due(t0), "the first state is logged");
        assert!(!log.due(t0 + Duration::from_secs(10)));
        assert!(!log.due(t0 + Duration::from_secs(29)));
        assert!(log.due(t0 + Duration::from_secs(31)));
        assert!(!log.due(t0 + Duration::from_secs(60)), "the interval restarts at the last line");
        assert!(log.due(t0 + Duration::from_secs(62)));
    }
}
