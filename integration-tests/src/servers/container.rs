//! Starting a server's container with testcontainers, waiting until it serves, and
//! removing it when the test binary exits.

use std::{
    collections::HashMap,
    process::{ChildStdin, Command, Stdio},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    bollard::models::{HostConfig, PortBinding},
    core::IntoContainerPort,
    runners::AsyncRunner,
};
use tokio::time::Instant;

use super::Server;

/// The label on every test-server container (value: the server's name), for finding
/// leftovers: `docker ps --filter label=multibus.test-server`.
pub(super) const LABEL: &str = "multibus.test-server";

/// How long a started container's server has to serve requests.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Started containers and their reapers, kept until the test binary exits: a static is
/// never dropped, so the reaper removes the container, whatever ends the binary.
static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

struct Kept {
    _container: ContainerAsync<GenericImage>,
    /// The reaper's stdin: closed by the kernel when this process exits.
    _reaper: Option<ChildStdin>,
}

/// Starts a container of `server` with its port published on 127.0.0.1, and returns the
/// server's URL once it serves requests.
///
/// # Errors
/// A message saying what failed: no Docker, no image, or a server that never served.
pub(super) async fn start(server: Server) -> Result<String, String> {
    let image = server.image();
    let (name, tag) = split_image(&image)
        .ok_or_else(|| format!("{}={image:?}: expected `name:tag`", server.image_var))?;
    let port = server.container_port;
    let mut request = GenericImage::new(name, tag)
        .with_exposed_port(port.tcp())
        .with_label(LABEL, server.name)
        .with_host_config_modifier(move |config| publish_on_loopback(config, port));
    for (key, value) in server.env {
        request = request.with_env_var(*key, *value);
    }
    if !server.cmd.is_empty() {
        request = request.with_cmd(server.cmd.iter().copied());
    }
    let container = request
        .start()
        .await
        .map_err(|e| format!("cannot start `{image}`: {e}"))?;
    let reaper = reap_on_exit(container.id());
    let host_port = container
        .get_host_port_ipv4(port.tcp())
        .await
        .map_err(|e| format!("no published port {port} on `{image}`: {e}"));
    let url = host_port.map(server.container_url);
    let ready = match &url {
        Ok(url) => wait_until_serving(&server, url.clone()).await,
        Err(e) => Err(e.clone()),
    };
    let logs = match &ready {
        Ok(()) => String::new(),
        Err(_) => last_log_lines(&container).await,
    };
    KEPT.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Kept {
            _container: container,
            _reaper: reaper,
        });
    ready.map_err(|e| format!("`{image}` started but {e}{logs}"))?;
    url
}

/// `name:tag` split at the tag's colon (a registry's `host:port/` prefix has one too).
fn split_image(image: &str) -> Option<(&str, &str)> {
    let (name, tag) = image.rsplit_once(':')?;
    (!name.is_empty() && !tag.is_empty() && !tag.contains('/')).then_some((name, tag))
}

/// Publishes the container's `port` on a free port of 127.0.0.1 only, instead of every
/// host address: test servers trust every client.
fn publish_on_loopback(config: &mut HostConfig, port: u16) {
    config.publish_all_ports = Some(false);
    config.port_bindings = Some(HashMap::from([(
        format!("{port}/tcp"),
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".to_owned()),
            host_port: Some(String::new()),
        }]),
    )]));
}

async fn wait_until_serving(server: &Server, url: String) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let error = match tokio::time::timeout(PROBE_TIMEOUT, (server.probe)(url.clone())).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "did not serve at {url} within {READY_TIMEOUT:?}: {error}"
            ));
        }
        // Polling a server that is starting up: nothing notifies when it is ready.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn last_log_lines(container: &ContainerAsync<GenericImage>) -> String {
    let mut logs = container.stdout_to_vec().await.unwrap_or_default();
    logs.extend(container.stderr_to_vec().await.unwrap_or_default());
    let logs = String::from_utf8_lossy(&logs);
    let lines: Vec<&str> = logs.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n    ");
    format!("; its last log lines:\n    {tail}")
}

/// Starts a process that removes container `id` when this process exits, however it
/// exits: `sh` waits for its stdin (held by this process) to close, then runs
/// `docker rm`. It has its own process group, so a Ctrl-C to the tests does not stop it.
/// `None`, with a warning, if it cannot be started.
fn reap_on_exit(id: &str) -> Option<ChildStdin> {
    let mut reaper = Command::new("sh");
    reaper
        .args([
            "-c",
            "cat >/dev/null; exec docker rm --force --volumes \"$1\" >/dev/null 2>&1",
            "reaper",
            id,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut reaper, 0);
    let docker_cli = Command::new("docker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let stdin = if docker_cli {
        reaper.spawn().ok().and_then(|mut child| child.stdin.take())
    } else {
        None
    };
    if stdin.is_none() {
        eprintln!(
            "warning: cannot remove test container {id} when the tests exit (that needs `sh` \
             and the `docker` command); remove it with `docker rm -f {id}`"
        );
    }
    stdin
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_names_split_at_the_tag() {
        assert_eq!(split_image("redis:7.0.15"), Some(("redis", "7.0.15")));
        assert_eq!(
            split_image("mirror.local:5000/library/redis:7"),
            Some(("mirror.local:5000/library/redis", "7"))
        );
        assert_eq!(split_image("mirror.local:5000/redis"), None);
        assert_eq!(split_image("redis"), None);
        assert_eq!(split_image("redis:"), None);
    }
}
