//! The proxy with TLS on both sides, with certificates made at test time (rcgen): an `https`
//! upstream on 127.0.0.1 with a private CA, with and without mutual TLS, and the proxy's own TLS
//! listener with ALPN.
#![cfg(feature = "proxy")]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{fixture, sha256_hex, PDF_LEN, PDF_SHA256};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower_fhir_binary::proxy::{start_proxy, ProxyOptions, Server};

const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA, and certificates it signs, written as PEM files into a directory of their own.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("fhir-binary-proxy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `{name}.pem` and `{name}.key` for 127.0.0.1 and localhost; returns their paths.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca) {
        roots.add(cert).unwrap();
    }
    roots
}

/// An `https` upstream on 127.0.0.1 answering the PDF Binary to everything; with
/// `client_ca`, it demands a client certificate signed by it.
async fn tls_upstream(cert: &(PathBuf, PathBuf), client_ca: Option<&Path>) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)),
                provider(),
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            certificates(&cert.0),
            PrivateKeyDer::from_pem_file(&cert.1).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_request: Request<Incoming>| async {
                    let mut response =
                        Response::new(Full::new(Bytes::from(fixture("r4/binary-example.json"))));
                    response
                        .headers_mut()
                        .insert("content-type", "application/fhir+json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn proxy(options: ProxyOptions) -> Server {
    start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap()
}

async fn plain_get(url: &str) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_a_private_ca() {
    bounded(async {
        let pki = Pki::new("upstream-ca");
        let upstream = tls_upstream(&pki.issue("upstream"), None).await;
        let url = format!("https://{upstream}/fhir");

        let mut options = ProxyOptions::new(url.parse().unwrap());
        options.upstream_ca = Some(pki.ca());
        let trusting = proxy(options).await;
        let (status, body) =
            plain_get(&format!("http://{}/Binary/example", trusting.local_addr())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), PDF_LEN);
        assert_eq!(sha256_hex(&body), PDF_SHA256);

        // With the system roots only, the private CA is unknown: 502, nothing served.
        let distrusting = proxy(ProxyOptions::new(url.parse().unwrap())).await;
        let (status, body) = plain_get(&format!(
            "http://{}/Binary/example",
            distrusting.local_addr()
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("OperationOutcome"), "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_upstream() {
    bounded(async {
        let pki = Pki::new("mtls");
        let upstream = tls_upstream(&pki.issue("upstream"), Some(&pki.ca())).await;
        let url = format!("https://{upstream}/fhir");

        let mut without = ProxyOptions::new(url.parse().unwrap());
        without.upstream_ca = Some(pki.ca());
        let mut with = without.clone();
        with.upstream_client_cert = Some(pki.issue("client"));

        let refused = proxy(without).await;
        let (status, _) =
            plain_get(&format!("http://{}/Binary/example", refused.local_addr())).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);

        let accepted = proxy(with).await;
        let (status, body) =
            plain_get(&format!("http://{}/Binary/example", accepted.local_addr())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sha256_hex(&body), PDF_SHA256);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_speaks_h2_and_http1_by_alpn() {
    bounded(async {
        let pki = Pki::new("listener");
        let upstream = tls_upstream(&pki.issue("upstream"), None).await;
        let mut options = ProxyOptions::new(format!("https://{upstream}/fhir").parse().unwrap());
        options.upstream_ca = Some(pki.ca());
        options.tls = Some(pki.issue("proxy"));
        let proxy = proxy(options).await;
        let url = format!(
            "https://127.0.0.1:{}/Binary/example",
            proxy.local_addr().port()
        );

        // ALPN offers h2 and http/1.1, then http/1.1 only.
        for version in [Version::HTTP_2, Version::HTTP_11] {
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&pki.ca()))
                .with_no_client_auth();
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only();
            let connector = if version == Version::HTTP_2 {
                builder.enable_all_versions().build()
            } else {
                builder.enable_http1().build()
            };
            let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
            let response = client.get(url.parse().unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), version);
            assert_eq!(response.headers()["content-type"], "application/pdf");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(sha256_hex(&body), PDF_SHA256);
        }

        // Plain HTTP on the TLS port gets no HTTP answer.
        let plain = tokio::time::timeout(
            Duration::from_secs(5),
            Client::builder(TokioExecutor::new())
                .build_http::<Full<Bytes>>()
                .get(
                    format!("http://{}/Binary/example", proxy.local_addr())
                        .parse()
                        .unwrap(),
                ),
        )
        .await;
        assert!(plain.is_err() || plain.unwrap().is_err());
    })
    .await
}
