//! The `url` setting, parsed: server addresses without credentials, the credentials
//! apart (so that no address the client logs ever holds a secret), and the redacted
//! form shown in logs, errors and `Debug`.

use async_nats::{ConnectOptions, ServerAddr};
use event_bus_core::{Error, Secret};
use url::Url;

/// How the bus authenticates.
#[derive(Clone, PartialEq)]
pub(crate) enum Credentials {
    UserPassword { user: String, password: Secret },
    Token(Secret),
}

impl Credentials {
    /// Credentials from the `username`/`password`/`token` keys (at least one set).
    pub(crate) fn from_keys(
        username: Option<&str>,
        password: Option<&Secret>,
        token: Option<&Secret>,
    ) -> Result<Option<Self>, Error> {
        match (username, password, token) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(Error::config(
                "token",
                "give either a token or a user name and password, not both",
            )),
            (Some(user), Some(password), None) => Ok(Some(Self::UserPassword {
                user: user.to_owned(),
                password: password.clone(),
            })),
            (Some(_), None, None) => Err(Error::config("password", "is required with `username`")),
            (None, Some(_), None) => Err(Error::config("username", "is required with `password`")),
            (None, None, token) => Ok(token.map(|t| Self::Token(t.clone()))),
        }
    }

    /// Hands the credentials to the client.
    pub(crate) fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        match self {
            Self::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            Self::Token(token) => options.token(token.expose().to_owned()),
        }
    }
}

/// The parsed `url` setting.
#[derive(Clone)]
pub(crate) struct Servers {
    /// Addresses with user info removed.
    pub(crate) addrs: Vec<Url>,
    pub(crate) credentials: Option<Credentials>,
    /// Whether TLS is required (a `tls://` address, or the `tls` key).
    pub(crate) tls: bool,
}

impl Servers {
    /// Parses `nats://` and `tls://` URLs separated by commas.
    pub(crate) fn parse(list: &str) -> Result<Self, Error> {
        let mut servers = Self {
            addrs: Vec::new(),
            credentials: None,
            tls: false,
        };
        for (i, item) in list.split(',').map(str::trim).enumerate() {
            let at = |message: String| Error::config("url", format!("server {}: {message}", i + 1));
            // The parser's message may quote the input: never show it.
            let mut url = Url::parse(item)
                .map_err(|e| at(format!("not a URL ({e}); expected nats://host:port")))?;
            match url.scheme() {
                "nats" => {}
                "tls" => servers.tls = true,
                other => {
                    return Err(at(format!(
                        "scheme must be nats:// or tls://, got {other:?}"
                    )));
                }
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(at("has no host".into()));
            }
            if url.port().is_none() {
                let _ = url.set_port(Some(4222));
            }
            let credentials = take_credentials(&mut url);
            if let Some(credentials) = credentials {
                if servers
                    .credentials
                    .as_ref()
                    .is_some_and(|c| *c != credentials)
                {
                    return Err(at("carries other credentials than the first server".into()));
                }
                servers.credentials = Some(credentials);
            }
            servers.addrs.push(url);
        }
        Ok(servers)
    }

    /// The addresses for the client.
    pub(crate) fn server_addrs(&self) -> Vec<ServerAddr> {
        self.addrs
            .iter()
            .filter_map(|u| ServerAddr::from_url(u.clone()).ok())
            .collect()
    }

    /// The addresses as the user wrote them, secrets replaced by `***`.
    pub(crate) fn redacted(&self) -> String {
        let userinfo = match &self.credentials {
            Some(Credentials::UserPassword { user, .. }) => format!("{user}:***@"),
            Some(Credentials::Token(_)) => "***@".to_owned(),
            None => String::new(),
        };
        self.addrs
            .iter()
            .map(|u| {
                let host = u.host_str().unwrap_or_default();
                let port = u.port().unwrap_or(4222);
                format!("{}://{userinfo}{host}:{port}", u.scheme())
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Removes the user info from `url`: `user:password` or a lone `token`.
fn take_credentials(url: &mut Url) -> Option<Credentials> {
    let user = percent_decode(url.username());
    let password = url.password().map(percent_decode);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    match (user.is_empty(), password) {
        (true, None) => None,
        (_, Some(password)) => Some(Credentials::UserPassword {
            user,
            password: Secret::new(password),
        }),
        (false, None) => Some(Credentials::Token(Secret::new(user))),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = text.get(i + 1..i + 3);
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) if bytes[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_addresses() {
        let s = Servers::parse("nats://app:p%40ss@h1:4000, tls://app:p%40ss@h2").unwrap();
        assert!(s.tls);
        assert_eq!(
            s.addrs.iter().map(Url::as_str).collect::<Vec<_>>(),
            ["nats://h1:4000", "tls://h2:4222"]
        );
        match &s.credentials {
            Some(Credentials::UserPassword { user, password }) => {
                assert_eq!((user.as_str(), password.expose()), ("app", "p@ss"));
            }
            _ => panic!("expected user and password"),
        }
        assert_eq!(s.redacted(), "nats://app:***@h1:4000,tls://app:***@h2:4222");
    }

    #[test]
    fn a_lone_user_is_a_token() {
        let s = Servers::parse("nats://s3cret@h").unwrap();
        assert!(matches!(&s.credentials, Some(Credentials::Token(t)) if t.expose() == "s3cret"));
        assert_eq!(s.redacted(), "nats://***@h:4222");
    }

    #[test]
    fn servers_must_agree_on_credentials() {
        let err = Servers::parse("nats://a:b@h1,nats://a:c@h2").err().unwrap();
        assert!(err.to_string().contains("server 2"), "{err}");
        assert!(!err.to_string().contains(":c@"), "{err}");
    }
}
