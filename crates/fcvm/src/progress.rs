//! Progress for long steps (setup, image pulls, snapshot saves).
//!
//! On a terminal: an indicatif spinner or byte bar. Otherwise (CI, tests, pipes): one line per
//! step on stderr, so a log still shows what took the time. `FCVM_QUIET=1` silences both.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// One long step. `finish` prints how long it took.
pub struct Step {
    msg: String,
    start: Instant,
    bar: Option<ProgressBar>,
    quiet: bool,
}

fn quiet() -> bool {
    std::env::var_os("FCVM_QUIET").is_some_and(|v| v != "0")
}

fn is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Starts a step: a spinner on a terminal, a "==> msg" line otherwise.
#[allow(
    clippy::print_stderr,
    reason = "progress lines are this module's output"
)]
pub fn step(msg: impl Into<String>) -> Step {
    let msg = msg.into();
    let quiet = quiet();
    let bar = if !quiet && is_tty() {
        let b = ProgressBar::new_spinner();
        b.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
        b.set_message(msg.clone());
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(b)
    } else {
        if !quiet {
            eprintln!("==> {msg}");
        }
        None
    };
    Step {
        msg,
        start: Instant::now(),
        bar,
        quiet,
    }
}

impl Step {
    /// Updates the detail shown next to the step (a terminal only).
    pub fn set_detail(&self, detail: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} ({detail})", self.msg));
        }
    }

    #[allow(
        clippy::print_stderr,
        reason = "progress lines are this module's output"
    )]
    pub fn finish(self) {
        let took = self.start.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("    {} done in {took:.1}s", self.msg);
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
