//! A body of frames given in advance, a document cut into them, and an inner service that
//! answers with them: what the benchmarks and profiling drivers read through the layer
//! (through `searchset.rs` and `base64_forms.rs`).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tower::{service_fn, Service};

/// A body of frames given in advance, each ready at once, as a fast peer delivers them; its
/// size is not announced.
pub struct Frames(pub VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// `bytes` cut into frames of `frame` bytes (the last one shorter).
pub fn frames(bytes: &Bytes, frame: usize) -> Vec<Bytes> {
    (0..bytes.len())
        .step_by(frame)
        .map(|at| bytes.slice(at..(at + frame).min(bytes.len())))
        .collect()
}

/// The inner service: each request answered with `frames` as FHIR JSON.
pub fn inner<B>(
    frames: Vec<Bytes>,
) -> impl Service<Request<B>, Response = Response<Frames>, Error = Infallible, Future: Send> + Clone
{
    service_fn(move |_request: Request<B>| {
        let body = Frames(frames.iter().cloned().collect());
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .unwrap(),
            )
        }
    })
}
