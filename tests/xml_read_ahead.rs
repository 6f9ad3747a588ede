//! FHIR XML request bodies are read ahead before the inner service is called
//! (`xml_request_read_ahead`, 1 MiB of JSON by default): within it, XML that is not FHIR gets
//! 400 (413 when too large) and the inner service is never called, and a good document reaches
//! it whole with an exact `Content-Length`; past it, the body streams as it converts, and a
//! fault later makes the inner body fail. Checked against an inner service that records what
//! it got, in process and behind a real hyper server on 127.0.0.1.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{paced_split, Rng};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, BoxError, RequestBody, Selector};
use tower_layer::Layer;

/// What the inner service got for one call.
#[derive(Debug)]
struct Seen {
    content_type: Option<String>,
    content_length: Option<String>,
    /// The body whole, or why reading it failed.
    body: Result<Bytes, String>,
}

/// An inner service that counts its calls, reads each body whole and answers 201.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().pop().expect("a call")
    }
}

impl<B> Service<Request<RequestBody<B>>> for Recorder
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody<B>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let seen = self.seen.clone();
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type");
        let content_length = header("content-length");
        Box::pin(async move {
            let body = match request.into_body().collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) => Err(e.to_string()),
            };
            if let (Some(length), Ok(body)) = (&content_length, &body) {
                assert_eq!(length, &body.len().to_string(), "Content-Length is exact");
            }
            seen.lock().unwrap().push(Seen {
                content_type,
                content_length,
                body,
            });
            Ok(Response::builder()
                .status(201)
                .header("content-type", "application/fhir+json")
                .body(Full::new(Bytes::from_static(
                    br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#,
                )))
                .unwrap())
        })
    }
}

/// What the client gets.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Answer {
    fn diagnostics(&self) -> String {
        let value: Value =
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body));
        assert_eq!(value["resourceType"], "OperationOutcome");
        value["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

async fn through<P, B>(
    layer: BinaryNegotiationLayer<P>,
    inner: &Recorder,
    request: Request<B>,
) -> Answer
where
    P: Selector + Clone,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        layer.layer(inner.clone()).oneshot(request),
    )
    .await
    .expect("the request took too long")
    .unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body,
    }
}

fn put<B>(uri: &str, length: Option<usize>, body: B) -> Request<B> {
    let mut builder = Request::put(uri).header("content-type", "application/fhir+xml");
    if let Some(length) = length {
        builder = builder.header("content-length", length);
    }
    builder.body(body).unwrap()
}

const PATIENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">Peter &amp; <b>James</b></div></text>
  <active value="true"/>
  <name><family value="Chalmers"/><given value="Peter"/><given id="g2"><extension url="http://e/q"><valueCode value="MID"/></extension></given></name>
  <birthDate value="1974-12-25"/>
  <multipleBirthInteger value="2"/>
</Patient>"#;

fn patient_json() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter &amp; <b>James</b></div>"},
        "active": true,
        "name": [{"family": "Chalmers", "given": ["Peter", null], "_given": [null, {"id": "g2", "extension": [{"url": "http://e/q", "valueCode": "MID"}]}]}],
        "birthDate": "1974-12-25",
        "multipleBirthInteger": 2
    })
}

/// A Binary in FHIR XML with `size` characters of base64, and its FHIR JSON.
fn binary(size: usize, rng: &mut Rng) -> (String, Value) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let base64: String = (0..size / 4 * 4)
        .map(|_| char::from(ALPHABET[rng.below(64)]))
        .collect();
    let xml = format!(
        "<Binary xmlns=\"http://hl7.org/fhir\">\n  <id value=\"b1\"/>\n  <contentType value=\"application/pdf\"/>\n  <data value=\"{base64}\"/>\n</Binary>\n"
    );
    let json = json!({"resourceType": "Binary", "id": "b1", "contentType": "application/pdf", "data": base64});
    (xml, json)
}

#[tokio::test]
async fn xml_that_is_not_fhir_within_the_read_ahead_never_reaches_the_inner_service() {
    let mut rng = Rng::new(0x0019_0601);
    let (big, _) = binary(300_000, &mut rng);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "not well-formed",
            "/Patient/p1",
            PATIENT_XML.replace("</name>", "</nam>"),
            "</nam>",
        ),
        (
            "unknown element",
            "/Patient/p1",
            PATIENT_XML.replace("<active value", "<activ value"),
            "Patient: <activ> is not an element here",
        ),
        (
            "a resource type the release does not have",
            "/Patient/p1",
            PATIENT_XML.replace("Patient", "Patien"),
            "Patien",
        ),
        (
            "another namespace",
            "/Patient/p1",
            PATIENT_XML.replace("http://hl7.org/fhir", "urn:x"),
            "namespace",
        ),
        (
            "a Binary element out of order, 300 KB in",
            "/Binary/b1",
            big.replace("</Binary>", "<id value=\"2\"/></Binary>"),
            "Binary: <id> repeated or out of the definition order",
        ),
        (
            "ends early",
            "/Binary/b1",
            big[..big.len() / 2].to_owned(),
            "Binary.data: the document ends inside a tag",
        ),
        (
            "not XML",
            "/Binary",
            "{\"resourceType\":\"Binary\"}".to_owned(),
            "text where FHIR XML has only elements",
        ),
        ("empty", "/Binary", String::new(), "the document ends"),
    ];
    let inner = Recorder::default();
    for (what, path, xml, diagnostics) in &cases {
        for _ in 0..4 {
            let cuts = rng.below(20);
            let request = put(path, None, paced_split(xml.as_bytes(), &mut rng, cuts));
            let layer = BinaryNegotiationLayer::new().select_all();
            let answer = through(layer, &inner, request).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{what}");
            assert!(answer.content_type.starts_with("application/fhir+json"));
            let text = answer.diagnostics();
            assert!(text.contains("the body is not FHIR XML"), "{what}: {text}");
            assert!(text.contains(diagnostics), "{what}: {text}");
        }
    }
    // The client's body fails, or ends before its Content-Length.
    for _ in 0..4 {
        let mut frames = paced_split(PATIENT_XML.as_bytes(), &mut rng, 5);
        frames.fail_at_end = true;
        let answer = through(
            BinaryNegotiationLayer::new().select_all(),
            &inner,
            put("/Patient/p1", None, frames),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer
            .diagnostics()
            .contains("the request body failed: the client went away"));
        let frames = paced_split(PATIENT_XML.as_bytes(), &mut rng, 5);
        let announced = PATIENT_XML.len() + 100;
        let answer = through(
            BinaryNegotiationLayer::new().select_all(),
            &inner,
            put("/Patient/p1", Some(announced), frames),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        let text = answer.diagnostics();
        let expected = format!(
            "the upload ended after {} of its {announced} bytes",
            PATIENT_XML.len()
        );
        assert!(text.contains(&expected), "{text}");
    }
    // Over max_upload_size: announced (refused at once) or found while reading.
    for announced in [None, Some(big.len())] {
        let layer = BinaryNegotiationLayer::new().max_upload_size(100_000);
        let request = put(
            "/Binary/b1",
            announced,
            paced_split(big.as_bytes(), &mut rng, 30),
        );
        let answer = through(layer, &inner, request).await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{announced:?}"
        );
        assert!(answer
            .diagnostics()
            .contains("larger than the 100000 bytes this server accepts"));
    }
    // A client that asked for XML gets the OperationOutcome in XML.
    let request = put(
        "/Binary/b1?_format=xml",
        None,
        paced_split(cases[4].2.as_bytes(), &mut rng, 10),
    );
    let answer = through(BinaryNegotiationLayer::new(), &inner, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.content_type.starts_with("application/fhir+xml"));
    let text = std::str::from_utf8(&answer.body).unwrap();
    assert!(
        text.contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">")
            && text.contains("Binary: &lt;id&gt; repeated or out of the definition order"),
        "{text}"
    );
    assert_eq!(inner.calls(), 0, "the inner service was called");
}

#[tokio::test]
async fn good_xml_within_the_read_ahead_arrives_whole_with_its_length() {
    let mut rng = Rng::new(0x0019_0602);
    let inner = Recorder::default();
    for round in 0..60 {
        let (path, xml, expected) = match round % 3 {
            0 => ("/Patient/p1", PATIENT_XML.to_owned(), patient_json()),
            _ => {
                let (xml, json) = binary(rng.below(200_000), &mut rng);
                ("/Binary/b1", xml, json)
            }
        };
        let cuts = rng.below(40);
        let announced = (round % 2 == 0).then_some(xml.len());
        let request = put(path, announced, paced_split(xml.as_bytes(), &mut rng, cuts));
        let answer = through(BinaryNegotiationLayer::new().select_all(), &inner, request).await;
        assert_eq!(answer.status, StatusCode::CREATED, "round {round}");
        let seen = inner.last();
        assert_eq!(seen.content_type.as_deref(), Some("application/fhir+json"));
        let body = seen.body.unwrap();
        // The Recorder checks that the length is the body's.
        assert_eq!(seen.content_length, Some(body.len().to_string()));
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, expected, "round {round}");
    }
    assert_eq!(inner.calls(), 60);
}

#[tokio::test]
async fn past_the_read_ahead_the_body_streams_and_a_later_fault_fails_it() {
    let mut rng = Rng::new(0x0019_0603);
    let inner = Recorder::default();
    for round in 0..20 {
        let (xml, expected) = binary(50_000 + rng.below(100_000), &mut rng);
        let read_ahead = rng.below(40_000);
        let layer = BinaryNegotiationLayer::new().xml_request_read_ahead(read_ahead);
        let cuts = rng.below(40);
        let request = put(
            "/Binary/b1",
            None,
            paced_split(xml.as_bytes(), &mut rng, cuts),
        );
        let answer = through(layer.clone(), &inner, request).await;
        assert_eq!(answer.status, StatusCode::CREATED, "round {round}");
        let seen = inner.last();
        // Longer than the read-ahead: chunked, and the whole JSON all the same.
        assert_eq!(seen.content_length, None);
        let value: Value = serde_json::from_slice(&seen.body.unwrap()).unwrap();
        assert_eq!(value, expected, "round {round}");
        // The same, with a fault at the end: the inner body fails, the client gets 400.
        let bad = xml.replace("</Binary>", "<id value=\"2\"/></Binary>");
        let cuts = rng.below(40);
        let request = put(
            "/Binary/b1",
            None,
            paced_split(bad.as_bytes(), &mut rng, cuts),
        );
        let answer = through(layer, &inner, request).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "round {round}");
        assert!(answer
            .diagnostics()
            .contains("Binary: <id> repeated or out of the definition order"));
        let error = inner
            .last()
            .body
            .expect_err("a complete body after a fault");
        assert!(
            error.contains("Binary: <id> repeated or out of the definition order"),
            "{error}"
        );
    }
    assert_eq!(inner.calls(), 40);
}

/// A Binary in FHIR XML of `size` characters of base64, made as it is read in 64 KiB frames
/// (never held whole); `produced` counts the bytes handed out.
struct Generated {
    state: u64,
    left: usize,
    head: Option<Bytes>,
    tail: Option<Bytes>,
    produced: Arc<AtomicU64>,
}

const BIG_HEAD: &str =
    "<Binary xmlns=\"http://hl7.org/fhir\"><contentType value=\"application/pdf\"/><data value=\"";
const BIG_TAIL: &str = "\"/></Binary>";

fn base64_char(state: &mut u64) -> u8 {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ALPHABET[(*state >> 58) as usize]
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = if let Some(head) = self.head.take() {
            head
        } else if self.left > 0 {
            let n = self.left.min(64 << 10);
            self.left -= n;
            let mut state = self.state;
            let frame: Vec<u8> = (0..n).map(|_| base64_char(&mut state)).collect();
            self.state = state;
            Bytes::from(frame)
        } else if let Some(tail) = self.tail.take() {
            tail
        } else {
            return Poll::Ready(None);
        };
        self.produced
            .fetch_add(frame.len() as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// A 64 MiB XML Binary upload: the inner service is called once the read-ahead is full, when
/// the client has sent little more than the read-ahead, and reads the whole Binary JSON.
#[tokio::test]
async fn a_64_mib_xml_binary_upload_streams_past_the_read_ahead() {
    const SIZE: usize = 64 << 20;
    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
    let produced = Arc::new(AtomicU64::new(0));
    let body = Generated {
        state: SEED,
        left: SIZE,
        head: Some(Bytes::from_static(BIG_HEAD.as_bytes())),
        tail: Some(Bytes::from_static(BIG_TAIL.as_bytes())),
        produced: produced.clone(),
    };
    let at_call = Arc::new(AtomicU64::new(0));
    let largest_frame = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (produced, at_call, largest_frame) =
            (produced.clone(), at_call.clone(), largest_frame.clone());
        tower::service_fn(move |request: Request<RequestBody<Generated>>| {
            at_call.store(produced.load(Ordering::SeqCst), Ordering::SeqCst);
            let largest_frame = largest_frame.clone();
            async move {
                assert!(request.headers().get("content-length").is_none());
                let mut body = request.into_body();
                // The Binary JSON, compared as it comes with the base64 made again.
                let head =
                    "{\"resourceType\":\"Binary\",\"contentType\":\"application/pdf\",\"data\":\"";
                let mut expected = head.bytes().collect::<VecDeque<u8>>();
                let mut state = SEED;
                let mut left = SIZE;
                let mut total = 0usize;
                let mut closed = false;
                while let Some(frame) = body.frame().await {
                    let data = frame.unwrap().into_data().unwrap();
                    largest_frame.fetch_max(data.len(), Ordering::SeqCst);
                    total += data.len();
                    for &byte in data.iter() {
                        if expected.is_empty() {
                            if left > 0 {
                                left -= 1;
                                expected.push_back(base64_char(&mut state));
                            } else if !closed {
                                closed = true;
                                expected.extend(b"\"}");
                            }
                        }
                        assert_eq!(Some(byte), expected.pop_front(), "at byte {total}");
                    }
                }
                assert!(
                    left == 0 && closed && expected.is_empty(),
                    "the JSON ends short"
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(total.to_string()))))
            }
        })
    };
    let read_ahead = 1 << 20;
    let response = BinaryNegotiationLayer::new()
        .layer(inner)
        .oneshot(put("/Binary/big", None, body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let total = response.into_body().collect().await.unwrap().to_bytes();
    let head = "{\"resourceType\":\"Binary\",\"contentType\":\"application/pdf\",\"data\":\"";
    assert_eq!(total, (head.len() + SIZE + 2).to_string());
    // The read-ahead held at most the limit and one frame of the client's (64 KiB) when the
    // inner service was called.
    let at_call = at_call.load(Ordering::SeqCst);
    assert!(
        at_call >= read_ahead && at_call <= read_ahead + (128 << 10),
        "{at_call}"
    );
    // What was held comes in pieces of about a frame (64 KiB), as the rest.
    let largest = largest_frame.load(Ordering::SeqCst);
    assert!(largest <= (128 << 10) + 1024, "{largest}");
    assert_eq!(
        produced.load(Ordering::SeqCst),
        (BIG_HEAD.len() + SIZE + BIG_TAIL.len()) as u64
    );
}

/// Serves the layer over `inner` with hyper on 127.0.0.1.
async fn serve<P>(layer: BinaryNegotiationLayer<P>, inner: Recorder) -> SocketAddr
where
    P: Selector + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = layer.layer(inner);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    address
}

/// Sends `head` and `body` on a new connection, then, if `close`, shuts the sending half;
/// returns the status and body of the answer (None if the connection ended without one).
async fn exchange(
    address: SocketAddr,
    head: &str,
    body: &[u8],
    close: bool,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    if close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    read.expect("the server answers or closes").ok()?;
    let text = String::from_utf8(answer).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[tokio::test]
async fn behind_a_real_server_bad_xml_never_reaches_the_inner_service() {
    let inner = Recorder::default();
    let address = serve(BinaryNegotiationLayer::new().select_all(), inner.clone()).await;
    let head = |length: usize| {
        format!("PUT /fhir/Patient/p1 HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/fhir+xml\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
    };
    // Good: the inner service gets the JSON with its exact length.
    let (status, _) = exchange(
        address,
        &head(PATIENT_XML.len()),
        PATIENT_XML.as_bytes(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(status, 201);
    let seen = inner.last();
    let body = seen.body.unwrap();
    assert_eq!(seen.content_length, Some(body.len().to_string()));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        patient_json()
    );
    // Not FHIR: 400 with an OperationOutcome, the inner service not called.
    let bad = PATIENT_XML.replace("<active value", "<activ value");
    let (status, answer) = exchange(address, &head(bad.len()), bad.as_bytes(), false)
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        answer.contains("OperationOutcome") && answer.contains("<activ>"),
        "{answer}"
    );
    // Shorter than its Content-Length, the connection closed: the inner service is not
    // called (the client may or may not still get the 400).
    let answer = exchange(
        address,
        &head(PATIENT_XML.len() + 10),
        PATIENT_XML.as_bytes(),
        true,
    )
    .await;
    if let Some((status, _)) = answer {
        assert_eq!(status, 400);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        inner.calls(),
        1,
        "only the good request reached the inner service"
    );
}
