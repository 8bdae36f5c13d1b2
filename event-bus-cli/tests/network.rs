//! `sub` in one process receives what `pub` in another publishes, on Redis and on
//! PostgreSQL; `bench` runs against both. Each test uses its own channel prefix.

mod support;

use support::{Running, eventbus, host_port, namespace, server_available, temp_file};

fn redis_url() -> String {
    std::env::var("EVENT_BUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("EVENT_BUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A config file for `backend` at `url` under a fresh channel prefix.
fn config(backend: &str, url_key: &str, url: &str) -> std::path::PathBuf {
    let toml = format!(
        "backend = \"{backend}\"\n{url_key} = \"{url}\"\nchannel_prefix = \"{}\"\n",
        namespace()
    );
    temp_file("config.toml", &toml)
}

fn sub_receives_pub(config: &std::path::Path) {
    let config = config.to_str().expect("utf-8 temp path");
    let mut cmd = eventbus();
    cmd.args([
        "--config", config, "sub", "orders:*", "audit", "--json", "--count", "2",
    ]);
    let mut sub = Running::spawn(cmd);
    sub.wait_stderr("subscribed to orders:* audit");

    let out = eventbus()
        .args(["--config", config, "pub", "orders:eu", r#"{"id": 42}"#])
        .args([
            "--priority",
            "high",
            "--meta",
            "tenant=acme",
            "--source",
            "cli-test",
        ])
        .output()
        .expect("run pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = eventbus()
        .args(["--config", config, "pub", "users:x", "1"])
        .output()
        .expect("run pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = eventbus()
        .args([
            "--config",
            config,
            "pub",
            "audit",
            r#""done""#,
            "--type",
            "login",
        ])
        .output()
        .expect("run pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
    let out = eventbus()
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "bench",
            "--events",
            "300",
            "--json",
        ])
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["bus"]["delivered"], 300, "{report}");
    assert_eq!(report["raw"]["delivered"], 300, "{report}");
    assert_eq!(report["raw"]["transport"], raw_transport, "{report}");
}

#[test]
fn redis_sub_receives_pub_from_another_process() {
    let url = redis_url();
    if !server_available(&host_port(&url, 6379), "EVENT_BUS_REDIS_URL") {
        return;
    }
    sub_receives_pub(&config("redis", "url", &url));
}

#[test]
fn postgres_sub_receives_pub_from_another_process() {
    let url = postgres_url();
    if !server_available(&host_port(&url, 5432), "EVENT_BUS_POSTGRES_URL") {
        return;
    }
    sub_receives_pub(&config("postgres", "connection_string", &url));
}

#[test]
fn redis_bench_reports_bus_and_raw() {
    let url = redis_url();
    if !server_available(&host_port(&url, 6379), "EVENT_BUS_REDIS_URL") {
        return;
    }
    bench_runs(&config("redis", "url", &url), "redis PUBLISH/SUBSCRIBE");
}

#[test]
fn postgres_bench_reports_bus_and_raw() {
    let url = postgres_url();
    if !server_available(&host_port(&url, 5432), "EVENT_BUS_POSTGRES_URL") {
        return;
    }
    bench_runs(
        &config("postgres", "connection_string", &url),
        "postgres pg_notify/LISTEN",
    );
}
