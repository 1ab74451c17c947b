//! Progress bars (bytes, rate, ETA) for a download: one for the total, one per file in flight; silent when stderr is not a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub(crate) struct Progress {
    multi: MultiProgress,
    total: ProgressBar,
    enabled: bool,
}

impl Progress {
    /// `done` bytes are already on disk (cached or partial), out of `total` for the selection.
    pub fn new(enabled: bool, total: u64, done: u64, label: &str) -> Self {
        let enabled = enabled && std::io::stderr().is_terminal();
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let bar = multi.add(ProgressBar::new(total).with_position(done));
        bar.set_style(style("{msg} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"));
        bar.set_message(label.to_string());
        Progress {
            multi,
            total: bar,
            enabled,
        }
    }

    /// A bar for one file; bytes counted on it are counted on the total too.
    pub fn file(&self, name: &str, size: u64, done: u64) -> FileBar {
        let bar = if self.enabled {
            let bar = self.multi.add(ProgressBar::new(size).with_position(done));
            bar.set_style(style(
                "  {wide_msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ));
            bar.set_message(name.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        FileBar {
            bar,
            total: self.total.clone(),
        }
    }

    /// Counts bytes that needed no transfer (a blob already in the cache).
    pub fn skip(&self, bytes: u64) {
        self.total.inc(bytes);
    }

    pub fn finish(&self) {
        self.total.finish();
    }
}

/// A file's bar; cheap to clone into the threads that download its parts.
#[derive(Clone)]
pub(crate) struct FileBar {
    bar: ProgressBar,
    total: ProgressBar,
}

impl FileBar {
    pub fn inc(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.total.inc(bytes);
    }

    /// Takes back bytes counted for data that turned out bad and will be fetched again.
    pub fn rewind(&self, bytes: u64) {
        self.bar
            .set_position(self.bar.position().saturating_sub(bytes));
        self.total
            .set_position(self.total.position().saturating_sub(bytes));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants, so failing here is a programming error caught by any test
    // run with a terminal; fall back to the default style rather than panic.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
