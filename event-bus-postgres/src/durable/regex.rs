//! A pattern's SQL form: the PostgreSQL regular expression (for the `~` operator) that
//! matches exactly the topics [`Pattern::matches`] matches.
//!
//! | pattern | regular expression |
//! |---|---|
//! | `*` | `.*` |
//! | `?` | `.` |
//! | `[a-z]`, `[!x]` | `[\U00000061-\U0000007a]`, `[^\U00000078]` |
//! | a letter or digit (ASCII) | itself |
//! | any other character `c` | `\Uhhhhhhhh`, its code point |
//!
//! and the whole is anchored: `^(?:...)$`. Every character that could mean something to
//! the regular-expression engine is written as a code-point escape, so no topic or
//! pattern text reaches the server as syntax. The expression is a bound parameter,
//! never part of a statement's text.
//!
//! ```sql
//! SELECT 'orders:eu' ~ '^(?:orders\U0000003a.*)$';  -- true, as `orders:*` matches it
//! ```

use std::fmt::Write;

use event_bus_core::{Pattern, pattern::Token};

/// The anchored regular expression for `pattern` (see the [module docs](self)).
pub fn pattern_regex(pattern: &Pattern) -> String {
    let mut out = String::from("^(?:");
    for token in pattern.tokens() {
        match token {
            Token::AnyRun => out.push_str(".*"),
            Token::AnyChar => out.push('.'),
            Token::Literal(c) if c.is_ascii_alphanumeric() => out.push(*c),
            Token::Literal(c) => escape(&mut out, *c),
            Token::Class { negated, ranges } => {
                out.push('[');
                if *negated {
                    out.push('^');
                }
                for &(lo, hi) in ranges {
                    escape(&mut out, lo);
                    if hi != lo {
                        out.push('-');
                        escape(&mut out, hi);
                    }
                }
                out.push(']');
            }
        }
    }
    out.push_str(")$");
    out
}

fn escape(out: &mut String, c: char) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\U{:08x}", u32::from(c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_each_token() {
        let re = |p: &str| pattern_regex(&Pattern::parse(p).unwrap());
        assert_eq!(re("a*"), "^(?:a.*)$");
        assert_eq!(re("a?"), "^(?:a.)$");
        assert_eq!(re("o:[a-c]"), "^(?:o\\U0000003a[\\U00000061-\\U00000063])$");
        assert_eq!(re("[!x]*"), "^(?:[^\\U00000078].*)$");
        assert_eq!(re("\\*"), "^(?:\\U0000002a)$");
        assert_eq!(re("x');d*"), "^(?:x\\U00000027\\U00000029\\U0000003bd.*)$");
    }
}
