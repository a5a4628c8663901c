//! A log destination that never takes the service down: when a log line cannot be written (the
//! reader of stderr went away, the disk under a redirected log is full), it is dropped and
//! counted instead of failing or panicking, and the next line that does get through is preceded
//! by a note saying how many were lost. The writer never reports an error to tracing-subscriber,
//! whose own fallback (`eprintln!` of the failure) would panic on a broken stderr.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// Lines dropped since the process started (all [`Lossy`] writers of the process).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Dropped lines not yet reported in a note.
static UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// How many log lines this process has dropped.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Makes writers over `make` (stderr by default) whose failures are dropped and counted.
#[derive(Debug, Clone, Copy)]
pub struct Lossy<M = fn() -> io::Stderr> {
    /// Makes the underlying writer for each line.
    make: M,
}

impl Lossy {
    /// Over the process's stderr.
    pub fn stderr() -> Self {
        Self { make: io::stderr }
    }
}

impl<M, W> Lossy<M>
where
    M: Fn() -> W,
    W: Write,
{
    /// Over the writers `make` returns.
    pub fn new(make: M) -> Self {
        Self { make }
    }
}

/// One line's writer.
pub struct LossyWriter<W> {
    /// The underlying writer.
    inner: W,
}

impl<W: Write> Write for LossyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let unreported = UNREPORTED.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            let note =
                format!("<4> edgetwin: {unreported} log lines were dropped (write failed)\n");
            if self.inner.write_all(note.as_bytes()).is_err() {
                UNREPORTED.fetch_add(unreported, Ordering::Relaxed);
            }
        }
        if self.inner.write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            UNREPORTED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

impl<'a, M, W> MakeWriter<'a> for Lossy<M>
where
    M: Fn() -> W + 'static,
    W: Write,
{
    type Writer = LossyWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        LossyWriter {
            inner: (self.make)(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that fails while `broken` is set and otherwise appends to `lines`.
    #[derive(Clone, Default)]
    struct Flaky {
        broken: Arc<Mutex<bool>>,
        lines: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if *self.broken.lock().unwrap() {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.lines.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_log_writes_are_dropped_counted_and_noted_once_writing_works_again() {
        let flaky = Flaky::default();
        let make = {
            let flaky = flaky.clone();
            move || flaky.clone()
        };
        let lossy = Lossy::new(make);
        let before = dropped_lines();
        *flaky.broken.lock().unwrap() = true;
        for _ in 0..3 {
            assert_eq!(lossy.make_writer().write(b"lost\n").unwrap(), 5);
        }
        assert!(dropped_lines() >= before + 3);
        *flaky.broken.lock().unwrap() = false;
        lossy.make_writer().write_all(b"back\n").unwrap();
        let text = String::from_utf8(flaky.lines.lock().unwrap().clone()).unwrap();
        assert!(text.contains("log lines were dropped"), "{text}");
        assert!(text.ends_with("back\n"), "{text}");
    }
}
