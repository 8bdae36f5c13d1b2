//! How topics map to NOTIFY channel names, and identifier quoting.
//!
//! PostgreSQL channel names are identifiers: at most 63 bytes, and case-exact only when
//! quoted. Topics can be up to 255 bytes of any non-space UTF-8, so a topic is never
//! used as a channel name directly. Instead, for a `channel_prefix` `P`:
//!
//! | channel | name | who LISTENs |
//! |---|---|---|
//! | a topic's channel | `P_` + the first 32 hex digits (lowercase) of SHA-256 of the topic's UTF-8 bytes | buses with an exact subscription to that topic |
//! | the pattern channel | `P_all` | buses with at least one wildcard subscription |
//! | a bus's flush channel | `P_flush_` + 16 random hex digits | that bus alone |
//!
//! The mapping is case-exact (`Orders` and `orders` hash differently) and, with a
//! 128-bit digest, collision-free in practice; because the envelope carries the real
//! topic, a listener still drops (and counts as malformed) a message whose topic does
//! not belong to the channel it arrived on. The prefix follows the rules of
//! [`event_bus_core::namespace`], the same on every backend: 1–30 ASCII letters, digits
//! and `_`, so every name fits in 63 bytes, and names of different prefixes never
//! coincide. Every name is still double-quoted in `LISTEN`/`UNLISTEN`.
//!
//! In SQL: `SELECT 'events_' || left(encode(sha256(convert_to('orders:eu', 'UTF8')), 'hex'), 32)`.

use event_bus_core::{Error, topic::validate_topic};
use sha2::{Digest, Sha256};

pub use event_bus_core::namespace::{MAX_PREFIX_LEN, validate_prefix};

/// The channel a topic's events are sent on under `prefix` (see the [module docs](self)).
///
/// # Errors
/// [`Error::InvalidTopic`] for a topic that breaks the topic rules (the same error
/// `subscribe` and `publish` return); [`Error::Config`] for a bad prefix.
///
/// ```
/// use event_bus_postgres::channel::topic_channel;
/// let name = topic_channel("events", "orders:eu")?;
/// assert!(name.starts_with("events_") && name.len() == 7 + 32);
/// assert_ne!(name, topic_channel("events", "Orders:eu")?);
/// # Ok::<(), event_bus_core::Error>(())
/// ```
pub fn topic_channel(prefix: &str, topic: &str) -> Result<String, Error> {
    validate_prefix(prefix)?;
    validate_topic(topic)?;
    Ok(hashed(prefix, topic))
}

fn hashed(prefix: &str, topic: &str) -> String {
    let digest = Sha256::digest(topic.as_bytes());
    let mut name = String::with_capacity(prefix.len() + 33);
    name.push_str(prefix);
    name.push('_');
    for byte in &digest[..16] {
        name.push(char::from(HEX[usize::from(byte >> 4)]));
        name.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    name
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Double-quotes an identifier for SQL, doubling embedded quotes. Channel names built
/// here never need it, but every identifier we send goes through it.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The channel names one bus uses.
#[derive(Clone, Debug)]
pub(crate) struct Channels {
    prefix: String,
    all: String,
    flush: String,
}

impl Channels {
    /// Channels under a validated `prefix`, with a fresh flush channel.
    pub(crate) fn new(prefix: &str) -> Result<Self, Error> {
        validate_prefix(prefix)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            prefix: prefix.to_owned(),
            all: format!("{prefix}_all"),
            flush: format!("{prefix}_flush_{}", &id[..16]),
        })
    }

    /// The channel of a topic; validates the topic.
    pub(crate) fn topic(&self, topic: &str) -> Result<String, Error> {
        validate_topic(topic)?;
        Ok(hashed(&self.prefix, topic))
    }

    /// The channel of an already validated topic.
    pub(crate) fn topic_unchecked(&self, topic: &str) -> String {
        hashed(&self.prefix, topic)
    }

    /// The pattern channel every publish also notifies.
    pub(crate) fn all(&self) -> &str {
        &self.all
    }

    /// This bus's private flush channel.
    pub(crate) fn flush(&self) -> &str {
        &self.flush
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for good in ["events", "A_1", &"x".repeat(30)] {
            validate_prefix(good).unwrap();
        }
        for bad in [
            "",
            "a\"b",
            "a;b",
            "drop table",
            "ünï",
            &"x".repeat(31),
            "a-b",
        ] {
            let err = validate_prefix(bad).unwrap_err().to_string();
            assert!(err.contains("channel_prefix"), "{err}");
        }
    }

    #[test]
    fn names_fit_and_are_case_exact() {
        let ch = Channels::new(&"p".repeat(30)).unwrap();
        let long_topic = "ü".repeat(120);
        for t in ["a", "Orders", "orders", "x\";DROP", long_topic.as_str()] {
            let name = ch.topic(t).unwrap();
            assert!(name.len() <= 63, "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        }
        assert_ne!(ch.topic("Orders").unwrap(), ch.topic("orders").unwrap());
        assert!(ch.flush().len() <= 63 && ch.all().len() <= 63);
        assert!(matches!(ch.topic("a b"), Err(Error::InvalidTopic { .. })));
    }

    #[test]
    fn sql_compatible_digest() {
        // SELECT left(encode(sha256(convert_to('orders:eu','UTF8')),'hex'),32)
        assert_eq!(
            topic_channel("events", "orders:eu").unwrap(),
            "events_32e750fe5b45b4c37abb0ac78c7f9559"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
