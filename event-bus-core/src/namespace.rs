//! The `channel_prefix` rules, the same on every network backend.
//!
//! A `channel_prefix` names a bus's namespace on the server: buses with different
//! prefixes never see each other's events. It is 1 to [`MAX_PREFIX_LEN`] ASCII letters,
//! digits and `_`, so that every backend can build names from it that are valid and
//! unambiguous:
//!
//! | backend | names built from prefix `P` | why the rule |
//! |---|---|---|
//! | Redis | channel `P:{topic}`, client name `eventbus:P:sub:{id}` | no `:` in `P`, so `P:b` + topic `c` never meets `P` + topic `b:c`; no spaces or non-ASCII characters, which `CLIENT SETNAME` refuses |
//! | PostgreSQL | channels `P_{digest}`, `P_all`, `P_flush_{id}` | identifiers of at most 63 bytes |
//! | NATS | subjects `P.{tokens}`, client name `eventbus:P:{id}` | no `.`, `*` or `>` in `P`, so it is one literal subject token |
//!
//! A configuration valid on one backend is therefore valid on every other.

use crate::error::Error;

/// Longest `channel_prefix`, in bytes.
pub const MAX_PREFIX_LEN: usize = 30;

/// Checks a `channel_prefix` against the rules above.
///
/// # Errors
/// [`Error::Config`] naming `channel_prefix` and the rule it broke.
///
/// ```
/// use event_bus_core::namespace::validate_prefix;
/// assert!(validate_prefix("billing_v2").is_ok());
/// for bad in ["", "a:b", "a b", "café", "a-b"] {
///     let err = validate_prefix(bad).unwrap_err().to_string();
///     assert!(err.contains("`channel_prefix`"), "{err}");
/// }
/// ```
pub fn validate_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err(Error::config(
            "channel_prefix",
            format!(
                "must be 1 to {MAX_PREFIX_LEN} bytes long, got {}",
                prefix.len()
            ),
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(Error::config(
            "channel_prefix",
            format!("may hold only ASCII letters, digits and `_` (found {c:?})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_prefixes_are_rejected() {
        let long = "a".repeat(MAX_PREFIX_LEN + 1);
        for bad in [
            "", "P:b", ":", "a b", "a\tb", "a\nb", "ünï", "a\u{0}", "a*", "a\"b", &long,
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        for good in ["events", "P", "a_1", "T0", &"z".repeat(MAX_PREFIX_LEN)] {
            validate_prefix(good).unwrap();
        }
    }
}
