//! HTTP semantics of the native response, through a real HTTP/1.1 server on 127.0.0.1 and a
//! real client: HEAD, Range and If-Range, If-None-Match and If-Modified-Since, validators,
//! Vary, and the browser security headers.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::{
    decode_base64, fixture, sha256_hex, split, splits, Frames, Got, Split, PDF_LEN, PDF_SHA256,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;
use tower_fhir_binary::{BinaryNegotiationLayer, SecurityPolicy};
use tower_layer::Layer;

/// Every test is bounded in time.
const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("the test took too long")
}

/// The `lastUpdated` the tests put into `meta`, and the HTTP-date it becomes.
const LAST_UPDATED: &str = "2024-05-06T07:08:09.123+02:00";
const LAST_MODIFIED: &str = "Mon, 06 May 2024 05:08:09 GMT";

/// The official PDF example, with `meta.versionId` 3 and a `lastUpdated` added to its `meta`,
/// which comes after `data` as HL7 published it.
fn pdf_json_with_meta() -> Vec<u8> {
    let json = String::from_utf8(fixture("r4/binary-example.json")).unwrap();
    let with = json.replacen(
        "\"meta\": {",
        &format!("\"meta\": {{\"versionId\": \"3\", \"lastUpdated\": \"{LAST_UPDATED}\","),
        1,
    );
    assert_ne!(with, json);
    with.into_bytes()
}

/// The decoded official PDF, checked against the published hash.
fn pdf() -> Vec<u8> {
    let json: serde_json::Value =
        serde_json::from_slice(&fixture("r4/binary-example.json")).unwrap();
    let bytes = decode_base64(json["data"].as_str().unwrap());
    assert_eq!(bytes.len(), PDF_LEN);
    assert_eq!(sha256_hex(&bytes), PDF_SHA256);
    bytes
}

fn binary_json(id: &str, content_type: &str, document: &[u8], meta_first: bool) -> Vec<u8> {
    let data = base64::engine::general_purpose::STANDARD.encode(document);
    let meta = format!(r#""meta":{{"versionId":"3","lastUpdated":"{LAST_UPDATED}"}}"#);
    let (before, after) = if meta_first {
        (format!("{meta},"), String::new())
    } else {
        (String::new(), format!(",{meta}"))
    };
    format!(
        r#"{{"resourceType":"Binary","id":"{id}",{before}"contentType":"{content_type}","securityContext":{{"reference":"Patient/p1"}},"data":"{data}"{after}}}"#
    )
    .into_bytes()
}

/// A body that counts the bytes the layer has read from it.
struct Counted {
    frames: Frames,
    read: Arc<AtomicUsize>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = common::UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.frames).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.read.fetch_add(data.len(), Ordering::SeqCst);
            }
        }
        polled
    }

    fn size_hint(&self) -> SizeHint {
        self.frames.size_hint()
    }
}

/// A legacy FHIR server: Binary JSON (or an empty answer with another status), with extra
/// headers, cut into frames, its size announced or not.
#[derive(Clone)]
struct Upstream {
    status: StatusCode,
    json: Arc<Vec<u8>>,
    split: Split,
    exact: bool,
    headers: HeaderMap,
    read: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(http::Method, HeaderMap)>>>,
}

impl Upstream {
    fn new(json: Vec<u8>) -> Self {
        Upstream {
            status: StatusCode::OK,
            json: Arc::new(json),
            split: Split::Every(4096),
            exact: false,
            headers: HeaderMap::new(),
            read: Arc::default(),
            seen: Arc::default(),
        }
    }

    fn split(mut self, how: Split) -> Self {
        self.split = how;
        self
    }

    fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn bytes_read(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }
}

impl<B> Service<Request<B>> for Upstream {
    type Response = Response<Counted>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Counted>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.seen
            .lock()
            .unwrap()
            .push((request.method().clone(), request.headers().clone()));
        let mut frames = if self.status == StatusCode::OK {
            Frames::new(split(&self.json, &self.split))
        } else {
            Frames::new(Vec::new())
        };
        if self.exact {
            frames = frames.with_exact_size();
        }
        let mut response = Response::new(Counted {
            frames,
            read: Arc::clone(&self.read),
        });
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if self.status == StatusCode::OK {
            headers.insert(
                "content-type",
                HeaderValue::from_static("application/fhir+json"),
            );
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        std::future::ready(Ok(response))
    }
}

/// A server on 127.0.0.1 serving the layered upstream; stopped when dropped.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(layer: BinaryNegotiationLayer, upstream: Upstream) -> Server {
    let service = layer.layer(upstream);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Server { addr, task, client }
}

impl Server {
    async fn fetch(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        self.try_fetch(method, path, headers).await.unwrap()
    }

    /// The response, or the client's error when the connection broke before its head.
    async fn try_fetch(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Got, hyper_util::client::legacy::Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).unwrap();
        let response = bounded(self.client.request(request)).await?;
        let (parts, body) = response.into_parts();
        let body = bounded(body.collect())
            .await
            .map(|c| c.to_bytes())
            .map_err(Into::into);
        Ok(Got {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn get(&self, headers: &[(&str, &str)]) -> Got {
        self.fetch("GET", "/Binary/example", headers).await
    }
}

/// The values of a header, in order.
fn all<'a>(got: &'a Got, name: &str) -> Vec<&'a str> {
    got.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// The head without the headers that differ between any two responses.
fn head_of(got: &Got) -> HeaderMap {
    let mut headers = got.headers.clone();
    headers.remove("date");
    headers
}

#[tokio::test]
async fn head_answers_with_the_head_of_get_and_no_body() {
    bounded(async {
        let json = pdf_json_with_meta();
        for how in splits(json.len()) {
            let upstream = Upstream::new(json.clone()).split(how.clone()).exact();
            let server = start(BinaryNegotiationLayer::new(), upstream.clone()).await;
            let get = server.get(&[]).await;
            let head = server.fetch("HEAD", "/Binary/example", &[]).await;
            assert_eq!(get.status, StatusCode::OK, "{how:?}");
            assert_eq!(sha256_hex(get.bytes()), PDF_SHA256, "{how:?}");
            assert_eq!(head.status, StatusCode::OK, "{how:?}");
            assert!(head.bytes().is_empty(), "{how:?}");
            assert_eq!(head_of(&head), head_of(&get), "{how:?}");
            assert_eq!(head.header("content-length"), Some("130068"));
            assert_eq!(head.header("etag"), Some("W/\"3\""));
            assert_eq!(head.header("last-modified"), Some(LAST_MODIFIED));
            // The inner service was asked with GET both times.
            let seen = upstream.seen.lock().unwrap();
            assert!(seen.iter().all(|(method, _)| method == http::Method::GET));
        }
    })
    .await;
}

#[tokio::test]
async fn head_of_a_streamed_body_counts_the_document_and_reads_meta_at_the_end() {
    bounded(async {
        let json = pdf_json_with_meta();
        for how in [
            Split::Every(1),
            Split::Every(4096),
            Split::Random { seed: 3, cuts: 99 },
        ] {
            let server = start(
                BinaryNegotiationLayer::new(),
                Upstream::new(json.clone()).split(how),
            )
            .await;
            let head = server.fetch("HEAD", "/Binary/example", &[]).await;
            assert_eq!(head.status, StatusCode::OK);
            assert!(head.bytes().is_empty());
            assert_eq!(head.header("content-length"), Some("130068"));
            assert_eq!(head.header("etag"), Some("W/\"3\""));
            assert_eq!(head.header("last-modified"), Some(LAST_MODIFIED));
            assert_eq!(head.header("accept-ranges"), Some("bytes"));
            // A GET of a streamed body goes out before `meta` is read: chunked, and without
            // the validators that only come after the payload.
            let get = server.get(&[]).await;
            assert_eq!(get.bytes().len(), PDF_LEN);
            assert!(get.header("content-length").is_none());
            assert_eq!(get.header("content-type"), Some("application/pdf"));
        }
    })
    .await;
}

#[tokio::test]
async fn ranges_of_the_official_pdf() {
    bounded(async {
        let document = pdf();
        let json = fixture("r4/binary-example.json");
        let cases: &[(&str, usize, usize)] = &[
            ("bytes=0-99", 0, 99),
            ("bytes=0-0", 0, 0),
            ("bytes=65000-65999", 65000, 65999),
            ("bytes=130000-130067", 130000, 130067),
            ("bytes=130000-", 130000, 130067),
            ("bytes=130000-999999", 130000, 130067),
            ("bytes=-500", 129568, 130067),
            ("bytes=-999999", 0, 130067),
            ("bytes=0-", 0, 130067),
        ];
        let mut sources: Vec<(Split, bool)> = vec![(Split::Whole, true)];
        sources.extend(splits(json.len()).into_iter().map(|how| (how, false)));
        for (how, exact) in sources {
            let mut upstream = Upstream::new(json.clone()).split(how.clone());
            if exact {
                upstream = upstream.exact();
            }
            let server = start(BinaryNegotiationLayer::new(), upstream).await;
            for &(range, first, last) in cases {
                let got = server.get(&[("range", range)]).await;
                let label = format!("{range} {how:?}");
                assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{label}");
                assert_eq!(
                    got.header("content-range"),
                    Some(format!("bytes {first}-{last}/130068").as_str()),
                    "{label}"
                );
                let length = (last - first + 1).to_string();
                assert_eq!(
                    got.header("content-length"),
                    Some(length.as_str()),
                    "{label}"
                );
                assert_eq!(
                    got.header("content-type"),
                    Some("application/pdf"),
                    "{label}"
                );
                assert_eq!(got.header("accept-ranges"), Some("bytes"), "{label}");
                assert_eq!(all(&got, "vary"), ["Accept"], "{label}");
                assert_eq!(got.bytes().as_ref(), &document[first..=last], "{label}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn unsatisfiable_invalid_and_multiple_ranges() {
    bounded(async {
        let document = pdf();
        let json = fixture("r4/binary-example.json");
        for upstream in [
            Upstream::new(json.clone()),
            Upstream::new(json.clone()).exact(),
        ] {
            let server = start(BinaryNegotiationLayer::new(), upstream).await;
            for range in ["bytes=130068-", "bytes=200000-200001", "bytes=-0"] {
                let got = server.get(&[("range", range)]).await;
                assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
                assert_eq!(
                    got.header("content-range"),
                    Some("bytes */130068"),
                    "{range}"
                );
                assert!(got.bytes().is_empty());
                assert_eq!(all(&got, "vary"), ["Accept"]);
            }
            // Invalid ranges are ignored; several ranges get the whole document.
            for range in ["bytes=5-1", "bytes=x-y", "items=0-1", "bytes=0-1,5-6"] {
                let got = server.get(&[("range", range)]).await;
                assert_eq!(got.status, StatusCode::OK, "{range}");
                assert!(got.header("content-range").is_none());
                assert_eq!(got.bytes().as_ref(), document.as_slice(), "{range}");
            }
            // HEAD ignores Range (RFC 9110 defines ranges for GET only).
            let head = server
                .fetch("HEAD", "/Binary/example", &[("range", "bytes=0-9")])
                .await;
            assert_eq!(head.status, StatusCode::OK);
            assert_eq!(head.header("content-length"), Some("130068"));
        }
    })
    .await;
}

#[tokio::test]
async fn ranges_of_a_streamed_document_larger_than_the_read_whole_limit() {
    bounded(async {
        let document = pdf();
        let json = fixture("r4/binary-example.json");
        let layer = BinaryNegotiationLayer::new().read_whole_limit(16 * 1024);
        for how in [
            Split::Every(1),
            Split::Every(4096),
            Split::Random { seed: 5, cuts: 300 },
        ] {
            let upstream = Upstream::new(json.clone()).split(how.clone());
            let server = start(layer.clone(), upstream.clone()).await;
            // Ranges that end before the end of the document: served without its length, and
            // the rest of the inner body is never read.
            for (range, first, last) in [
                ("bytes=0-99", 0usize, 99usize),
                ("bytes=60000-69999", 60000, 69999),
                ("bytes=100000-110000", 100000, 110000),
            ] {
                let before = upstream.bytes_read();
                let got = server.get(&[("range", range)]).await;
                let label = format!("{range} {how:?}");
                assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{label}");
                assert_eq!(
                    got.header("content-range"),
                    Some(format!("bytes {first}-{last}/*").as_str()),
                    "{label}"
                );
                assert_eq!(got.bytes().as_ref(), &document[first..=last], "{label}");
                let read = upstream.bytes_read() - before;
                // The JSON holds about 4/3 of the document before `last`, plus a frame.
                assert!(
                    read < json.len() - 20_000,
                    "{label}: read {read} of {}",
                    json.len()
                );
            }
            // A range that reaches past the end is found out at the end: its length is known.
            let got = server.get(&[("range", "bytes=125000-135000")]).await;
            assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(
                got.header("content-range"),
                Some("bytes 125000-130067/130068")
            );
            assert_eq!(got.bytes().as_ref(), &document[125000..]);
            let got = server.get(&[("range", "bytes=200000-200009")]).await;
            assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE);
            assert_eq!(got.header("content-range"), Some("bytes */130068"));
            // Suffix and open ranges need the length, which is not known before the head:
            // the whole document, as RFC 9110 allows.
            for range in ["bytes=-500", "bytes=100000-"] {
                let got = server.get(&[("range", range)]).await;
                assert_eq!(got.status, StatusCode::OK, "{range}");
                assert_eq!(got.header("accept-ranges"), Some("bytes"));
                assert_eq!(got.bytes().as_ref(), document.as_slice(), "{range}");
            }
            // A range larger than the limit that turns out to pass the end of the document:
            // the announced length cannot be kept, so the transfer breaks rather than end short.
            // (The server may break the connection before its buffered head is flushed.)
            let broken = server
                .try_fetch("GET", "/Binary/example", &[("range", "bytes=90000-149999")])
                .await;
            if let Ok(got) = broken {
                assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
                assert_eq!(got.header("content-range"), Some("bytes 90000-149999/*"));
                assert!(got.body.is_err(), "a short range must not look complete");
            }
            // A range larger than the limit inside the document streams whole.
            let got = server.get(&[("range", "bytes=10000-99999")]).await;
            assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(got.header("content-range"), Some("bytes 10000-99999/*"));
            assert_eq!(got.header("content-length"), Some("90000"));
            assert_eq!(got.bytes().as_ref(), &document[10000..100000]);
        }
    })
    .await;
}

#[tokio::test]
async fn if_range_with_the_date_or_a_strong_tag() {
    bounded(async {
        let document = pdf();
        let server = start(
            BinaryNegotiationLayer::new(),
            Upstream::new(pdf_json_with_meta()),
        )
        .await;
        let got = server
            .get(&[("range", "bytes=100-199"), ("if-range", LAST_MODIFIED)])
            .await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(got.header("content-range"), Some("bytes 100-199/130068"));
        assert_eq!(got.bytes().as_ref(), &document[100..200]);

        // Another date, or our weak tag (a weak tag never matches If-Range): the whole document.
        for if_range in ["Mon, 06 May 2024 05:08:10 GMT", "W/\"3\"", "\"3\"", "junk"] {
            let got = server
                .get(&[("range", "bytes=100-199"), ("if-range", if_range)])
                .await;
            assert_eq!(got.status, StatusCode::OK, "{if_range}");
            assert_eq!(got.header("content-length"), Some("130068"));
            assert_eq!(got.bytes().as_ref(), document.as_slice(), "{if_range}");
        }

        // A strong ETag set by the inner service is kept and matches.
        let upstream = Upstream::new(pdf_json_with_meta()).header("etag", "\"v3\"");
        let server = start(BinaryNegotiationLayer::new(), upstream.clone()).await;
        let got = server
            .get(&[("range", "bytes=-10"), ("if-range", "\"v3\"")])
            .await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(got.header("etag"), Some("\"v3\""));
        assert_eq!(got.bytes().as_ref(), &document[PDF_LEN - 10..]);
        let got = server
            .get(&[("range", "bytes=-10"), ("if-range", "\"v2\"")])
            .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes().len(), PDF_LEN);
        // The inner service never sees Range or If-Range.
        for (_, headers) in upstream.seen.lock().unwrap().iter() {
            assert!(headers.get("range").is_none());
            assert!(headers.get("if-range").is_none());
        }
    })
    .await;
}

#[tokio::test]
async fn not_modified_on_if_none_match_and_if_modified_since() {
    bounded(async {
        let json = pdf_json_with_meta();
        for upstream in [
            Upstream::new(json.clone()),
            Upstream::new(json.clone()).exact(),
            Upstream::new(json.clone()).split(Split::Every(1)),
        ] {
            let upstream = upstream.header("content-location", "/fhir/Binary/example/_history/3");
            let server = start(BinaryNegotiationLayer::new(), upstream.clone()).await;
            for conditions in [
                &[("if-none-match", "W/\"3\"")][..],
                &[("if-none-match", "\"3\"")],
                &[("if-none-match", "\"1\", W/\"3\"")],
                &[("if-none-match", "*")],
                &[("if-modified-since", LAST_MODIFIED)],
                &[("if-modified-since", "Tue, 07 May 2024 00:00:00 GMT")],
            ] {
                for method in ["GET", "HEAD"] {
                    let got = server.fetch(method, "/Binary/example", conditions).await;
                    let label = format!("{method} {conditions:?}");
                    assert_eq!(got.status, StatusCode::NOT_MODIFIED, "{label}");
                    assert!(got.bytes().is_empty(), "{label}");
                    assert_eq!(got.header("etag"), Some("W/\"3\""), "{label}");
                    assert_eq!(got.header("last-modified"), Some(LAST_MODIFIED), "{label}");
                    assert_eq!(all(&got, "vary"), ["Accept"], "{label}");
                    assert_eq!(
                        got.header("content-location"),
                        Some("/fhir/Binary/example/_history/3")
                    );
                    assert!(got.header("content-type").is_none(), "{label}");
                }
            }
            for conditions in [
                &[("if-none-match", "W/\"4\"")][..],
                &[("if-modified-since", "Mon, 06 May 2024 05:08:08 GMT")],
                &[
                    ("if-none-match", "W/\"4\""),
                    ("if-modified-since", LAST_MODIFIED),
                ],
            ] {
                let got = server.get(conditions).await;
                assert_eq!(got.status, StatusCode::OK, "{conditions:?}");
                assert_eq!(sha256_hex(got.bytes()), PDF_SHA256);
            }
            // The conditions went on to the inner service, as they came.
            let seen = upstream.seen.lock().unwrap();
            assert!(seen
                .iter()
                .any(|(_, headers)| headers.get("if-none-match").is_some()));
        }
    })
    .await;
}

#[tokio::test]
async fn conditions_on_a_large_streamed_document() {
    bounded(async {
        let document: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
        let layer = BinaryNegotiationLayer::new();
        // `meta` before the payload: the answer is known at once and the body is not read on.
        let upstream = Upstream::new(binary_json(
            "big",
            "application/octet-stream",
            &document,
            true,
        ));
        let server = start(layer.clone(), upstream.clone()).await;
        let got = server.get(&[("if-none-match", "W/\"3\"")]).await;
        assert_eq!(got.status, StatusCode::NOT_MODIFIED);
        assert!(
            upstream.bytes_read() < 100_000,
            "read {}",
            upstream.bytes_read()
        );
        let got = server.get(&[("if-none-match", "W/\"2\"")]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("etag"), Some("W/\"3\""));
        assert_eq!(got.bytes().as_ref(), document.as_slice());

        // `meta` after a payload larger than the limit: the validators are not known when the
        // head must go out, so the condition cannot hold and the document is sent.
        let upstream = Upstream::new(binary_json(
            "big",
            "application/octet-stream",
            &document,
            false,
        ));
        let server = start(layer, upstream).await;
        let got = server.get(&[("if-none-match", "W/\"3\"")]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes().as_ref(), document.as_slice());
        // HEAD reads to the end, so it knows them.
        let got = server
            .fetch("HEAD", "/Binary/big", &[("if-none-match", "W/\"3\"")])
            .await;
        assert_eq!(got.status, StatusCode::NOT_MODIFIED);
    })
    .await;
}

#[tokio::test]
async fn an_inner_not_modified_passes_on_with_vary() {
    bounded(async {
        let upstream = Upstream::new(Vec::new())
            .status(StatusCode::NOT_MODIFIED)
            .header("etag", "W/\"3\"")
            .header("vary", "Origin");
        let server = start(BinaryNegotiationLayer::new(), upstream.clone()).await;
        let got = server.get(&[("if-none-match", "W/\"3\"")]).await;
        assert_eq!(got.status, StatusCode::NOT_MODIFIED);
        assert_eq!(got.header("etag"), Some("W/\"3\""));
        assert_eq!(all(&got, "vary"), ["Origin", "Accept"]);
        let seen = upstream.seen.lock().unwrap();
        assert_eq!(seen[0].1["if-none-match"], "W/\"3\"");
    })
    .await;
}

/// What a browser needs for each kind of document.
#[tokio::test]
async fn security_and_validator_headers_for_html_svg_pdf_and_jpeg() {
    bounded(async {
        let html = binary_json(
            "page-1",
            "text/html",
            b"<html><script>alert(document.cookie)</script></html>",
            false,
        );
        let svg = binary_json(
            "drawing",
            "image/svg+xml",
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            true,
        );
        let jpeg = String::from_utf8(fixture("r4/binary-f006.json"))
            .unwrap()
            .replacen(
                "\"meta\": {",
                &format!("\"meta\": {{\"versionId\": \"3\", \"lastUpdated\": \"{LAST_UPDATED}\","),
                1,
            )
            .into_bytes();
        let cases = [
            (
                html,
                "text/html",
                true,
                "attachment; filename=\"page-1.html\"",
                Some("Patient/p1"),
            ),
            (
                svg,
                "image/svg+xml",
                true,
                "attachment; filename=\"drawing.svg\"",
                Some("Patient/p1"),
            ),
            (
                pdf_json_with_meta(),
                "application/pdf",
                false,
                "inline; filename=\"example.pdf\"",
                Some("DocumentReference/example"),
            ),
            (
                jpeg,
                "image/jpeg",
                false,
                "inline; filename=\"f006.jpg\"",
                None,
            ),
        ];
        for (json, content_type, active, disposition, context) in cases {
            for exact in [false, true] {
                let mut upstream = Upstream::new(json.clone())
                    .header("content-location", "/fhir/Binary/x/_history/3")
                    .header("vary", "Origin");
                if exact {
                    upstream = upstream.exact();
                }
                let server = start(BinaryNegotiationLayer::new(), upstream).await;
                for method in ["GET", "HEAD"] {
                    let got = server.fetch(method, "/Binary/x", &[]).await;
                    let label = format!("{content_type} {method} exact={exact}");
                    assert_eq!(got.status, StatusCode::OK, "{label}");
                    assert_eq!(got.header("content-type"), Some(content_type), "{label}");
                    assert_eq!(
                        got.header("x-content-type-options"),
                        Some("nosniff"),
                        "{label}"
                    );
                    assert_eq!(
                        got.header("content-disposition"),
                        Some(disposition),
                        "{label}"
                    );
                    assert_eq!(
                        all(&got, "content-security-policy"),
                        if active { vec!["sandbox"] } else { vec![] },
                        "{label}"
                    );
                    assert_eq!(got.header("x-security-context"), context, "{label}");
                    assert_eq!(all(&got, "vary"), ["Origin", "Accept"], "{label}");
                    assert_eq!(got.header("accept-ranges"), Some("bytes"), "{label}");
                    assert_eq!(
                        got.header("content-location"),
                        Some("/fhir/Binary/x/_history/3"),
                        "{label}"
                    );
                    // With the body read whole (known size, or HEAD) `meta` is known even
                    // when it comes last; streamed, only when it comes before the payload.
                    if exact || method == "HEAD" || content_type == "image/svg+xml" {
                        assert_eq!(got.header("etag"), Some("W/\"3\""), "{label}");
                        assert_eq!(got.header("last-modified"), Some(LAST_MODIFIED), "{label}");
                    }
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn the_security_policy_is_configurable() {
    bounded(async {
        let json = pdf_json_with_meta();
        let layer = BinaryNegotiationLayer::new().security_policy(SecurityPolicy::AttachmentAlways);
        let server = start(layer, Upstream::new(json.clone())).await;
        let got = server.get(&[]).await;
        assert_eq!(
            got.header("content-disposition"),
            Some("attachment; filename=\"example.pdf\"")
        );
        assert!(got.header("content-security-policy").is_none());

        let layer = BinaryNegotiationLayer::new().security_policy(SecurityPolicy::NosniffOnly);
        let html = binary_json("p", "text/html", b"<p>hi</p>", true);
        let server = start(layer, Upstream::new(html)).await;
        let got = server.get(&[]).await;
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        assert!(got.header("content-disposition").is_none());
        assert!(got.header("content-security-policy").is_none());
    })
    .await;
}

#[tokio::test]
async fn every_negotiated_response_varies_with_accept() {
    bounded(async {
        let upstream = Upstream::new(pdf_json_with_meta())
            .exact()
            .header("vary", "Origin, Accept-Encoding");
        let server = start(BinaryNegotiationLayer::new(), upstream).await;
        for (path, accept, status) in [
            ("/Binary/example", "*/*", StatusCode::OK),
            ("/Binary/example", "application/fhir+json", StatusCode::OK),
            ("/Binary/example?_format=xml", "", StatusCode::OK),
            (
                "/Binary/example",
                "application/zip",
                StatusCode::NOT_ACCEPTABLE,
            ),
        ] {
            let headers: &[(&str, &str)] = if accept.is_empty() {
                &[]
            } else {
                &[("accept", accept)]
            };
            let got = server.fetch("GET", path, headers).await;
            assert_eq!(got.status, status, "{path} {accept}");
            if path.ends_with("_format=xml") {
                common::assert_schema_valid(got.bytes(), "r4");
            }
            assert_eq!(
                all(&got, "vary"),
                ["Origin, Accept-Encoding", "Accept"],
                "{path} {accept}"
            );
        }
        // A 406 decided from the request alone.
        let got = server
            .fetch("GET", "/Binary/example?_format=ttl", &[])
            .await;
        assert_eq!(got.status, StatusCode::NOT_ACCEPTABLE);
        assert_eq!(all(&got, "vary"), ["Accept"]);
    })
    .await;
}

#[tokio::test]
async fn a_streamed_range_that_passes_the_end_breaks_the_body() {
    use tower::ServiceExt;
    bounded(async {
        let json = fixture("r4/binary-example.json");
        let service = BinaryNegotiationLayer::new()
            .read_whole_limit(16 * 1024)
            .layer(Upstream::new(json));
        let request = Request::get("/Binary/example")
            .header("range", "bytes=90000-149999")
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(response.headers()["content-range"], "bytes 90000-149999/*");
        assert_eq!(response.headers()["content-length"], "60000");
        let error = response.into_body().collect().await.unwrap_err();
        assert!(
            error.to_string().contains("before the end of the range"),
            "{error}"
        );
    })
    .await;
}
