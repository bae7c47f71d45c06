//! TLS at both ends over real sockets on 127.0.0.1, with certificates made at test time by
//! `rcgen` (no key is stored anywhere): SNI selection, ALPN h2, certificate reload, upstream
//! verification and mutual TLS, and `curl` / `openssl s_client` against a TLS listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::routing::get;
use axum::Router;
use http::header::HOST;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora_tower::middleware::circuit_breaker::{CircuitBreakerLayer, State, Window};
use pingora_tower::middleware::proxy_host::ProxyPolicy;
use pingora_tower::middleware::Layered;
use pingora_tower::proxy::{PingoraProxy, Route, Upstream};
use pingora_tower::server::{self, ListenOptions};
use pingora_tower::tls::{
    CertSet, ClientAuth, ServerCert, TlsConfig, TlsConfigError, TlsInfo, UpstreamTls,
};
use pingora_tower::{ClientLimits, RunningServer, ServeTower};
use pingora_tower_test_support::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::layer::layer_fn;

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key in PEM, issued by a [`Ca`].
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for these DNS names / IP addresses, with `cn` as its subject's common name.
    fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

impl Leaf {
    fn server_cert(&self) -> ServerCert {
        ServerCert::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).unwrap()
    }
}

/// Accepts any server certificate (signatures still checked): lets a test read which
/// certificate a listener chose for a name it is not valid for.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts `ca` and offers `alpn`.
fn client_config(ca: &Ca, alpn: &[&[u8]]) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A client that accepts any certificate, offering HTTP/1.1.
fn any_cert_config() -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A TLS connection to `addr` sending `sni` (an IP address sends none).
async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(
        HANG_GUARD,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake hung")
}

/// The leaf certificate the server presented.
fn peer_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTP/1.1 connection over an established TLS stream.
async fn h1_over(stream: TlsStream<TcpStream>) -> http1::SendRequest<ClientBody> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn get_text(
    sender: &mut http1::SendRequest<ClientBody>,
    host: &str,
    path: &str,
) -> (http::StatusCode, String) {
    let req = http::Request::get(path)
        .header(HOST, host)
        .body(empty())
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, sender.send_request(req))
        .await
        .expect("response hung")
        .unwrap();
    let status = res.status();
    (status, body_text(res).await)
}

/// An axum app telling what the TLS layer saw: `/sni` the SNI name, `/subject` the client
/// certificate's subject, `/` the `X-Forwarded-Proto` it was sent.
fn tls_echo_app() -> Router {
    fn info(req: &Request) -> Option<TlsInfo> {
        req.extensions().get::<TlsInfo>().cloned()
    }
    Router::new()
        .route(
            "/sni",
            get(|req: Request| async move {
                info(&req)
                    .and_then(|i| i.server_name().map(str::to_owned))
                    .unwrap_or_else(|| "-".into())
            }),
        )
        .route(
            "/subject",
            get(|req: Request| async move {
                info(&req)
                    .and_then(|i| i.client_subject().map(str::to_owned))
                    .unwrap_or_else(|| "-".into())
            }),
        )
        .route(
            "/",
            get(|req: Request| async move {
                req.headers()
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            }),
        )
        .route(
            "/who",
            get(|req: Request| async move {
                req.headers()
                    .get("x-client-subject")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            }),
        )
        .fallback(|| async { "fallback" })
}

async fn serve_tls(tls: TlsConfig) -> RunningServer {
    let options = ListenOptions::new().tls(tls);
    server::spawn_with("127.0.0.1:0", ServeTower::new(tls_echo_app()), options)
        .await
        .unwrap()
}

/// Three certificates (two names, one default) from one CA.
struct ThreeCerts {
    ca: Ca,
    a: Leaf,
    wild: Leaf,
    default: Leaf,
}

impl ThreeCerts {
    fn new() -> Self {
        let ca = Ca::new("test root");
        let a = ca.leaf("a.test", &["a.test"]);
        let wild = ca.leaf("wild", &["*.b.test"]);
        let default = ca.leaf("default", &["default.test", "127.0.0.1"]);
        ThreeCerts {
            ca,
            a,
            wild,
            default,
        }
    }

    fn set(&self) -> CertSet {
        CertSet::new(self.default.server_cert())
            .with_name("a.test", self.a.server_cert())
            .unwrap()
            .with_name("*.b.test", self.wild.server_cert())
            .unwrap()
    }
}

#[tokio::test]
async fn each_sni_name_gets_its_certificate_and_an_unknown_name_the_default() {
    init_tracing();
    let certs = ThreeCerts::new();
    let server = serve_tls(TlsConfig::new(certs.set())).await;
    let addr = server.local_addr();

    for (sni, expected) in [
        ("a.test", &certs.a),
        ("A.TEST", &certs.a),
        ("x.b.test", &certs.wild),
        ("y.b.test", &certs.wild),
        ("unknown.test", &certs.default),
        ("x.y.b.test", &certs.default),
        ("127.0.0.1", &certs.default),
    ] {
        let stream = tls_connect(addr, any_cert_config(), sni).await.unwrap();
        assert!(peer_leaf(&stream) == expected.der, "certificate for {sni}");
    }

    // A verifying client gets through for the names the certificates carry, and the service
    // sees the name it asked for.
    for sni in ["a.test", "x.b.test", "default.test"] {
        let stream = tls_connect(addr, client_config(&certs.ca, &[b"http/1.1"]), sni)
            .await
            .unwrap();
        let mut h1 = h1_over(stream).await;
        assert_eq!(
            get_text(&mut h1, sni, "/sni").await,
            (http::StatusCode::OK, sni.to_owned())
        );
    }
    // The default certificate does not name `unknown.test`: a verifying client refuses it.
    let refused = tls_connect(addr, client_config(&certs.ca, &[]), "unknown.test").await;
    assert!(refused.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn h2_is_negotiated_through_alpn_and_the_upstream_learns_https() {
    let certs = ThreeCerts::new();
    let upstream = server::spawn("127.0.0.1:0", ServeTower::new(tls_echo_app()))
        .await
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix(
            "/",
            Upstream::new(format!("http://{}", upstream.local_addr())),
        ))
        .tls(TlsConfig::new(certs.set()))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    let stream = tls_connect(
        addr,
        client_config(&certs.ca, &[b"h2", b"http/1.1"]),
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..2 {
        let req = http::Request::get("https://a.test/").body(empty()).unwrap();
        let res = tokio::time::timeout(HANG_GUARD, h2.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        assert_eq!(body_text(res).await, "https", "X-Forwarded-Proto");
    }

    // A client offering only http/1.1 gets it.
    let stream = tls_connect(addr, client_config(&certs.ca, &[b"http/1.1"]), "a.test")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = h1_over(stream).await;
    assert_eq!(
        get_text(&mut h1, "a.test", "/").await,
        (http::StatusCode::OK, "https".to_owned())
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_reload_is_seen_by_new_connections_while_an_open_one_keeps_working() {
    let ca = Ca::new("test root");
    let old = ca.leaf("old", &["a.test"]);
    let new = ca.leaf("new", &["a.test"]);
    let tls = TlsConfig::new(CertSet::new(old.server_cert()));
    let reloader = tls.reloader();
    let server = serve_tls(tls).await;
    let addr = server.local_addr();

    let open = tls_connect(addr, client_config(&ca, &[]), "a.test")
        .await
        .unwrap();
    assert!(peer_leaf(&open) == old.der);
    let mut open = h1_over(open).await;
    assert_eq!(get_text(&mut open, "a.test", "/sni").await.1, "a.test");

    reloader.reload(CertSet::new(new.server_cert()));

    let fresh = tls_connect(addr, client_config(&ca, &[]), "a.test")
        .await
        .unwrap();
    assert!(
        peer_leaf(&fresh) == new.der,
        "a new connection sees the new cert"
    );
    let mut fresh = h1_over(fresh).await;
    assert_eq!(get_text(&mut fresh, "a.test", "/sni").await.1, "a.test");
    // The connection opened before the reload still serves requests.
    for _ in 0..3 {
        assert_eq!(
            get_text(&mut open, "a.test", "/sni").await,
            (http::StatusCode::OK, "a.test".to_owned())
        );
    }
    server.shutdown().await;
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pingora-tower-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Written beside and renamed over, as a certificate manager does: a reader never
        // sees half a file.
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn certificate_files_reload_on_call_and_on_change_and_a_bad_file_keeps_the_old_set() {
    let ca = Ca::new("test root");
    let (first, second, third) = (
        ca.leaf("first", &["a.test"]),
        ca.leaf("second", &["a.test"]),
        ca.leaf("third", &["a.test"]),
    );
    let dir = TempDir::new("reload");
    let cert = dir.write("a.pem", &first.cert_pem);
    let key = dir.write("a.key", &first.key_pem);
    let tls = TlsConfig::new(CertSet::new(
        ServerCert::from_pem_files(&cert, &key).unwrap(),
    ));
    let reloader = tls.reloader();
    let server = serve_tls(tls).await;
    let addr = server.local_addr();
    let leaf = || async {
        let stream = tls_connect(addr, client_config(&ca, &[]), "a.test")
            .await
            .unwrap();
        peer_leaf(&stream)
    };
    assert!(leaf().await == first.der);

    // An API call.
    dir.write("a.pem", &second.cert_pem);
    dir.write("a.key", &second.key_pem);
    reloader.reload_files().unwrap();
    assert!(leaf().await == second.der);

    // A key that does not fit: refused, naming the file, and the served set stays.
    dir.write("a.key", &third.key_pem);
    let err: TlsConfigError = reloader.reload_files().unwrap_err();
    assert_eq!(err.value(), key.display().to_string(), "{err}");
    assert!(leaf().await == second.der);

    // The file watch notices the change on its own.
    let _watch = reloader.watch_files(Duration::from_millis(20));
    dir.write("a.pem", &third.cert_pem);
    tokio::time::timeout(HANG_GUARD, async {
        while leaf().await != third.der {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watch reloaded the files");
    assert!(dir.path().exists());
    server.shutdown().await;
}

#[tokio::test]
async fn client_certificates_are_verified_and_their_subject_reaches_the_service() {
    let ca = Ca::new("client root");
    let server_ca = Ca::new("server root");
    let site = server_ca.leaf("site", &["a.test"]);
    let alice = ca.leaf("alice", &[]);
    let mallory = Ca::new("other root").leaf("mallory", &[]);
    let tls = TlsConfig::new(CertSet::new(site.server_cert()))
        .client_auth(ClientAuth::required(ca.pem().as_bytes()).unwrap());
    let server = serve_tls(tls).await;
    let addr = server.local_addr();

    let with_identity = |leaf: &Leaf| {
        let chain = vec![CertificateDer::from(leaf.der.clone())];
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            rcgen::KeyPair::from_pem(&leaf.key_pem)
                .unwrap()
                .serialize_der(),
        )
        .unwrap();
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(server_ca.roots())
            .with_client_auth_cert(chain, key)
            .unwrap()
    };

    let stream = tls_connect(addr, with_identity(&alice), "a.test")
        .await
        .unwrap();
    let mut h1 = h1_over(stream).await;
    assert_eq!(
        get_text(&mut h1, "a.test", "/subject").await,
        (http::StatusCode::OK, "CN=alice".to_owned())
    );

    // Without a certificate, or with one from another CA, no request is served. (In TLS 1.3
    // the client learns of the refusal on its first read.)
    for config in [client_config(&server_ca, &[]), with_identity(&mallory)] {
        let refused = match tls_connect(addr, config, "a.test").await {
            Err(_) => true,
            Ok(mut stream) => {
                let _ = stream
                    .write_all(b"GET /subject HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                !matches!(
                    tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await,
                    Ok(Ok(n)) if n > 0
                )
            }
        };
        assert!(refused, "a client without a valid certificate was served");
    }
    server.shutdown().await;
}

/// An upstream requiring client certificates from `client_ca`, answering with the subject.
async fn mtls_upstream(client_ca: &Ca, cert: &Leaf) -> RunningServer {
    let tls = TlsConfig::new(CertSet::new(cert.server_cert()))
        .client_auth(ClientAuth::required(client_ca.pem().as_bytes()).unwrap());
    serve_tls(tls).await
}

#[tokio::test]
async fn an_upstream_requiring_client_certificates_refuses_the_proxy_without_one() {
    init_tracing();
    let pki = Ca::new("internal root");
    let upstream_cert = pki.leaf("upstream", &["upstream.internal"]);
    let proxy_identity = pki.leaf("edge-proxy", &[]);
    let upstream = mtls_upstream(&pki, &upstream_cert).await;
    let url = format!("https://{}", upstream.local_addr());
    let verified = UpstreamTls::new()
        .ca_pem(pki.pem())
        .sni("upstream.internal");
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix(
                "/anonymous",
                Upstream::new(url.clone()).tls(verified.clone()),
            ),
            Route::prefix(
                "/",
                Upstream::new(url).tls(verified.client_cert_pem(
                    proxy_identity.cert_pem.clone(),
                    proxy_identity.key_pem.clone(),
                )),
            ),
        ])
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    // Alternating, so a pooled connection of one identity would be offered to the other.
    for _ in 0..3 {
        let (status, subject) = http_get(addr, "/subject").await;
        assert_eq!(
            (status, subject.as_str()),
            (http::StatusCode::OK, "CN=edge-proxy")
        );
        let (status, _) = http_get(addr, "/anonymous/subject").await;
        assert_eq!(status, 502);
    }
    proxy.shutdown().await;
    upstream.shutdown().await;
}

/// Records every byte a TLS upstream receives, under the TLS layer.
struct Recording {
    inner: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let fresh = buf.filled()[before..].to_vec();
        self.seen.lock().unwrap().extend_from_slice(&fresh);
        polled
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A raw TLS upstream (tokio-rustls) presenting `cert`, recording the raw bytes it receives
/// and counting the HTTP requests that arrive inside TLS.
struct RecordingUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
}

impl RecordingUpstream {
    async fn start(cert: &Leaf) -> RecordingUpstream {
        let chain = vec![CertificateDer::from(cert.der.clone())];
        let der = rcgen::KeyPair::from_pem(&cert.key_pem)
            .unwrap()
            .serialize_der();
        let key = rustls::pki_types::PrivateKeyDer::try_from(der).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (seen2, requests2) = (seen.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (seen, requests) = (seen2.clone(), requests2.clone());
                tokio::spawn(async move {
                    let recording = Recording { inner: tcp, seen };
                    let Ok(mut tls) = acceptor.accept(recording).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        RecordingUpstream {
            addr,
            seen,
            requests,
        }
    }
}

#[tokio::test]
async fn a_wrong_ca_gives_502_counted_by_the_breaker_and_nothing_reaches_the_upstream_in_plaintext()
{
    let real = Ca::new("real root");
    let expected = Ca::new("expected root");
    let upstream = RecordingUpstream::start(&real.leaf("upstream", &["upstream.internal"])).await;
    let breaker = CircuitBreakerLayer::builder()
        .sliding_window(Window::Count(4))
        .minimum_calls(4)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix(
            "/",
            Upstream::new(format!("https://{}", upstream.addr)).tls(
                UpstreamTls::new()
                    .ca_pem(expected.pem())
                    .sni("upstream.internal"),
            ),
        ))
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..4 {
        let req = http::Request::post("/login")
            .header(HOST, "a.test")
            .body(full("user=alice&password=secret"))
            .unwrap();
        let res = tokio::time::timeout(HANG_GUARD, send(addr, req))
            .await
            .unwrap();
        assert_eq!(res.status(), 502);
    }
    assert_eq!(
        handle.state(&upstream.addr.to_string()),
        Some(State::Open),
        "TLS failures are the upstream's"
    );
    let seen = upstream.seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the proxy did try the upstream");
    assert_eq!(seen[0], 0x16, "the first byte is a TLS handshake record");
    for plaintext in [&b"POST"[..], b"/login", b"secret", b"HTTP/1.1"] {
        assert!(
            !seen.windows(plaintext.len()).any(|w| w == plaintext),
            "{:?} reached the upstream in plaintext",
            String::from_utf8_lossy(plaintext)
        );
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);

    // The same upstream with the right CA is reached, inside TLS.
    let good = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix(
            "/",
            Upstream::new(format!("https://{}", upstream.addr)).tls(
                UpstreamTls::new()
                    .ca_pem(real.pem())
                    .sni("upstream.internal"),
            ),
        ))
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        http_get(good.local_addr(), "/").await,
        (http::StatusCode::OK, "ok".to_owned())
    );
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    good.shutdown().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_name_mismatch_gives_502_unless_verification_is_explicitly_off() {
    let pki = Ca::new("root");
    let upstream = RecordingUpstream::start(&pki.leaf("upstream", &["upstream.internal"])).await;
    let url = format!("https://{}", upstream.addr);
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            // The right CA, the wrong name (the URL's IP address).
            Route::prefix(
                "/by-ip",
                Upstream::new(url.clone()).tls(UpstreamTls::new().ca_pem(pki.pem())),
            ),
            // Neither, but verification turned off by name.
            Route::prefix(
                "/",
                Upstream::new(url).tls(UpstreamTls::new().danger_accept_invalid_certs()),
            ),
        ])
        .spawn()
        .await
        .unwrap();
    assert_eq!(http_get(proxy.local_addr(), "/by-ip").await.0, 502);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        http_get(proxy.local_addr(), "/").await,
        (http::StatusCode::OK, "ok".to_owned())
    );
    proxy.shutdown().await;
}

#[test]
fn tls_settings_that_cannot_work_are_refused_naming_the_value() {
    let pki = Ca::new("root");
    let leaf = pki.leaf("x", &["x.test"]);
    let other = pki.leaf("y", &["y.test"]);
    let err = ServerCert::from_pem(leaf.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert_eq!(err.field(), "certificate key");
    let err =
        ServerCert::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    assert_eq!(err.value(), "/nonexistent/cert.pem");
    assert!(ClientAuth::required(b"not a pem").is_err());

    let build = |upstream: Upstream| {
        PingoraProxy::builder("127.0.0.1:0")
            .route(Route::prefix("/", upstream))
            .build()
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = build(Upstream::new("http://127.0.0.1:1").tls(UpstreamTls::new()));
    assert!(err.contains("plain http://"), "{err}");
    let err = build(
        Upstream::new("https://127.0.0.1:1").tls(UpstreamTls::new().ca_file("/nonexistent/ca.pem")),
    );
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let err = build(
        Upstream::new("https://127.0.0.1:1")
            .tls(UpstreamTls::new().client_cert_pem(leaf.cert_pem.clone(), other.key_pem.clone())),
    );
    assert!(err.contains("client key"), "{err}");
    let err = build(Upstream::new("https://127.0.0.1:1").tls(UpstreamTls::new().sni("")));
    assert!(err.contains("SNI"), "{err}");
}

/// Runs `command` off the runtime, bounded by the hang guard.
async fn run(mut command: std::process::Command) -> std::process::Output {
    let output = tokio::task::spawn_blocking(move || command.output());
    tokio::time::timeout(HANG_GUARD, output)
        .await
        .expect("the command hung")
        .unwrap()
        .expect("the command runs")
}

/// Whether `tool` runs here. On CI (`CI` set) a missing tool fails the test: `.ci/run`
/// installs it.
fn have(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .or_else(|_| std::process::Command::new(tool).arg("version").output())
        .is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{tool} is missing on CI"
    );
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

#[tokio::test]
async fn curl_and_openssl_s_client_talk_to_the_tls_listener() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let certs = ThreeCerts::new();
    let dir = TempDir::new("cli");
    let ca = dir.write("ca.pem", &certs.ca.pem());
    let upstream = server::spawn("127.0.0.1:0", ServeTower::new(tls_echo_app()))
        .await
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix(
            "/",
            Upstream::new(format!("http://{}", upstream.local_addr())),
        ))
        .tls(TlsConfig::new(certs.set()))
        .spawn()
        .await
        .unwrap();
    let port = proxy.local_addr().port();

    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "--http1.1", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .arg(format!("https://a.test:{port}/"));
    let curl = run(curl).await;
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "https");

    for (name, subject) in [
        ("a.test", "CN=a.test"),
        ("x.b.test", "CN=wild"),
        ("other.test", "CN=default"),
    ] {
        let mut s_client = std::process::Command::new("openssl");
        s_client
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", name, "-CAfile"])
            .arg(&ca)
            .stdin(std::process::Stdio::null());
        let out = run(s_client).await;
        let text = String::from_utf8_lossy(&out.stdout).replace(" = ", "=");
        assert!(
            text.contains(&format!("subject={subject}")),
            "{name}: {text}"
        );
        // The chain verifies (s_client does not check the name; curl above does).
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{name}: {text}"
        );
    }
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_connection_verified_under_one_ca_is_never_reused_for_a_route_trusting_another() {
    let pki = Ca::new("internal root");
    let upstream = serve_tls(TlsConfig::new(CertSet::new(
        pki.leaf("upstream", &["upstream.internal"]).server_cert(),
    )))
    .await;
    let url = format!("https://{}", upstream.local_addr());
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix(
                "/trusting",
                Upstream::new(url.clone()).tls(
                    UpstreamTls::new()
                        .ca_pem(pki.pem())
                        .sni("upstream.internal"),
                ),
            ),
            Route::prefix(
                "/",
                Upstream::new(url).tls(
                    UpstreamTls::new()
                        .ca_pem(Ca::new("another root").pem())
                        .sni("upstream.internal"),
                ),
            ),
        ])
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..3 {
        // Leaves a verified connection in the upstream pool...
        assert_eq!(http_get(addr, "/trusting").await.0, 200);
        // ...that a route whose CA did not verify it must not get.
        assert_eq!(http_get(addr, "/sni").await.0, 502);
    }
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_demo_serves_tls_with_a_self_signed_certificate_that_curl_and_openssl_accept() {
    use pingora_tower_examples::demo::{self, DemoConfig};
    if !have("curl") || !have("openssl") {
        return;
    }
    let args = ["--listen", "127.0.0.1:0", "--tls"].map(String::from);
    let config = DemoConfig::from_env_and_args(args).unwrap();
    assert!(config.tls);
    let demo = demo::spawn(&config).await.unwrap();
    let cert = demo.tls_cert_path().unwrap().to_owned();
    let port = demo.proxy_addr().port();
    assert_eq!(demo.base_url(), format!("https://localhost:{port}"));
    let lines = demo.curl_lines();
    assert!(
        lines[0].starts_with(&format!("curl --cacert {}", cert.display())),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("openssl s_client")),
        "{lines:?}"
    );

    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"));
    let out = run(curl).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the demo upstream\n"
    );

    let mut s_client = std::process::Command::new("openssl");
    s_client
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&cert)
        .stdin(std::process::Stdio::null());
    let out = run(s_client).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    demo.shutdown().await;
    assert!(
        !cert.exists(),
        "the certificate file is removed at shutdown"
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate_files() {
    use pingora_tower::tls::SignalKind;
    let ca = Ca::new("test root");
    let (first, second) = (
        ca.leaf("first", &["a.test"]),
        ca.leaf("second", &["a.test"]),
    );
    let dir = TempDir::new("sighup");
    let cert = dir.write("a.pem", &first.cert_pem);
    let key = dir.write("a.key", &first.key_pem);
    let tls = TlsConfig::new(CertSet::new(
        ServerCert::from_pem_files(&cert, &key).unwrap(),
    ));
    // Installed before any signal is sent: SIGHUP no longer ends this process.
    let _watch = tls
        .reloader()
        .reload_on_signal(SignalKind::hangup())
        .unwrap();
    let server = serve_tls(tls).await;
    let addr = server.local_addr();
    let leaf = || async {
        let stream = tls_connect(addr, client_config(&ca, &[]), "a.test")
            .await
            .unwrap();
        peer_leaf(&stream)
    };
    assert!(leaf().await == first.der);
    dir.write("a.pem", &second.cert_pem);
    dir.write("a.key", &second.key_pem);
    let mut kill = std::process::Command::new("kill");
    kill.args(["-HUP", &std::process::id().to_string()]);
    assert!(run(kill).await.status.success());
    tokio::time::timeout(HANG_GUARD, async {
        while leaf().await != second.der {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the signal reloaded the files");
    server.shutdown().await;
}

#[tokio::test]
async fn health_checks_of_https_backends_use_the_upstreams_ca_and_client_certificate() {
    use pingora_tower::proxy::HealthCheck;
    let pki = Ca::new("internal root");
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let app = tls_echo_app().route(
        "/health",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    let tls = TlsConfig::new(CertSet::new(
        pki.leaf("upstream", &["upstream.internal"]).server_cert(),
    ))
    .client_auth(ClientAuth::required(pki.pem().as_bytes()).unwrap());
    let upstream = server::spawn_with(
        "127.0.0.1:0",
        ServeTower::new(app),
        ListenOptions::new().tls(tls),
    )
    .await
    .unwrap();
    let identity = pki.leaf("edge-proxy", &[]);
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix(
            "/",
            Upstream::new(format!("https://{}", upstream.local_addr()))
                .tls(
                    UpstreamTls::new()
                        .ca_pem(pki.pem())
                        .sni("upstream.internal")
                        .client_cert_pem(identity.cert_pem.clone(), identity.key_pem.clone()),
                )
                .health_check(
                    HealthCheck::http("/health")
                        .interval(Duration::from_millis(20))
                        .unhealthy_after(1),
                ),
        ))
        .spawn()
        .await
        .unwrap();
    // Checks that fail never reach the handler: this waits out the hang guard, then fails below.
    let _ = tokio::time::timeout(HANG_GUARD, async {
        while checks.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let status = proxy.backends();
    assert!(status.iter().all(|b| b.healthy), "{status:?}");
    assert!(
        checks.load(Ordering::SeqCst) >= 3,
        "health checks got through"
    );
    assert_eq!(
        http_get(proxy.local_addr(), "/subject").await,
        (http::StatusCode::OK, "CN=edge-proxy".to_owned())
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

/// A proxy-side layer telling the upstream who the client is, from its verified certificate.
struct ClientSubjectHeader;

impl ProxyPolicy for ClientSubjectHeader {
    type Ctx = ();
    fn new_ctx(&self) {}
    fn upstream_request_filter(
        &self,
        session: &mut pingora_proxy::Session,
        upstream_request: &mut pingora_http::RequestHeader,
        _: &mut (),
    ) -> pingora_error::Result<()> {
        // Whatever the client sent under this name is not what its certificate says.
        upstream_request.remove_header("x-client-subject");
        let subject = TlsInfo::of_session(session).and_then(|tls| tls.client_subject());
        match subject {
            Some(subject) => upstream_request.insert_header("x-client-subject", subject.to_owned()),
            None => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_proxy_layer_reads_the_verified_client_subject() {
    let ca = Ca::new("client root");
    let certs = ThreeCerts::new();
    let upstream = server::spawn("127.0.0.1:0", ServeTower::new(tls_echo_app()))
        .await
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix(
            "/",
            Upstream::new(format!("http://{}", upstream.local_addr())),
        ))
        .tls(
            TlsConfig::new(certs.set())
                .client_auth(ClientAuth::optional(ca.pem().as_bytes()).unwrap()),
        )
        .middleware(layer_fn(|inner| Layered::wrap(ClientSubjectHeader, inner)))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    let alice = ca.leaf("alice", &[]);
    let key = rustls::pki_types::PrivateKeyDer::try_from(
        rcgen::KeyPair::from_pem(&alice.key_pem)
            .unwrap()
            .serialize_der(),
    )
    .unwrap();
    let with_cert = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(certs.ca.roots())
        .with_client_auth_cert(vec![CertificateDer::from(alice.der.clone())], key)
        .unwrap();
    let mut h1 = h1_over(tls_connect(addr, with_cert, "a.test").await.unwrap()).await;
    assert_eq!(get_text(&mut h1, "a.test", "/who").await.1, "CN=alice");

    // Optional: a client without a certificate is served, and a header it forges is dropped.
    let mut h1 = h1_over(
        tls_connect(addr, client_config(&certs.ca, &[b"http/1.1"]), "a.test")
            .await
            .unwrap(),
    )
    .await;
    let req = http::Request::get("/who")
        .header(HOST, "a.test")
        .header("x-client-subject", "CN=admin")
        .body(empty())
        .unwrap();
    let res = h1.send_request(req).await.unwrap();
    assert_eq!(body_text(res).await, "-");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn servetower_serves_h2_over_tls_and_plaintext_or_garbage_on_the_tls_port_is_closed() {
    let certs = ThreeCerts::new();
    let server = serve_tls(TlsConfig::new(certs.set())).await;
    let addr = server.local_addr();

    // Hostile or confused clients: plaintext HTTP, then random bytes, on the TLS port.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello-not-tls",
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        let answer = read_until_closed(&mut tcp, HANG_GUARD).await;
        let answer = answer.expect("the connection is closed");
        assert!(
            !answer.windows(4).any(|w| w == b"HTTP"),
            "no plaintext answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // The listener still serves, over HTTP/2 too.
    let stream = tls_connect(addr, client_config(&certs.ca, &[b"h2"]), "x.b.test")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("https://x.b.test/sni")
        .body(empty())
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, h2.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(body_text(res).await, "x.b.test");
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed_at_the_header_timeout() {
    let certs = ThreeCerts::new();
    let limits = ClientLimits::default().header_timeout(Duration::from_millis(200));
    let options = ListenOptions::from(limits).tls(TlsConfig::new(certs.set()));
    let server = server::spawn_with("127.0.0.1:0", ServeTower::new(tls_echo_app()), options)
        .await
        .unwrap();
    let addr = server.local_addr();
    // Connects and sends nothing, then half a ClientHello: both hold a handshake open.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"\x16\x03\x01\x02\x00\x01")
        .await
        .unwrap();
    for stream in [&mut silent, &mut partial] {
        // Pingora's own handshake limit is 60 s; the header timeout applies instead.
        let closed = read_until_closed(stream, Duration::from_secs(10)).await;
        assert_eq!(closed.as_deref(), Some(&[][..]), "closed without an answer");
    }
    let stream = tls_connect(addr, client_config(&certs.ca, &[]), "a.test")
        .await
        .unwrap();
    let mut h1 = h1_over(stream).await;
    assert_eq!(get_text(&mut h1, "a.test", "/sni").await.1, "a.test");
    server.shutdown().await;
}
