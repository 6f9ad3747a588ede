//! Which requests the layer touches, on real servers on 127.0.0.1: an axum `Router` with the
//! layer on the whole router (a Binary route, a Patient route that writes XML itself, a static
//! file served with ranges, a fallback), and plain hyper with a predicate. Also: a `HEAD`
//! reports the length its `GET` has, and every response says what the layer did.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{Path, RawQuery};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{fixture, sha256_hex, PDF_LEN, PDF_SHA256};
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_fhir_binary::{BinaryNegotiation, BinaryNegotiationLayer, Negotiation, Representation};
use tower_http::services::ServeFile;

const PATIENT_JSON: &str = r#"{"resourceType":"Patient","id":"p","active":true}"#;
const PATIENT_XML: &str =
    r#"<Patient xmlns="http://hl7.org/fhir"><id value="p"/><active value="true"/></Patient>"#;
const STATIC_TEXT: &str = "0123456789abcdefghij";

async fn read_binary(Path(id): Path<String>) -> axum::response::Response {
    let path = match id.as_str() {
        "streamed" => {
            let json = fixture("r4/binary-example.json");
            let frames = json.chunks(10_000).map(Bytes::copy_from_slice).collect();
            return (
                [(header::CONTENT_TYPE, "application/fhir+json")],
                axum::body::Body::new(LegacyBody::Streamed(frames)),
            )
                .into_response();
        }
        "example" => "r4/binary-example.json",
        "f006" => "r4/binary-f006.json",
        _ => {
            let outcome = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such Binary"}]}"#;
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/fhir+json")],
                outcome,
            )
                .into_response();
        }
    };
    (
        [(header::CONTENT_TYPE, "application/fhir+json")],
        fixture(path),
    )
        .into_response()
}

/// A handler that speaks FHIR XML itself when `_format` asks for it.
async fn read_patient(RawQuery(query): RawQuery) -> axum::response::Response {
    if query.is_some_and(|q| q.contains("_format=xml")) {
        (
            [(header::CONTENT_TYPE, "application/fhir+xml")],
            PATIENT_XML,
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/fhir+json")],
            PATIENT_JSON,
        )
            .into_response()
    }
}

/// Serves `service` on 127.0.0.1 with hyper, one task a connection.
async fn serve<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The application of the README: the layer on a whole router.
async fn axum_app() -> SocketAddr {
    let dir = std::env::temp_dir().join(format!(
        "tower-fhir-binary-selection-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("file.txt");
    std::fs::write(&file, STATIC_TEXT).unwrap();
    let app = Router::new()
        .route("/fhir/Binary/{id}", get(read_binary))
        .route("/fhir/Patient/{id}", get(read_patient))
        .route_service("/static/file", ServeFile::new(file))
        .fallback(|| async { (StatusCode::NOT_FOUND, "nothing here") })
        .layer(BinaryNegotiationLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// What a client got from a GET.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn fetch(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A HEAD on a raw connection: the status line and headers exactly as sent, and whatever came
/// after them before the server closed the connection.
async fn head(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    let head = String::from_utf8(all[..end].to_vec())
        .unwrap()
        .to_ascii_lowercase();
    (head, all[end..].to_vec())
}

/// The value of `name` in a raw head, lowercased.
fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// A `HEAD` of `path` reports what its `GET` has: the same status and type, the same
/// `Content-Length` when the `GET` has one, and never another; and no body.
async fn assert_head_matches_get(addr: SocketAddr, path: &str) {
    let got = fetch(addr, path, &[]).await;
    let (head, after) = head(addr, path).await;
    assert!(after.is_empty(), "{path}: a HEAD answered with a body");
    assert!(
        head.starts_with(&format!("http/1.1 {}", got.status.as_u16())),
        "{path}: {head}"
    );
    assert_eq!(
        raw_header(&head, "content-type"),
        got.header("content-type")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        "{path}"
    );
    // RFC 9110 section 8.6: a HEAD's Content-Length is the length of the GET's content, and a
    // GET that announces one has its HEAD announce it too.
    let length = got.body.len().to_string();
    if let Some(announced) = got.header("content-length") {
        assert_eq!(announced, length, "{path}: GET");
        assert_eq!(
            raw_header(&head, "content-length"),
            Some(announced),
            "{path}: HEAD"
        );
    }
    if let Some(announced) = raw_header(&head, "content-length") {
        assert_eq!(announced, length, "{path}: HEAD");
    }
}

#[tokio::test]
async fn on_a_whole_axum_router_only_the_binary_route_is_negotiated() {
    let addr = axum_app().await;

    // The Binary route: the document, negotiated.
    let got = fetch(addr, "/fhir/Binary/example", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-type"), Some("application/pdf"));
    assert_eq!(got.header("vary"), Some("Accept"));
    assert_eq!(sha256_hex(&got.body), PDF_SHA256);
    let got = fetch(addr, "/fhir/Binary/f006?_format=xml", &[]).await;
    assert_eq!(
        got.header("content-type"),
        Some("application/fhir+xml;charset=utf-8")
    );
    assert!(got.body.starts_with(b"<?xml"));

    // A Patient route that writes XML itself keeps its `_format`, and no header is added.
    let got = fetch(addr, "/fhir/Patient/p?_format=xml", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-type"), Some("application/fhir+xml"));
    assert_eq!(got.body, PATIENT_XML);
    assert_eq!(got.header("vary"), None);
    assert_eq!(got.header("x-content-type-options"), None);
    let got = fetch(
        addr,
        "/fhir/Patient/p",
        &[("accept", "application/fhir+xml")],
    )
    .await;
    assert_eq!(got.body, PATIENT_JSON);

    // A static file keeps its `Range`.
    let got = fetch(addr, "/static/file", &[("range", "bytes=0-4")]).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.header("content-range"), Some("bytes 0-4/20"));
    assert_eq!(got.body, STATIC_TEXT[..5]);
    assert_eq!(got.header("vary"), None);

    // The fallback: untouched.
    let got = fetch(addr, "/elsewhere", &[]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.body, "nothing here");
    assert_eq!(got.header("vary"), None);
}

#[tokio::test]
async fn under_axum_a_head_reports_the_length_of_its_get() {
    let addr = axum_app().await;
    for path in [
        "/fhir/Binary/example",               // native, read whole
        "/fhir/Binary/example?_format=json",  // FHIR JSON, passed through
        "/fhir/Binary/streamed?_format=json", // FHIR JSON of unknown length
        "/fhir/Binary/streamed",              // native, streamed
        "/fhir/Binary/f006?_format=xml",      // FHIR XML
        "/fhir/Binary/nope",                  // the inner's OperationOutcome, passed through
        "/fhir/Binary/nope?_format=xml",      // the inner's OperationOutcome, in XML
        "/fhir/Binary/example?_format=ttl",   // the layer's 406
        "/fhir/Patient/p",                    // not negotiated
        "/static/file",                       // not negotiated
        "/elsewhere",                         // the fallback
    ] {
        assert_head_matches_get(addr, path).await;
    }
    let (head, _) = head(addr, "/fhir/Binary/example").await;
    assert_eq!(
        raw_header(&head, "content-length"),
        Some(PDF_LEN.to_string().as_str())
    );
}

/// A legacy service of documents at `/docs/{id}` (Binary JSON, its length known or not), and
/// other resources elsewhere.
async fn legacy<B>(request: Request<B>) -> Result<Response<LegacyBody>, Infallible> {
    let path = request.uri().path();
    let (status, json): (u16, Vec<u8>) = match path {
        "/docs/pdf" | "/docs/pdf-chunked" => (200, fixture("r4/binary-example.json")),
        "/docs/missing" => (
            404,
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#.to_vec(),
        ),
        _ => (200, PATIENT_JSON.as_bytes().to_vec()),
    };
    let body = if path.ends_with("-chunked") {
        // Of unknown length: frames as they come.
        LegacyBody::Streamed(json.chunks(10_000).map(Bytes::copy_from_slice).collect())
    } else {
        LegacyBody::Full(Full::new(Bytes::from(json)))
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/fhir+json")
        .body(body)
        .unwrap())
}

/// A body of known length, or streamed with none.
enum LegacyBody {
    Full(Full<Bytes>),
    Streamed(std::collections::VecDeque<Bytes>),
}

impl http_body::Body for LegacyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            LegacyBody::Full(body) => std::pin::Pin::new(body).poll_frame(cx),
            LegacyBody::Streamed(frames) => {
                std::task::Poll::Ready(frames.pop_front().map(|b| Ok(http_body::Frame::data(b))))
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            LegacyBody::Full(body) => body.size_hint(),
            LegacyBody::Streamed(_) => http_body::SizeHint::default(),
        }
    }
}

async fn hyper_app() -> SocketAddr {
    let documents = |_: &Method, uri: &Uri, _: &HeaderMap| uri.path().starts_with("/docs/");
    let service = ServiceBuilder::new()
        .layer(BinaryNegotiationLayer::new().select(documents))
        .service(tower::service_fn(legacy));
    serve(service).await
}

#[tokio::test]
async fn under_hyper_a_predicate_selects_and_a_head_reports_the_length_of_its_get() {
    let addr = hyper_app().await;
    let got = fetch(addr, "/docs/pdf", &[]).await;
    assert_eq!(got.header("content-type"), Some("application/pdf"));
    assert_eq!(sha256_hex(&got.body), PDF_SHA256);
    // Not selected: FHIR JSON as the inner service answered, nothing added.
    let got = fetch(addr, "/fhir/Binary/1", &[("accept", "application/pdf")]).await;
    assert_eq!(got.body, PATIENT_JSON);
    assert_eq!(got.header("vary"), None);

    for path in [
        "/docs/pdf",
        "/docs/pdf?_format=json",
        "/docs/pdf-chunked?_format=json",
        "/docs/pdf?_format=xml",
        "/docs/pdf-chunked",
        "/docs/missing",
        "/docs/missing?_format=xml",
        "/other",
    ] {
        assert_head_matches_get(addr, path).await;
    }
    // A HEAD of a streamed document is read through, so its length is known.
    let (head, _) = head(addr, "/docs/pdf-chunked").await;
    assert_eq!(
        raw_header(&head, "content-length"),
        Some(PDF_LEN.to_string().as_str())
    );
}

#[tokio::test]
async fn every_response_says_what_the_layer_did() {
    use tower::ServiceExt;
    let service = BinaryNegotiation::new(tower::service_fn(
        |request: Request<tower_fhir_binary::RequestBody<Full<Bytes>>>| async move {
            let json = match request.uri().path() {
                "/Binary/bad" => {
                    r#"{"resourceType":"Binary","contentType":"text/plain","data":"!!"}"#.to_owned()
                }
                "/Binary/outcome" => r#"{"resourceType":"OperationOutcome"}"#.to_owned(),
                _ => r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGk="}"#
                    .to_owned(),
            };
            let status = if request.uri().path() == "/Binary/outcome" {
                404
            } else {
                200
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/fhir+json")
                    .body(Full::new(Bytes::from(json)))
                    .unwrap(),
            )
        },
    ));
    let cases: [(&str, &str, Negotiation); 9] = [
        (
            "GET",
            "/Binary/1",
            Negotiation::Served(Representation::Native),
        ),
        (
            "GET",
            "/Binary/1?_format=json",
            Negotiation::Served(Representation::FhirJson),
        ),
        (
            "GET",
            "/Binary/1?_format=xml",
            Negotiation::Served(Representation::FhirXml),
        ),
        ("GET", "/Binary/1?_format=ttl", Negotiation::NotAcceptable),
        ("GET", "/Binary/bad", Negotiation::BadGateway),
        ("GET", "/Binary/outcome", Negotiation::PassedThrough),
        ("GET", "/Patient/1", Negotiation::NotNegotiated),
        // A write without a Content-Type: refused by the layer.
        ("POST", "/Binary", Negotiation::Refused),
        ("DELETE", "/Binary/1", Negotiation::NotNegotiated),
    ];
    for (method, uri, expected) in cases {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::default())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.extensions().get::<Negotiation>(),
            Some(&expected),
            "{method} {uri}"
        );
    }
}
