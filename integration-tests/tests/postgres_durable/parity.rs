//! Pattern parity: the regular expression a pattern becomes matches, on the real
//! server's `~` operator, exactly the topics `Pattern::matches` matches.

use std::collections::BTreeSet;

use event_bus_postgres::durable::regex::pattern_regex;
use integration_tests::postgres_server;
use multibus::Pattern;

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const TOPIC_CHARS: &[&str] = &[
    "a", "b", "c", ":", ".", "*", "?", "[", "]", "\\", "(", ")", "ä", "-", "^", "$", "'", "\"",
    "|", "+", "{", "😀",
];

const PATTERN_PARTS: &[&str] = &[
    "a",
    "b",
    "c",
    ":",
    ".",
    "(",
    ")",
    "ä",
    "-",
    "^",
    "$",
    "'",
    "\"",
    "|",
    "+",
    "{",
    "😀",
    "*",
    "*",
    "?",
    "[ab]",
    "[!a]",
    "[a-c]",
    "[!b-c:]",
    "[]a]",
    "[\\]]",
    "[.^]",
    "\\*",
    "\\?",
    "\\[",
    "\\\\",
    "[ä-😀]",
];

fn topic(rng: &mut Rng) -> String {
    let len = 1 + rng.below(7);
    (0..len).map(|_| rng.pick(TOPIC_CHARS)).collect()
}

fn pattern(rng: &mut Rng) -> String {
    let len = 1 + rng.below(5);
    (0..len).map(|_| rng.pick(PATTERN_PARTS)).collect()
}

#[tokio::test]
async fn generated_patterns_match_on_the_server_as_in_the_core() {
    let seed = 0x5eed_1234_abcd_0042_u64;
    let mut rng = Rng(seed);
    let mut patterns: Vec<Pattern> = Vec::new();
    while patterns.len() < 400 {
        if let Ok(p) = Pattern::parse(&pattern(&mut rng)) {
            patterns.push(p);
        }
    }
    let mut topics: BTreeSet<String> = BTreeSet::new();
    while topics.len() < 400 {
        let t = topic(&mut rng);
        if multibus::topic::validate_topic(&t).is_ok() {
            topics.insert(t);
        }
    }
    // Also every pattern's own literal text as a topic, so literal matches are covered.
    for p in &patterns {
        if multibus::topic::validate_topic(p.as_str()).is_ok() {
            topics.insert(p.as_str().to_owned());
        }
        if let Some(l) = p.literal() {
            topics.insert(l.to_owned());
        }
    }
    let topics: Vec<String> = topics.into_iter().collect();
    let regexes: Vec<String> = patterns.iter().map(pattern_regex).collect();
    let client = postgres_server::client().await;
    let rows = client
        .query(
            "SELECT p.i, t.j FROM unnest($1::text[]) WITH ORDINALITY AS p(re, i), \
             unnest($2::text[]) WITH ORDINALITY AS t(topic, j) WHERE t.topic ~ p.re",
            &[&regexes, &topics],
        )
        .await
        .expect("the server accepts every generated expression");
    let server: BTreeSet<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut core = BTreeSet::new();
    for (i, p) in patterns.iter().enumerate() {
        for (j, t) in topics.iter().enumerate() {
            if p.matches(t) {
                core.insert((i as i64 + 1, j as i64 + 1));
            }
        }
    }
    let show = |(i, j): &(i64, i64)| {
        let p = &patterns[*i as usize - 1];
        format!(
            "{p:?} vs {:?} ({})",
            topics[*j as usize - 1],
            regexes[*i as usize - 1]
        )
    };
    let only_server: Vec<String> = server.difference(&core).take(5).map(show).collect();
    let only_core: Vec<String> = core.difference(&server).take(5).map(show).collect();
    assert!(
        only_server.is_empty() && only_core.is_empty(),
        "seed {seed:#x}: server-only {only_server:?}; core-only {only_core:?}"
    );
    assert!(
        core.len() > 200,
        "the generator exercises matches: {}",
        core.len()
    );
}
