//! How topics map to NATS subjects, and patterns to subscription subjects.
//!
//! A NATS subject is a sequence of non-empty tokens separated by `.`; `*` and `>` are
//! wildcards when they form a whole token, and whitespace is not allowed. A topic is a
//! sequence of non-empty segments separated by `:`, and a segment may hold `.`, `*`,
//! `>` or any other non-space character. For a `channel_prefix` `P`, topic
//! `s1:s2:…:sn` travels on subject `P.e(s1).e(s2).….e(sn)`, where `e` keeps every
//! character except these, which it writes as `%` and two uppercase hex digits per
//! UTF-8 byte:
//!
//! | character | written as | why |
//! |---|---|---|
//! | `.` | `%2E` | the token separator |
//! | `*` | `%2A` | the one-token wildcard |
//! | `>` | `%3E` | the many-token wildcard |
//! | `%` | `%25` | the escape character itself |
//! | whitespace, control | `%XX` per byte | not allowed in subjects (topics never hold them) |
//!
//! So, with the default prefix `events`:
//!
//! | topic | subject |
//! |---|---|
//! | `orders:eu` | `events.orders.eu` |
//! | `Orders:EU` | `events.Orders.EU` (case is kept) |
//! | `v1.2:x` | `events.v1%2E2.x` |
//! | `a*b:>` | `events.a%2Ab.%3E` |
//! | `50%:off` | `events.50%25.off` |
//! | `ü:ö` | `events.ü.ö` |
//!
//! The mapping is collision-free: `e` is injective (every `%` it writes starts an
//! escape), its output never holds `.`, and segments are never empty, so the subject
//! determines the topic ([`Subjects::topic`] inverts it). Prefixes follow the core
//! [`namespace`](event_bus_core::namespace) rule (ASCII letters, digits and `_`): one
//! subject token, so subjects of different prefixes never coincide.
//!
//! A subscription's pattern is turned into one subscription subject: a wildcard-free
//! pattern subscribes to its topic's subject; any other pattern to the subject of the
//! complete segments of its literal prefix followed by `>`, which matches a superset of
//! the pattern's topics. The core [pattern](event_bus_core::pattern) language then
//! decides exactly, on the bus:
//!
//! | pattern | subscription subject |
//! |---|---|
//! | `orders:eu` | `events.orders.eu` |
//! | `orders:*` | `events.orders.>` |
//! | `orders:e?:paid` | `events.orders.>` |
//! | `orders*` | `events.>` |
//! | `*:created` | `events.>` |
//!
//! On the command line: `nats sub 'events.orders.>'` shows what a bus subscribed to
//! `orders:*` receives.

use std::fmt::{self, Write};

use event_bus_core::{Pattern, pattern::Token};

/// The subject names of one `channel_prefix`; see the [module docs](self).
///
/// ```
/// use event_bus_nats::subject::Subjects;
/// use event_bus_core::Pattern;
/// let subjects = Subjects::new("shop");
/// assert_eq!(subjects.subject("orders:v1.2"), "shop.orders.v1%2E2");
/// assert_eq!(subjects.topic("shop.orders.v1%2E2").as_deref(), Some("orders:v1.2"));
/// assert_eq!(subjects.target(&Pattern::parse("orders:*")?), "shop.orders.>");
/// # Ok::<(), event_bus_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (already
    /// [validated](event_bus_core::namespace::validate_prefix)).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The subject that carries `topic` (a valid topic).
    pub fn subject(&self, topic: &str) -> String {
        let mut subject = String::with_capacity(self.prefix.len() + topic.len() + 8);
        self.write_subject(topic, &mut subject);
        subject
    }

    /// Whether `subject` is the subject of `topic` (without building it).
    pub fn is_subject_of(&self, subject: &str, topic: &str) -> bool {
        let mut cmp = Compare(Some(subject));
        self.write_subject(topic, &mut cmp);
        cmp.0 == Some("")
    }

    /// Whether `target` is the subscription subject of `pattern` (without building it).
    pub fn is_target_of(&self, target: &str, pattern: &Pattern) -> bool {
        let mut cmp = Compare(Some(target));
        self.write_target(pattern, &mut cmp);
        cmp.0 == Some("")
    }

    fn write_subject(&self, topic: &str, out: &mut impl Write) {
        let _ = out.write_str(&self.prefix);
        for segment in topic.split(':') {
            let _ = out.write_char('.');
            encode_into(segment, out);
        }
    }

    /// The topic carried by `subject`, if it is a topic subject of this prefix.
    pub fn topic(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let mut topic = String::with_capacity(rest.len());
        for (i, token) in rest.split('.').enumerate() {
            if token.is_empty() {
                return None;
            }
            if i > 0 {
                topic.push(':');
            }
            topic.push_str(&decode(token)?);
        }
        Some(topic)
    }

    /// The subject a subscription to `pattern` subscribes to on the server.
    pub fn target(&self, pattern: &Pattern) -> String {
        let mut target = String::with_capacity(self.prefix.len() + pattern.as_str().len() + 8);
        self.write_target(pattern, &mut target);
        target
    }

    fn write_target(&self, pattern: &Pattern, out: &mut impl Write) {
        if let Some(topic) = pattern.literal() {
            return self.write_subject(topic, out);
        }
        let literal = pattern.tokens().iter().map_while(|t| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        });
        // Only segments followed by `:` are complete: the last one may continue.
        let complete = literal
            .clone()
            .enumerate()
            .filter(|(_, c)| *c == ':')
            .last();
        let _ = out.write_str(&self.prefix);
        if let Some((end, _)) = complete {
            let _ = out.write_char('.');
            for c in literal.take(end) {
                if c == ':' {
                    let _ = out.write_char('.');
                } else {
                    encode_char(c, out);
                }
            }
        }
        let _ = out.write_str(".>");
    }
}

/// A writer comparing what is written with a text: `Some(rest)` while it matches.
struct Compare<'a>(Option<&'a str>);

impl Write for Compare<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0.and_then(|rest| rest.strip_prefix(s));
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '.' | '*' | '>' | '%') || c.is_whitespace() || c.is_control()
}

/// `segment` with the characters NATS reserves written as `%XX` (one subject token
/// when `segment` is not empty).
pub(crate) fn encode_token(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    encode_into(segment, &mut out);
    out
}

fn encode_into(segment: &str, out: &mut impl Write) {
    for c in segment.chars() {
        encode_char(c, out);
    }
}

/// Writers here (`String`, [`Compare`]) never fail.
fn encode_char(c: char, out: &mut impl Write) {
    if needs_escape(c) {
        let mut buf = [0; 4];
        for byte in c.encode_utf8(&mut buf).bytes() {
            let _ = write!(out, "%{byte:02X}");
        }
    } else {
        let _ = out.write_char(c);
    }
}

/// Inverts [`encode_into`]; `None` for a token it cannot have written.
fn decode(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    // Canonical form only: re-encoding gives the token back.
    let mut again = String::new();
    encode_into(&text, &mut again);
    (again == token).then_some(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use event_bus_core::topic::validate_topic;

    use super::*;

    fn subjects() -> Subjects {
        Subjects::new("events")
    }

    #[test]
    fn the_documented_table_holds() {
        let s = subjects();
        for (topic, subject) in [
            ("orders:eu", "events.orders.eu"),
            ("Orders:EU", "events.Orders.EU"),
            ("v1.2:x", "events.v1%2E2.x"),
            ("a*b:>", "events.a%2Ab.%3E"),
            ("50%:off", "events.50%25.off"),
            ("ü:ö", "events.ü.ö"),
        ] {
            assert_eq!(s.subject(topic), subject);
            assert_eq!(s.topic(subject).as_deref(), Some(topic));
        }
        assert!(s.is_subject_of("events.v1%2E2.x", "v1.2:x"));
        assert!(!s.is_subject_of("events.v1%2E2.x", "v1.2:x:y"));
        assert!(!s.is_subject_of("events.v1%2E2", "v1.2:x"));
        for (pattern, target) in [
            ("orders:eu", "events.orders.eu"),
            ("orders:*", "events.orders.>"),
            ("orders:e?:paid", "events.orders.>"),
            ("orders*", "events.>"),
            ("*:created", "events.>"),
            ("a\\*:b.c:*", "events.a%2A.b%2Ec.>"),
        ] {
            let pattern = Pattern::parse(pattern).unwrap();
            assert_eq!(s.target(&pattern), target);
            assert!(s.is_target_of(target, &pattern));
            assert!(!s.is_target_of(&format!("{target}x"), &pattern));
        }
    }

    /// Every topic built from segments of tricky characters maps to its own valid
    /// subject, and back.
    #[test]
    fn mapping_is_collision_free_and_round_trips() {
        let alphabet = [
            "a", "B", ".", "*", ">", "%", "%2E", "ü", "\\", "[", "?", "_",
        ];
        let mut segments: Vec<String> = alphabet.iter().map(|s| (*s).to_owned()).collect();
        for a in alphabet {
            for b in alphabet {
                segments.push(format!("{a}{b}"));
            }
        }
        let s = subjects();
        let mut seen = HashMap::new();
        for x in &segments {
            for y in &segments {
                for topic in [x.clone(), format!("{x}:{y}"), format!("{x}:{y}:{x}")] {
                    validate_topic(&topic).unwrap();
                    let subject = s.subject(&topic);
                    assert!(is_valid_subject(&subject), "{topic} -> {subject}");
                    assert_eq!(s.topic(&subject).as_deref(), Some(topic.as_str()));
                    if let Some(other) = seen.insert(subject.clone(), topic.clone()) {
                        assert_eq!(other, topic, "collision on {subject}");
                    }
                }
            }
        }
        assert!(seen.len() > 30_000);
    }

    /// The subscription subject of a pattern matches the subject of every topic the
    /// pattern matches.
    #[test]
    fn targets_are_supersets() {
        let s = subjects();
        let topics = [
            "orders",
            "orders:eu",
            "orders:eu:paid",
            "ord.x:a",
            "o*:>",
            "x:orders",
        ];
        for pattern in [
            "orders:*",
            "orders*",
            "o*",
            "ord.x:*",
            "o\\*:*",
            "*:orders",
            "orders:e?",
        ] {
            let pattern = Pattern::parse(pattern).unwrap();
            let target = s.target(&pattern);
            for topic in topics.iter().filter(|t| pattern.matches(t)) {
                assert!(
                    subject_matches(&target, &s.subject(topic)),
                    "{pattern:?} -> {target} misses {topic}"
                );
            }
        }
    }

    #[test]
    fn foreign_subjects_have_no_topic() {
        let s = subjects();
        for subject in [
            "other.a",
            "events",
            "events.",
            "events.a..b",
            "events.%2e",
            "events.%2",
            "events.%41",
        ] {
            assert_eq!(s.topic(subject), None, "{subject}");
        }
    }

    fn is_valid_subject(subject: &str) -> bool {
        subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
    }

    /// NATS subject matching of a subscription subject against a literal subject.
    fn subject_matches(filter: &str, subject: &str) -> bool {
        let mut tokens = subject.split('.');
        for f in filter.split('.') {
            match (f, tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (f, Some(t)) if f == t => {}
                _ => return false,
            }
        }
        tokens.next().is_none()
    }
}
