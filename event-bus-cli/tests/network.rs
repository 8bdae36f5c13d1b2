//! `sub` in one process receives what `pub` in another publishes, on Redis, PostgreSQL
//! and NATS; `ping` and `bench` run against each; errors show their causes. Each test
//! uses its own channel prefix or topics.

mod support;

use integration_tests::{nats_server, postgres_server, redis_server, servers};
use support::{
    Running, TempFile, closed_port, eventbus, namespace, run_ok, run_status, send_signal, temp_file,
};

/// The URL of the Redis server the tests find (see `integration_tests::servers`:
/// `EVENT_BUS_REDIS_URL`, the local default, or a container). Fails, saying how to provide
/// a server, if there is none.
fn redis_url() -> String {
    servers::url(&redis_server::SERVER)
}

/// Like [`redis_url`], for PostgreSQL, as a `postgres://` URL.
fn postgres_url() -> String {
    postgres_server::uri()
}

/// Like [`redis_url`], for NATS (see `integration_tests::nats_server`:
/// `EVENT_BUS_NATS_URL` or the local default).
fn nats_url() -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the lookup")
        .block_on(nats_server::url())
}

/// A config file for the NATS server under a fresh channel prefix.
fn nats() -> TempFile {
    config("nats", "url", &nats_url())
}

/// A config file for the Redis server under a fresh channel prefix.
fn redis() -> TempFile {
    config("redis", "url", &redis_url())
}

/// A config file for the PostgreSQL server under a fresh channel prefix.
fn postgres() -> TempFile {
    config("postgres", "url", &postgres_url())
}

/// `url` (a `postgres://` URL) with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let query = path
        .split_once('?')
        .map_or(String::new(), |(_, q)| format!("?{q}"));
    format!("{scheme}://{authority}/{database}{query}")
}

/// A config file for `backend` at `url` under a fresh channel prefix.
fn config(backend: &str, url_key: &str, url: &str) -> TempFile {
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
    let out = run_ok(eventbus().args([
        "--config",
        config,
        "bench",
        "--events",
        "300",
        "--min-seconds",
        "0",
        "--json",
    ]));
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
fn nats_sub_receives_pub_from_another_process() {
    sub_receives_pub(&nats());
}

#[test]
fn nats_bench_reports_bus_and_raw() {
    bench_runs(&nats(), "nats PUB/SUB (async-nats)");
}

#[test]
fn nats_url_alone_picks_the_backend() {
    url_alone_picks_the_backend(&nats_url());
}

#[test]
fn ping_nats_answers() {
    ping_answers(&nats_url(), "NatsConfig {");
}

#[test]
fn redis_bench_reports_bus_and_raw() {
    bench_runs(&redis(), "redis PUBLISH/SUBSCRIBE (plain)");
}

#[test]
fn postgres_bench_reports_bus_and_raw() {
    // The test server has TLS on and the default `sslmode` is `prefer`: both sides use it.
    bench_runs(&postgres(), "postgres pg_notify/LISTEN (TLS)");
}

/// With `sslmode=disable` the raw side goes without TLS too, and says so.
#[test]
fn postgres_bench_raw_side_follows_the_bus_sslmode() {
    let url = postgres_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let plain = config("postgres", "url", &format!("{url}{sep}sslmode=disable"));
    bench_runs(&plain, "postgres pg_notify/LISTEN (plain)");
}

/// With only `--url`, `sub` and `pub` pick the backend from its scheme and reach each
/// other; SIGTERM then stops `sub` cleanly.
fn url_alone_picks_the_backend(url: &str) {
    let topic = format!("{}:x", namespace());
    let mut cmd = eventbus();
    cmd.args(["--url", url, "sub", &topic, "--json"]);
    let mut sub = Running::spawn(cmd);
    let backend = if url.starts_with("redis") {
        "redis"
    } else if url.starts_with("nats") {
        "nats"
    } else {
        "postgres"
    };
    sub.wait_stderr(&format!("subscribed to {topic} on {backend}"));
    let out = run_ok(eventbus().args(["--url", url, "pub", &topic, "7"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("note: the memory backend"), "{stderr}");
    let event: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(
        (&event["topic"], &event["payload"]),
        (&topic.clone().into(), &7.into())
    );
    send_signal(sub.id(), "TERM");
    sub.wait_stderr(&format!("unsubscribed from {topic}"));
    assert_eq!(sub.wait_exit().code(), Some(0));
}

#[test]
fn redis_url_alone_picks_the_backend() {
    url_alone_picks_the_backend(&redis_url());
}

#[test]
fn postgresql_url_alone_picks_the_backend() {
    let url = postgres_url().replacen("postgres://", "postgresql://", 1);
    url_alone_picks_the_backend(&url);
}

#[test]
fn postgres_errors_show_the_servers_reason() {
    let database = format!("nosuchdb_{}", namespace());
    let url = with_database(&postgres_url(), &database);
    let (stdout, stderr) = run_status(eventbus().args(["--url", &url, "pub", "a", "1"]), 1);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!("database \"{database}\" does not exist")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn postgres_tls_errors_show_the_reason() {
    // No server on loopback has a certificate for 127.0.0.1 from a public CA.
    let url = with_database(&postgres_url(), "test?sslmode=verify-full");
    let (_, stderr) = run_status(eventbus().args(["--url", &url, "ping"]), 1);
    match stderr.split_once("error performing TLS handshake") {
        Some((_, reason)) => assert!(
            reason.starts_with(": ") && reason.trim().len() > 2,
            "{stderr}"
        ),
        None => assert!(stderr.contains("TLS"), "{stderr}"),
    }
}

/// `ping` prints the config and says the server answers, with timings.
fn ping_answers(url: &str, shown: &str) {
    let out = run_ok(eventbus().args(["--url", url, "ping"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("config from --url:\n"), "{stdout}");
    assert!(stdout.contains(shown), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("server ")
            && last.contains(": answering (connect ")
            && last.contains(" ms, round trip "),
        "{stdout}"
    );
}

#[test]
fn ping_redis_answers() {
    ping_answers(&redis_url(), "RedisConfig {");
}

#[test]
fn ping_postgres_answers() {
    ping_answers(&postgres_url(), "PostgresConfig {");
}

#[test]
fn ping_a_closed_port_exits_1_and_never_shows_the_password() {
    let port = closed_port();
    for url in [
        format!("redis://:s3cret@127.0.0.1:{port}"),
        format!("postgres://app:s3cret@127.0.0.1:{port}/app"),
    ] {
        let (stdout, stderr) = run_status(eventbus().args(["--url", &url, "ping"]), 1);
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("server ") && last.ends_with(": not answering"),
            "{stdout}"
        );
        assert!(
            last.contains(&port.to_string()) && last.contains("***"),
            "{stdout}"
        );
        assert!(stderr.contains("refused"), "{stderr}");
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "{stdout}{stderr}"
        );
    }
}

/// The durable tail: `sub --group` receives what `pub --durable` added, including what
/// was added while no member was running; `dlq list` reads the group's dead letters.
#[test]
fn redis_durable_tail_keeps_what_came_while_away() {
    let ns = namespace();
    let url = redis_url();
    let toml = format!("backend = \"redis\"\nurl = \"{url}\"\nchannel_prefix = \"{ns}\"\n");
    let path = temp_file("config.toml", &toml);
    let config = path.to_str().expect("utf-8 temp path");
    let tail = |count: &str| {
        let mut cmd = eventbus();
        cmd.args([
            "--config", config, "sub", "--group", "audit", "orders:*", "--json",
        ]);
        cmd.args(["--count", count]);
        let mut sub = Running::spawn(cmd);
        sub.wait_stderr("subscribed to orders:*");
        sub
    };
    let mut sub = tail("1");
    publish(config, &["--durable", "orders:eu", "1"]);
    let first: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(first["payload"], 1);
    assert!(sub.wait_exit().success());
    // Nobody of the group is running: the event waits on the server.
    publish(config, &["--durable", "orders:eu", "2"]);
    let mut sub = tail("1");
    let second: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(second["payload"], 2);
    assert!(sub.wait_exit().success());
    let out = run_ok(eventbus().args(["--config", config, "dlq", "list", "--group", "audit"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letter(s) of group audit"));
    let client = redis::Client::open(url.as_str()).expect("url");
    let mut conn = client.get_connection().expect("connect");
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{{{ns}}}:stream"))
        .query(&mut conn)
        .expect("DEL");
}

/// A config file for the PostgreSQL durable mode under a fresh channel prefix.
fn postgres_table() -> TempFile {
    let toml = format!(
        "backend = \"postgres\"\nurl = \"{}\"\nchannel_prefix = \"{}\"\ndelivery = \"table\"\n",
        postgres_url(),
        namespace()
    );
    temp_file("config.toml", &toml)
}

#[test]
fn postgres_table_bench_reports_bus_and_raw_queue() {
    bench_runs(
        &postgres_table(),
        "postgres insert + SKIP LOCKED claim + delete (TLS)",
    );
}

#[test]
fn postgres_table_sub_in_a_group_receives_pub_and_dlq_lists_nothing() {
    let config = postgres_table();
    let config = config.to_str().expect("utf-8");
    let mut cmd = eventbus();
    cmd.args([
        "--config", config, "sub", "orders:*", "--group", "billing", "--json", "--count", "2",
    ]);
    let mut sub = Running::spawn(cmd);
    sub.wait_stderr("subscribed to orders:*");
    publish(config, &["orders:eu", "1"]);
    publish(config, &["orders:us", "2"]);
    let mut topics = Vec::new();
    for _ in 0..2 {
        let line: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
        topics.push(line["topic"].as_str().unwrap().to_owned());
    }
    topics.sort();
    assert_eq!(topics, ["orders:eu", "orders:us"]);
    assert!(sub.wait_exit().success());
    let out = run_ok(eventbus().args(["--config", config, "dlq", "list", "--group", "billing"]));
    assert!(out.stdout.is_empty(), "no dead letters");
    let out = run_ok(eventbus().args(["--config", config, "dlq", "redrive", "--group", "billing"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letter(s)"));
}

/// The NATS durable mode on the command line: `sub --group` receives what
/// `pub --durable` stored, also what came while no member ran; `dlq list` and `redrive`
/// find no dead letters; `bench --durable` runs next to raw JetStream.
#[test]
fn nats_jetstream_durable_tail_dlq_and_bench() {
    let ns = namespace();
    let url = nats_url();
    let toml = format!("backend = \"nats\"\nurl = \"{url}\"\nchannel_prefix = \"{ns}\"\n");
    let path = temp_file("config.toml", &toml);
    let config = path.to_str().expect("utf-8 temp path");
    let tail = || {
        let mut cmd = eventbus();
        cmd.args([
            "--config", config, "sub", "--group", "audit", "orders:*", "--json", "--count", "1",
        ]);
        let mut sub = Running::spawn(cmd);
        sub.wait_stderr("subscribed to orders:*");
        sub
    };
    let mut sub = tail();
    publish(config, &["--durable", "orders:eu", "1"]);
    let first: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(first["payload"], 1);
    assert!(sub.wait_exit().success());
    // Nobody of the group is running: the event waits in the stream.
    publish(config, &["--durable", "orders:eu", "2"]);
    let mut sub = tail();
    let second: serde_json::Value = serde_json::from_str(&sub.next_stdout()).expect("JSON line");
    assert_eq!(second["payload"], 2);
    assert!(sub.wait_exit().success());
    let out = run_ok(eventbus().args(["--config", config, "dlq", "list", "--group", "audit"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letter(s) of group audit"));
    let out = run_ok(eventbus().args(["--config", config, "dlq", "redrive", "--group", "audit"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letter(s)"));
    let out = run_ok(eventbus().args([
        "--config",
        config,
        "bench",
        "--durable",
        "--events",
        "300",
        "--min-seconds",
        "0",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["bus"]["delivered"], 300, "{report}");
    assert_eq!(report["raw"]["delivered"], 300, "{report}");
    assert_eq!(
        report["raw"]["transport"], "nats JetStream publish/pull/ack (async-nats)",
        "{report}"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the cleanup")
        .block_on(async {
            let client = async_nats::connect(url.as_str()).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            for stream in [format!("eventbus_{ns}"), format!("eventbus_{ns}-aux")] {
                let _ = js.delete_stream(&stream).await;
            }
        });
}
