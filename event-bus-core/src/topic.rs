//! Topic rules.
//!
//! A topic is a non-empty UTF-8 string of at most [`MAX_TOPIC_LEN`] bytes, made of
//! segments separated by `:` (`registry:bots:config`). Segments are non-empty, and a
//! topic holds no whitespace or control characters. Any other character is allowed,
//! including the glob characters `*?[]\` (a pattern matches them with a `\` escape).
//! Topics are case-sensitive. Every backend applies these same rules at publish.

use crate::error::Error;

/// Longest topic (and pattern), in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Checks `topic` against the topic rules.
///
/// # Errors
/// [`Error::InvalidTopic`] naming the topic and the rule it broke.
///
/// ```
/// use event_bus_core::topic::validate_topic;
/// assert!(validate_topic("registry:bots:config").is_ok());
/// assert!(validate_topic("").is_err());
/// assert!(validate_topic("a::b").is_err());
/// assert!(validate_topic("has space").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    if is_plain_ascii_topic(topic) {
        return Ok(());
    }
    let reason = if topic.is_empty() {
        "must not be empty".to_owned()
    } else if topic.len() > MAX_TOPIC_LEN {
        format!(
            "is {} bytes long; at most {MAX_TOPIC_LEN} allowed",
            topic.len()
        )
    } else if let Some(c) = topic.chars().find(|c| c.is_whitespace() || c.is_control()) {
        format!("must not contain whitespace or control characters (found {c:?})")
    } else if topic.split(':').any(str::is_empty) {
        "segments separated by `:` must not be empty".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// The fast path for the common case: printable ASCII without spaces, non-empty
/// segments, within the length limit. Anything else (including every non-ASCII topic)
/// goes through the full check, which also explains the error. Written as folds without
/// early exits so the compiler can check several bytes per instruction.
fn is_plain_ascii_topic(topic: &str) -> bool {
    let bytes = topic.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if bytes.len() > MAX_TOPIC_LEN || first == b':' || last == b':' {
        return false;
    }
    let printable = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x7f - 0x21));
    let empty_segment = bytes
        .iter()
        .zip(&bytes[1..])
        .fold(false, |found, (&a, &b)| found | ((a == b':') & (b == b':')));
    printable && !empty_segment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_agrees_with_the_rules() {
        for (topic, ok) in [
            ("a", true),
            ("a:b:c", true),
            ("a*b?[c]\\d", true),
            ("", false),
            (":a", false),
            ("a:", false),
            ("a::b", false),
            ("a b", false),
            ("a\tb", false),
            ("a\u{7f}", false),
            ("ü:ß", true),
            ("ü\u{a0}x", false),
        ] {
            assert_eq!(validate_topic(topic).is_ok(), ok, "{topic:?}");
        }
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }
}
