//! A durable consumer process for the crash tests: it handles events and records every
//! event it handles in a file, until it is killed.
//!
//! `durable_worker URL PREFIX GROUP FILE` connects to the server at `URL` (`redis://`:
//! `delivery = "streams"` with the file's name as consumer name; `nats://`:
//! `delivery = "jetstream"`), subscribes to `PREFIX:*` in `GROUP` with a 1 s lease and
//! batches of 10, appends the payload of every handled event as one line to `FILE`
//! (before acknowledging it), and prints `ready` once subscribed.

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use multibus::{
    Config, Event, EventBusExt, NatsConfig, RedisConfig, SubscribeOptions, create_event_bus,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix, group, file] = args.as_slice() else {
        eprintln!("usage: durable_worker URL PREFIX GROUP FILE");
        std::process::exit(2);
    };
    let config = if url.starts_with("nats://") {
        let mut config = NatsConfig::from_url(url.clone()).expect("valid url");
        config.channel_prefix = prefix.clone();
        config.delivery = multibus::nats::DeliveryMode::Jetstream;
        config.jetstream.lease_seconds = 1.0;
        config.jetstream.batch_size = 10;
        config.dispatcher.queue_maxsize = 10;
        Config::Nats(config)
    } else {
        let mut config = RedisConfig::from_url(url.clone()).expect("valid url");
        config.channel_prefix = prefix.clone();
        config.delivery = multibus::DeliveryMode::Streams;
        config.streams.lease_seconds = 1.0;
        config.streams.read_count = 10;
        config.streams.consumer_name = Path::new(file)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        config.dispatcher.queue_maxsize = 10;
        Config::Redis(config)
    };
    let bus = create_event_bus(config).expect("valid config");
    bus.connect().await.expect("connect");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("open the record file");
    let out = Arc::new(Mutex::new(out));
    let handler = move |e: Event| {
        let out = out.clone();
        async move {
            // Slow enough that a kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let line = format!("{}\n", e.payload);
            // One write per line: a killed process leaves whole lines.
            out.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write_all(line.as_bytes())
        }
    };
    let _sub = bus
        .subscribe_with(
            &format!("{prefix}:*"),
            SubscribeOptions::new().group(group.clone()),
            handler,
        )
        .await
        .expect("subscribe");
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready");
    let _ = stdout.flush();
    std::future::pending::<()>().await;
}
