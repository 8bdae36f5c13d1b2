//! Finding test servers (`integration_tests::servers`): the order of the ways, the
//! container fallback, and the message when no way works.

use std::process::Command;

use integration_tests::{
    redis_server,
    servers::{self, Mode, Server},
};

/// The Redis server description with its local default moved to a closed port, so the
/// lookup goes past it whatever runs on this machine.
fn redis_without_local_server() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    Server {
        local_url: format!("redis://127.0.0.1:{port}").leak(),
        ..redis_server::SERVER
    }
}

fn serves(server: &Server, url: &str) -> bool {
    let probe = (server.probe)(url.to_owned());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(probe)
        .is_ok()
}

#[test]
fn local_mode_never_starts_a_container() {
    let server = redis_without_local_server();
    let message = servers::find(&server, Mode::Local)
        .expect_err("no local server")
        .to_string();
    assert!(
        message.contains(&format!("- {}: ", server.local_url)),
        "{message}"
    );
    assert!(
        message.contains("- Docker: not tried (EVENT_BUS_TEST_SERVERS=local)"),
        "{message}"
    );
}

/// After a closed local port, `auto` tries Docker: the container serves (required when
/// `EVENT_BUS_TEST_SERVERS=containers` promises Docker), or the message tells what Docker
/// answered.
#[test]
fn auto_mode_falls_back_to_a_container() {
    let server = redis_without_local_server();
    match servers::find(&server, Mode::Auto) {
        Ok(url) => {
            assert_ne!(url, server.local_url);
            assert!(serves(&server, &url), "the container serves at {url}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                Mode::from_env() != Ok(Mode::Containers),
                "Docker was promised: {message}"
            );
            assert!(message.contains("- Docker: cannot start"), "{message}");
        }
    }
}

/// The lookup the tests below run in a child process, in the mode
/// `EVENT_BUS_TEST_SERVERS` chooses.
#[test]
#[ignore = "run by the tests below in a child process"]
fn child_lookup() {
    let mode = Mode::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = servers::find(&redis_without_local_server(), mode) {
        panic!("{e}");
    }
}

/// Runs [`child_lookup`] with `DOCKER_HOST` naming no daemon and the given
/// `EVENT_BUS_TEST_SERVERS`, and returns its stderr; it must fail.
fn child_lookup_without_docker(mode: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "child_lookup", "--nocapture"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env(servers::MODE_VAR, mode)
        .env(
            "EVENT_BUS_TEST_REDIS_IMAGE",
            "registry.invalid/redis:7-test",
        )
        .env_remove("EVENT_BUS_REDIS_URL")
        .output()
        .expect("run the child test");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the lookup failed: {stderr}");
    assert!(
        stderr.contains("tests/servers.rs"),
        "the test's own panic carries the message, not one inside testcontainers: {stderr}"
    );
    stderr
}

#[test]
fn no_server_and_no_docker_names_the_three_ways() {
    let stderr = child_lookup_without_docker("auto");
    for part in [
        "no Redis server for the tests; provide one in any of three ways:",
        "1. run Docker: the tests then start the image `registry.invalid/redis:7-test` themselves",
        "(another image: EVENT_BUS_TEST_REDIS_IMAGE=name:tag;",
        "integration-tests/containers/build-images.sh",
        "2. run a server at redis://127.0.0.1:",
        "3. set EVENT_BUS_REDIS_URL to the URL of a server",
        "- Docker: cannot start `registry.invalid/redis:7-test`",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[test]
fn an_unknown_mode_is_named() {
    let stderr = child_lookup_without_docker("docker");
    assert!(
        stderr.contains(
            "EVENT_BUS_TEST_SERVERS=\"docker\": expected `auto`, `local` or `containers`"
        ),
        "{stderr}"
    );
}
