//! Capturing what the buses log, for tests that assert on log content and volume.
//!
//! One process-wide `tracing` subscriber writes every line, at every level, into a
//! buffer. Tests that read it run one after another ([`capture`] returns a guard) and
//! take only their own lines.

use std::{
    io::Write,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
};

use tracing_subscriber::fmt::MakeWriter;

/// Everything logged since the last [`take`](Captured::take), as text.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The text logged since the last call, emptying the buffer.
    pub fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.lock())).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The captured log of this process (installed on first use, at every level, for
/// every crate) with its buffer emptied, and a guard that keeps other capturing tests
/// of this process from running meanwhile.
///
/// # Panics
/// If another global `tracing` subscriber was installed first.
pub async fn capture() -> (Captured, tokio::sync::MutexGuard<'static, ()>) {
    static LOG: OnceLock<Captured> = OnceLock::new();
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = SERIAL.lock().await;
    let log = LOG
        .get_or_init(|| {
            let log = Captured::default();
            tracing_subscriber::fmt()
                .with_writer(log.clone())
                .with_ansi(false)
                .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
                .init();
            log
        })
        .clone();
    log.take();
    (log, guard)
}
