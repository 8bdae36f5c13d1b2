//! The glob pattern language, the same on every backend.
//!
//! | syntax   | matches |
//! |----------|---------|
//! | `*`      | any run of characters, including none and including `:` |
//! | `?`      | exactly one character |
//! | `[abc]`  | one of the listed characters; ranges like `[a-z0-9]` work |
//! | `[!abc]` | one character that is not listed |
//! | `\c`     | the character `c` itself (so `\*` matches a literal `*`) |
//! | other    | itself, case-sensitively |
//!
//! Inside a class, `\` escapes the next character and a `]` right after `[` or `[!` is
//! literal. A pattern is rejected with [`Error::InvalidPattern`] when it is longer than
//! [`MAX_TOPIC_LEN`] bytes, holds whitespace or a control character, has an unclosed
//! `[`, an empty class or a reversed range, or ends in a lone `\`. A pattern without
//! wildcards (the empty one too) is an exact topic: it must be a valid topic, and one
//! that is not fails with [`Error::InvalidTopic`], the error `publish` gives for it.
//!
//! Matching is on whole topics: `orders:*` matches `orders:eu` and `orders:eu:paid`
//! but not `orders`.

use std::fmt;

use crate::{
    error::Error,
    topic::{MAX_TOPIC_LEN, validate_topic},
};

/// One element of a parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// A character that matches itself.
    Literal(char),
    /// `?`: any one character.
    AnyChar,
    /// `*`: any run of characters.
    AnyRun,
    /// `[...]` or `[!...]`.
    Class {
        /// `true` for `[!...]`.
        negated: bool,
        /// Inclusive character ranges; a single character `c` is `(c, c)`.
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Self::Literal(l) => *l == c,
            Self::AnyChar => true,
            Self::AnyRun => unreachable!("`*` is handled by the matcher"),
            Self::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A parsed, validated subscription pattern.
///
/// ```
/// use event_bus_core::Pattern;
/// let p = Pattern::parse("orders:[!x]*").unwrap();
/// assert!(p.matches("orders:eu"));
/// assert!(!p.matches("orders:xx"));
/// assert_eq!(Pattern::parse("orders:eu").unwrap().literal(), Some("orders:eu"));
/// assert!(Pattern::parse("orders:[").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
    literal: Option<String>,
}

impl Pattern {
    /// Parses and validates `pattern`.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] (or [`Error::InvalidTopic`] for a wildcard-free pattern
    /// that is not a valid topic) naming the pattern and the rule it broke.
    pub fn parse(pattern: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        let tokens = tokenize(pattern).map_err(invalid)?;
        let literal = tokens
            .iter()
            .map(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect::<Option<String>>();
        // A wildcard-free pattern is an exact topic: it breaks the topic rules with the
        // error `publish` gives for the same topic.
        if let Some(topic) = &literal {
            validate_topic(topic)?;
        }
        if pattern.is_empty() {
            return Err(invalid("must not be empty".into()));
        }
        if pattern.len() > MAX_TOPIC_LEN {
            return Err(invalid(format!(
                "is {} bytes long; at most {MAX_TOPIC_LEN} allowed",
                pattern.len()
            )));
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(format!(
                "must not contain whitespace or control characters (found {c:?})"
            )));
        }
        Ok(Self {
            source: pattern.to_owned(),
            tokens,
            literal,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The parsed tokens, for backends that translate patterns to a server's syntax.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The one topic this pattern matches, if it has no wildcard (escapes removed).
    pub fn literal(&self) -> Option<&str> {
        self.literal.as_deref()
    }

    /// The literal text every matching topic starts with (escapes removed).
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whether `topic` matches the whole pattern.
    pub fn matches(&self, topic: &str) -> bool {
        if let Some(literal) = &self.literal {
            return literal == topic;
        }
        glob_match(&self.tokens, topic)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Pattern {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

fn tokenize(pattern: &str) -> Result<Vec<Token>, String> {
    let mut chars = pattern.chars().peekable();
    let mut tokens = Vec::new();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Token::AnyRun,
            '?' => Token::AnyChar,
            '\\' => Token::Literal(chars.next().ok_or("ends with a lone `\\`")?),
            '[' => parse_class(&mut chars)?,
            c => Token::Literal(c),
        });
    }
    Ok(tokens)
}

fn parse_class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Token, String> {
    let negated = chars.next_if_eq(&'!').is_some();
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = match chars.next() {
            None => return Err("has an unclosed `[`".into()),
            Some(']') if !first => break,
            Some('\\') => chars.next().ok_or("ends with a lone `\\`")?,
            Some(c) => c,
        };
        first = false;
        let hi = if chars.peek() == Some(&'-') {
            let mut ahead = chars.clone();
            ahead.next();
            match ahead.peek() {
                Some(']') | None => c,
                Some(_) => {
                    chars.next();
                    let hi = match chars.next() {
                        Some('\\') => chars.next().ok_or("ends with a lone `\\`")?,
                        Some(h) => h,
                        None => return Err("has an unclosed `[`".into()),
                    };
                    if hi < c {
                        return Err(format!("has a reversed range `{c}-{hi}`"));
                    }
                    hi
                }
            }
        } else {
            c
        };
        ranges.push((c, hi));
    }
    if ranges.is_empty() {
        return Err("has an empty character class".into());
    }
    Ok(Token::Class { negated, ranges })
}

/// Iterative glob matching with single-star backtracking: O(pattern × topic) worst case.
fn glob_match(tokens: &[Token], topic: &str) -> bool {
    // Byte offsets into `topic`, always on character boundaries; no allocation, as this
    // runs for every candidate wildcard subscription of every event.
    let char_at = |i: usize| topic.get(i..).and_then(|rest| rest.chars().next());
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = char_at(t) {
        match tokens.get(p) {
            Some(Token::AnyRun) => {
                star = Some((p, t));
                p += 1;
            }
            Some(tok) if tok.matches(c) => {
                p += 1;
                t += c.len_utf8();
            }
            _ => match star {
                Some((sp, st)) => {
                    let next = st + char_at(st).map_or(1, char::len_utf8);
                    p = sp + 1;
                    t = next;
                    star = Some((sp, next));
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|tok| *tok == Token::AnyRun)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern, topic, matches?)
    const CASES: &[(&str, &str, bool)] = &[
        ("orders", "orders", true),
        ("orders", "orders:eu", false),
        ("orders", "Orders", false),
        ("orders:*", "orders:eu", true),
        ("orders:*", "orders:eu:paid", true),
        ("orders:*", "orders:", true),
        ("orders:*", "orders", false),
        ("orders*", "orders", true),
        ("orders*", "ordersx", true),
        ("*", "anything:at:all", true),
        ("*:paid", "orders:eu:paid", true),
        ("*:paid", "orders:eu:unpaid", false),
        ("orders:?", "orders:a", true),
        ("orders:?", "orders:ab", false),
        ("orders:?", "orders:", false),
        ("orders:??", "orders:é€", true),
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("a*b*c", "acb", false),
        ("a**", "a", true),
        ("*a*", "bab", true),
        ("*a*", "bbb", false),
        ("[abc]x", "bx", true),
        ("[abc]x", "dx", false),
        ("[!abc]x", "dx", true),
        ("[!abc]x", "ax", false),
        ("[a-c]", "b", true),
        ("[a-c]", "d", false),
        ("[a-cx-z]", "y", true),
        ("[!a-c]", "b", false),
        ("[]]", "]", true),
        ("[!]]", "a", true),
        ("[!]]", "]", false),
        ("[a-]", "-", true),
        ("[*]", "*", true),
        ("[*]", "x", false),
        ("[\\]]", "]", true),
        ("\\*", "*", true),
        ("\\*", "x", false),
        ("\\?", "?", true),
        ("\\?", "a", false),
        ("a\\[b", "a[b", true),
        ("a\\\\b", "a\\b", true),
        ("[^a]", "^", true),
        ("[^a]", "b", false),
        ("ü*", "über:alles", true),
        ("*ß", "straß", true),
        ("*ß", "straße", false),
        ("user:*:created", "user:42:created", true),
        ("user:*:created", "user:42:deleted", false),
        ("user:*:created", "user:created", false),
        ("x?z", "x:z", true),
        ("*:*", "a:b", true),
        ("*:*", "ab", false),
    ];

    #[test]
    fn pattern_table() {
        for &(pattern, topic, expected) in CASES {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.matches(topic), expected, "{pattern:?} vs {topic:?}");
        }
        assert!(CASES.len() >= 40);
    }

    #[test]
    fn invalid_patterns_are_rejected_with_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("a[", "unclosed"),
            ("a[!", "unclosed"),
            ("a[]", "unclosed"),
            ("a\\", "lone"),
            ("[z-a]", "reversed"),
            ("a b*", "whitespace"),
            ("a\n*", "control"),
        ] {
            let err = Pattern::parse(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(
            Pattern::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("bytes long")
        );
        // Wildcard-free patterns are exact topics: the topic rules and error apply.
        let long_topic = "a".repeat(MAX_TOPIC_LEN + 1);
        for topic in ["a::b", "a b", "a\tb", "", ":a", long_topic.as_str()] {
            assert!(
                matches!(Pattern::parse(topic), Err(Error::InvalidTopic { .. })),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn literal_and_prefix() {
        assert_eq!(Pattern::parse("a\\*b").unwrap().literal(), Some("a*b"));
        assert_eq!(Pattern::parse("a*b").unwrap().literal(), None);
        assert_eq!(
            Pattern::parse("ord\\?ers:*").unwrap().literal_prefix(),
            "ord?ers:"
        );
        assert_eq!(Pattern::parse("*x").unwrap().literal_prefix(), "");
    }
}
