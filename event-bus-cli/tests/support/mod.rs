//! Running the `eventbus` binary as a child process and reading its output lines with
//! deadlines.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

/// How long any awaited condition may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A command for the built `eventbus` binary, with no backend environment leaking in.
pub fn eventbus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventbus"));
    for var in [
        "EVENT_BUS_CONFIG",
        "EVENT_BUS_BACKEND",
        "EVENT_BUS_URL",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to completion and asserts it succeeded, showing its stderr if not.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run eventbus");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` to completion, asserts it exited with `code` and returns its stdout and
/// stderr.
pub fn run_status(cmd: &mut Command, code: i32) -> (String, String) {
    let out = cmd.output().expect("run eventbus");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

/// Sends `signal` (`INT`, `TERM`) to the process `pid`, which the test started.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// A unique lowercase name for channel prefixes, topics and temp files.
pub fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Writes `text` to a fresh temp file named `name`; the file and its directory are
/// removed when the returned guard is dropped.
pub fn temp_file(name: &str, text: &str) -> TempFile {
    let dir = std::env::temp_dir().join(format!("eventbus-cli-{}", namespace()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write temp file");
    TempFile { dir, path }
}

/// A temp file of [`temp_file`]; dereferences to its path.
pub struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;

    fn deref(&self) -> &Self::Target {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A spawned `eventbus` whose stdout and stderr lines arrive on channels. Killed on drop
/// if still running.
pub struct Running {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Running {
    /// Spawns `cmd` with piped output.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eventbus");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no stderr line containing {needle:?} within {DEADLINE:?}; stderr so far: {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// The next stdout line, within the deadline.
    pub fn next_stdout(&mut self) -> String {
        match self.stdout.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let rest: Vec<String> = self.stderr.try_iter().collect();
                panic!(
                    "no stdout line within {DEADLINE:?} ({e}); stderr: {:?} {rest:?}",
                    self.stderr_seen
                )
            }
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn stderr_line(&mut self, needle: &str) -> String {
        self.wait_stderr(needle);
        self.stderr_seen.last().cloned().unwrap_or_default()
    }

    /// Waits for the process to exit, within the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "eventbus did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20)); // polling an exit, not synchronising
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
