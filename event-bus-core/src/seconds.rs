//! Duration settings: every config key that holds a duration ends in `_seconds` and
//! accepts either a number of seconds or a string with a unit.
//!
//! | value      | seconds |
//! |------------|---------|
//! | `5`, `2.5` | 5, 2.5  |
//! | `"250ms"`  | 0.25    |
//! | `"5s"`     | 5       |
//! | `"2m"`     | 120     |
//! | `"1h"`     | 3600    |
//!
//! Config types read such a key with `#[serde(deserialize_with =
//! "event_bus_core::seconds::deserialize")]`; the value is stored as `f64` seconds, and
//! range checks (positive, finite) are left to the type's `validate`, which uses
//! [`check_seconds`](crate::config::check_seconds).
//!
//! ```
//! use event_bus_core::seconds::parse;
//! assert_eq!(parse("250ms"), Ok(0.25));
//! assert_eq!(parse("1.5s"), Ok(1.5));
//! assert_eq!(parse("2m"), Ok(120.0));
//! assert!(parse("5 parsecs").is_err());
//! ```

use std::fmt;

use serde::{
    Deserializer,
    de::{self, Visitor},
};

/// The units a duration string may end in, with their length in seconds.
const UNITS: [(&str, f64); 4] = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];

/// What a duration key accepts, for error messages.
const EXPECTED: &str = "a number of seconds or a duration string such as \"250ms\", \"5s\", \
                        \"2m\" or \"1h\"";

/// Parses a duration string (`"250ms"`, `"5s"`, `"2m"`, `"1h"`, or a bare number of
/// seconds such as `"2.5"`) into seconds.
///
/// # Errors
/// A message quoting `text` and saying what is accepted.
pub fn parse(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    // "ms" is tried before "s" and "m" so that "250ms" is not read as 250 m + "s".
    let (number, scale) = UNITS
        .iter()
        .find_map(|&(unit, scale)| trimmed.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((trimmed, 1.0));
    let number = number.trim_end();
    let valid_number = !number.is_empty()
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'));
    match number.parse::<f64>() {
        Ok(value) if valid_number => Ok(value * scale),
        _ => Err(format!("expected {EXPECTED}, got {text:?}")),
    }
}

/// Serde `deserialize_with` helper: reads a number of seconds or a duration string
/// (see [`parse`]) as `f64` seconds.
///
/// # Errors
/// A serde error quoting the bad value; the config parsers add the key's path.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(SecondsVisitor)
}

struct SecondsVisitor;

impl Visitor<'_> for SecondsVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<f64, E> {
        parse(value).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::config::{from_json_str, from_toml_str};

    #[derive(Debug, Deserialize)]
    struct Settings {
        #[serde(deserialize_with = "deserialize")]
        wait_seconds: f64,
    }

    #[test]
    fn units_and_numbers() {
        for (text, expected) in [
            ("250ms", 0.25),
            ("5s", 5.0),
            ("1.5s", 1.5),
            ("2m", 120.0),
            ("1h", 3600.0),
            ("3", 3.0),
            (" 10 s ", 10.0),
            ("0s", 0.0),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
        for text in [
            "",
            "s",
            "5 parsecs",
            "5d",
            "1e3s",
            "five seconds",
            "inf",
            "NaN",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn json_and_toml_accept_numbers_and_strings() {
        for json in [r#"{"wait_seconds": 0.25}"#, r#"{"wait_seconds": "250ms"}"#] {
            let s: Settings = from_json_str(json).unwrap();
            assert_eq!(s.wait_seconds, 0.25, "{json}");
        }
        for toml in [
            "wait_seconds = 5",
            "wait_seconds = 5.0",
            "wait_seconds = \"5s\"",
        ] {
            let s: Settings = from_toml_str(toml).unwrap();
            assert_eq!(s.wait_seconds, 5.0, "{toml}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        for (result, value) in [
            (
                from_json_str::<Settings>(r#"{"wait_seconds": "5 parsecs"}"#),
                "\"5 parsecs\"",
            ),
            (
                from_toml_str::<Settings>("wait_seconds = \"soon\""),
                "\"soon\"",
            ),
            (
                from_json_str::<Settings>(r#"{"wait_seconds": true}"#),
                "boolean `true`",
            ),
        ] {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("`wait_seconds`"), "{err}");
            assert!(err.contains(value), "{err}");
            assert!(err.contains("\"250ms\""), "{err}");
        }
    }
}
