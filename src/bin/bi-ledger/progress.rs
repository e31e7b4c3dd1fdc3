//! A progress bar on stderr when it is a terminal; silence otherwise, so
//! pipes and logs get only the JSON lines.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(label: &'static str) -> Self {
        Progress {
            label,
            enabled: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    pub fn update(&self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && done < total {
            return;
        }
        *last = Some(Instant::now());
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = write!(
            std::io::stderr(),
            "\r{} [{}{}] {:3.0}% {:.1}/{:.1} MiB",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            frac * 100.0,
            mib(done),
            mib(total)
        );
    }

    pub fn finish(&self) {
        if self.enabled && self.last.lock().unwrap().is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}
