//! Writes: a raw document posted or put to the Binary endpoint reaches a backend that only
//! takes Binary JSON as the equivalent Binary JSON, and the answer comes back as FHIR, through
//! the layer in-process and through the proxy with curl and Python `requests`.
#![cfg(feature = "proxy")]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use common::{decode_base64, fixture, sha256_hex, PDF_LEN, PDF_SHA256};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::proxy::{start_demo, start_proxy, DemoBackend, ProxyOptions};
use tower_fhir_binary::{BinaryNegotiationLayer, BoxError, FhirVersion};
use tower_layer::Layer;

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test took too long")
}

/// What a client gets: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// Sends `request` through the layer over `inner`.
async fn through<S, B>(layer: &BinaryNegotiationLayer, inner: S, request: Request<B>) -> Answer
where
    S: tower::Service<
            Request<tower_fhir_binary::RequestBody<B>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn pdf() -> Vec<u8> {
    let json: Value = serde_json::from_slice(&fixture("r4/binary-example.json")).unwrap();
    let pdf = decode_base64(json["data"].as_str().unwrap());
    assert_eq!(
        (pdf.len(), sha256_hex(&pdf).as_str()),
        (PDF_LEN, PDF_SHA256)
    );
    pdf
}

fn upload(method: &str, uri: &str, content_type: &str, bytes: &[u8]) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .header("content-length", bytes.len())
}

#[tokio::test]
async fn a_raw_upload_is_stored_as_a_binary_and_read_back_byte_for_byte() {
    bounded(async {
        let layer = BinaryNegotiationLayer::new();
        let demo = DemoBackend::new();
        let pdf = pdf();
        let request = upload("POST", "http://h/fhir/Binary", "application/pdf", &pdf)
            .header("x-security-context", "DocumentReference/example")
            .body(Full::new(Bytes::from(pdf.clone())))
            .unwrap();
        let created = through(&layer, demo.clone(), request).await;
        assert_eq!(created.status, StatusCode::CREATED);
        // FHIR JSON, never the document just sent.
        assert!(created
            .header("content-type")
            .unwrap()
            .starts_with("application/fhir+json"));
        let resource = created.json();
        assert_eq!(resource["resourceType"], "Binary");
        assert_eq!(resource["contentType"], "application/pdf");
        assert_eq!(
            resource["securityContext"]["reference"],
            "DocumentReference/example"
        );
        assert_eq!(
            STANDARD.decode(resource["data"].as_str().unwrap()).unwrap(),
            pdf
        );
        let location = created.header("location").unwrap().to_owned();
        assert_eq!(location, "http://h/fhir/Binary/created-1/_history/1");

        let read = Request::get(&location).body(Full::default()).unwrap();
        let native = through(&layer, demo.clone(), read).await;
        assert_eq!(native.status, StatusCode::OK);
        assert_eq!(native.header("content-type"), Some("application/pdf"));
        assert_eq!(
            native.header("x-security-context"),
            Some("DocumentReference/example")
        );
        assert_eq!(sha256_hex(&native.body), PDF_SHA256);

        // An update with PUT, then a create with PUT at a new id.
        let request = upload("PUT", "http://h/fhir/Binary/created-1", "text/plain", b"v2")
            .header("if-match", "W/\"1\"")
            .body(Full::new(Bytes::from_static(b"v2")))
            .unwrap();
        let updated = through(&layer, demo.clone(), request).await;
        assert_eq!(updated.status, StatusCode::OK);
        assert_eq!(updated.json()["meta"]["versionId"], "2");
        let request = upload("PUT", "http://h/fhir/Binary/note.1", "text/plain", b"new")
            .body(Full::new(Bytes::from_static(b"new")))
            .unwrap();
        let created = through(&layer, demo.clone(), request).await;
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.json()["id"], "note.1");
        let read = Request::get("http://h/fhir/Binary/note.1")
            .body(Full::default())
            .unwrap();
        assert_eq!(through(&layer, demo.clone(), read).await.body, "new");
        // A stale If-Match: the backend's 412 comes back, as FHIR JSON.
        let request = upload("PUT", "http://h/fhir/Binary/created-1", "text/plain", b"v3")
            .header("if-match", "W/\"1\"")
            .body(Full::new(Bytes::from_static(b"v3")))
            .unwrap();
        let stale = through(&layer, demo.clone(), request).await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(stale.json()["resourceType"], "OperationOutcome");
        // Prefer: return=minimal: no body at all.
        let request = upload("POST", "http://h/fhir/Binary", "image/png", b"\x89PNG")
            .header("prefer", "return=minimal")
            .body(Full::new(Bytes::from_static(b"\x89PNG")))
            .unwrap();
        let minimal = through(&layer, demo, request).await;
        assert_eq!(minimal.status, StatusCode::CREATED);
        assert!(minimal.body.is_empty());
        assert!(minimal.header("location").is_some());
    })
    .await
}

#[tokio::test]
async fn the_answer_is_fhir_xml_when_the_client_asked_for_xml() {
    bounded(async {
        let layer = BinaryNegotiationLayer::new();
        let demo = DemoBackend::new();
        for (accept, uri) in [
            (Some("application/fhir+xml"), "http://h/fhir/Binary"),
            (None, "http://h/fhir/Binary?_format=xml"),
        ] {
            let mut request = upload("POST", uri, "text/plain", b"Hello");
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            let created = through(
                &layer,
                demo.clone(),
                request
                    .body(Full::new(Bytes::from_static(b"Hello")))
                    .unwrap(),
            )
            .await;
            assert_eq!(created.status, StatusCode::CREATED);
            assert!(
                created
                    .header("content-type")
                    .unwrap()
                    .starts_with("application/fhir+xml"),
                "{:?}",
                created.headers
            );
            let text = std::str::from_utf8(&created.body).unwrap();
            assert!(
                text.contains("<Binary xmlns=\"http://hl7.org/fhir\">"),
                "{text}"
            );
            assert!(text.contains("<data value=\"SGVsbG8=\"/>"), "{text}");
        }
    })
    .await
}

/// An inner service that counts its calls and answers 201.
fn counting(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<tower_fhir_binary::RequestBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(
        move |_request: Request<tower_fhir_binary::RequestBody<Full<Bytes>>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(201)
                        .body(Full::default())
                        .unwrap(),
                )
            }
        },
    )
}

#[tokio::test]
async fn bad_uploads_get_a_clear_answer_and_reach_nothing() {
    bounded(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = BinaryNegotiationLayer::new();
        let cases: Vec<(Request<Full<Bytes>>, StatusCode, &str)> = vec![
            (
                Request::post("/Binary")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "Content-Type",
            ),
            (
                upload("POST", "/Binary", "pdf", b"x")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "not a media type",
            ),
            (
                upload("POST", "/Binary", "application/fhir+xml", b"x")
                    .header("content-encoding", "gzip")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "FHIR XML with Content-Encoding",
            ),
            (
                upload("PUT", "/Binary/a_b", "text/plain", b"x")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "not a FHIR id",
            ),
            (
                upload("POST", "/Binary", "text/plain", b"x")
                    .header("x-security-context", "not a reference")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "not a FHIR reference",
            ),
        ];
        for (request, status, text) in cases {
            let got = through(&layer, counting(calls.clone()), request).await;
            assert_eq!(got.status, status, "{text}");
            assert!(got
                .header("content-type")
                .unwrap()
                .starts_with("application/fhir+json"));
            let diagnostics = got.json()["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(diagnostics.contains(text), "{diagnostics}");
        }
        // The announced size over the limit: 413 before anything is sent.
        let small = BinaryNegotiationLayer::new().max_upload_size(4);
        let request = upload("POST", "/Binary", "text/plain", b"Hello")
            .body(Full::new(Bytes::from_static(b"Hello")))
            .unwrap();
        assert_eq!(
            through(&small, counting(calls.clone()), request)
                .await
                .status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // DSTU2 has no securityContext.
        let dstu2 = BinaryNegotiationLayer::new().fhir_version(FhirVersion::Dstu2);
        let request = upload("POST", "/Binary", "text/plain", b"x")
            .header("x-security-context", "Patient/1")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let got = through(&dstu2, counting(calls.clone()), request).await;
        assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(got
            .header("content-type")
            .unwrap()
            .starts_with("application/json+fhir"));
        // FHIR XML for a client that asked for XML.
        let request = upload("POST", "/Binary?_format=xml", "application/xml", b"<a/>")
            .header("content-encoding", "br")
            .body(Full::new(Bytes::from_static(b"<a/>")))
            .unwrap();
        let got = through(&layer, counting(calls.clone()), request).await;
        assert_eq!(got.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(got
            .header("content-type")
            .unwrap()
            .starts_with("application/fhir+xml"));
        assert!(std::str::from_utf8(&got.body)
            .unwrap()
            .contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "the inner service was called"
        );
    })
    .await
}

/// An upload of unknown length, in frames.
struct Chunked(std::collections::VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test]
async fn an_unannounced_upload_over_the_limit_is_413_and_the_backend_stores_nothing() {
    bounded(async {
        let layer = BinaryNegotiationLayer::new().max_upload_size(1000);
        let demo = DemoBackend::new();
        let stored = |demo: DemoBackend| {
            let layer = layer.clone();
            async move {
                let search = Request::get("http://h/fhir/Binary")
                    .body(Full::default())
                    .unwrap();
                through(&layer, demo, search).await.json()["total"].clone()
            }
        };
        let before = stored(demo.clone()).await;
        assert!(before.as_u64().is_some_and(|n| n > 0), "{before}");
        let frames = (0..5).map(|i| Bytes::from(vec![i as u8; 300])).collect();
        let request = Request::post("http://h/fhir/Binary")
            .header("content-type", "application/pdf")
            .body(Chunked(frames))
            .unwrap();
        let got = through(&layer, demo.clone(), request).await;
        assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(got.json()["issue"][0]["code"], "too-costly");
        assert_eq!(stored(demo).await, before);
    })
    .await
}

/// What a backend received: the `Content-Length` it was told, and the whole body.
type Received = Arc<Mutex<Vec<(Option<String>, Bytes)>>>;

/// A backend that records each request's `Content-Length` and body, and answers 201.
fn recording_backend() -> (
    Received,
    impl tower::Service<
            Request<tower_fhir_binary::RequestBody<Chunked>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone,
) {
    let seen = Received::default();
    let inner = {
        let seen = seen.clone();
        service_fn(
            move |request: Request<tower_fhir_binary::RequestBody<Chunked>>| {
                let seen = seen.clone();
                async move {
                    let length = request
                        .headers()
                        .get("content-length")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    seen.lock().unwrap().push((length, body));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(201)
                            .body(Full::default())
                            .unwrap(),
                    )
                }
            },
        )
    };
    (seen, inner)
}

/// What a strict backend received, for every release, around every base64 boundary.
#[tokio::test]
async fn every_release_and_size_reaches_a_strict_backend_as_the_bytes_sent() {
    bounded(async {
        let (seen, inner) = recording_backend();
        for version in [
            FhirVersion::Dstu2,
            FhirVersion::Stu3,
            FhirVersion::R4,
            FhirVersion::R4B,
            FhirVersion::R5,
        ] {
            let layer = BinaryNegotiationLayer::new().fhir_version(version);
            let key = if matches!(version, FhirVersion::Dstu2 | FhirVersion::Stu3) {
                "content"
            } else {
                "data"
            };
            for n in (0..300).chain([1 << 20]) {
                let bytes: Vec<u8> = (0..n).map(|i| (i * 13 + i / 3) as u8).collect();
                for announced in [true, false] {
                    let half = n / 2;
                    let frames = [&bytes[..half], &bytes[half..]]
                        .iter()
                        .map(|p| Bytes::copy_from_slice(p))
                        .collect();
                    let mut request = Request::put("/base/Binary/id-1")
                        .header("content-type", "application/octet-stream");
                    if announced {
                        request = request.header("content-length", n);
                    }
                    let got = through(
                        &layer,
                        inner.clone(),
                        request.body(Chunked(frames)).unwrap(),
                    )
                    .await;
                    assert_eq!(got.status, StatusCode::CREATED);
                    let (length, json) = seen.lock().unwrap().pop().unwrap();
                    assert_eq!(
                        length,
                        announced.then(|| json.len().to_string()),
                        "{version:?} {n}"
                    );
                    let value: Value = serde_json::from_slice(&json).unwrap();
                    assert_eq!(value["id"], "id-1");
                    assert_eq!(value["contentType"], "application/octet-stream");
                    let data = value
                        .get(key)
                        .map_or_else(Vec::new, |d| STANDARD.decode(d.as_str().unwrap()).unwrap());
                    assert_eq!(data, bytes, "{version:?} {n}");
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_64_mib_upload_in_64_kib_frames_reaches_a_strict_backend_byte_for_byte() {
    bounded(async {
        let (seen, inner) = recording_backend();
        let n = 64 << 20;
        let bytes: Vec<u8> = (0..n).map(|i: usize| (i * 7 + i / 251) as u8).collect();
        let expected = sha256_hex(&bytes);
        let layer = BinaryNegotiationLayer::new();
        for announced in [true, false] {
            let frames = bytes.chunks(64 << 10).map(Bytes::copy_from_slice).collect();
            let mut request =
                Request::post("/fhir/Binary").header("content-type", "application/dicom");
            if announced {
                request = request.header("content-length", n);
            }
            let got = through(
                &layer,
                inner.clone(),
                request.body(Chunked(frames)).unwrap(),
            )
            .await;
            assert_eq!(got.status, StatusCode::CREATED);
            let (length, json) = seen.lock().unwrap().pop().unwrap();
            assert_eq!(length, announced.then(|| json.len().to_string()));
            let value: Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(value["contentType"], "application/dicom");
            let data = STANDARD.decode(value["data"].as_str().unwrap()).unwrap();
            assert_eq!(data.len(), n);
            assert_eq!(sha256_hex(&data), expected, "announced: {announced}");
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Through the proxy, with curl and Python `requests`.

async fn demo_and_proxy() -> (
    tower_fhir_binary::proxy::Server,
    tower_fhir_binary::proxy::Server,
    String,
) {
    let demo = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let upstream = format!("http://{}/fhir", demo.local_addr());
    let proxy = start_proxy(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ProxyOptions::new(upstream.parse().unwrap()),
    )
    .unwrap();
    let base = format!("http://{}", proxy.local_addr());
    (demo, proxy, base)
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "tower-fhir-binary-writes-{}-{name}",
        std::process::id()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uploads_a_pdf_through_the_proxy_and_reads_it_back_natively() {
    bounded(async {
        let (demo, proxy, base) = demo_and_proxy().await;
        let file = temp_path("report.pdf");
        let back = temp_path("back.pdf");
        std::fs::write(&file, pdf()).unwrap();
        let (file2, back2, base2) = (file.clone(), back.clone(), base.clone());
        let (head, body, read_status) = tokio::task::spawn_blocking(move || {
            let created = std::process::Command::new("curl")
                .args(["-sS", "-D", "-", "--data-binary"])
                .arg(format!("@{}", file2.display()))
                .args([
                    "-H",
                    "Content-Type: application/pdf",
                    &format!("{base2}/Binary"),
                ])
                .output()
                .unwrap();
            assert!(
                created.status.success(),
                "{}",
                String::from_utf8_lossy(&created.stderr)
            );
            let text = String::from_utf8(created.stdout).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let location = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("location: ")
                        .or_else(|| l.strip_prefix("Location: "))
                })
                .unwrap()
                .trim()
                .to_owned();
            let read = std::process::Command::new("curl")
                .args(["-sS", "-o"])
                .arg(&back2)
                .args(["-w", "%{http_code} %{content_type}", &location])
                .output()
                .unwrap();
            (
                head.to_owned(),
                body.to_owned(),
                String::from_utf8(read.stdout).unwrap(),
            )
        })
        .await
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 201"), "{head}");
        assert!(
            head.contains(&format!("{base}/Binary/created-1/_history/1")),
            "Location rewritten to the proxy: {head}"
        );
        let resource: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(resource["contentType"], "application/pdf");
        assert_eq!(read_status, "200 application/pdf");
        assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), PDF_SHA256);
        let _ = std::fs::remove_file(file);
        let _ = std::fs::remove_file(back);
        proxy.shutdown().await;
        demo.shutdown().await;
    })
    .await
}

const REQUESTS_SCRIPT: &str = r#"
import hashlib, sys, requests
base = sys.argv[1]
data = bytes((i * 7 + i // 11) % 256 for i in range(1_000_003))
def chunks():
    for i in range(0, len(data), 65_536):
        yield data[i:i + 65_536]
for body, label in ((data, "length"), (chunks(), "chunked")):
    r = requests.put(base + "/Binary/py-" + label, data=body,
                     headers={"Content-Type": "application/octet-stream", "X-Security-Context": "Patient/py",
                              "Accept": "application/fhir+json"})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/fhir+json"), r.headers
    assert r.headers["Location"] == base + "/Binary/py-" + label + "/_history/1", r.headers
    back = requests.get(base + "/Binary/py-" + label)
    assert back.status_code == 200 and back.headers["Content-Type"] == "application/octet-stream"
    assert back.headers["X-Security-Context"] == "Patient/py"
    assert hashlib.sha256(back.content).hexdigest() == hashlib.sha256(data).hexdigest()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_uploads_with_a_length_and_chunked() {
    bounded(async {
        let (demo, proxy, base) = demo_and_proxy().await;
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .args(["-c", REQUESTS_SCRIPT, &base])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
        proxy.shutdown().await;
        demo.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Random uploads, headers and cuts: the inner service either sees a body that fails, or a valid
// Binary JSON carrying exactly the bytes sent.

/// An upload cut into frames that may end early, or fail.
struct Cut {
    frames: std::collections::VecDeque<Bytes>,
    fail: bool,
}

impl Body for Cut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(match self.frames.pop_front() {
            Some(frame) => Some(Ok(Frame::data(frame))),
            None if self.fail => {
                self.fail = false;
                Some(Err("connection reset by peer".into()))
            }
            None => None,
        })
    }
}

#[tokio::test]
async fn random_uploads_headers_and_cuts_never_give_a_valid_binary_of_other_bytes() {
    bounded(async {
        type Seen = Arc<Mutex<Option<Result<Bytes, String>>>>;
        let seen: Seen = Arc::default();
        let inner = {
            let seen = seen.clone();
            service_fn(
                move |request: Request<tower_fhir_binary::RequestBody<Cut>>| {
                    let seen = seen.clone();
                    async move {
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .map_err(|e| e.to_string());
                        *seen.lock().unwrap() = Some(body);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(201)
                                .body(Full::default())
                                .unwrap(),
                        )
                    }
                },
            )
        };
        let mut rng = common::Rng::new(0x5eed_0018);
        let content_types = [
            "application/pdf",
            "text/xml",
            "image/png; q=1",
            "application/fhir+json",
            "application/xml",
            "pdf",
            "",
        ];
        let contexts = ["Patient/1", "urn:uuid:1-2", "bad context", ""];
        let (mut complete, mut broken, mut refused) = (0, 0, 0);
        for round in 0..3000 {
            let n = match rng.below(4) {
                0 => rng.below(8),
                1 => rng.below(300),
                _ => rng.below(70_000),
            };
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let content_type = content_types[rng.below(content_types.len())];
            let context = contexts[rng.below(contexts.len())];
            let max = if rng.below(4) == 0 {
                rng.below(n + 2) as u64
            } else {
                1 << 30
            };
            // The announced length: none, right, or wrong.
            let announced = match rng.below(4) {
                0 => None,
                1 => Some(n.saturating_sub(1 + rng.below(3))),
                2 => Some(n + 1 + rng.below(3)),
                _ => Some(n),
            };
            // What is sent: all of it or a prefix, in random frames, maybe failing at the end.
            let sent = if rng.below(3) == 0 {
                rng.below(n + 1)
            } else {
                n
            };
            let fail = rng.below(5) == 0;
            let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(sent + 1)).collect();
            cuts.extend([0, sent]);
            cuts.sort_unstable();
            let frames = cuts
                .windows(2)
                .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
                .collect();
            let mut request = Request::put("/fhir/Binary/r-1");
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            if !context.is_empty() {
                request = request.header("x-security-context", context);
            }
            if let Some(length) = announced {
                request = request.header("content-length", length);
            }
            let layer = BinaryNegotiationLayer::new().max_upload_size(max);
            *seen.lock().unwrap() = None;
            let got = through(
                &layer,
                inner.clone(),
                request.body(Cut { frames, fail }).unwrap(),
            )
            .await;
            let Some(received) = seen.lock().unwrap().take() else {
                assert!(
                    got.status.is_client_error(),
                    "round {round}: {}",
                    got.status
                );
                refused += 1;
                continue;
            };
            let json = match received {
                Err(_) => {
                    broken += 1;
                    continue;
                }
                Ok(json) => json,
            };
            if content_type == "application/fhir+json" {
                // Not a document: passed on untouched.
                assert_eq!(&json[..], &bytes[..sent], "round {round}");
                continue;
            }
            // A complete body: a valid Binary of exactly the bytes sent, as many as announced.
            // (A body of unknown length that ends cleanly is complete: so does a chunked upload
            // end; a dropped connection is an error of the client's body.)
            let value: Value =
                serde_json::from_slice(&json).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let data = value
                .get("data")
                .map_or_else(Vec::new, |d| STANDARD.decode(d.as_str().unwrap()).unwrap());
            assert_eq!(
                data,
                &bytes[..sent],
                "round {round}: a complete Binary of other bytes"
            );
            assert!(!fail, "round {round}: a failed upload completed");
            assert!(
                announced.is_none_or(|a| a == sent),
                "round {round}: not the announced length"
            );
            assert!(sent as u64 <= max, "round {round}: over the limit");
            assert_eq!(value["contentType"], content_type);
            complete += 1;
        }
        // Every kind of case happened.
        assert!(
            complete > 200 && broken > 300 && refused > 300,
            "{complete} {broken} {refused}"
        );
    })
    .await
}
