//! The category of an event.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What kind of change an event reports.
///
/// On the wire a type is a string: `created`, `updated`, `deleted`, `activated`,
/// `deactivated`, `error`, or `custom:<name>` for [`EventType::Custom`]. When decoding,
/// any other string is read as a custom name, so `order_placed` and
/// `custom:order_placed` are the same type.
///
/// ```
/// use event_bus_core::EventType;
/// assert_eq!("updated".parse::<EventType>().unwrap(), EventType::Updated);
/// assert_eq!(EventType::custom("order_placed").to_string(), "custom:order_placed");
/// assert_eq!("order_placed".parse::<EventType>().unwrap(), EventType::custom("order_placed"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum EventType {
    /// A resource was created.
    #[default]
    Created,
    /// A resource was modified.
    Updated,
    /// A resource was removed.
    Deleted,
    /// A resource was activated or enabled.
    Activated,
    /// A resource was deactivated or disabled.
    Deactivated,
    /// Something went wrong.
    Error,
    /// An application-defined type.
    Custom(String),
}

impl EventType {
    /// An application-defined type named `name`.
    pub fn custom(name: impl Into<String>) -> Self {
        Self::Custom(name.into())
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Updated => f.write_str("updated"),
            Self::Deleted => f.write_str("deleted"),
            Self::Activated => f.write_str("activated"),
            Self::Deactivated => f.write_str("deactivated"),
            Self::Error => f.write_str("error"),
            Self::Custom(name) => write!(f, "custom:{name}"),
        }
    }
}

impl FromStr for EventType {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "created" => Self::Created,
            "updated" => Self::Updated,
            "deleted" => Self::Deleted,
            "activated" => Self::Activated,
            "deactivated" => Self::Deactivated,
            "error" => Self::Error,
            other => Self::Custom(other.strip_prefix("custom:").unwrap_or(other).to_owned()),
        })
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let Ok(t) = s.parse();
        Ok(t)
    }
}
