//! The rate-limit layer with its state in a real `redis-server` (started by each test on a free
//! port, killed at its end): one limit shared by two Pingora proxies and an axum app, the
//! over-limit cache, lease mode's bound, and what an outage of Redis does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::any;
use axum::Router;
use http::{HeaderName, Request, StatusCode};
use pingora_tower::middleware::rate_limit::redis::{FailurePolicy, RedisStore, RedisStoreBuilder};
use pingora_tower::middleware::rate_limit::{Decision, Key, KeyValue, RateLimitLayer};
use pingora_tower::proxy::{PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower_test_support::redis_server::{self, RedisServer};
use pingora_tower_test_support::*;
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};

const CLIENT: HeaderName = HeaderName::from_static("x-client");

/// A call timeout large enough for a loaded test machine; the outage tests bound every request
/// by [`REQUEST_GUARD`], far below what a request waiting on a frozen Redis would take.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
const REQUEST_GUARD: Duration = Duration::from_secs(5);

fn store(redis: &RedisServer) -> RedisStoreBuilder {
    RedisStore::builder(redis.url())
        .prefix("test")
        .call_timeout(CALL_TIMEOUT)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
}

/// A limit of `limit` per minute keyed by `x-client`, in Redis.
fn layer(store: RedisStoreBuilder, limit: u32) -> RateLimitLayer {
    RateLimitLayer::builder(limit, Duration::from_secs(60))
        .key(Key::Header(CLIENT))
        .expose_headers(true)
        .redis(store.build().expect("store"))
        .build()
        .expect("layer")
}

/// An upstream that counts what reaches it.
struct Upstream1 {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream1 {
    async fn start(limiter: Option<RateLimitLayer>) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let mut app = Router::new().route(
            "/",
            any(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        );
        if let Some(limiter) = limiter {
            app = app.layer(limiter);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream1 { addr, hits, task }
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream1 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(upstream: SocketAddr, limiter: RateLimitLayer) -> RunningProxy {
    PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::new(format!("http://{upstream}")),
        )])
        .middleware(limiter)
        .spawn()
        .await
        .expect("proxy")
}

/// One request from `client` to `addr`: its status and headers, bounded by [`REQUEST_GUARD`].
async fn get(addr: SocketAddr, client: &str) -> (StatusCode, http::HeaderMap) {
    let req = Request::get("/")
        .header("host", addr.to_string())
        .header(CLIENT, client)
        .body(empty())
        .expect("request");
    let res = timeout(REQUEST_GUARD, send(addr, req))
        .await
        .expect("request answered within the guard");
    let (status, headers) = (res.status(), res.headers().clone());
    body_text(res).await;
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_counts_like_the_in_process_limiter() {
    init_tracing();
    let redis = RedisServer::start();
    let limiter = layer(store(&redis), 3);
    let key = KeyValue::from("alice");
    for remaining in [2, 1, 0] {
        match limiter.check_async(&key).await {
            Decision::Allow(quota) => assert_eq!(quota.remaining(), Some(remaining)),
            other => panic!("expected Allow, got {other:?}"),
        }
    }
    let Decision::Reject(limited) = limiter.check_async(&key).await else {
        panic!("the fourth request is over the limit");
    };
    // One token every 20 s; the bucket is full again 60 s after the first request.
    assert!(
        limited.retry_after() > Duration::from_secs(19)
            && limited.retry_after() <= Duration::from_secs(20),
        "{limited:?}"
    );
    assert!(limited.reset() > Duration::from_secs(59), "{limited:?}");
    // Other keys have their own buckets; each is one Redis key in the prefix's hash tag.
    assert!(matches!(
        limiter.check_async(&KeyValue::from("bob")).await,
        Decision::Allow(_)
    ));
    assert_eq!(
        redis.command(&["EXISTS", "{test:b:alice}"]).as_deref(),
        Some(":1")
    );
    let ttl: i64 = redis
        .command(&["PTTL", "{test:b:bob}"])
        .and_then(|r| r.trim_start_matches(':').parse().ok())
        .expect("PTTL");
    assert!(
        (1..=20_001).contains(&ttl),
        "a key expires once its bucket is full: {ttl}"
    );
    let stats = limiter.redis_stats().expect("redis stats");
    assert_eq!(stats.calls, 5);
    assert_eq!(limiter.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_delays_by_the_servers_clock() {
    init_tracing();
    let redis = RedisServer::start();
    // One token every 10 s, waits of up to 15 s: wide margins for a slow machine.
    let limiter = RateLimitLayer::builder(1, Duration::from_secs(10))
        .queue(Duration::from_secs(15))
        .redis(store(&redis).build().expect("store"))
        .build()
        .expect("layer");
    let key = KeyValue::Global;
    assert!(matches!(
        limiter.check_async(&key).await,
        Decision::Allow(_)
    ));
    let Decision::Delay { delay, .. } = limiter.check_async(&key).await else {
        panic!("the second request waits for its slot");
    };
    assert!(delay > Duration::from_secs(5) && delay <= Duration::from_secs(10));
    // The next slot is 20 s away: beyond the queue's 15 s.
    assert!(matches!(
        limiter.check_async(&key).await,
        Decision::Reject(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_an_axum_app_share_one_limit_exactly() {
    init_tracing();
    let redis = RedisServer::start();
    // Three instances, each with its own layer and its own connection, one limit of 10/min.
    let upstream = Upstream1::start(None).await;
    let app = Upstream1::start(Some(layer(store(&redis), 10))).await;
    let (a, b) = (layer(store(&redis), 10), layer(store(&redis), 10));
    let (pa, pb) = (
        proxy(upstream.addr, a.clone()).await,
        proxy(upstream.addr, b.clone()).await,
    );
    let targets = [pa.local_addr(), pb.local_addr(), app.addr];

    let mut admitted = 0;
    let mut remaining_seen = Vec::new();
    for i in 0..30 {
        let (status, headers) = get(targets[i % 3], "shared").await;
        match status {
            StatusCode::OK => {
                admitted += 1;
                remaining_seen.push(headers["ratelimit"].to_str().unwrap().to_owned());
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry), "retry-after {retry}");
                assert!(headers.contains_key("ratelimit-policy"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(admitted, 10, "exactly the limit, across three instances");
    // The headers count down across instances: the count lives in Redis.
    assert!(remaining_seen[0].contains("r=9"), "{remaining_seen:?}");
    assert!(remaining_seen[9].contains("r=0"), "{remaining_seen:?}");
    assert_eq!(upstream.hits() + app.hits(), 10);
    // Of the 20 rejected, the proxies took requests 9, 12, 15, … (6) and 10, 13, … (7).
    assert_eq!(a.stats().rejected + b.stats().rejected, 13);
    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_clients_stop_generating_redis_calls() {
    init_tracing();
    let redis = RedisServer::start();
    let upstream = Upstream1::start(None).await;
    let limiter = layer(store(&redis), 5);
    let p = proxy(upstream.addr, limiter.clone()).await;
    for _ in 0..5 {
        assert_eq!(get(p.local_addr(), "flood").await.0, StatusCode::OK);
    }
    redis.reset_stats();
    for _ in 0..50 {
        let (status, headers) = get(p.local_addr(), "flood").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(headers.contains_key("retry-after"));
    }
    // The first rejection came from Redis; the other 49 from the instance's memory of it.
    assert_eq!(redis.script_calls(), 1, "script runs during the flood");
    let stats = limiter.redis_stats().unwrap();
    assert_eq!(stats.cached_rejections, 49);
    // A client within its limit is still asked about, one call per request.
    assert_eq!(get(p.local_addr(), "polite").await.0, StatusCode::OK);
    assert_eq!(redis.script_calls(), 2);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_mode_stays_within_its_documented_bound() {
    init_tracing();
    let redis = RedisServer::start();
    let upstream = Upstream1::start(None).await;
    // 10 per 500 ms (one token every 50 ms, burst 10), leases of 4, two instances.
    let (limit, period, lease, instances) = (10u32, Duration::from_millis(500), 4u32, 2u32);
    let leased = || {
        RateLimitLayer::builder(limit, period)
            .key(Key::Header(CLIENT))
            .redis(
                store(&redis)
                    .lease(lease, Duration::from_secs(5))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let (a, b) = (leased(), leased());
    let (pa, pb) = (
        proxy(upstream.addr, a.clone()).await,
        proxy(upstream.addr, b.clone()).await,
    );
    let start = Instant::now();
    let mut admitted = 0u64;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let addr = [pa.local_addr(), pb.local_addr()][i % 2];
        if get(addr, "leased").await.0 == StatusCode::OK {
            admitted += 1;
        }
        i += 1;
    }
    let elapsed = start.elapsed();
    // Every admission happened inside [start, start + elapsed] on any clock, so one limiter
    // admits at most burst + elapsed / interval + 1 there; leases add instances × (lease − 1).
    let interval = period / limit;
    let one_limiter = u64::from(limit) + (elapsed.as_nanos() / interval.as_nanos()) as u64 + 1;
    let bound = one_limiter + u64::from(instances * (lease - 1));
    assert!(admitted <= bound, "admitted {admitted} > bound {bound}");
    let (sa, sb) = (a.redis_stats().unwrap(), b.redis_stats().unwrap());
    assert!(sa.leased + sb.leased > 0, "leased tokens were spent");
    assert!(
        sa.calls + sb.calls < i as u64,
        "fewer calls than requests: {} calls for {i} requests",
        sa.calls + sb.calls
    );
    assert_eq!(upstream.hits() as u64, admitted);
    pa.shutdown().await;
    pb.shutdown().await;
}

/// A request admitted without asking Redis (from a lease, or by the open failure policy) knows
/// nothing of the bucket: its response names the policy but carries no `RateLimit` quota (a
/// made-up `r=0` would tell a client to stop while it has tokens left). In both hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_admitted_without_redis_carry_no_made_up_quota() {
    init_tracing();
    let mut redis = RedisServer::start();
    let upstream = Upstream1::start(None).await;
    let leased = || {
        RateLimitLayer::builder(100, Duration::from_secs(60))
            .key(Key::Header(CLIENT))
            .expose_headers(true)
            .redis(
                store(&redis)
                    .lease(4, Duration::from_secs(30))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let (in_proxy, in_app) = (leased(), leased());
    let p = proxy(upstream.addr, in_proxy.clone()).await;
    let app = Upstream1::start(Some(in_app.clone())).await;
    for (addr, client, layer) in [(p.local_addr(), "c", &in_proxy), (app.addr, "d", &in_app)] {
        // The first asks Redis and takes a lease of 4: the bucket's state is known, 96 left.
        let (status, first) = get(addr, client).await;
        assert_eq!(status, StatusCode::OK);
        let quota = first["ratelimit"].to_str().unwrap().to_owned();
        assert!(quota.contains(";r=96;"), "{quota}");
        // The next three spend the lease.
        for _ in 0..3 {
            let (status, headers) = get(addr, client).await;
            assert_eq!(status, StatusCode::OK);
            assert!(headers.contains_key("ratelimit-policy"));
            assert_eq!(headers.get("ratelimit"), None, "{headers:?}");
        }
        assert_eq!(layer.redis_stats().unwrap().leased, 3);
    }
    p.shutdown().await;

    let open = layer(store(&redis).on_failure(FailurePolicy::Open), 3);
    let p = proxy(upstream.addr, open.clone()).await;
    redis.kill();
    let (status, headers) = get(p.local_addr(), "e").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("ratelimit-policy"));
    assert_eq!(headers.get("ratelimit"), None, "{headers:?}");
    assert!(open.redis_stats().unwrap().failed_open >= 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_without_waiting_and_limiting_resumes_after_restart() {
    init_tracing();
    let mut redis = RedisServer::start();
    let upstream = Upstream1::start(None).await;
    let limiter = layer(store(&redis).on_failure(FailurePolicy::Open), 3);
    let p = proxy(upstream.addr, limiter.clone()).await;
    let addr = p.local_addr();
    for _ in 0..3 {
        assert_eq!(get(addr, "before").await.0, StatusCode::OK);
    }
    assert_eq!(get(addr, "before").await.0, StatusCode::TOO_MANY_REQUESTS);

    // Frozen: connections stay open and nothing answers. Each request waits at most the call
    // timeout (the guard in `get` is twenty times that), and is admitted.
    redis.pause();
    for _ in 0..10 {
        assert_eq!(get(addr, "frozen").await.0, StatusCode::OK);
    }
    let frozen = limiter.redis_stats().unwrap();
    assert!(frozen.down);
    assert!(frozen.timeouts >= 1, "{frozen:?}");
    assert_eq!(frozen.went_down, 1, "{frozen:?}");
    // Back-off: far fewer calls than requests while it is down.
    assert!(frozen.failed_open >= 10, "{frozen:?}");

    // Killed: connections refused.
    redis.kill();
    for _ in 0..10 {
        assert_eq!(get(addr, "killed").await.0, StatusCode::OK);
    }
    // Restarted on the same port, empty: limiting resumes by itself once a probe succeeds.
    redis.restart();
    let resumed = timeout(Duration::from_secs(20), async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            get(addr, "probe").await;
            if !limiter.redis_stats().unwrap().down {
                break;
            }
        }
    })
    .await;
    assert!(resumed.is_ok(), "{:?}", limiter.redis_stats());
    for _ in 0..3 {
        assert_eq!(get(addr, "after").await.0, StatusCode::OK);
    }
    assert_eq!(get(addr, "after").await.0, StatusCode::TOO_MANY_REQUESTS);
    let stats = limiter.redis_stats().unwrap();
    assert!(stats.recovered >= 1, "{stats:?}");
    assert!(
        stats.calls < stats.failed_open + 10,
        "requests during the outage mostly skipped Redis: {stats:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_and_the_local_fallback_hold_while_redis_is_down() {
    init_tracing();
    let mut redis = RedisServer::start();
    let closed = layer(store(&redis).on_failure(FailurePolicy::Closed), 10);
    // A limit of 4 over 2 instances: 2 each while Redis is away.
    let local = layer(
        store(&redis).on_failure(FailurePolicy::Local { instances: 2 }),
        4,
    );
    let key = KeyValue::from("someone");
    assert!(matches!(closed.check_async(&key).await, Decision::Allow(_)));
    assert!(matches!(local.check_async(&key).await, Decision::Allow(_)));
    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        assert!(matches!(
            closed.check_async(&key).await,
            Decision::Reject(_)
        ));
        assert!(started.elapsed() < REQUEST_GUARD);
    }
    let mut admitted = 0;
    for _ in 0..5 {
        if let Decision::Allow(_) = local.check_async(&key).await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "the local limiter holds one instance's share");
    assert_eq!(closed.redis_stats().unwrap().failed_closed, 5);
    assert_eq!(local.redis_stats().unwrap().fell_back, 5);
}

/// The same limit against a Redis Cluster: run by `benches/redis/cluster.sh`, which starts a
/// local three-node cluster and passes its nodes in `REDIS_CLUSTER_NODES` (comma-separated
/// `redis://` URLs). Ignored otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster: benches/redis/cluster.sh starts one"]
async fn a_redis_cluster_holds_the_same_limits() {
    init_tracing();
    let nodes: Vec<String> = std::env::var("REDIS_CLUSTER_NODES")
        .expect("REDIS_CLUSTER_NODES")
        .split(',')
        .map(str::to_owned)
        .collect();
    let instance = |limit: u32| {
        let nodes = nodes.clone();
        async move {
            let store = RedisStore::cluster_builder(nodes)
                .prefix(format!("cluster-{}", std::process::id()))
                .call_timeout(CALL_TIMEOUT)
                .build_cluster()
                .await
                .expect("cluster store");
            RateLimitLayer::builder(limit, Duration::from_secs(60))
                .key(Key::Header(CLIENT))
                .expose_headers(true)
                .redis(store)
                .build()
                .expect("layer")
        }
    };

    // Two proxies, one limit of 10 per minute: exactly 10 of 30 admitted.
    let upstream = Upstream1::start(None).await;
    let (a, b) = (instance(10).await, instance(10).await);
    let (pa, pb) = (
        proxy(upstream.addr, a.clone()).await,
        proxy(upstream.addr, b.clone()).await,
    );
    let mut admitted = 0;
    for i in 0..30 {
        let addr = [pa.local_addr(), pb.local_addr()][i % 2];
        if get(addr, "shared").await.0 == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "exactly the limit, across two proxies");
    pa.shutdown().await;
    pb.shutdown().await;

    // 60 keys, whose hash tags spread them over the three nodes' slots: each admits exactly 2
    // of 3 requests sent through two instances.
    let (c, d) = (instance(2).await, instance(2).await);
    for k in 0..60 {
        let key = KeyValue::from(format!("client-{k}"));
        let mut admitted = 0;
        for layer in [&c, &d, &c] {
            if let Decision::Allow(_) = layer.check_async(&key).await {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2, "key client-{k}");
    }
    for layer in [&a, &b, &c, &d] {
        let stats = layer.redis_stats().unwrap();
        assert_eq!((stats.errors, stats.timeouts), (0, 0), "{stats:?}");
    }
    let mut per_node = Vec::new();
    for node in &nodes {
        let addr: SocketAddr = node
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("node address");
        let keys: u64 = redis_server::command_at(addr, &["DBSIZE"])
            .and_then(|r| r.trim_start_matches(':').parse().ok())
            .expect("DBSIZE");
        per_node.push((addr, keys));
    }
    println!("bucket keys per node: {per_node:?}");
    assert!(
        per_node.iter().all(|&(_, keys)| keys > 0),
        "every node holds buckets: {per_node:?}"
    );
}

/// The call timeout bounds the wait exactly: with tokio's clock paused, a frozen Redis (it
/// accepts bytes and never answers) lets the runtime go idle, so the clock jumps straight to the
/// next timer. The request is decided by the failure policy at the call timeout, measured on
/// that clock (deterministic: only the timer wheel's 1 ms rounding), and the next request does not call
/// Redis at all while it backs off.
#[tokio::test(flavor = "current_thread")]
async fn a_frozen_redis_holds_a_request_for_the_call_timeout_exactly() {
    init_tracing();
    let redis = RedisServer::start();
    let limiter = layer(store(&redis).on_failure(FailurePolicy::Closed), 10);
    let key = KeyValue::from("frozen");
    // Connected and answering, on the real clock.
    assert!(matches!(
        limiter.check_async(&key).await,
        Decision::Allow(_)
    ));
    redis.pause();
    tokio::time::pause();
    let started = Instant::now();
    let decision = timeout(REQUEST_GUARD, limiter.check_async(&key)).await;
    assert!(matches!(decision, Ok(Decision::Reject(_))), "{decision:?}");
    // tokio's timers fire on whole milliseconds: the deadline, rounded up.
    let waited = started.elapsed();
    assert!(
        (CALL_TIMEOUT..=CALL_TIMEOUT + Duration::from_millis(1)).contains(&waited),
        "{waited:?}"
    );
    let calls = limiter.redis_stats().unwrap().calls;
    let started = Instant::now();
    assert!(matches!(
        limiter.check_async(&key).await,
        Decision::Reject(_)
    ));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait while Redis is known down"
    );
    assert_eq!(limiter.redis_stats().unwrap().calls, calls);
    tokio::time::resume();
    redis.resume();
}
