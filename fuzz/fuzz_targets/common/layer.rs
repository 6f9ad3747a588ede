#![allow(dead_code)]

//! One request through the layer on every route (`select_all`), in front of an inner service
//! and a client body that never wait, driven to the end without a runtime.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower_fhir_binary::{AllRequests, BinaryNegotiationLayer, FhirVersion, RequestBody};
use tower_layer::Layer;
use tower_service::Service;

pub const VERSIONS: [FhirVersion; 5] = [
    FhirVersion::Dstu2,
    FhirVersion::Stu3,
    FhirVersion::R4,
    FhirVersion::R4B,
    FhirVersion::R5,
];

/// `bytes` in frames ending at `ends`, then the end (its size announced if `exact`).
pub struct Frames {
    frames: VecDeque<Bytes>,
    exact: Option<u64>,
}

impl Frames {
    pub fn new(bytes: &[u8], ends: &[usize], exact: bool) -> Frames {
        let all = Bytes::copy_from_slice(bytes);
        let mut frames = VecDeque::new();
        let mut start = 0;
        for &end in ends.iter().chain([&bytes.len()]) {
            if end > start && end <= bytes.len() {
                frames.push_back(all.slice(start..end));
                start = end;
            }
        }
        Frames {
            frames,
            exact: exact.then_some(bytes.len() as u64),
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frames.pop_front().map(|f| Ok(Frame::data(f))))
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Frame ends for `len` bytes, cut where `seed` says, no frame longer than `max_frame`.
pub fn cuts(seed: &[u8], len: usize, max_frame: usize) -> Vec<usize> {
    let mut ends: Vec<usize> = seed
        .chunks(2)
        .map(|c| usize::from(c[0]) << 8 | usize::from(*c.get(1).unwrap_or(&0)))
        .map(|n| n * (len + 1) / 65536)
        .collect();
    ends.sort_unstable();
    let mut all = Vec::new();
    let mut from = 0;
    for end in ends.into_iter().chain([len]) {
        while end - from > max_frame {
            from += max_frame;
            all.push(from);
        }
        if end > from {
            all.push(end);
            from = end;
        }
    }
    all
}

/// What the client got; the body only when kept.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
    /// The body failed after `body`.
    pub error: Option<String>,
}

fn now<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the layer waited on parts that never wait"),
    }
}

/// Reads `body` to its end: its bytes (if `keep`), or its error.
fn read<B: Body<Data = Bytes>>(body: B, keep: bool) -> (Vec<u8>, Option<String>)
where
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Ok(data), true) = (frame.into_data(), keep) {
                    bytes.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => return (bytes, Some(e.to_string())),
            Poll::Ready(None) => return (bytes, None),
            Poll::Pending => panic!("a body that never waits made the reader wait"),
        }
    }
}

fn got<B: Body<Data = Bytes>>(response: Response<B>, keep: bool) -> Got
where
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let (body, error) = read(body, keep);
    Got {
        status: parts.status,
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
        body,
        error,
    }
}

/// `GET [uri]` through `layer`, the inner service answering `status` with FHIR JSON `frames`.
pub fn get(
    layer: &BinaryNegotiationLayer<AllRequests>,
    uri: &str,
    status: StatusCode,
    frames: Frames,
    keep: bool,
) -> Got {
    // Shared, so that the inner service is `Clone` as the layer asks.
    let frames = Arc::new(Mutex::new(Some(frames)));
    let inner = tower::service_fn(
        move |_: Request<RequestBody<http_body_util::Empty<Bytes>>>| {
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/fhir+json")
                .body(frames.lock().unwrap().take().expect("one request"))
                .unwrap();
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        },
    );
    let mut service = layer.clone().layer(inner);
    let request = Request::get(uri)
        .body(http_body_util::Empty::new())
        .unwrap();
    match now(service.call(request)) {
        Ok(response) => got(response, keep),
        Err(never) => match never {},
    }
}

/// What the inner service read of a request body: the bytes (if kept) and the media type it
/// was labelled with, or the body's error.
#[derive(Debug)]
pub struct Read {
    pub content_type: String,
    pub body: Result<Vec<u8>, String>,
}

/// `PUT [uri]` of `frames` labelled `content_type` through `layer`; the inner service reads
/// the whole body and answers 201 with an OperationOutcome. `None`: it was not called.
pub fn put(
    layer: &BinaryNegotiationLayer<AllRequests>,
    uri: &str,
    content_type: &str,
    frames: Frames,
    keep: bool,
) -> (Option<Read>, Got) {
    let seen: Arc<Mutex<Option<Read>>> = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |request: Request<RequestBody<Frames>>| {
            let content_type = request
                .headers()
                .get("content-type")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let (bytes, error) = read(request.into_body(), keep);
            *seen.lock().unwrap() = Some(Read {
                content_type,
                body: match error {
                    None => Ok(bytes),
                    Some(e) => Err(e),
                },
            });
            let outcome = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#;
            let response = Response::builder()
                .status(StatusCode::CREATED)
                .header("content-type", "application/fhir+json")
                .body(Frames::new(outcome, &[], true))
                .unwrap();
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        })
    };
    let mut service = layer.clone().layer(inner);
    let request = Request::put(uri)
        .header("content-type", content_type)
        .body(frames)
        .unwrap();
    let answer = match now(service.call(request)) {
        Ok(response) => got(response, keep),
        Err(never) => match never {},
    };
    let read = seen.lock().unwrap().take();
    (read, answer)
}
