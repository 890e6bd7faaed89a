//! Progress of blob transfers and layer unpacking: a bar with bytes and rate (`indicatif`) when
//! stderr is a terminal and info logging is on, and one log line per blob when it finishes
//! otherwise (so CI logs stay readable).

use std::io::{IsTerminal, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether bars are drawn: stderr is a terminal and info messages are shown.
pub fn bars_enabled() -> bool {
    tracing::level_filters::LevelFilter::current() >= tracing::Level::INFO && std::io::stderr().is_terminal()
}

/// One transfer (`verb` is what the finished line says: "pulled", "pushed", "unpacked").
pub struct Progress {
    verb: &'static str,
    what: String,
    bar: Option<ProgressBar>,
    done: Arc<AtomicU64>,
    started: Instant,
    finished: bool,
    log: bool,
}

/// A cheap, `Send` handle that advances a [`Progress`] from elsewhere (e.g. an upload stream).
#[derive(Clone)]
pub struct ProgressHandle {
    bar: Option<ProgressBar>,
    done: Arc<AtomicU64>,
}

impl ProgressHandle {
    pub fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

impl Progress {
    pub fn new(verb: &'static str, what: impl Into<String>, total: Option<u64>) -> Progress {
        let what = what.into();
        let bar = bars_enabled().then(|| {
            // Configured hidden, then shown, so the first frame already has its message.
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
            let template = if total.is_some() {
                "{prefix:>9} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
            } else {
                "{prefix:>9} {msg} {bytes} {binary_bytes_per_sec}"
            };
            bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
            bar.set_prefix(progressive(verb));
            bar.set_message(what.clone());
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            verb,
            what,
            bar,
            done: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            finished: false,
            log: true,
        }
    }

    /// A bar on terminals and nothing otherwise (for steps that log their own summary).
    pub fn bar_only(verb: &'static str, what: impl Into<String>, total: Option<u64>) -> Progress {
        let mut p = Progress::new(verb, what, total);
        p.log = false;
        p
    }

    pub fn handle(&self) -> ProgressHandle {
        ProgressHandle { bar: self.bar.clone(), done: self.done.clone() }
    }

    pub fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Clears the bar and logs `<verb> <what> (<size>, <rate>)`.
    pub fn finish(mut self) {
        self.finished = true;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.log {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64();
        let mb = self.done() as f64 / 1e6;
        tracing::info!("{} {} ({:.1} MB in {:.2}s, {:.1} MB/s)", self.verb, self.what, mb, secs, mb / secs.max(1e-6));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished
            && let Some(bar) = self.bar.take()
        {
            bar.finish_and_clear();
        }
    }
}

fn progressive(verb: &str) -> String {
    match verb {
        "pulled" => "pulling".into(),
        "pushed" => "pushing".into(),
        "unpacked" => "unpacking".into(),
        other => other.into(),
    }
}

/// A reader that reports what passes through it (e.g. a layer blob being unpacked).
pub struct ProgressReader<R> {
    inner: R,
    progress: Option<Progress>,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader { inner, progress: Some(progress) }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = self.progress.as_ref() {
            p.inc(n as u64);
            // End of stream: the blob was read completely (and, below a VerifyingReader, verified).
            if n == 0 && !buf.is_empty() {
                self.progress.take().expect("checked").finish();
            }
        }
        Ok(n)
    }
}
