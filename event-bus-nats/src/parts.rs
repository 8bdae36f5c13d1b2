//! Events larger than the server's `max_payload`, sent in parts.
//!
//! A NATS server refuses messages above its `max_payload` (1 MiB by default), so an
//! envelope that does not fit is cut into parts of at most `max_payload - 4096` bytes,
//! published one after the other on the topic's subject, each with the header
//! `Event-Bus-Part: <uuid> <index> <count>` (index from 0). NATS keeps one publisher's
//! messages on one subject in order, so a receiver gets a group's parts in order and
//! joins them; a part out of order, a group larger than `max_message_bytes`, or a group
//! left incomplete while [`MAX_OPEN_GROUPS`] newer ones started (its other parts were
//! lost) is counted as one malformed message.

use std::collections::VecDeque;

use async_nats::{HeaderMap, Message};
use bytes::{Bytes, BytesMut};

/// The header that marks a part.
pub(crate) const PART_HEADER: &str = "Event-Bus-Part";
/// Room left in each part for the subject and headers.
const HEADROOM: usize = 4096;
/// Incomplete groups a receiver keeps per server subscription.
pub(crate) const MAX_OPEN_GROUPS: usize = 16;

/// The parts of `payload`, with their headers, for a server accepting `max_payload`
/// bytes; `None` if it fits in one message.
pub(crate) fn split(payload: &Bytes, max_payload: usize) -> Option<Vec<(HeaderMap, Bytes)>> {
    if payload.len() <= max_payload {
        return None;
    }
    let size = max_payload.saturating_sub(HEADROOM).max(1);
    let count = payload.len().div_ceil(size);
    let group = uuid::Uuid::new_v4().simple().to_string();
    let parts = (0..count)
        .map(|index| {
            let mut headers = HeaderMap::new();
            headers.insert(PART_HEADER, format!("{group} {index} {count}").as_str());
            let end = payload.len().min((index + 1) * size);
            (headers, payload.slice(index * size..end))
        })
        .collect();
    Some(parts)
}

/// What one received message amounts to.
pub(crate) enum Received {
    /// A whole envelope.
    Whole(Bytes),
    /// A part of a group not complete yet.
    Pending,
    /// Broken: counted as malformed, for this reason.
    Broken(String),
}

struct Group {
    id: String,
    next: usize,
    count: usize,
    data: BytesMut,
}

/// Joins parts, per server subscription.
#[derive(Default)]
pub(crate) struct Joiner {
    open: VecDeque<Group>,
}

impl Joiner {
    /// Feeds one message; `max_bytes` bounds a joined envelope. An incomplete group
    /// pushed out by newer ones is reported as broken by the call that pushed it out
    /// (after that call's own outcome, through `evicted`).
    pub(crate) fn accept(
        &mut self,
        message: Message,
        max_bytes: usize,
        evicted: &mut u64,
    ) -> Received {
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(PART_HEADER))
            .map(|v| v.as_str().to_owned());
        let Some(header) = header else {
            return Received::Whole(message.payload);
        };
        let Some((id, index, count)) = parse(&header) else {
            return Received::Broken(format!("bad {PART_HEADER} header {header:?}"));
        };
        let position = self.open.iter().position(|g| g.id == id);
        let mut group = match (position, index) {
            (Some(i), _) => self
                .open
                .remove(i)
                .unwrap_or_else(|| unreachable!("position is in range")),
            (None, 0) => Group {
                id: id.to_owned(),
                next: 0,
                count,
                data: BytesMut::new(),
            },
            (None, _) => {
                return Received::Broken(format!(
                    "part {index} of a group whose start was not seen"
                ));
            }
        };
        if index != group.next || count != group.count {
            return Received::Broken(format!("part {index} of {count} out of order"));
        }
        if group.data.len() + message.payload.len() > max_bytes {
            return Received::Broken(format!("parts exceed the limit of {max_bytes} bytes"));
        }
        group.data.extend_from_slice(&message.payload);
        group.next += 1;
        if group.next == group.count {
            return Received::Whole(group.data.freeze());
        }
        self.open.push_back(group);
        while self.open.len() > MAX_OPEN_GROUPS {
            self.open.pop_front();
            *evicted += 1;
        }
        Received::Pending
    }
}

fn parse(header: &str) -> Option<(&str, usize, usize)> {
    let mut fields = header.split(' ');
    let id = fields.next().filter(|id| !id.is_empty())?;
    let index = fields.next()?.parse().ok()?;
    let count: usize = fields.next()?.parse().ok()?;
    (fields.next().is_none() && index < count).then_some((id, index, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: Option<HeaderMap>, payload: Bytes) -> Message {
        Message {
            subject: "s".into(),
            reply: None,
            payload,
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn parts_join_back() {
        let payload = Bytes::from((0..20_000u32).map(|i| i as u8).collect::<Vec<_>>());
        assert!(split(&payload, 20_000).is_none());
        let parts = split(&payload, 5_000).unwrap();
        assert_eq!(parts.len(), 20_000usize.div_ceil(5_000 - HEADROOM));
        let mut joiner = Joiner::default();
        let mut evicted = 0;
        let mut whole = None;
        for (headers, part) in parts {
            assert!(part.len() <= 5_000 - HEADROOM);
            match joiner.accept(message(Some(headers), part), 1 << 20, &mut evicted) {
                Received::Whole(bytes) => whole = Some(bytes),
                Received::Pending => {}
                Received::Broken(reason) => panic!("{reason}"),
            }
        }
        assert_eq!(whole, Some(payload));
        assert_eq!(evicted, 0);
    }

    #[test]
    fn broken_groups_are_reported() {
        let payload = Bytes::from(vec![7u8; 10_000]);
        let parts = split(&payload, 5_000).unwrap();
        let mut joiner = Joiner::default();
        let mut evicted = 0;
        let second = parts[1].clone();
        assert!(matches!(
            joiner.accept(message(Some(second.0), second.1), 1 << 20, &mut evicted),
            Received::Broken(_)
        ));
        let first = parts[0].clone();
        assert!(matches!(
            joiner.accept(message(Some(first.0), first.1), 5_000, &mut evicted),
            Received::Pending
        ));
        let third = parts[2].clone();
        assert!(matches!(
            joiner.accept(message(Some(third.0), third.1), 5_000, &mut evicted),
            Received::Broken(_)
        ));
        for _ in 0..=MAX_OPEN_GROUPS {
            let (headers, part) = split(&payload, 5_000).unwrap().remove(0);
            joiner.accept(message(Some(headers), part), 1 << 20, &mut evicted);
        }
        assert_eq!(evicted, 1);
    }
}
