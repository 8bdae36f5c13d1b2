//! Why a command failed, with which exit status, and the whole cause chain of an error.

use std::{error::Error as StdError, fmt, process::ExitCode};

use multibus::Error;

/// Why the command failed, and with which exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A runtime error: server unreachable, publish failed (exit status 1).
    pub(crate) const RUNTIME: u8 = 1;
    /// A usage or configuration error (exit status 2).
    pub(crate) const USAGE: u8 = 2;

    /// A usage or configuration error (exit status 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::with_code(Self::USAGE, message)
    }

    /// A runtime error: server unreachable, publish failed (exit status 1).
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self::with_code(Self::RUNTIME, message)
    }

    /// A failure with its own exit status (e.g. 130 after Ctrl-C).
    pub(crate) fn with_code(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Prefixes the message with `what: `, e.g. the config file at fault.
    pub(crate) fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The process exit status.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }

    /// The process exit status as a number.
    #[cfg(test)]
    pub(crate) fn code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let message = chain(&error);
        match error {
            Error::Config { .. }
            | Error::BackendDisabled { .. }
            | Error::InvalidTopic { .. }
            | Error::InvalidPattern { .. } => Self::usage(message),
            _ => Self::runtime(message),
        }
    }
}

/// `error` and every error under it (its `source()` chain), joined by `: `. A source
/// whose message already ends the text so far (an error that prints its source itself)
/// is not repeated.
///
/// `connecting to PostgreSQL (...): db error` becomes
/// `connecting to PostgreSQL (...): db error: FATAL: database "nosuchdb" does not exist`.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let line = cause.to_string();
        if !line.is_empty() && !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("database \"x\" does not exist")
        }
    }
    impl StdError for Leaf {}

    #[derive(Debug)]
    struct Driver(Leaf);
    impl fmt::Display for Driver {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("db error")
        }
    }
    impl StdError for Driver {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_chain_is_printed_once_each() {
        let error = Error::connection("connecting", Driver(Leaf));
        assert_eq!(
            chain(&error),
            "connecting: db error: database \"x\" does not exist"
        );
        let failure = Failure::from(error);
        assert_eq!(failure.code(), Failure::RUNTIME);
        assert!(failure.to_string().ends_with("does not exist"));
    }
}
