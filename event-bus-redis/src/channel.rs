//! Topic ↔ Redis channel naming, and translation of patterns to Redis globs.
//!
//! Topic `t` travels on channel `{prefix}:t`. A subscription without wildcards is a
//! `SUBSCRIBE` of that one channel. A wildcard pattern becomes a `PSUBSCRIBE` of a Redis
//! glob that matches a *superset* of the pattern's channels: Redis globs work on bytes
//! (`?` is one byte, classes compare bytes, `]` right after `[` ends a class, negation is
//! `^`), ours on characters, so where the two differ the glob is widened and the core
//! pattern decides exactly which topics match.

use event_bus_core::{Pattern, pattern::Token};

/// What the bus asks the server for on behalf of one or more local subscriptions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ServerTarget {
    /// `SUBSCRIBE` of one channel.
    Channel(String),
    /// `PSUBSCRIBE` of one glob.
    Glob(String),
}

/// Channel names of one bus namespace.
#[derive(Clone, Debug)]
pub(crate) struct ChannelNames {
    /// `{prefix}:`
    head: String,
    /// `{prefix}:` with Redis glob characters escaped.
    glob_head: String,
}

impl ChannelNames {
    pub(crate) fn new(prefix: &str) -> Self {
        let head = format!("{prefix}:");
        let mut glob_head = String::with_capacity(head.len() + 4);
        for c in head.chars() {
            push_literal(&mut glob_head, c);
        }
        Self { head, glob_head }
    }

    /// The channel that carries `topic`.
    pub(crate) fn channel(&self, topic: &str) -> String {
        let mut channel = String::with_capacity(self.head.len() + topic.len());
        channel.push_str(&self.head);
        channel.push_str(topic);
        channel
    }

    /// The topic carried by `channel`, if it is in this namespace.
    pub(crate) fn topic<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.head)
    }

    /// What to subscribe to on the server for `pattern`.
    pub(crate) fn target(&self, pattern: &Pattern) -> ServerTarget {
        match pattern.literal() {
            Some(topic) => ServerTarget::Channel(self.channel(topic)),
            None => ServerTarget::Glob(self.glob(pattern)),
        }
    }

    /// The Redis glob for a wildcard `pattern` (a superset of its channels).
    pub(crate) fn glob(&self, pattern: &Pattern) -> String {
        let mut glob = self.glob_head.clone();
        for token in pattern.tokens() {
            match token {
                Token::Literal(c) => push_literal(&mut glob, *c),
                Token::AnyRun => glob.push('*'),
                // One character is one to four bytes; `?*` is at least one.
                Token::AnyChar => glob.push_str("?*"),
                Token::Class {
                    negated: false,
                    ranges,
                } if ranges.iter().all(|&(_, hi)| hi.is_ascii()) => {
                    push_ascii_class(&mut glob, ranges)
                }
                // A negated or non-ASCII class may match a multi-byte character.
                Token::Class { .. } => glob.push_str("?*"),
            }
        }
        glob
    }
}

/// Appends `c` so that the Redis glob matches exactly `c`.
fn push_literal(glob: &mut String, c: char) {
    if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
        glob.push('\\');
    }
    glob.push(c);
}

/// Appends a Redis class matching exactly the ASCII characters of `ranges`: the set is
/// rebuilt as sorted runs, so equivalent classes give the same glob. Runs between
/// alphanumeric bounds become `a-z`; every other character is listed, escaped.
fn push_ascii_class(glob: &mut String, ranges: &[(char, char)]) {
    let mut set = [false; 128];
    for &(lo, hi) in ranges {
        set[lo as usize..=hi as usize].fill(true);
    }
    glob.push('[');
    let mut b = 0;
    while b < 128 {
        if !set[b] {
            b += 1;
            continue;
        }
        let start = b;
        while b + 1 < 128 && set[b + 1] {
            b += 1;
        }
        let (lo, hi) = (char::from(start as u8), char::from(b as u8));
        if hi > lo && lo.is_ascii_alphanumeric() && hi.is_ascii_alphanumeric() {
            glob.push(lo);
            glob.push('-');
            glob.push(hi);
        } else {
            for c in lo..=hi {
                if !c.is_ascii_alphanumeric() {
                    glob.push('\\');
                }
                glob.push(c);
            }
        }
        b += 1;
    }
    glob.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> String {
        ChannelNames::new("ev").glob(&Pattern::parse(p).unwrap())
    }

    /// Redis's `stringmatchlen` (util.c), byte for byte, without the `nocase` branch.
    fn redis_match(pattern: &[u8], string: &[u8]) -> bool {
        let (mut p, mut s) = (0, 0);
        while p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p + 1 < pattern.len() && pattern[p + 1] == b'*' {
                        p += 1;
                    }
                    if p + 1 == pattern.len() {
                        return true;
                    }
                    return (s..=string.len())
                        .any(|i| redis_match(&pattern[p + 1..], &string[i..]));
                }
                b'?' => {
                    if s == string.len() {
                        return false;
                    }
                    s += 1;
                }
                b'[' => {
                    if s == string.len() {
                        return false;
                    }
                    p += 1;
                    let not = pattern.get(p) == Some(&b'^');
                    if not {
                        p += 1;
                    }
                    let mut matched = false;
                    loop {
                        if pattern.get(p) == Some(&b'\\') && p + 1 < pattern.len() {
                            p += 1;
                            matched |= pattern[p] == string[s];
                        } else if pattern.get(p) == Some(&b']') {
                            break;
                        } else if p >= pattern.len() {
                            p -= 1;
                            break;
                        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' {
                            let (a, b) = (pattern[p] as i8, pattern[p + 2] as i8);
                            let (lo, hi) = if a > b { (b, a) } else { (a, b) };
                            let c = string[s] as i8;
                            p += 2;
                            matched |= lo <= c && c <= hi;
                        } else {
                            matched |= pattern[p] == string[s];
                        }
                        p += 1;
                    }
                    if matched == not {
                        return false;
                    }
                    s += 1;
                }
                b'\\' if p + 1 < pattern.len() => {
                    p += 1;
                    if s == string.len() || pattern[p] != string[s] {
                        return false;
                    }
                    s += 1;
                }
                c => {
                    if s == string.len() || c != string[s] {
                        return false;
                    }
                    s += 1;
                }
            }
            p += 1;
        }
        s == string.len()
    }

    #[test]
    fn channels_and_targets() {
        let n = ChannelNames::new("ev");
        assert_eq!(n.channel("a:b"), "ev:a:b");
        assert_eq!(n.topic("ev:a:b"), Some("a:b"));
        assert_eq!(n.topic("other:a"), None);
        let exact = Pattern::parse("a\\*b").unwrap();
        assert_eq!(n.target(&exact), ServerTarget::Channel("ev:a*b".into()));
        let wild = Pattern::parse("a:*").unwrap();
        assert_eq!(n.target(&wild), ServerTarget::Glob("ev:a:*".into()));
        assert_eq!(ChannelNames::new("p[1]").glob(&wild), "p\\[1\\]:a:*");
    }

    #[test]
    fn translations() {
        assert_eq!(glob("a?"), "ev:a?*");
        assert_eq!(glob("[abc]x*"), "ev:[a-c]x*");
        assert_eq!(glob("[cba]x*"), glob("[a-c]x*"));
        assert_eq!(glob("[!a]*"), "ev:?**");
        assert_eq!(glob("[]^-]*"), "ev:[\\-\\]\\^]*");
        assert_eq!(glob("\\*\\?\\[\\\\*"), "ev:\\*\\?\\[\\\\*");
    }

    /// Every pattern's glob matches at least the channels of the topics the pattern
    /// matches, including where Redis's glob differs from ours.
    #[test]
    fn globs_are_supersets() {
        let patterns = [
            "orders:*",
            "orders:?",
            "orders:??",
            "[abc]x*",
            "[!abc]x*",
            "[a-c]*",
            "[]]*",
            "[!]]*",
            "[a-]*",
            "[*]*",
            "[\\]]*",
            "\\**",
            "\\?*",
            "a\\[b*",
            "a\\\\b*",
            "[^a]*",
            "ü*",
            "*ß",
            "x?z",
            "*:*",
            "[é-ü]*",
            "[!é]*",
            "p^*",
            "[-a]*",
            "a-b*",
            "[\\^]*",
        ];
        let topics = [
            "orders:a",
            "orders:ab",
            "orders:é€",
            "bx",
            "dx",
            "ax",
            "éx",
            "]",
            "a",
            "-",
            "*",
            "x",
            "*x",
            "?",
            "a[b",
            "a\\b",
            "^",
            "b",
            "über:alles",
            "straß",
            "x:z",
            "a:b",
            "ö",
            "é",
            "p^q",
            "a-b",
            "orders:",
            "[",
            "\\",
        ];
        let names = ChannelNames::new("ev");
        for p in patterns {
            let pattern = Pattern::parse(p).unwrap();
            let glob = names.glob(&pattern);
            for t in topics {
                if pattern.matches(t) {
                    let channel = names.channel(t);
                    assert!(
                        redis_match(glob.as_bytes(), channel.as_bytes()),
                        "{p:?} matches {t:?} but glob {glob:?} misses {channel:?}"
                    );
                }
            }
        }
    }

    /// The exact ASCII translations are exact, not just supersets.
    #[test]
    fn ascii_classes_are_exact() {
        let names = ChannelNames::new("ev");
        for p in [
            "[abc]", "[]]", "[a-]", "[*]", "[\\]]", "[-a]", "[\\^]", "[!-~]",
        ] {
            let pattern = Pattern::parse(p).unwrap();
            let glob = names.glob(&pattern);
            for b in 0x21u8..0x7f {
                let t = char::from(b).to_string();
                if pattern.literal().is_none() && !p.starts_with("[!") {
                    assert_eq!(
                        redis_match(glob.as_bytes(), names.channel(&t).as_bytes()),
                        pattern.matches(&t),
                        "{p:?} / {glob:?} on {t:?}"
                    );
                }
            }
        }
    }
}
