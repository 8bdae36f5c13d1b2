//! Property test: for generated connection strings the driver accepts (key/value and
//! URL forms, quoting, escapes, percent-encoding, odd whitespace), the password never
//! appears in `Debug`, in any error, in `health()` or in any log line at any level.

use std::{net::SocketAddr, time::Duration};

use integration_tests::{
    conformance::{event, test_dispatcher},
    log_capture::capture,
    postgres_server,
    proxy::TcpProxy,
    support::{DEADLINE, namespace, wait_until},
};
use multibus::{
    Config, DispatcherConfig, Event, EventBus, EventBusExt, PostgresConfig, PostgresEventBus,
};

/// A small xorshift generator; its seed is shown with every failure.
struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Self { seed, state: seed }
    }
    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A password: two random alphanumeric runs (the markers searched for in the output)
/// with characters that need quoting, escaping or encoding before, between and after.
struct Password {
    text: String,
    markers: [String; 2],
}

const AWKWARD: &[char] = &[
    ' ', '\t', '\'', '\\', '/', '@', ':', '%', '&', '=', '?', '#', ',', '"', '+', 'é', ';',
];

fn password(rng: &mut Rng) -> Password {
    let mut marker = || -> String {
        (0..8)
            .map(|_| {
                let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
                char::from(alphabet[rng.below(alphabet.len())])
            })
            .collect()
    };
    let markers = [marker(), marker()];
    let awkward = |rng: &mut Rng| -> String {
        (0..rng.below(4))
            .map(|_| AWKWARD[rng.below(AWKWARD.len())])
            .collect()
    };
    let text = format!(
        "{}{}{}{}{}",
        awkward(rng),
        markers[0],
        awkward(rng),
        markers[1],
        awkward(rng)
    );
    Password { text, markers }
}

/// A key/value value as libpq reads it: quoted, or bare with backslash escapes.
fn kv_value(rng: &mut Rng, value: &str) -> String {
    let needs_quotes = value.is_empty() || value.starts_with('\'');
    if needs_quotes || rng.chance(50) {
        let mut out = String::from("'");
        for c in value.chars() {
            if c == '\'' || c == '\\' || rng.chance(10) {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
        out
    } else {
        let mut out = String::new();
        for c in value.chars() {
            if c.is_whitespace() || c == '\\' || rng.chance(10) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

/// Percent-encodes `value`: always the characters in `must`, others at random.
fn percent(rng: &mut Rng, value: &str, must: &[char]) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if must.contains(&c) || c == '%' || !c.is_ascii_graphic() || rng.chance(15) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn key_value_string(rng: &mut Rng, addr: SocketAddr, db: &str, pw: &str) -> String {
    let space = ["", " ", "\t", " \t", "  "];
    let sep = [" ", "\t", "\n", "  ", " \t\r\n "];
    let mut pairs = [
        ("host", addr.ip().to_string()),
        ("port", addr.port().to_string()),
        ("user", "postgres".to_owned()),
        ("dbname", db.to_owned()),
        ("password", pw.to_owned()),
    ];
    for i in (1..pairs.len()).rev() {
        pairs.swap(i, rng.below(i + 1));
    }
    let mut out = rng.pick(&space).to_owned();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(rng.pick(&sep));
        }
        let value = if *key == "password" {
            kv_value(rng, value)
        } else {
            value.clone()
        };
        out.push_str(&format!(
            "{key}{}={}{value}",
            rng.pick(&space),
            rng.pick(&space)
        ));
    }
    out.push_str(rng.pick(&space));
    out
}

fn url_string(rng: &mut Rng, addr: SocketAddr, db: &str, pw: &str) -> String {
    let scheme = rng.pick(&["postgres", "postgresql"]);
    let host = format!("{}:{}", addr.ip(), addr.port());
    if rng.chance(50) {
        let encoded = percent(rng, pw, &['@']);
        format!("{scheme}://postgres:{encoded}@{host}/{db}")
    } else {
        let key = rng.pick(&["password", "pass%77ord", "%70assword", "passwor%64"]);
        let encoded = percent(rng, pw, &['&', '#', '@']);
        format!("{scheme}://postgres@{host}/{db}?{key}={encoded}&sslmode=prefer")
    }
}

/// One generated case: a connection string and the password the driver reads from it.
struct Case {
    connection_string: String,
    password: Password,
    /// The generator's seed (set `EVENT_BUS_SEED` to repeat a failure).
    seed: u64,
}

fn generate(rng: &mut Rng, addr: SocketAddr, db: &str) -> Case {
    let password = password(rng);
    let connection_string = if rng.chance(50) {
        key_value_string(rng, addr, db, &password.text)
    } else {
        url_string(rng, addr, db, &password.text)
    };
    let parsed: tokio_postgres::Config = connection_string
        .parse()
        .unwrap_or_else(|e| panic!("generator bug: {connection_string:?} rejected: {e}"));
    assert_eq!(
        parsed.get_password(),
        Some(password.text.as_bytes()),
        "generator bug: {connection_string:?}"
    );
    Case {
        connection_string,
        password,
        seed: rng.seed,
    }
}

impl Case {
    fn config(&self) -> PostgresConfig {
        let mut c = PostgresConfig::new(&self.connection_string)
            .with_channel_prefix(namespace())
            .with_dispatcher(DispatcherConfig {
                consumer_error_sleep_seconds: 0.2,
                ..test_dispatcher()
            });
        c.command_timeout_seconds = 1.0;
        c
    }

    /// Fails if `text` shows the password or either of its markers.
    fn assert_hidden(&self, what: &str, text: &str) {
        let pw = &self.password;
        for secret in [&pw.text, &pw.markers[0], &pw.markers[1]] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows the password of {:?} (EVENT_BUS_SEED={}):\n{text}",
                self.connection_string,
                self.seed
            );
        }
    }

    /// Everything that can be printed without a connection.
    fn check_offline(&self) {
        let config = self.config();
        self.assert_hidden("config Debug", &format!("{config:?}"));
        self.assert_hidden("redacted string", &config.redacted_url());
        let facade = Config::from_json_value(serde_json::json!({
            "backend": "postgres", "connection_string": self.connection_string,
        }))
        .unwrap();
        self.assert_hidden("facade config Debug", &format!("{facade:?}"));
        let bus = PostgresEventBus::new(config).unwrap();
        self.assert_hidden("bus Debug", &format!("{bus:?}"));
    }

    /// Connects (it is expected to fail) and checks every error and `health`.
    async fn check_failing_bus(&self) {
        let bus = PostgresEventBus::new(self.config()).unwrap();
        let show = |e: multibus::Error| format!("{e} | {e:?}");
        let err = bus.connect().await.unwrap_err();
        self.assert_hidden("connect error", &show(err));
        let err = bus.publish(event("t:a", 1)).await.unwrap_err();
        assert!(matches!(err, multibus::Error::Publish { .. }), "{err}");
        self.assert_hidden("publish error", &show(err));
        let err = bus
            .subscribe("t:a", |_: Event| async { Ok::<(), std::io::Error>(()) })
            .await
            .unwrap_err();
        self.assert_hidden("subscribe error", &show(err));
        let err = bus.flush().await.unwrap_err();
        self.assert_hidden("flush error", &show(err));
        self.assert_hidden("health", &format!("{:?}", bus.health().await));
        bus.close().await.unwrap();
    }

    /// Through a proxy to the real server: subscribes, then the proxy refuses and cuts,
    /// so the bus reconnects in vain; checks `health().last_error` and publish errors.
    async fn check_lost_connection(&self, proxy: &TcpProxy) {
        let bus = PostgresEventBus::new(self.config()).unwrap();
        bus.connect().await.unwrap();
        let sub = bus
            .subscribe("t:a", |_: Event| async { Ok::<(), std::io::Error>(()) })
            .await
            .unwrap();
        proxy.refuse(true);
        proxy.cut();
        let mut last_error = None;
        assert!(
            wait_until(DEADLINE, || {
                last_error =
                    futures_util::FutureExt::now_or_never(bus.health()).and_then(|h| h.last_error);
                last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("password=***"))
            })
            .await,
            "no reconnect error in health: {last_error:?}"
        );
        self.assert_hidden("health().last_error", &format!("{last_error:?}"));
        if let Err(err) = bus.publish(event("t:a", 1)).await {
            self.assert_hidden("publish error", &format!("{err} | {err:?}"));
        }
        proxy.refuse(false);
        sub.cancel().await;
        bus.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_for_any_accepted_connection_string() {
    let (log, _serial) = capture().await;
    let seed = std::env::var("EVENT_BUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    let mut rng = Rng::new(seed);
    let server = postgres_server::addr().await;
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let proxy = TcpProxy::start(server).await;
    let mut cases = Vec::new();
    for i in 0..400 {
        let case = generate(&mut rng, server, "test");
        case.check_offline();
        if i % 40 == 0 {
            let to_closed_port = generate(&mut rng, closed, "test");
            to_closed_port.check_failing_bus().await;
            let missing_db = format!("missing_{}", namespace());
            let wrong_db = generate(&mut rng, server, &missing_db);
            wrong_db.check_failing_bus().await;
            let via_proxy = generate(&mut rng, proxy.addr(), "test");
            via_proxy.check_lost_connection(&proxy).await;
            cases.extend([to_closed_port, wrong_db, via_proxy]);
        }
        cases.push(case);
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // let background tasks log their last lines
    let text = log.take();
    assert!(
        text.contains("password=***") && text.contains("WARN"),
        "the failure paths were exercised and logged (EVENT_BUS_SEED={seed}):\n{text}"
    );
    for case in &cases {
        case.assert_hidden("the log", &text);
    }
}
