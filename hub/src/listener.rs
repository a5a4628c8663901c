//! One connection lifecycle for every listener (MQTT, AMQP, HTTPS with the WebSockets it
//! upgrades, workload sockets), in the manner of mini-redis's `server.rs`: a cap on connections
//! per listener, a write timeout (a peer that stops reading is dropped), accept errors backed off
//! instead of spun on, every connection task tracked so that [`serve`] returns only once all of
//! them ended; [`serve_tls`] adds the TLS handshake the TCP listeners start with.
//!
//! When a listener is full, the oldest connection that has not authenticated yet is closed to make
//! room, so thousands of idle or trickling peers cannot keep a well-behaved device out. Idle and
//! slow peers are timed out by the protocol on top (TLS handshake, CONNECT and header timeouts);
//! what this module adds is that nothing waits for a peer forever.
//!
//! A leaf: depends on nothing else of the hub.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Sleep;

/// First pause after a failed accept (out of file descriptors, say); doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between accepts after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How many connections a listener holds and how long a write may wait for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a write may wait for the peer to read before the connection is dropped.
    pub write_timeout: Duration,
}

/// A listener whose connections [`serve`] can accept.
pub trait Accept: Send + 'static {
    /// The connection stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Who connected (for logs).
    type Peer: std::fmt::Display + Send + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    type Peer = std::net::SocketAddr;
    async fn accept(&self) -> io::Result<(TcpStream, std::net::SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// The peer of a unix socket connection (unnamed; shown as `unix`).
pub struct UnixPeer;

impl std::fmt::Display for UnixPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unix")
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    type Peer = UnixPeer;
    async fn accept(&self) -> io::Result<(UnixStream, UnixPeer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, UnixPeer))
    }
}

/// One admitted connection's standing with its listener.
#[derive(Default)]
struct Slot {
    /// Set once the peer authenticated; such a connection is never evicted to make room.
    established: AtomicBool,
    /// Woken to close the connection to make room for a new one.
    evict: Notify,
}

/// Handed to a connection's handler: tells the listener when the peer has authenticated.
#[derive(Clone)]
pub struct Admission(Arc<Slot>);

impl Admission {
    /// The peer authenticated: from now on the connection is not closed to make room for others.
    pub fn established(&self) {
        self.0.established.store(true, Ordering::Relaxed);
    }
}

/// Connections that have not authenticated yet, oldest first.
#[derive(Default)]
struct Unauthenticated(Mutex<VecDeque<Arc<Slot>>>);

impl Unauthenticated {
    fn push(&self, slot: Arc<Slot>, cap: usize) {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= cap.saturating_mul(2).max(16) {
            queue.retain(Self::waiting);
        }
        queue.push_back(slot);
    }

    /// Closes the oldest connection still waiting to authenticate; false if there is none.
    fn evict_oldest(&self) -> bool {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(slot) = queue.pop_front() {
            if Self::waiting(&slot) {
                slot.evict.notify_one();
                return true;
            }
        }
        false
    }

    /// Whether the connection of `slot` is open and has not authenticated.
    fn waiting(slot: &Arc<Slot>) -> bool {
        Arc::strong_count(slot) > 1 && !slot.established.load(Ordering::Relaxed)
    }
}

/// Accepts connections on `listener` until `shutdown` turns true and runs `handler` on each in its
/// own task; then waits for every connection task to end (each sees `shutdown` too).
pub async fn serve<A, H, F>(
    listener: A,
    name: &'static str,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    A: Accept,
    H: Fn(Deadlines<A::Stream>, A::Peer, Admission) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let cap = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(cap));
    let unauthenticated = Unauthenticated::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = FIRST_BACKOFF;
                accepted
            }
            Err(error) => {
                tracing::warn!(listener = name, %error, pause_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if unauthenticated.evict_oldest() {
                    tracing::info!(
                        listener = name,
                        cap,
                        "full: closed the oldest unauthenticated connection"
                    );
                } else {
                    tracing::warn!(
                        listener = name,
                        cap,
                        "full of authenticated connections: waiting for one to end"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        };
        let slot = Arc::new(Slot::default());
        unauthenticated.push(slot.clone(), cap);
        let stream = Deadlines::new(stream, limits.write_timeout);
        let connection = handler(stream, peer, Admission(slot.clone()));
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = connection => {}
                () = slot.evict.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }
    drop(listener);
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// How long a client of a TLS listener has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection of a TLS listener, once its handshake is done.
pub type TlsStream = tokio_rustls::server::TlsStream<Deadlines<TcpStream>>;

/// [`serve`] for a TCP listener whose connections all start with a TLS handshake (MQTT on 8883,
/// AMQP on 5671, HTTPS on 443): `handler` gets each connection once its handshake is done; a
/// handshake that fails or takes longer than 15 s is logged and the connection closed.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    name: &'static str,
    tls: tokio_rustls::TlsAcceptor,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(TlsStream, std::net::SocketAddr, Admission) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    serve(
        listener,
        name,
        limits,
        shutdown,
        move |socket, peer, admission| {
            let (tls, handler) = (tls.clone(), handler.clone());
            async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(socket)).await {
                    Ok(Ok(stream)) => handler(stream, peer, admission).await,
                    Ok(Err(error)) => {
                        tracing::info!(listener = name, %peer, %error, "TLS handshake failed");
                    }
                    Err(_) => tracing::info!(listener = name, %peer, "TLS handshake timed out"),
                }
            }
        },
    )
    .await;
}

/// A stream whose writes fail with `TimedOut` once they have waited `write_timeout` for the peer.
pub struct Deadlines<S> {
    /// The connection.
    inner: S,
    /// How long a write may stay pending.
    write_timeout: Duration,
    /// Running while a write is pending; cleared when one completes.
    write_stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> std::fmt::Debug for Deadlines<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl<S> Deadlines<S> {
    /// `inner` with this write timeout.
    pub fn new(inner: S, write_timeout: Duration) -> Self {
        Self {
            inner,
            write_timeout,
            write_stalled: None,
        }
    }

    /// Turns a pending write into `TimedOut` once it has been pending for the timeout.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.write_stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .write_stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer did not read for {} s", timeout.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard limit and returns the
/// limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECOND: Duration = Duration::from_secs(1);

    /// At most `max_connections`, with a one-second write timeout.
    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            write_timeout: SECOND,
        }
    }

    /// A listener on port 0 whose handler echoes until the peer sends `auth`, then marks the
    /// connection established and keeps echoing.
    async fn echo_listener(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            "test",
            limits,
            shutdown,
            |mut stream, _peer, admission| async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if &buf[..n] == b"auth" {
                        admission.established();
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        ));
        (addr, stop, task)
    }

    async fn echoes(stream: &mut TcpStream, text: &[u8]) -> bool {
        if stream.write_all(text).await.is_err() {
            return false;
        }
        let mut buf = vec![0u8; text.len()];
        matches!(
            tokio::time::timeout(SECOND, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && buf == text
    }

    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(SECOND, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_full_listener_closes_the_oldest_unauthenticated_connection_to_let_a_new_one_in() {
        let (addr, _stop, _task) = echo_listener(limits(3)).await;
        let mut device = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut device, b"auth").await);
        let mut idle_old = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut idle_old, b"x").await);
        let mut idle_new = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut idle_new, b"y").await);

        let mut newcomer = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut newcomer, b"hello").await, "the newcomer got in");
        assert!(
            closed(&mut idle_old).await,
            "the oldest idle one was closed"
        );
        assert!(echoes(&mut idle_new, b"still").await);
        assert!(echoes(&mut device, b"authenticated stays").await);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_dropped_after_the_write_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let ended_tx = Arc::new(Mutex::new(Some(ended_tx)));
        let limits = Limits {
            max_connections: 10,
            write_timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(
            listener,
            "test",
            limits,
            shutdown,
            move |mut stream, _, _| {
                let ended_tx = ended_tx.clone();
                async move {
                    let chunk = vec![0u8; 64 * 1024];
                    let error = loop {
                        if let Err(error) = stream.write_all(&chunk).await {
                            break error;
                        }
                    };
                    if let Some(tx) = ended_tx.lock().unwrap().take() {
                        let _ = tx.send(error.kind());
                    }
                }
            },
        ));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let kind = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("the writer was never dropped")
            .unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn serve_returns_only_after_every_connection_task_ended() {
        let (addr, stop, task) = echo_listener(limits(10)).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut a, b"auth").await && echoes(&mut b, b"x").await);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve did not return")
            .unwrap();
        assert!(closed(&mut a).await && closed(&mut b).await);
    }

    /// A listener whose every accept fails, as one out of file descriptors does.
    struct Exhausted(Arc<std::sync::atomic::AtomicUsize>);

    impl Accept for Exhausted {
        type Stream = TcpStream;
        type Peer = UnixPeer;
        async fn accept(&self) -> io::Result<(TcpStream, UnixPeer)> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[tokio::test]
    async fn failed_accepts_are_backed_off_instead_of_spun_on() {
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(
            Exhausted(attempts.clone()),
            "test",
            limits(10),
            shutdown,
            |_, _, _| async {},
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let attempts = attempts.load(Ordering::Relaxed);
        assert!((2..=12).contains(&attempts), "{attempts} accepts in 500 ms");
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let got = raise_open_file_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            // SAFETY: getrlimit writes only into `limit`, which we own.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(got, limit.rlim_max);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
