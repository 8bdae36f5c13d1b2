//! Event priority: a number where **lower is more urgent**.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How urgent an event is. **Lower values are more urgent**: `0` is the most urgent,
/// `255` the least. Under backlog a subscription's handler receives more urgent events
/// first; events of equal priority keep their publish order (FIFO).
///
/// On the wire a priority is its number. [`FromStr`] also accepts the level names.
///
/// ```
/// use event_bus_core::Priority;
/// assert!(Priority::CRITICAL.is_more_urgent_than(Priority::LOW));
/// assert_eq!("high".parse::<Priority>().unwrap(), Priority::HIGH);
/// assert_eq!(Priority::default(), Priority::NORMAL);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(u8);

impl Priority {
    /// The most urgent level, `0`.
    pub const CRITICAL: Self = Self(0);
    /// `64`.
    pub const HIGH: Self = Self(64);
    /// The default level, `128`.
    pub const NORMAL: Self = Self(128);
    /// `192`.
    pub const LOW: Self = Self(192);

    /// A priority with an explicit value (lower is more urgent).
    pub const fn new(value: u8) -> Self {
        Self(value)
    }

    /// The numeric value (lower is more urgent).
    pub const fn value(self) -> u8 {
        self.0
    }

    /// Whether `self` is dispatched before `other` under backlog.
    pub const fn is_more_urgent_than(self, other: Self) -> bool {
        self.0 < other.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::NORMAL
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::CRITICAL => f.write_str("critical"),
            Self::HIGH => f.write_str("high"),
            Self::NORMAL => f.write_str("normal"),
            Self::LOW => f.write_str("low"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "critical" => Ok(Self::CRITICAL),
            "high" => Ok(Self::HIGH),
            "normal" => Ok(Self::NORMAL),
            "low" => Ok(Self::LOW),
            other => other.parse::<u8>().map(Self).map_err(|_| {
                Error::config(
                    "priority",
                    format!("{s:?} is not critical, high, normal, low or a number 0-255"),
                )
            }),
        }
    }
}
