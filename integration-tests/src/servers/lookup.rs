//! The lookup order, the per-binary cache of what was found, and the message when nothing
//! was.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, mpsc},
    time::Duration,
};

use super::{Server, container};

/// The variable choosing the [`Mode`].
pub const MODE_VAR: &str = "EVENT_BUS_TEST_SERVERS";

/// How long a server on the local default port has to answer.
const LOCAL_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which ways of providing a server the lookup tries, chosen by `EVENT_BUS_TEST_SERVERS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The URL variable, then the local default, then a container (`auto`, the default).
    Auto,
    /// The URL variable, then the local default; never Docker (`local`).
    Local,
    /// A container only (`containers`).
    Containers,
}

impl Mode {
    /// The mode `EVENT_BUS_TEST_SERVERS` selects.
    ///
    /// # Errors
    /// A message naming the variable and its value if the value is not `auto`, `local`,
    /// `containers` or empty.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(MODE_VAR).unwrap_or_default().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "local" => Ok(Self::Local),
            "containers" => Ok(Self::Containers),
            other => Err(format!(
                "{MODE_VAR}={other:?}: expected `auto`, `local` or `containers`"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Local => "local",
            Self::Containers => "containers",
        }
    }
}

/// No server could be found or started. Its message names the three ways to provide one
/// and what each attempt answered.
#[derive(Debug)]
pub struct NoServer {
    server: Box<Server>,
    image: String,
    mode: Mode,
    /// Why the local default did not do (`None`: not tried).
    local: Option<String>,
    /// Why no container could be used (`None`: not tried).
    docker: Option<String>,
}

impl fmt::Display for NoServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Server {
            name,
            url_var,
            local_url,
            image_var,
            ..
        } = *self.server;
        let not_tried = format!("not tried ({MODE_VAR}={})", self.mode.name());
        writeln!(
            f,
            "no {name} server for the tests; provide one in any of three ways:"
        )?;
        writeln!(
            f,
            "  1. run Docker: the tests then start the image `{}` themselves (another image: \
             {image_var}=name:tag; without registry access, build it with \
             integration-tests/containers/build-images.sh)",
            self.image
        )?;
        writeln!(f, "  2. run a server at {local_url}")?;
        writeln!(f, "  3. set {url_var} to the URL of a server")?;
        writeln!(f, "tried:")?;
        writeln!(
            f,
            "  - {local_url}: {}",
            self.local.as_deref().unwrap_or(&not_tried)
        )?;
        write!(
            f,
            "  - Docker: {}",
            self.docker.as_deref().unwrap_or(&not_tried)
        )
    }
}

impl std::error::Error for NoServer {}

/// Finds a `server` the way `mode` allows, starting a container if it comes to that, and
/// returns its URL. A started container lives until the test binary exits. Not cached:
/// tests call [`url`].
///
/// # Errors
/// [`NoServer`] if no way worked.
pub fn find(server: &Server, mode: Mode) -> Result<String, NoServer> {
    let mut failure = NoServer {
        server: Box::new(*server),
        image: server.image(),
        mode,
        local: None,
        docker: None,
    };
    if mode != Mode::Containers {
        if let Some(url) = std::env::var(server.url_var).ok().filter(|u| !u.is_empty()) {
            return Ok(url);
        }
        let (probe, local) = (server.probe, server.local_url.to_owned());
        let answered = run(async move {
            match tokio::time::timeout(LOCAL_PROBE_TIMEOUT, probe(local)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {LOCAL_PROBE_TIMEOUT:?}")),
            }
        });
        match answered.and_then(|answer| answer) {
            Ok(()) => return Ok(server.local_url.to_owned()),
            Err(e) => failure.local = Some(e),
        }
    }
    if mode != Mode::Local {
        match run(container::start(*server)).and_then(|started| started) {
            Ok(url) => return Ok(url),
            Err(e) => failure.docker = Some(e),
        }
    }
    Err(failure)
}

/// The URL of a `server` for this test binary: found by [`find`] in the mode
/// `EVENT_BUS_TEST_SERVERS` chooses on the first call, the same for every later call.
///
/// # Panics
/// With the [`NoServer`] message (on every call) if nothing was found.
pub fn url(server: &'static Server) -> String {
    type Found = Arc<OnceLock<Result<String, String>>>;
    static FOUND: LazyLock<Mutex<HashMap<&'static str, Found>>> = LazyLock::new(Mutex::default);
    let found = FOUND
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(server.name)
        .or_default()
        .clone();
    let found = found.get_or_init(|| {
        Mode::from_env().and_then(|mode| find(server, mode).map_err(|e| e.to_string()))
    });
    match found {
        Ok(url) => url.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Runs `future` to completion on the test-server runtime, which lives as long as the
/// test binary (a container's Docker client stays usable whichever test started it), and
/// waits for it from any thread, async or not.
///
/// # Errors
/// The panic message if the future panicked.
fn run<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime = RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("test-servers")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime for the test servers: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)?;
    let (done, result) = mpsc::channel();
    let task = runtime.spawn(future);
    runtime.spawn(async move {
        let _ = done.send(task.await);
    });
    match result.recv() {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_panic() => Err(panic_message(&*e.into_panic())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the test-server runtime stopped".to_owned()),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("panicked: {message}")
}
