//! The `eventbus` binary on the memory backend: demo, pub, sub, ping, bench,
//! completions, help, signals and usage errors.

mod support;

use std::{io::Write, process::Stdio};

use support::{Running, eventbus, run_ok, run_status, send_signal, temp_file};

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
    let cases: [(Vec<&str>, &str); 8] = [
        (
            vec!["--config", bad.to_str().unwrap(), "pub", "a", "1"],
            "dispatcher.queue_maxsize",
        ),
        (
            vec!["--config", unknown.to_str().unwrap(), "pub", "a", "1"],
            "colour",
        ),
        (vec!["pub", "a", "{not json"], "PAYLOAD is not valid JSON"),
        (vec!["pub", "a", "1", "--priority", "urgent"], "priority"),
        (
            vec!["dlq", "list", "--group", "g"],
            "dlq: the memory backend has no durable mode",
        ),
        (
            vec!["pub", "--durable", "a", "1"],
            "--durable: the memory backend has no durable mode",
        ),
        // Checked before any server is contacted (nothing listens on port 1).
        (
            vec![
                "--url",
                "redis://127.0.0.1:1",
                "dlq",
                "redrive",
                "--group",
                "g",
                "--id",
                "1-0",
            ],
            "--id: the Redis durable mode redrives all",
        ),
        (
            vec![
                "--url",
                "nats://127.0.0.1:1",
                "dlq",
                "redrive",
                "--group",
                "g",
                "--id",
                "7",
            ],
            "--id: the NATS durable mode redrives all",
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

/// `sub` stops on `signal` as on Ctrl-C: it unsubscribes, closes the bus, exits 0.
fn sub_stops_cleanly_on(signal: &str, name: &str) {
    let mut cmd = eventbus();
    cmd.args(["sub", "orders:*"]);
    let mut sub = Running::spawn(cmd);
    sub.wait_stderr("subscribed to orders:*");
    send_signal(sub.id(), signal);
    sub.wait_stderr(&format!("{name}: unsubscribing"));
    sub.wait_stderr("unsubscribed from orders:*");
    let status = sub.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sub_on_memory_exits_cleanly_on_ctrl_c() {
    sub_stops_cleanly_on("INT", "Ctrl-C");
}

#[test]
fn sub_on_memory_exits_cleanly_on_sigterm() {
    sub_stops_cleanly_on("TERM", "SIGTERM");
}

/// An interrupted `pub --repeat` says how many events it sent, and exits 128 + signal.
fn interrupted_pub_reports_what_it_sent(signal: &str, name: &str, code: i32) {
    let total = "1000000000000";
    let mut cmd = eventbus();
    cmd.args(["pub", "load:test", "1", "--repeat", total]);
    let mut publisher = Running::spawn(cmd);
    publisher.wait_stderr(&format!("publishing {total} events on load:test"));
    send_signal(publisher.id(), signal);
    let line = publisher.stderr_line("interrupted by");
    let sent: u64 = line
        .strip_prefix(&format!(
            "eventbus: interrupted by {name} after publishing "
        ))
        .and_then(|rest| rest.strip_suffix(&format!(" of {total} event(s)")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(sent < 1_000_000_000_000, "{line}");
    assert_eq!(publisher.wait_exit().code(), Some(code));
}

#[test]
fn interrupted_pub_repeat_reports_the_count_on_ctrl_c() {
    interrupted_pub_reports_what_it_sent("INT", "Ctrl-C", 130);
}

#[test]
fn interrupted_pub_repeat_reports_the_count_on_sigterm() {
    interrupted_pub_reports_what_it_sent("TERM", "SIGTERM", 143);
}

#[test]
fn pub_checks_the_topic_before_printing_anything() {
    let (stdout, stderr) = run_status(eventbus().args(["pub", "bad topic", "1"]), 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.trim(),
        "eventbus: invalid topic \"bad topic\": must not contain whitespace or control \
         characters (found ' ')"
    );
}

#[test]
fn memory_pub_and_sub_say_they_only_reach_this_process_unless_quiet() {
    let out = run_ok(eventbus().args(["pub", "a", "1"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(
        notes[0].contains("memory backend only reaches this process") && notes[0].contains("--url"),
        "{stderr}"
    );
    let out = run_ok(eventbus().args(["-q", "pub", "a", "1"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "--quiet prints nothing"
    );

    let mut cmd = eventbus();
    cmd.args(["sub", "a"]);
    let mut sub = Running::spawn(cmd);
    sub.wait_stderr("note: the memory backend only reaches this process");
    sub.wait_stderr("subscribed to a on memory");
}

#[test]
fn zero_counts_are_rejected() {
    let cases: [&[&str]; 2] = [
        &["sub", "a", "--count", "0"],
        &["pub", "a", "1", "--repeat", "0"],
    ];
    for args in cases {
        let (_, stderr) = run_status(eventbus().args(args), 2);
        assert!(stderr.contains("0 is not in 1.."), "{args:?}: {stderr}");
    }
}

#[test]
fn option_errors_speak_in_options() {
    let config = temp_file("memory.toml", "backend = \"memory\"\n");
    let config = config.to_str().unwrap();
    // (options, environment, start of the message)
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 7] = [
        (
            vec!["--backend", "postgres"],
            &[],
            "eventbus: --backend postgres needs --url",
        ),
        (
            vec![],
            &[("EVENT_BUS_BACKEND", "postgres")],
            "eventbus: EVENT_BUS_BACKEND postgres needs --url",
        ),
        (
            vec!["--backend", "kafka"],
            &[],
            "eventbus: --backend kafka: unknown backend",
        ),
        (
            vec!["--url", "ftp://h"],
            &[],
            "eventbus: --url: unknown scheme `ftp://`",
        ),
        (
            vec!["--backend", "redis", "--url", "postgres://h/db"],
            &[],
            "eventbus: --backend redis does not match --url, a postgres URL",
        ),
        (
            vec!["--config", config, "--backend", "memory"],
            &[],
            "eventbus: --config cannot be combined with --backend",
        ),
        (
            vec![],
            &[("EVENT_BUS_CONFIG", config), ("EVENT_BUS_URL", "redis://h")],
            "eventbus: EVENT_BUS_CONFIG cannot be combined with EVENT_BUS_URL",
        ),
    ];
    for (args, env, start) in cases {
        let mut cmd = eventbus();
        cmd.args(&args)
            .args(["pub", "a", "1"])
            .envs(env.iter().copied());
        let (_, stderr) = run_status(&mut cmd, 2);
        assert!(stderr.starts_with(start), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // A config file given on the command line wins over the environment's URL.
    run_ok(
        eventbus()
            .args(["--config", config, "pub", "a", "1"])
            .env("EVENT_BUS_URL", "redis://h"),
    );
    let (_, stderr) = run_status(eventbus().args(["--url", "redis://h", "demo"]), 2);
    assert!(
        stderr.contains("the demo always runs on the memory backend: drop --url"),
        "{stderr}"
    );
}

#[test]
fn ping_on_memory_prints_the_config_and_needs_no_server() {
    let out = run_ok(eventbus().arg("ping"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("config from the default"), "{stdout}");
    assert!(stdout.contains("queue_maxsize: 1000"), "{stdout}");
    assert!(
        stdout.ends_with("server: none (the memory backend lives in this process)\n"),
        "{stdout}"
    );
    run_ok(eventbus().arg("check"));
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_subcommands_and_options() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ok(eventbus().args(["completions", shell]));
        let script = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "eventbus",
            "ping",
            "completions",
            "url",
            "min-seconds",
            "quiet",
        ] {
            assert!(script.contains(needle), "{shell}: no {needle:?}");
        }
    }
    let (_, stderr) = run_status(eventbus().args(["completions", "tcsh"]), 2);
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
}

#[test]
fn subcommand_help_lists_its_own_options_before_the_global_ones() {
    let out = run_ok(eventbus().args(["pub", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    let at = |needle: &str| {
        help.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{help}"))
    };
    assert!(at("--repeat") < at("Global options:"), "{help}");
    for global in ["--config", "--backend", "--url", "--quiet"] {
        assert!(at("Global options:") < at(global), "{global}: {help}");
    }
}

#[test]
fn bench_json_on_memory_is_a_well_formed_report() {
    let out = run_ok(eventbus().args([
        "bench",
        "--events",
        "2000",
        "--subscribers",
        "2",
        "--min-seconds",
        "0",
        "--json",
    ]));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    assert_eq!(report["backend"], "memory");
    assert_eq!(report["params"]["events"], 2000);
    for path in ["bus", "raw"] {
        let r = &report[path];
        assert_eq!(r["rounds"], 1, "--min-seconds 0 measures one round: {r}");
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

#[test]
fn bench_repeats_rounds_for_the_minimum_time_and_warns_when_that_is_short() {
    let out = run_ok(eventbus().args([
        "bench",
        "--events",
        "1000",
        "--min-seconds",
        "0.1",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["params"]["min_seconds"], 0.1);
    for path in ["bus", "raw"] {
        let r = &report[path];
        let rounds = r["rounds"].as_u64().expect("rounds");
        assert!(rounds >= 1, "{r}");
        assert_eq!(r["expected"], 1000 * rounds, "{r}");
        assert_eq!(r["delivered"], r["expected"], "{r}");
        assert!(
            r["seconds"].as_f64().unwrap() >= 0.1,
            "measured at least 0.1 s: {r}"
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: a path was measured for only 0.1"),
        "{stderr}"
    );
}

/// `--rate` first measures each path unpaced (its saturation rate), then paced: the
/// paced rounds take as long as the rate says, and the report gives the load fraction.
#[test]
fn bench_rate_paces_and_reports_saturation_and_load() {
    let out = run_ok(eventbus().args([
        "bench",
        "--events",
        "2000",
        "--rate",
        "20000",
        "--min-seconds",
        "0",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["params"]["rate"], 20000.0);
    for path in ["bus", "raw"] {
        let r = &report[path];
        assert_eq!(r["delivered"], 2000, "{r}");
        assert!(
            r["seconds"].as_f64().unwrap() >= 0.099,
            "2000 events at 20000/s take 0.1 s: {r}"
        );
        let saturation = r["saturation_events_per_s"].as_f64().expect("saturation");
        let load = r["load_fraction"].as_f64().expect("load fraction");
        assert!(
            (load - 20000.0 / saturation).abs() < 1e-9,
            "load is rate / saturation: {r}"
        );
    }
}

#[test]
fn bench_refuses_a_rate_of_zero() {
    let out = eventbus()
        .args(["bench", "--rate", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--rate"), "{stderr}");
}

/// The harness builds events as it sends them and keeps latencies in a fixed-size
/// histogram: 200,000 events stay far below the ~1.2 KB per event an up-front build
/// used to cost (about 230 MiB here), and the report shows the memory.
#[test]
fn bench_memory_does_not_grow_with_the_event_count() {
    let out = run_ok(eventbus().args([
        "bench",
        "--events",
        "200000",
        "--min-seconds",
        "0",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let peak = report["peak_rss_mib"].as_f64().expect("peak_rss_mib");
    let bus = report["bus"]["rss_mib"].as_f64().expect("bus rss_mib");
    assert!(bus > 0.0 && bus <= peak, "{report}");
    assert!(peak < 120.0, "peak RSS {peak} MiB: {report}");
}

/// Ctrl-C while `pub` or `sub` waits for a server that never answers stops it then, as
/// an interruption (130) or a clean stop (0), not later with a timeout error (1).
#[test]
fn ctrl_c_while_connecting_stops_at_once() {
    for (args, code) in [(vec!["pub", "a", "1"], 130), (vec!["sub", "a"], 0)] {
        // A listener of its own per command, so no connection of the other is accepted.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("addr"));
        let mut cmd = eventbus();
        cmd.args(["--url", &url]).args(&args);
        let mut child = Running::spawn(cmd);
        // The connection is accepted and never answered: the command is connecting.
        let (_silent, _) = listener.accept().expect("accept");
        send_signal(child.id(), "INT");
        assert_eq!(child.wait_exit().code(), Some(code), "{args:?}");
    }
}
