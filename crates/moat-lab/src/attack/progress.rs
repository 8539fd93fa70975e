//! A live progress line on stderr while an attack runs: elapsed time against the duration,
//! and the counters that matter. Hidden when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{CounterSnapshot, Counters};

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(250);

/// A progress line fed from [`Counters`] by a background task; [`Progress::finish`] clears it.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts drawing `label` and the counters for an attack of `duration`; drawn only when
    /// `visible` and stderr is a terminal. Must be called inside a tokio runtime.
    pub fn start(
        label: String,
        duration: Duration,
        counters: Arc<Counters>,
        visible: bool,
    ) -> Self {
        let target = if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(duration.as_millis() as u64), target);
        let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(label);
        let task = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    bar.set_position(started.elapsed().as_millis() as u64);
                    bar.set_message(line(&counters.snapshot()));
                }
            })
        };
        Self { bar, task }
    }

    /// Stops and clears the line.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// The counters as one short line.
pub fn line(c: &CounterSnapshot) -> String {
    let mut out = format!(
        "attempts {} connected {} held {} (peak {}) closed {} refused {} reset {} timeouts {}",
        c.attempts,
        c.connected,
        c.held,
        c.peak_held,
        c.closed_by_target,
        c.refused,
        c.reset,
        c.timeouts
    );
    let replies: u64 = c.replies.values().sum();
    if replies > 0 {
        out.push_str(&format!(" replies {replies}"));
    }
    if c.bytes_requested > 0 {
        out.push_str(&format!(" requested {} MiB", c.bytes_requested >> 20));
    }
    out
}
