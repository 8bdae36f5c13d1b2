//! Finding a server for the tests: its URL variable, else a server on the local default
//! port, else a container started once per test binary.
//!
//! `EVENT_BUS_TEST_SERVERS` chooses which of these are tried, in this order:
//!
//! | `EVENT_BUS_TEST_SERVERS` | tried |
//! |---|---|
//! | unset, empty or `auto` | `EVENT_BUS_<SERVER>_URL`, the local default, a container |
//! | `local` | `EVENT_BUS_<SERVER>_URL`, the local default; never Docker |
//! | `containers` | a container only: URL variables and local servers are ignored |
//!
//! A container is started by the first test of a binary that needs its server, and all of
//! that binary's tests share it (each works in its own namespace). Its port is published on
//! 127.0.0.1 only. It is removed when the test binary exits, however it exits: a reaper
//! process (`sh` running `docker rm`, so the `docker` command must be installed) waits for
//! the binary's end. Images are pinned ([`Server::image`]) and overridable per server with
//! `EVENT_BUS_TEST_<SERVER>_IMAGE=name:tag` (a mirror, or an image built by
//! `integration-tests/containers/build-images.sh` on a machine without registry access).
//!
//! When nothing is found, the test fails with a message naming the three ways to provide a
//! server and what each attempt answered. A test never skips.
//!
//! Adding a server is one more [`Server`] value: its variables, local default, image,
//! container port, container URL and a probe.

mod container;
mod lookup;

pub use lookup::{MODE_VAR, Mode, NoServer, find, url};

use futures_util::future::BoxFuture;

/// A kind of server the tests need, and how to find or start one.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    /// Name in messages, e.g. `Redis`.
    pub name: &'static str,
    /// The variable holding a server's URL, e.g. `EVENT_BUS_REDIS_URL`.
    pub url_var: &'static str,
    /// The URL of a server on the local default port.
    pub local_url: &'static str,
    /// The pinned container image, `name:tag`.
    pub image: &'static str,
    /// The variable overriding [`image`](Self::image), e.g. `EVENT_BUS_TEST_REDIS_IMAGE`.
    pub image_var: &'static str,
    /// The port the server listens on inside the container.
    pub container_port: u16,
    /// Environment variables of the container.
    pub env: &'static [(&'static str, &'static str)],
    /// The container's command; empty for the image's own.
    pub cmd: &'static [&'static str],
    /// The URL of a container's server published at `127.0.0.1:port`.
    pub container_url: fn(port: u16) -> String,
    /// Succeeds once the server at the URL serves requests; the error says why not.
    pub probe: fn(url: String) -> BoxFuture<'static, Result<(), String>>,
}

impl Server {
    /// The image to run: the value of [`image_var`](Self::image_var) if set, else
    /// [`image`](Self::image).
    pub fn image(&self) -> String {
        std::env::var(self.image_var)
            .ok()
            .filter(|image| !image.is_empty())
            .unwrap_or_else(|| self.image.to_owned())
    }
}
