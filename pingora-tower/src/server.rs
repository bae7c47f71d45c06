//! Run a Pingora app in-process on any address, `127.0.0.1:0` included, and stop it cleanly.
//!
//! Pingora's `Server::run_forever` owns the process (it calls `process::exit`) and cannot say
//! which port it bound for `:0`. [`spawn`] instead binds the socket itself, hands its file
//! descriptor to Pingora through the same `Fds` table Pingora uses to inherit sockets during a
//! zero-downtime upgrade, and starts the listening service on the current tokio runtime. The
//! socket is listening before `spawn` returns, so callers never wait or retry.
//!
//! # Example
//! ```no_run
//! use axum::{routing::get, Router};
//! use pingora_tower::{server, ServeTower};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "ok" }));
//! let running = server::spawn("127.0.0.1:0", ServeTower::new(app)).await?;
//! let addr = running.local_addr(); // the real port
//! # let _ = addr;
//! running.shutdown().await; // in-flight requests finish, new connections are refused
//! # Ok(()) }
//! ```

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::{Fds, ShutdownWatch};
use pingora_core::services::listening::Service as ListeningService;
use pingora_core::services::Service as _;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// How long [`RunningServer::shutdown`] waits for in-flight connections by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A Pingora app listening in-process. Dropping it stops accepting connections; call
/// [`shutdown`](Self::shutdown) to also wait for in-flight requests.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    connections: Arc<ConnectionCount>,
    grace: Duration,
}

/// Binds `addr` (e.g. `"127.0.0.1:0"`) and serves `app` on it from the current tokio runtime.
///
/// `app` is any Pingora [`ServerApp`]: a [`ServeTower`](crate::ServeTower), or the
/// `HttpProxy` that `pingora_proxy::http_proxy` builds around a `ProxyHttp`.
///
/// # Errors
/// When `addr` does not parse or cannot be bound.
pub async fn spawn<A>(addr: &str, app: A) -> std::io::Result<RunningServer>
where
    A: ServerApp + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let bind_key = local_addr.to_string();

    let mut fds = Fds::new();
    // Pingora takes ownership of the descriptor and closes it when the listener stops.
    fds.add(bind_key.clone(), listener.into_raw_fd());

    let connections = Arc::new(ConnectionCount::default());
    let tracked = Tracked {
        app: Arc::new(app),
        connections: connections.clone(),
    };
    let mut service = ListeningService::new(format!("pingora-tower {bind_key}"), tracked);
    service.add_tcp(&bind_key);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let accept_task = tokio::spawn(async move {
        service
            .start_service(Some(Arc::new(Mutex::new(fds))), shutdown_rx, 1)
            .await;
    });
    Ok(RunningServer {
        local_addr,
        shutdown,
        accept_task: Some(accept_task),
        connections,
        grace: DEFAULT_SHUTDOWN_GRACE,
    })
}

impl RunningServer {
    /// The address actually bound (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How long [`shutdown`](Self::shutdown) waits for in-flight connections before returning
    /// anyway. Defaults to [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Connections being served right now.
    pub fn active_connections(&self) -> usize {
        self.connections.active.load(Ordering::Acquire)
    }

    /// Closes the listening socket (new connections are refused from when this returns) and
    /// tells open connections to finish: in-flight requests complete, idle keep-alive
    /// connections close. Does not wait for them; [`shutdown`](Self::shutdown) does.
    pub async fn stop_accepting(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept_task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the accept loop ended abnormally");
            }
        }
    }

    /// Stops accepting (see [`stop_accepting`](Self::stop_accepting)), then returns when every
    /// connection is done or the grace period has passed.
    pub async fn shutdown(mut self) {
        self.stop_accepting().await;
        if tokio::time::timeout(self.grace, self.connections.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.active_connections(),
                "shutdown grace period over with connections still open"
            );
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

#[derive(Debug, Default)]
struct ConnectionCount {
    active: AtomicUsize,
    changed: Notify,
}

impl ConnectionCount {
    async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Decrements the connection count when a connection ends, however it ends.
struct ConnectionGuard(Arc<ConnectionCount>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// Wraps an app to count its live connections, so shutdown can wait for them.
struct Tracked<A> {
    app: Arc<A>,
    connections: Arc<ConnectionCount>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Tracked<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.connections.active.fetch_add(1, Ordering::AcqRel);
        let _guard = ConnectionGuard(self.connections.clone());
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
