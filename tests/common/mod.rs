//! Shared test support: a legacy inner service that answers with a given Binary JSON cut into
//! given frames, and helpers to read what a client gets.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tower::{Service, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, BoxError, NegotiatedBody};
use tower_layer::Layer;

/// The published bytes of the official fixtures.
pub const PDF_LEN: usize = 130068;
pub const PDF_SHA256: &str = "26a4fe4dbef2c9229adbf4da955a341e1a8223ed572fa70241eca80ee429a164";
pub const JPEG_LEN: usize = 26626;
pub const JPEG_SHA256: &str = "a07f396868608c9d104fbce8af2c5ddb32709f4814ec666c5faaf68d7ae0e4e5";

pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The bytes of base64 text that may have whitespace in it (as the official fixtures and
/// FHIR's base64Binary allow).
pub fn decode_base64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A deterministic generator (xorshift64*), so random splits are the same on every run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// How to cut a body into frames.
#[derive(Clone, Debug)]
pub enum Split {
    Whole,
    Every(usize),
    /// Cut at `cuts` random points.
    Random {
        seed: u64,
        cuts: usize,
    },
}

pub fn split(bytes: &[u8], how: &Split) -> Vec<Bytes> {
    let bytes = Bytes::copy_from_slice(bytes);
    match *how {
        Split::Whole => vec![bytes],
        Split::Every(n) => bytes.chunks(n).map(Bytes::copy_from_slice).collect(),
        Split::Random { seed, cuts } => {
            let mut rng = Rng::new(seed);
            let mut points: Vec<usize> = (0..cuts).map(|_| rng.below(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            points.dedup();
            points.windows(2).map(|w| bytes.slice(w[0]..w[1])).collect()
        }
    }
}

/// The splits every Binary test runs with: whole, every byte, and random points.
pub fn splits(len: usize) -> Vec<Split> {
    let mut all = vec![
        Split::Whole,
        Split::Every(1),
        Split::Every(7),
        Split::Every(4096),
    ];
    for seed in 1..=8 {
        all.push(Split::Random {
            seed,
            cuts: 1 + (seed as usize * 37) % len.clamp(1, 400),
        });
    }
    all
}

/// A body that yields the given frames, then maybe an error; its size is announced only when
/// asked (a legacy server behind a proxy usually streams chunked).
pub struct Frames {
    frames: VecDeque<Bytes>,
    error_at_end: Option<String>,
    exact: Option<u64>,
}

#[derive(Debug)]
pub struct UpstreamError(pub String);

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpstreamError {}

impl Frames {
    pub fn new(frames: Vec<Bytes>) -> Self {
        Frames {
            frames: frames.into(),
            error_at_end: None,
            exact: None,
        }
    }

    pub fn with_exact_size(mut self) -> Self {
        self.exact = Some(self.frames.iter().map(|f| f.len() as u64).sum());
        self
    }

    pub fn failing_after(mut self, message: &str) -> Self {
        self.error_at_end = Some(message.to_owned());
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        Poll::Ready(self.error_at_end.take().map(|m| Err(UpstreamError(m))))
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// What the inner service saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub requests: Arc<Mutex<Vec<(http::Method, http::Uri, HeaderMap)>>>,
}

/// A legacy inner service answering every request with `status`, `content_type` and the
/// body made by `body`.
#[derive(Clone)]
pub struct Legacy {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Arc<dyn Fn() -> Frames + Send + Sync>,
    pub seen: Seen,
}

impl Legacy {
    pub fn binary(json: Vec<u8>, how: Split) -> Self {
        Self::new(StatusCode::OK, "application/fhir+json", move || {
            Frames::new(split(&json, &how))
        })
    }

    pub fn new(
        status: StatusCode,
        content_type: &str,
        body: impl Fn() -> Frames + Send + Sync + 'static,
    ) -> Self {
        Legacy {
            status,
            content_type: content_type.to_owned(),
            body: Arc::new(body),
            seen: Seen::default(),
        }
    }
}

impl<B> Service<Request<B>> for Legacy {
    type Response = Response<Frames>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Frames>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.seen.requests.lock().unwrap().push((
            request.method().clone(),
            request.uri().clone(),
            request.headers().clone(),
        ));
        let mut builder = Response::builder().status(self.status);
        if !self.content_type.is_empty() {
            builder = builder.header("content-type", &self.content_type);
        }
        std::future::ready(Ok(builder.body((self.body)()).unwrap()))
    }
}

/// What a client got.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, BoxError>,
}

impl Got {
    pub fn bytes(&self) -> &Bytes {
        match &self.body {
            Ok(bytes) => bytes,
            Err(e) => panic!("body failed: {e}"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("a JSON body")
    }

    /// The diagnostics of an OperationOutcome body.
    pub fn diagnostics(&self) -> String {
        let json = self.json();
        assert_eq!(json["resourceType"], "OperationOutcome", "{json}");
        json["issue"][0]["diagnostics"].as_str().unwrap().to_owned()
    }
}

/// Checks that a client got 502 with an OperationOutcome whose diagnostics say the inner
/// answer was not a valid Binary, and contain `text`.
pub fn assert_bad_gateway(got: &Got, text: &str, context: &str) {
    assert_eq!(
        got.status,
        StatusCode::BAD_GATEWAY,
        "{context}: {:?}",
        got.body
    );
    assert_eq!(
        got.header("content-type"),
        Some("application/fhir+json;charset=utf-8"),
        "{context}"
    );
    assert_eq!(got.header("vary"), Some("Accept"), "{context}");
    let diagnostics = got.diagnostics();
    assert!(diagnostics.contains(text), "{context}: {diagnostics}");
    assert!(
        diagnostics.starts_with("the inner service did not answer with a valid FHIR Binary: "),
        "{context}: {diagnostics}"
    );
}

pub async fn read(response: Response<NegotiatedBody<Frames>>) -> Got {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes());
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn request(
    method: &str,
    uri: &str,
    accept: &[&str],
) -> Request<http_body_util::Empty<bytes::Bytes>> {
    let mut builder = Request::builder().method(method).uri(uri);
    for accept in accept {
        builder = builder.header("accept", *accept);
    }
    builder.body(http_body_util::Empty::new()).unwrap()
}

/// One request through the layer in front of `legacy`.
pub async fn call(
    layer: &BinaryNegotiationLayer,
    legacy: Legacy,
    request: Request<http_body_util::Empty<bytes::Bytes>>,
) -> Got {
    let response = layer.layer(legacy).oneshot(request).await.unwrap();
    read(response).await
}

/// A GET with no Accept, through the default layer.
pub async fn get(json: &[u8], how: Split) -> Got {
    call(
        &BinaryNegotiationLayer::new(),
        Legacy::binary(json.to_vec(), how),
        request("GET", "/Binary/x", &[]),
    )
    .await
}

/// Validates `xml` against the official schema of `version` (`r4`, `stu3`, `dstu2`) with
/// xmllint, failing the test with xmllint's message when it is not valid.
pub fn assert_schema_valid(xml: &[u8], version: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let schema = format!(
        "{}/tests/fixtures/xsd/{version}/fhir-single.xsd",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = Command::new("xmllint")
        .args(["--noout", "--schema", &schema, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xmllint is needed for the FHIR XML tests: apt-get install libxml2-utils");
    child.stdin.take().unwrap().write_all(xml).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not valid against the {version} schema: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&xml[..xml.len().min(2000)])
    );
}

/// A client body in the frames given, of unknown length, failing at the end if asked.
pub struct PacedFrames {
    pub frames: VecDeque<Bytes>,
    pub fail_at_end: bool,
    /// Each frame is ready only on the second poll: the frames before it go out meanwhile,
    /// as they would over a network.
    ready: bool,
}

impl PacedFrames {
    pub fn new(frames: impl IntoIterator<Item = Bytes>) -> Self {
        PacedFrames {
            frames: frames.into_iter().collect(),
            fail_at_end: false,
            ready: false,
        }
    }
}

impl Body for PacedFrames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.ready = !self.ready;
        if !self.ready {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(match self.frames.pop_front() {
            Some(frame) => Some(Ok(Frame::data(frame))),
            None if self.fail_at_end => {
                self.fail_at_end = false;
                Some(Err(std::io::Error::other("the client went away")))
            }
            None => None,
        })
    }
}

/// `bytes` cut at `cuts` random points.
pub fn paced_split(bytes: &[u8], rng: &mut Rng, cuts: usize) -> PacedFrames {
    let mut points: Vec<usize> = (0..cuts).map(|_| rng.below(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut frames = VecDeque::new();
    let mut from = 0;
    for point in points.into_iter().chain([bytes.len()]) {
        frames.push_back(Bytes::copy_from_slice(&bytes[from..point]));
        from = point;
    }
    PacedFrames::new(frames)
}
