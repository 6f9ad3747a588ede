//! Raw uploads. A client `PUT`s bytes to the Binary endpoint with a random `Content-Type`,
//! `X-Security-Context`, announced length, size limit and release, sends all of them or a
//! prefix in random frames, and may fail at the end. Whatever the inner service reads is either
//! a body that fails, or, once complete, a valid Binary JSON whose payload is exactly the bytes
//! sent, as many as announced, within the limit, with the `contentType` sent: never a valid
//! Binary of other bytes. A refused upload never reaches the inner service.
//!
//! The first eight bytes choose the headers, the limit, the announced length, how much is sent
//! and where the frames are cut; the rest is the document.
#![no_main]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, Service};
use tower_fhir_binary::{BinaryNegotiationLayer, BoxError, FhirVersion, RequestBody};

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

use oracle::gen::{cuts, Rng};
use oracle::now;

const CONTENT_TYPES: [&str; 8] = [
    "application/pdf",
    "text/xml",
    "image/png; q=1",
    "application/fhir+json",
    "application/xml",
    "pdf",
    "text/plain; charset=\"a\u{8e}b\"",
    "",
];
const CONTEXTS: [&str; 4] = ["Patient/1", "urn:uuid:1-2", "bad context", ""];
const VERSIONS: [FhirVersion; 5] = [
    FhirVersion::Dstu2,
    FhirVersion::Stu3,
    FhirVersion::R4,
    FhirVersion::R4B,
    FhirVersion::R5,
];

/// An upload in frames that may end early, or fail.
struct Upload {
    frames: VecDeque<Bytes>,
    fail: bool,
}

impl Body for Upload {
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

/// Reads a body that never waits to its end: its bytes, or its error.
fn read(mut body: RequestBody<Upload>) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => return Err(e.to_string()),
            Poll::Ready(None) => return Ok(bytes),
            Poll::Pending => panic!("an upload that never waits made the body wait"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, e, f, seed, g, document @ ..] = data else {
        return;
    };
    let n = document.len();
    let content_type = CONTENT_TYPES[usize::from(*a) % CONTENT_TYPES.len()];
    let context = CONTEXTS[usize::from(*b) % CONTEXTS.len()];
    let version = VERSIONS[usize::from(*g) % VERSIONS.len()];
    let max = match c % 4 {
        0 => u64::from(*c) * n as u64 / 255,
        _ => 1 << 30,
    };
    let announced = match d % 4 {
        0 => None,
        1 => Some(n.saturating_sub(1 + usize::from(*d >> 2) % 3)),
        2 => Some(n + 1 + usize::from(*d >> 2) % 3),
        _ => Some(n),
    };
    let sent = match e % 3 {
        0 => usize::from(*e) * n / 255,
        _ => n,
    };
    let fail = f % 5 == 0;
    let mut ends = cuts(&mut Rng::new(u64::from(*seed)), sent);
    ends.retain(|&end| end <= sent);
    let mut frames = VecDeque::new();
    let mut start = 0;
    for end in ends.into_iter().chain([sent]) {
        if end > start {
            frames.push_back(Bytes::copy_from_slice(&document[start..end]));
            start = end;
        }
    }

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
    let request = request.body(Upload { frames, fail }).unwrap();

    let seen: Arc<Mutex<Option<Result<Vec<u8>, String>>>> = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |request: Request<RequestBody<Upload>>| {
            *seen.lock().unwrap() = Some(read(request.into_body()));
            std::future::ready(Ok::<_, Infallible>(
                Response::builder()
                    .status(201)
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap(),
            ))
        })
    };
    let mut service = BinaryNegotiationLayer::new()
        .fhir_version(version)
        .max_upload_size(max)
        .layer(inner);
    let response = now(service.call(request)).unwrap();

    let Some(received) = seen.lock().unwrap().take() else {
        assert!(
            response.status().is_client_error(),
            "an upload the inner service never saw: {}",
            response.status()
        );
        return;
    };
    let Ok(json) = received else {
        return; // The body failed: nothing can be stored.
    };
    if content_type.starts_with("application/fhir+json") {
        assert_eq!(&json[..], &document[..sent], "FHIR JSON is passed on untouched");
        return;
    }
    let value: serde_json::Value =
        serde_json::from_slice(&json).expect("a complete body is a JSON document");
    assert_eq!(value["resourceType"], "Binary");
    let payload = match version {
        FhirVersion::Dstu2 | FhirVersion::Stu3 => "content",
        _ => "data",
    };
    let stored = value.get(payload).map_or_else(Vec::new, |text| {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_str().expect("base64 text"))
            .expect("valid base64")
    });
    assert_eq!(stored, &document[..sent], "a complete Binary of other bytes");
    assert!(!fail, "a failed upload completed");
    assert!(announced.is_none_or(|a| a == sent), "not the announced length");
    assert!(sent as u64 <= max, "over the limit");
    assert_eq!(value["contentType"], content_type);
    assert_eq!(value["id"], "r-1");
});
