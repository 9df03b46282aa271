//! Progress on stderr: an `indicatif` bar on a terminal, plain lines for logs otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A bar on a terminal; otherwise a plain line every `every` files, for logs.
pub struct Progress {
    bar: ProgressBar,
    every: Option<usize>,
    total: usize,
    pos: usize,
    start_pos: usize,
    next_line: usize,
    started: Instant,
}

impl Progress {
    pub fn new(total: usize, already: usize, every: usize) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            // indicatif's own `{per_sec}` prints `820.1934/s`.
            let style =
                ProgressStyle::with_template("{wide_bar} {pos}/{len} files  {rate}  ETA {eta}")
                    .map(|s| {
                        s.with_key(
                            "rate",
                            |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                let _ = write!(w, "{:.1} files/s", st.per_sec());
                            },
                        )
                    })
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::new(total as u64).with_style(style);
            bar.set_position(already as u64);
            // Rate and ETA from this run only, not the skipped files.
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        } else {
            ProgressBar::hidden()
        };
        let every = (!tty && every > 0).then_some(every);
        Progress {
            bar,
            every,
            total,
            pos: already,
            start_pos: already,
            next_line: every.unwrap_or(0),
            started: Instant::now(),
        }
    }

    pub fn inc(&mut self) {
        self.pos += 1;
        self.bar.inc(1);
        let run = self.pos - self.start_pos;
        if let Some(every) = self.every {
            if run >= self.next_line || self.pos == self.total {
                self.next_line = run + every;
                let rate = run as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                let eta = (self.total - self.pos) as f64 / rate.max(1e-9);
                eprintln!(
                    "glimpse: {}/{} files, {rate:.1} files/s, ETA {eta:.0}s",
                    self.pos, self.total
                );
            }
        }
    }

    /// Files in the results file now (earlier runs' and this one's).
    pub fn done(&self) -> usize {
        self.pos
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
