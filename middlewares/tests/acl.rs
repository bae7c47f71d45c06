//! Behaviour of the access list in the tower host: refusals answered without calling the
//! inner service, the rendered `403`, dry run, and the client address from the extensions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use middlewares::acl::{AclLayer, Denied, DenyReason, Rule};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn request(peer: Option<[u8; 4]>, path: &str, xff: Option<&str>) -> Request<String> {
    let mut req = Request::get(path).body(String::new()).unwrap();
    if let Some(peer) = peer {
        req.extensions_mut().insert(SocketAddr::from((peer, 4711)));
    }
    if let Some(xff) = xff {
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    req
}

/// An ACL around a service that counts its calls.
fn stack(
    acl: AclLayer,
) -> (
    impl tower::Service<
            Request<String>,
            Response = Response<String>,
            Error = Infallible,
            Future = impl Send,
        > + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(acl)
        .service(service_fn(move |_req: Request<String>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::new(String::from("inner"))) }
        }));
    (svc, calls)
}

#[tokio::test]
async fn a_denied_request_never_reaches_the_inner_service() {
    let acl = AclLayer::builder().deny_ip("192.0.2.0/24").build().unwrap();
    let (svc, calls) = stack(acl.clone());
    let res = svc
        .clone()
        .oneshot(request(Some([192, 0, 2, 9]), "/", None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.body().is_empty());
    assert_eq!(
        res.extensions().get::<Denied>().map(Denied::reason),
        Some(DenyReason::Rule(0))
    );
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    let res = svc
        .oneshot(request(Some([198, 51, 100, 1]), "/", None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(acl.stats().denied, 1);
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let acl = AclLayer::builder()
        .allow_ip("10.0.0.0/8")
        .rule(Rule::deny())
        .trusted_proxies(["172.16.0.0/12"])
        .build()
        .unwrap();
    let (svc, _) = stack(acl);
    let spoofed = request(Some([203, 0, 113, 5]), "/", Some("10.0.0.1"));
    let res = svc.clone().oneshot(spoofed).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let relayed = request(Some([172, 16, 0, 1]), "/", Some("10.0.0.1"));
    let res = svc.oneshot(relayed).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn dry_run_serves_everything_and_counts() {
    let acl = AclLayer::builder()
        .rule(Rule::deny().path_prefix("/admin"))
        .dry_run(true)
        .build()
        .unwrap();
    let (svc, calls) = stack(acl.clone());
    for path in ["/admin", "//admin/x", "/public"] {
        let res = svc
            .clone()
            .oneshot(request(Some([192, 0, 2, 1]), path, None))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(acl.stats().dry_run_denied, 2);
    assert_eq!(acl.stats().denied, 0);
}

#[tokio::test]
async fn no_connect_info_fails_closed() {
    let acl = AclLayer::builder()
        .allow_ip("0.0.0.0/0")
        .rule(Rule::deny())
        .build()
        .unwrap();
    let (svc, _) = stack(acl);
    let res = svc.oneshot(request(None, "/", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}
