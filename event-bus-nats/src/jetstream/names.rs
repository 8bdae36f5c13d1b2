//! Stream, subject and consumer names of one prefix.
//!
//! | name | for prefix `shop`, group `billing.eu` |
//! |---|---|
//! | events stream | `eventbus_shop` (subjects `shop.>`) |
//! | auxiliary stream | `eventbus_shop-aux` (subjects `shop-aux.>`) |
//! | dead letters of a group | subject `shop-aux.dead.billing%2Eeu` |
//! | parts of large events | subject `shop-aux.part` |
//! | durable consumer of a group | `g_billing_eu_` + 16 hex digits (a hash of the group name) |
//!
//! Consumer names may not hold `.`, `*`, `>` or whitespace, and group names may (an
//! implicit group is named after its pattern); the readable part keeps letters, digits,
//! `_` and `-` of the first 40 characters, and the hash tells groups apart.

use crate::subject::encode_token;

/// The names of one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of every event.
    pub(crate) fn stream(&self) -> String {
        format!("eventbus_{}", self.prefix)
    }

    /// The subjects of the events stream.
    pub(crate) fn stream_subjects(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The stream of dead letters and parts.
    pub(crate) fn aux_stream(&self) -> String {
        format!("eventbus_{}-aux", self.prefix)
    }

    /// The subjects of the auxiliary stream.
    pub(crate) fn aux_subjects(&self) -> String {
        format!("{}-aux.>", self.prefix)
    }

    /// The subject of the dead letters of `group`.
    pub(crate) fn dead(&self, group: &str) -> String {
        format!("{}-aux.dead.{}", self.prefix, encode_token(group))
    }

    /// The subject of the parts of large events.
    pub(crate) fn part(&self) -> String {
        format!("{}-aux.part", self.prefix)
    }
}

/// The durable consumer name of `group`.
pub(crate) fn consumer(group: &str) -> String {
    let readable: String = group
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("g_{readable}_{:016x}", fnv1a(group.as_bytes()))
}

/// The description of a group's consumer: `{"group": …, "pattern": …}`, so that
/// `nats consumer info` and [`groups`](crate::NatsEventBus::groups) show both.
pub(crate) fn describe(group: &str, pattern: &str) -> String {
    serde_json::json!({"group": group, "pattern": pattern}).to_string()
}

/// The group and pattern a consumer description holds, if it is one of ours.
pub(crate) fn described(description: Option<&str>) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(description?).ok()?;
    Some((
        value.get("group")?.as_str()?.to_owned(),
        value.get("pattern")?.as_str()?.to_owned(),
    ))
}

/// 64-bit FNV-1a: stable across processes and versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table_holds() {
        let names = Names::new("shop");
        assert_eq!(names.stream(), "eventbus_shop");
        assert_eq!(names.aux_stream(), "eventbus_shop-aux");
        assert_eq!(names.dead("billing.eu"), "shop-aux.dead.billing%2Eeu");
        assert_eq!(names.part(), "shop-aux.part");
        let name = consumer("billing.eu");
        assert!(
            name.starts_with("g_billing_eu_") && name.len() == 13 + 16,
            "{name}"
        );
    }

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        let groups = [
            "a.b",
            "a_b",
            "orders:*",
            "orders:*#2",
            "x y",
            &"z".repeat(128),
        ];
        let names: std::collections::HashSet<String> = groups.iter().map(|g| consumer(g)).collect();
        assert_eq!(names.len(), groups.len());
        for name in names {
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
    }
}
