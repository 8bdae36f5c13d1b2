//! A durable Redis consumer process for crash tests: joins a group and records every
//! event it handles on the server, until it is killed.
//!
//! `durable_worker URL PREFIX GROUP CONSUMER_NAME` subscribes to `PREFIX:*` in `GROUP`
//! with `delivery = "streams"`, a 1 s lease and small batches, appends the payload of
//! every handled event to the lists `PREFIX:handled` and `PREFIX:by:CONSUMER_NAME`
//! (before acknowledging it), and prints `ready` once subscribed.

use std::{io::Write, time::Duration};

use multibus::{
    DeliveryMode, Event, EventBus, EventBusExt, RedisConfig, RedisEventBus, SubscribeOptions,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix, group, name] = args.as_slice() else {
        eprintln!("usage: durable_worker URL PREFIX GROUP CONSUMER_NAME");
        std::process::exit(2);
    };
    let mut config = RedisConfig::from_url(url.clone()).expect("valid url");
    config.channel_prefix = prefix.clone();
    config.delivery = DeliveryMode::Streams;
    config.streams.lease_seconds = 1.0;
    config.streams.read_count = 10;
    config.streams.consumer_name = Some(name.clone());
    config.dispatcher.queue_maxsize = 10;
    let bus = RedisEventBus::new(config).expect("valid config");
    bus.connect().await.expect("connect");
    let client = redis::Client::open(url.as_str()).expect("valid url");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let lists = [format!("{prefix}:handled"), format!("{prefix}:by:{name}")];
    let handler = move |e: Event| {
        let (mut conn, lists) = (conn.clone(), lists.clone());
        async move {
            // Slow enough that a kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut pipe = redis::pipe();
            for list in &lists {
                pipe.cmd("RPUSH")
                    .arg(list)
                    .arg(e.payload.to_string())
                    .ignore();
            }
            pipe.exec_async(&mut conn).await
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
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    std::future::pending::<()>().await;
}
