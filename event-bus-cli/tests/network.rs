//! `sub` in one process receives what `pub` in another publishes, on Redis and on
//! PostgreSQL; `bench` runs against both. Each test uses its own channel prefix.

mod support;

use support::{Running, eventbus, host_port, namespace, require_server, run_ok, temp_file};

/// A config file for the Redis server of `EVENT_BUS_REDIS_URL` (or the local default),
/// under a fresh channel prefix. Fails if no server answers.
fn redis() -> std::path::PathBuf {
    let url =
        std::env::var("EVENT_BUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    require_server(&host_port(&url, 6379), "EVENT_BUS_REDIS_URL");
    config("redis", "url", &url)
}

/// Like [`redis`], for PostgreSQL (`EVENT_BUS_POSTGRES_URL`).
fn postgres() -> std::path::PathBuf {
    let url = std::env::var("EVENT_BUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    require_server(&host_port(&url, 5432), "EVENT_BUS_POSTGRES_URL");
    config("postgres", "url", &url)
}

/// A config file for `backend` at `url` under a fresh channel prefix.
fn config(backend: &str, url_key: &str, url: &str) -> std::path::PathBuf {
    let toml = format!(
        "backend = \"{backend}\"\n{url_key} = \"{url}\"\nchannel_prefix = \"{}\"\n",
        namespace()
    );
    temp_file("config.toml", &toml)
}

/// Runs `eventbus --config <config> pub <args>` and asserts it succeeded.
fn publish(config: &str, args: &[&str]) {
    run_ok(eventbus().args(["--config", config, "pub"]).args(args));
}

fn sub_receives_pub(config: &std::path::Path) {
    let config = config.to_str().expect("utf-8 temp path");
    let mut cmd = eventbus();
    cmd.args([
        "--config", config, "sub", "orders:*", "audit", "--json", "--count", "2",
    ]);
    let mut sub = Running::spawn(cmd);
    sub.wait_stderr("subscribed to orders:* audit");

    publish(
        config,
        &[
            "orders:eu",
            r#"{"id": 42}"#,
            "--priority",
            "high",
            "--meta",
            "tenant=acme",
            "--source",
            "cli-test",
        ],
    );
    publish(config, &["users:x", "1"]);
    publish(config, &["audit", r#""done""#, "--type", "login"]);

    let first: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(first["v"], 1);
    assert_eq!(first["topic"], "orders:eu");
    assert_eq!(first["payload"]["id"], 42);
    assert_eq!(first["priority"], 64);
    assert_eq!(first["source"], "cli-test");
    assert_eq!(first["metadata"]["tenant"], "acme");
    let second: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(second["topic"], "audit", "users:x must not match: {second}");
    assert_eq!(second["type"], "custom:login");
    assert!(
        sub.wait_exit().success(),
        "sub exits by itself after --count 2"
    );
}

fn bench_runs(config: &std::path::Path, raw_transport: &str) {
    let config = config.to_str().expect("utf-8");
    let out = run_ok(eventbus().args(["--config", config, "bench", "--events", "300", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["bus"]["delivered"], 300, "{report}");
    assert_eq!(report["raw"]["delivered"], 300, "{report}");
    assert_eq!(report["raw"]["transport"], raw_transport, "{report}");
}

#[test]
fn redis_sub_receives_pub_from_another_process() {
    sub_receives_pub(&redis());
}

#[test]
fn postgres_sub_receives_pub_from_another_process() {
    sub_receives_pub(&postgres());
}

#[test]
fn redis_bench_reports_bus_and_raw() {
    bench_runs(&redis(), "redis PUBLISH/SUBSCRIBE");
}

#[test]
fn postgres_bench_reports_bus_and_raw() {
    bench_runs(&postgres(), "postgres pg_notify/LISTEN");
}
