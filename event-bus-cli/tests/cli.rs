//! The `eventbus` binary on the memory backend: demo, pub, sub, bench and config errors.

mod support;

use std::{io::Write, process::Stdio};

use support::{Running, eventbus, run_ok, temp_file};

#[test]
fn demo_runs_the_scenario_and_prints_the_metrics_table() {
    let out = eventbus().arg("demo").output().expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "failing handler still subscribed? no",
        "handled in order: D (critical), C (high), B (normal), E (normal), A (low)",
        "auto_unsubscribed    1",
        "timed_out            1",
        "failed               3",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn pub_on_memory_publishes_with_every_flag() {
    let out = eventbus()
        .args([
            "pub",
            "orders:eu",
            r#"{"id": 42}"#,
            "--type",
            "updated",
            "--priority",
            "high",
        ])
        .args([
            "--source",
            "cli",
            "--correlation-id",
            "c1",
            "--meta",
            "a=b",
            "--repeat",
            "3",
        ])
        .output()
        .expect("run pub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("published 3 event(s)"), "{stderr}");
}

#[test]
fn pub_lines_reads_payloads_and_envelopes_from_stdin() {
    let mut child = eventbus()
        .args(["pub", "orders:eu", "--lines"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pub");
    let input = "{\"id\": 1}\n\n\"text\"\n{\"v\":1,\"type\":\"deleted\",\"topic\":\"users:x\"}\n";
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("wait pub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("published 3 event(s)"), "{stderr}");
}

#[test]
fn usage_and_config_errors_exit_2_naming_the_key() {
    let bad = temp_file(
        "bad.json",
        r#"{"backend": "memory", "dispatcher": {"queue_maxsize": "big"}}"#,
    );
    let unknown = temp_file("unknown.toml", "backend = \"memory\"\ncolour = 1\n");
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec!["--config", bad.to_str().unwrap(), "pub", "a", "1"],
            "dispatcher.queue_maxsize",
        ),
        (
            vec!["--config", unknown.to_str().unwrap(), "pub", "a", "1"],
            "colour",
        ),
        (vec!["--backend", "kafka", "pub", "a", "1"], "`backend`"),
        (vec!["pub", "a", "{not json"], "PAYLOAD is not valid JSON"),
        (
            vec!["pub", "bad topic with spaces?", "1", "--priority", "urgent"],
            "priority",
        ),
    ];
    for (args, needle) in cases {
        let out = eventbus().args(&args).output().expect("run eventbus");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line expected: {stderr}"
        );
    }
}

#[test]
fn sub_on_memory_exits_cleanly_on_ctrl_c() {
    let mut cmd = eventbus();
    cmd.args(["sub", "orders:*"]);
    let mut sub = Running::spawn(cmd);
    sub.wait_stderr("subscribed to orders:*");
    let status = std::process::Command::new("kill")
        .args(["-INT", &sub.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    assert!(sub.wait_exit().success());
}

#[test]
fn bench_json_on_memory_is_a_well_formed_report() {
    let out =
        run_ok(eventbus().args(["bench", "--events", "2000", "--subscribers", "2", "--json"]));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    assert_eq!(report["backend"], "memory");
    assert_eq!(report["params"]["events"], 2000);
    for path in ["bus", "raw"] {
        let r = &report[path];
        assert_eq!(r["expected"], 4000, "{r}");
        assert_eq!(r["delivered"], 4000, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert!(r["events_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let l = &r["latency_us"];
        let q = |k: &str| l[k].as_f64().unwrap();
        assert!(
            q("p50") <= q("p90") && q("p90") <= q("p99") && q("p99") <= q("max"),
            "{l}"
        );
    }
    assert_eq!(report["raw"]["transport"], "tokio::sync::broadcast");
    assert!(report["ratio"]["throughput"].as_f64().unwrap() > 0.0);
}
