//! Consumer processes for the durable crash tests: the `durable_worker` binary started
//! as a child, killed with SIGKILL, and the record files in which it writes what it
//! handled.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::wait_until;

/// A `durable_worker` child process; killed (SIGKILL) and reaped on drop.
pub struct Worker(Child);

impl Worker {
    /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_durable_worker")`) as a member
    /// of `group` on prefix `ns` of the server at `url`, recording to `file`, and waits
    /// for its `ready` line.
    ///
    /// # Panics
    /// If the worker cannot be started or does not say it is ready.
    pub fn start(binary: &str, url: &str, ns: &str, group: &str, file: &Path) -> Self {
        let mut child = Command::new(binary)
            .args([url, ns, group, &file.display().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start durable_worker");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready line");
        assert_eq!(line.trim(), "ready", "worker did not start");
        Self(child)
    }

    /// SIGKILL: no shutdown, no acknowledgement of anything in flight.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The record files of one test (one per worker name), removed on drop.
pub struct Records(PathBuf);

impl Records {
    /// A fresh directory for the test of namespace `ns`.
    ///
    /// # Panics
    /// If the directory cannot be created.
    pub fn new(ns: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("eventbus-crash-{ns}"));
        std::fs::create_dir_all(&dir).expect("create the records directory");
        Self(dir)
    }

    /// The record file of `worker`; its name is also the worker's consumer name where
    /// the backend has one.
    pub fn file(&self, worker: &str) -> PathBuf {
        self.0.join(worker)
    }

    /// The payloads recorded by `workers`, one per handled delivery.
    ///
    /// # Panics
    /// If a record line is not a number.
    pub fn handled(&self, workers: &[&str]) -> Vec<u64> {
        workers
            .iter()
            .flat_map(|w| {
                std::fs::read_to_string(self.file(w))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.parse::<u64>().expect("a recorded number"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until `workers` recorded every one of `0..n`, then checks that nothing was
    /// lost and that duplicates stay within `bound`.
    ///
    /// # Panics
    /// If events are missing after 30 seconds, or duplicates exceed `bound`.
    pub async fn assert_complete(&self, workers: &[&str], n: u64, bound: usize, what: &str) {
        let complete = wait_until(Duration::from_secs(30), || {
            self.handled(workers)
                .into_iter()
                .collect::<HashSet<_>>()
                .len() as u64
                >= n
        })
        .await;
        let all = self.handled(workers);
        let unique: HashSet<u64> = all.iter().copied().collect();
        assert!(complete, "{what}: {} of {n} handled", unique.len());
        assert_eq!(unique, (0..n).collect(), "{what}: lost events");
        let duplicates = all.len() - unique.len();
        eprintln!("{what}: {n} events, {duplicates} duplicates (bound {bound})");
        assert!(
            duplicates <= bound,
            "{what}: {duplicates} duplicates > {bound}"
        );
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
