//! The one pattern language, identical on every backend.

use std::collections::{BTreeMap, BTreeSet};

use multibus::{Error, EventBusExt, Pattern};

use super::{bus, event};
use crate::{factories::Factory, support::Recorder};

/// `(pattern, topic, matches?)`, both relative to the test namespace (`ns:` is put in
/// front of each). Includes the places where Redis's own glob differs from ours
/// (`[^a]`, escapes inside classes, `]` first in a class).
pub const PATTERN_TABLE: &[(&str, &str, bool)] = &[
    ("orders", "orders", true),
    ("orders", "orders:eu", false),
    ("orders", "Orders", false),
    ("Orders", "orders", false),
    ("orders:*", "orders:eu", true),
    ("orders:*", "orders:eu:paid", true),
    ("orders:*", "orders", false),
    ("orders*", "orders", true),
    ("orders*", "ordersx", true),
    ("*", "orders:eu:paid", true),
    ("*:paid", "orders:eu:paid", true),
    ("*:paid", "orders:eu:unpaid", false),
    ("orders:?", "orders:a", true),
    ("orders:?", "orders:ab", false),
    ("orders:??", "orders:é€", true),
    ("a*b*c", "abc", true),
    ("a*b*c", "axxbyyc", true),
    ("a*b*c", "acb", false),
    ("[abc]x", "bx", true),
    ("[abc]x", "dx", false),
    ("[!abc]x", "dx", true),
    ("[!abc]x", "ax", false),
    ("[a-c]y", "by", true),
    ("[a-c]y", "dy", false),
    ("[!a-c]y", "by", false),
    ("[]]z", "]z", true),
    ("[!]]z", "az", true),
    ("[!]]z", "]z", false),
    ("[a-]w", "-w", true),
    ("[*]v", "*v", true),
    ("[*]v", "xv", false),
    ("[\\]]u", "]u", true),
    ("\\*t", "*t", true),
    ("\\*t", "xt", false),
    ("\\?s", "?s", true),
    ("\\?s", "as", false),
    ("a\\[b", "a[b", true),
    ("a\\\\b", "a\\b", true),
    ("[^a]r", "^r", true),
    ("[^a]r", "br", false),
    ("ü*", "über:alles", true),
    ("*ß", "straß", true),
    ("user:*:created", "user:42:created", true),
    ("user:*:created", "user:42:deleted", false),
    ("x?z", "x:z", true),
];

/// Every (pattern, topic) pair of the table's cross product is delivered exactly when
/// the core matcher says it matches, and the table's expectations hold.
pub async fn pattern_table_matches_like_the_core(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let patterns: BTreeSet<&str> = PATTERN_TABLE.iter().map(|c| c.0).collect();
    let topics: BTreeSet<&str> = PATTERN_TABLE.iter().map(|c| c.1).collect();
    let mut recorders = BTreeMap::new();
    for p in &patterns {
        let r = Recorder::new();
        bus.subscribe(&format!("{ns}:{p}"), r.handler())
            .await
            .unwrap();
        recorders.insert(*p, r);
    }
    for (i, t) in topics.iter().enumerate() {
        bus.publish(event(format!("{ns}:{t}"), i as u64))
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    for (p, r) in &recorders {
        let core = Pattern::parse(&format!("{ns}:{p}")).unwrap();
        let got: BTreeSet<String> = r.topics().into_iter().collect();
        assert_eq!(
            got.len(),
            r.len(),
            "pattern {p:?} got a duplicate: {:?}",
            r.topics()
        );
        let want: BTreeSet<String> = topics
            .iter()
            .map(|t| format!("{ns}:{t}"))
            .filter(|t| core.matches(t))
            .collect();
        assert_eq!(got, want, "pattern {p:?}");
    }
    for &(p, t, expected) in PATTERN_TABLE {
        let delivered = recorders[p].topics().contains(&format!("{ns}:{t}"));
        assert_eq!(delivered, expected, "pattern {p:?} topic {t:?}");
    }
    bus.close().await.unwrap();
}

/// Invalid topics fail with `InvalidTopic` at publish and, as exact subscriptions, at
/// subscribe; invalid patterns fail with `InvalidPattern`; the offending value is in
/// the error; nothing is delivered.
pub async fn invalid_topics_and_patterns_are_rejected(factory: Factory) {
    let (ns, bus) = bus(factory).await;
    let all = Recorder::new();
    bus.subscribe(&format!("{ns}:*"), all.handler())
        .await
        .unwrap();
    for bad in [
        String::new(),
        format!("{ns}::x"),
        format!("{ns}:has space"),
        format!("{ns}:{}", "x".repeat(300)),
    ] {
        let err = bus.publish(event(bad.clone(), 0)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidTopic { .. }), "{bad:?}: {err}");
        assert!(err.into_event().is_none());
    }
    for bad in [
        String::new(),
        format!("{ns}::x"),
        format!("{ns}:has space"),
        format!("{ns}:{}", "x".repeat(300)),
    ] {
        let err = bus.subscribe(&bad, all.handler()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidTopic { .. }), "{bad:?}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    for bad in [
        format!("{ns}:["),
        format!("{ns}:a\\"),
        format!("{ns}:[z-a]"),
        format!("{ns}:has space:*"),
    ] {
        let err = bus.subscribe(&bad, all.handler()).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidPattern { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    bus.flush().await.unwrap();
    assert!(all.is_empty());
    bus.close().await.unwrap();
}
