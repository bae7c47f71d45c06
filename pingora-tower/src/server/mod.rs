//! Run a Pingora app in-process on any address, `127.0.0.1:0` included, and stop it cleanly.
//!
//! Pingora's `Server::run_forever` owns the process (it calls `process::exit`) and cannot say
//! which port it bound for `:0`. [`spawn`] instead binds the socket itself, hands its file
//! descriptor to Pingora through the same `Fds` table Pingora uses to inherit sockets during a
//! zero-downtime upgrade, and starts the listening service on the current tokio runtime. The
//! socket is listening before `spawn` returns, so callers never wait or retry.
//!
//! With [`ListenOptions::threads`], [`spawn_with`] serves the same way from several OS threads,
//! each running its own current-thread tokio runtime (Pingora's `work_stealing: false` model): a
//! connection stays on the thread that accepted it. On one core this is the cheaper runtime for
//! a proxy (less CPU per request than a multi-thread runtime; see BENCHMARKS.md). With
//! [`ListenOptions::reuse_port`] each thread accepts from a `SO_REUSEPORT` socket of its own
//! instead of the one shared socket, and [`ListenOptions::accept_filter`] closes chosen
//! connections as soon as they are accepted ([`AcceptFilter`], e.g. from an access list).
//!
//! Every connection is held to [`ClientLimits`]: a total deadline for each request head, an
//! idle limit between keep-alive requests, idle limits on reading a body and on writing to
//! the client, and a cap on connections served at once. [`spawn`] applies the defaults (nginx's
//! timeouts, a 1024-connection cap); [`spawn_with`] takes other limits, alone or in
//! [`ListenOptions`]. See [`ClientLimits`] for the table and for which peer each default
//! follows.
//!
//! [`ListenOptions::tls`] terminates TLS on the listener (see [`crate::tls`]).
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
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pingora_core::apps::HttpServerApp;
use pingora_core::server::Fds;
use pingora_core::services::listening::Service as ListeningService;
use pingora_core::services::Service as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

mod accept_filter;
mod connection;
mod limits;
mod options;
mod reuse_port;
mod timed_stream;

pub use accept_filter::AcceptFilter;
pub use options::ListenOptions;

pub use connection::MAX_DRAIN_TIME;
use connection::{ConnectionCount, Tracked};
pub use limits::{
    ClientLimits, InvalidClientLimit, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_SEND_TIMEOUT,
};

/// How long [`RunningServer::shutdown`] waits for in-flight connections by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A Pingora app listening in-process. Dropping it stops accepting connections; call
/// [`shutdown`](Self::shutdown) to also wait for in-flight requests.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accepting: Accepting,
    connections: Arc<ConnectionCount>,
    grace: Duration,
}

/// Where the accept loops run.
#[derive(Debug)]
enum Accepting {
    /// One accept loop on the caller's runtime.
    Task(Option<JoinHandle<()>>),
    /// One accept loop per thread ([`ListenOptions::threads`]).
    Threads(ServerThreads),
}

/// The threads of [`ListenOptions::threads`] and how to stop them.
#[derive(Debug)]
struct ServerThreads {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// One per thread: its accept loop ended (its listener is closed).
    accept_done: Vec<oneshot::Receiver<()>>,
    /// Ends the threads' runtimes (and whatever still runs on them).
    exit: watch::Sender<bool>,
}

/// Binds `addr` (e.g. `"127.0.0.1:0"`) and serves `app` on it from the current tokio runtime,
/// with the default [`ListenOptions`] (the default [`ClientLimits`], no TLS, no filter).
///
/// `app` is any Pingora [`HttpServerApp`]: a [`ServeTower`](crate::ServeTower), or the
/// `HttpProxy` that `pingora_proxy::http_proxy` builds around a `ProxyHttp`.
///
/// # Errors
/// When `addr` does not parse or cannot be bound.
pub async fn spawn<A>(addr: &str, app: A) -> std::io::Result<RunningServer>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    spawn_with(addr, app, ListenOptions::new()).await
}

/// [`spawn`] with these [`ListenOptions`], or just these [`ClientLimits`]: client timeouts
/// and connection cap, an accept filter, TLS, and [`threads`](ListenOptions::threads) to serve
/// from threads of its own instead of the current runtime.
///
/// With TLS the handshake is part of the request head for the limits: it must finish within
/// the header timeout, and a connection counts against the cap from its accept.
///
/// # Errors
/// When a limit is zero (an [`InvalidClientLimit`] inside an `InvalidInput` error), when
/// `threads` is 0, when `addr` does not parse or cannot be bound, or when a runtime or thread
/// cannot be created.
pub async fn spawn_with<A>(
    addr: &str,
    app: A,
    options: impl Into<ListenOptions>,
) -> std::io::Result<RunningServer>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let options = options.into();
    match options.threads {
        Some(threads) => spawn_threads(addr, app, threads, options).await,
        None => spawn_task(addr, app, options),
    }
}

/// One accept loop on the current runtime.
fn spawn_task<A>(addr: &str, app: A, options: ListenOptions) -> std::io::Result<RunningServer>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let tracked = Tracked::new(app, &options)?;
    let connections = tracked.connections.clone();
    let (listener, local_addr) = bind(addr)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let accept = accept_loop(
        tracked,
        listener,
        local_addr,
        shutdown_rx,
        options.accept_filter,
    );
    Ok(RunningServer {
        local_addr,
        shutdown,
        accepting: Accepting::Task(Some(tokio::spawn(accept))),
        connections,
        grace: DEFAULT_SHUTDOWN_GRACE,
    })
}

/// `threads` new OS threads, each running its own current-thread tokio runtime and accept loop
/// on the one listening socket (or, with [`reuse_port`](ListenOptions::reuse_port), on a
/// `SO_REUSEPORT` socket of its own). Everything a connection does (the app's futures, its
/// timers) stays on the thread that accepted it. [`RunningServer::shutdown`] drains them like
/// the single loop's and then ends the threads.
async fn spawn_threads<A>(
    addr: &str,
    app: A,
    threads: usize,
    options: ListenOptions,
) -> std::io::Result<RunningServer>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let tracked = Tracked::new(app, &options)?;
    let connections = tracked.connections.clone();
    if threads == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "threads must be > 0, got 0",
        ));
    }
    let (mut sockets, local_addr) = if options.reuse_port {
        reuse_port::bind_reuse_port(addr, threads)?
    } else {
        let (listener, local_addr) = bind(addr)?;
        (vec![listener], local_addr)
    };
    let listener = sockets.swap_remove(0);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (exit, exit_rx) = watch::channel(false);
    let mut started = ServerThreads {
        threads: Vec::with_capacity(threads),
        accept_done: Vec::with_capacity(threads),
        exit,
    };
    for i in 0..threads {
        // Each accept loop owns its socket (`SO_REUSEPORT`) or a duplicate of the shared
        // one; Pingora closes it when the loop ends.
        let listener = match sockets.pop() {
            Some(own) => own,
            None => listener.try_clone()?,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let accept = accept_loop(
            tracked.clone(),
            listener,
            local_addr,
            shutdown_rx.clone(),
            options.accept_filter.clone(),
        );
        let (done, accept_done) = oneshot::channel();
        let mut exit_rx = exit_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pingora-tower-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    accept.await;
                    let _ = done.send(());
                    // In-flight connections keep running here until the server lets go.
                    let _ = exit_rx.wait_for(|exit| *exit).await;
                });
            })?;
        started.threads.push(thread);
        started.accept_done.push(accept_done);
    }
    // Every loop has its own socket or duplicate; closing this one leaves them listening.
    drop(listener);
    Ok(RunningServer {
        local_addr,
        shutdown,
        accepting: Accepting::Threads(started),
        connections,
        grace: DEFAULT_SHUTDOWN_GRACE,
    })
}

/// Binds a non-blocking listener on `addr`.
fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    Ok((listener, local_addr))
}

/// Pingora's accept loop for `app` on `listener`, until `shutdown` says so.
fn accept_loop<A>(
    app: Tracked<A>,
    listener: TcpListener,
    local_addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
    accept_filter: Option<AcceptFilter>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let bind_key = local_addr.to_string();
    let mut fds = Fds::new();
    // Pingora takes ownership of the descriptor and closes it when the listener stops.
    fds.add(bind_key.clone(), listener.into_raw_fd());
    let mut service = ListeningService::new(format!("pingora-tower {bind_key}"), app);
    service.add_tcp(&bind_key);
    if let Some(filter) = accept_filter {
        service.set_connection_filter(filter.into_inner());
    }
    async move {
        service
            .start_service(Some(Arc::new(Mutex::new(fds))), shutdown, 1)
            .await;
    }
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
        self.connections.active()
    }

    /// Closes the listening socket (new connections are refused from when this returns) and
    /// tells open connections to finish: in-flight requests complete, idle keep-alive
    /// connections close. Does not wait for them; [`shutdown`](Self::shutdown) does.
    pub async fn stop_accepting(&mut self) {
        let _ = self.shutdown.send(true);
        match &mut self.accepting {
            Accepting::Task(task) => {
                if let Some(task) = task.take() {
                    if let Err(e) = task.await {
                        tracing::error!(error = %e, "the accept loop ended abnormally");
                    }
                }
            }
            Accepting::Threads(threads) => {
                for done in std::mem::take(&mut threads.accept_done) {
                    if done.await.is_err() {
                        tracing::error!("a server thread ended before its accept loop did");
                    }
                }
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
        if let Accepting::Threads(threads) = &mut self.accepting {
            let _ = threads.exit.send(true);
            let handles = std::mem::take(&mut threads.threads);
            let joined = tokio::task::spawn_blocking(move || {
                handles.into_iter().all(|thread| thread.join().is_ok())
            })
            .await;
            if !matches!(joined, Ok(true)) {
                tracing::error!("a server thread panicked");
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Accepting::Threads(threads) = &self.accepting {
            // Not drained: whatever still runs on the threads ends with them.
            let _ = threads.exit.send(true);
        }
    }
}
