//! A scripted upstream: an axum app on a Pingora listener whose answers a test sets in advance,
//! and which keeps what it was sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use pingora_tower::{server, RunningServer, ServeTower};
use tokio::sync::Notify;

/// What the upstream answers, and what it saw.
///
/// Each request gets the next queued status (200 once the queue is empty), or the
/// [`always`](Self::answer_always) status when one is set, with the request's body echoed back.
/// A request to a path under `/slow`, or any request while [`hold`](Self::hold) is on, waits to
/// be released first.
#[derive(Default)]
pub struct Script {
    statuses: Mutex<VecDeque<u16>>,
    always: AtomicU16,
    gets: AtomicUsize,
    posts: AtomicUsize,
    hold: AtomicBool,
    release: Notify,
    answered: AtomicBool,
    seen: Mutex<Vec<HeaderMap>>,
}

impl Script {
    /// Answers the next requests with `statuses`, in order.
    pub fn queue(&self, statuses: &[u16]) {
        lock(&self.statuses).extend(statuses);
    }

    /// Answers every request with `status` (`None`: the queue again).
    pub fn answer_always(&self, status: Option<u16>) {
        self.always.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Holds every request until [`release_one`](Self::release_one) or
    /// [`release_all`](Self::release_all).
    pub fn hold(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    /// Releases one held request (or the next to arrive).
    pub fn release_one(&self) {
        self.release.notify_one();
    }

    /// Releases every request held now.
    pub fn release_all(&self) {
        self.release.notify_waiters();
    }

    /// Whether any request was answered.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::SeqCst)
    }

    /// Requests received other than `POST`s.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// `POST` requests received.
    pub fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }

    /// Requests received.
    pub fn hits(&self) -> usize {
        self.gets() + self.posts()
    }

    /// The headers of every request received, in order.
    pub fn seen(&self) -> Vec<HeaderMap> {
        lock(&self.seen).clone()
    }

    async fn answer(State(script): State<Arc<Script>>, req: Request) -> (StatusCode, Bytes) {
        let held = script.hold.load(Ordering::SeqCst) || req.uri().path().starts_with("/slow");
        // Waiting for the release from before the request is counted: a test that saw it
        // counted and then releases cannot miss it.
        let release = script.release.notified();
        tokio::pin!(release);
        if held {
            release.as_mut().enable();
        }
        let counter = if req.method() == Method::POST {
            &script.posts
        } else {
            &script.gets
        };
        counter.fetch_add(1, Ordering::SeqCst);
        lock(&script.seen).push(req.headers().clone());
        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        if held {
            release.await;
        }
        let status = match script.always.load(Ordering::SeqCst) {
            0 => lock(&script.statuses).pop_front().unwrap_or(200),
            code => code,
        };
        script.answered.store(true, Ordering::SeqCst);
        (StatusCode::from_u16(status).expect("a valid status"), body)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A [`Script`] served on a free port of 127.0.0.1; stopped when dropped.
pub struct ScriptedUpstream {
    /// The listener serving the script.
    pub server: RunningServer,
    /// What it answers and what it saw.
    pub script: Arc<Script>,
}

impl ScriptedUpstream {
    /// Starts an upstream with an empty script: every request gets `200`.
    pub async fn start() -> ScriptedUpstream {
        crate::init_tracing();
        let script = Arc::new(Script::default());
        let app = Router::new()
            .route("/", any(Script::answer))
            .route("/{*path}", any(Script::answer))
            .with_state(script.clone());
        let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
            .await
            .expect("scripted upstream");
        ScriptedUpstream { server, script }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `http://` and the address, for a route's upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The key of this backend's breaker in the proxy (its address).
    pub fn breaker_key(&self) -> String {
        self.addr().to_string()
    }

    /// Stops the listener, letting requests in flight finish.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
