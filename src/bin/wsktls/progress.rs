//! The demo's progress on stderr: a bar redrawn in place when stderr is a terminal, else a
//! line at each quarter (logs and CI output should not fill with carriage returns).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::report::mib;

const BAR_WIDTH: usize = 30;

pub struct Bar {
    terminal: bool,
    total: u64,
    started: Instant,
    /// Quarters already printed (plain mode).
    quarters: u64,
}

impl Bar {
    pub fn new(total: u64) -> Bar {
        Bar { terminal: std::io::stderr().is_terminal(), total, started: Instant::now(), quarters: 0 }
    }

    /// Shows that `done` of the total bytes have come back.
    pub fn update(&mut self, done: u64) {
        if self.terminal {
            self.draw(done);
        } else {
            self.quarter_lines(done);
        }
    }

    /// Ends the display (the cursor on a fresh line).
    pub fn finish(&mut self, done: u64) {
        self.update(done);
        if self.terminal {
            eprintln!();
        }
    }

    fn draw(&self, done: u64) {
        let fraction = done as f64 / self.total.max(1) as f64;
        let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
        let rate = mib(done) / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r  [{}{}] {:3.0}%  {:.1} / {:.1} MiB  {:.0} MiB/s ",
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            fraction * 100.0,
            mib(done),
            mib(self.total),
            rate
        );
        let _ = err.flush();
    }

    fn quarter_lines(&mut self, done: u64) {
        let reached = done.saturating_mul(4) / self.total.max(1);
        while self.quarters < reached.min(4) {
            self.quarters += 1;
            let at = self.total / 4 * self.quarters;
            eprintln!(
                "  echoed {:.1} of {:.1} MiB ({}%)",
                mib(at.min(done)),
                mib(self.total),
                self.quarters * 25
            );
        }
    }
}
