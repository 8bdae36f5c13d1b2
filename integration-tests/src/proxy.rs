//! A TCP proxy on loopback that can cut, stall or refuse connections, to inject network
//! faults between a bus and its server.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A proxy from `127.0.0.1:<random port>` to an upstream address. Stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    refuse: Arc<AtomicBool>,
    stall: watch::Sender<bool>,
    cut: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream`.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let refuse = Arc::new(AtomicBool::new(false));
        let (stall, _) = watch::channel(false);
        let (cut, _) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            refuse.clone(),
            stall.clone(),
            cut.clone(),
        ));
        Self {
            addr,
            refuse,
            stall,
            cut,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection (both sides); new connections are still accepted.
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// While `true`, bytes are held back in both directions (a black hole).
    pub fn stall(&self, on: bool) {
        self.stall.send_replace(on);
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    refuse: Arc<AtomicBool>,
    stall: watch::Sender<bool>,
    cut: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let (cut_rx, stall_rx) = (cut.subscribe(), stall.subscribe());
        tokio::spawn(async move {
            let mut cut_rx = cut_rx;
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                _ = pump(cr, sw, stall_rx.clone()) => {}
                _ = pump(sr, cw, stall_rx) => {}
                _ = cut_rx.changed() => {}
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stall: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *stall.borrow_and_update() {
            if stall.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
