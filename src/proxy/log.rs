//! One `tracing` event per request, once its response body has been sent (or given up).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::metrics::Metrics;
use crate::{Negotiation, Representation};

/// Logs every request at `INFO` with target `fhir_binary_proxy`: method, path,
/// representation, status, bytes of body sent and duration, when the response body ends.
///
/// The representation is what the negotiation layer recorded in the response's extensions
/// ([`Negotiation`]): `native`, `fhir-json` or `fhir-xml` for a representation it served,
/// `passed-through` for an upstream answer it passed on as it came (an OperationOutcome, a
/// Bundle, a 304), `not-negotiated` for a request it did not negotiate, `not-acceptable`,
/// `refused` and `bad-gateway` for its own 406, refused writes (4xx) and 502; `proxy` for an
/// answer that did not go through the layer.
#[derive(Clone, Debug)]
pub(crate) struct AccessLog<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S> AccessLog<S> {
    /// Logs the requests `inner` serves, and counts them in `metrics`.
    pub(crate) fn new(inner: S, metrics: Option<Arc<Metrics>>) -> Self {
        AccessLog { inner, metrics }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<AccessLogBody<ResBody>>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let entry = Entry {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            start: Instant::now(),
            representation: "",
            status: StatusCode::OK,
            bytes: 0,
            expected: None,
            complete: false,
            logged: false,
            metrics: self.metrics.clone(),
        };
        AccessLogFuture {
            future: self.inner.call(request),
            entry: Some(entry),
        }
    }
}

pin_project! {
    /// The response future of [`AccessLog`].
    pub(crate) struct AccessLogFuture<F> {
        #[pin]
        future: F,
        entry: Option<Entry>,
    }
}

impl<F, B, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<AccessLogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let mut entry = this.entry.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                entry.status = response.status();
                entry.representation = representation(response.extensions().get());
                entry.expected = response.body().size_hint().exact();
                Ok(response.map(|body| AccessLogBody { body, entry }))
            }
            Err(e) => {
                entry.representation = "failed";
                entry.status = StatusCode::INTERNAL_SERVER_ERROR;
                drop(entry);
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body of [`AccessLog`]: the inner body, counted; the request is logged when
    /// it ends or is dropped.
    pub(crate) struct AccessLogBody<B> {
        #[pin]
        body: B,
        entry: Entry,
    }
}

impl<B> Body for AccessLogBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut body = this.body;
        let frame = ready!(body.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.entry.bytes += data.remaining() as u64;
                }
                // Servers stop polling once the body says it has ended.
                if body.is_end_stream() {
                    this.entry.complete = true;
                }
            }
            Some(Err(_)) => this.entry.log(),
            None => {
                this.entry.complete = true;
                this.entry.log();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What is logged for one request.
struct Entry {
    method: Method,
    path: String,
    start: Instant,
    representation: &'static str,
    status: StatusCode,
    bytes: u64,
    /// The body's size, when known in advance.
    expected: Option<u64>,
    /// Whether the body was seen to end.
    complete: bool,
    logged: bool,
    metrics: Option<Arc<Metrics>>,
}

impl Entry {
    fn log(&mut self) {
        if self.logged {
            return;
        }
        self.logged = true;
        let duration = self.start.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.request(
                &self.method,
                self.representation,
                self.status.as_u16(),
                self.bytes,
                duration,
            );
        }
        tracing::info!(
            target: "fhir_binary_proxy",
            method = %self.method,
            path = %self.path,
            representation = self.representation,
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_ms = millis(duration),
            complete = self.complete
                || self.method == Method::HEAD
                || self.expected == Some(self.bytes),
            "request"
        );
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.log();
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// The name the log and the metrics give what the layer did.
fn representation(negotiation: Option<&Negotiation>) -> &'static str {
    match negotiation {
        Some(Negotiation::Served(Representation::Native)) => "native",
        Some(Negotiation::Served(Representation::FhirJson)) => "fhir-json",
        Some(Negotiation::Served(Representation::FhirXml)) => "fhir-xml",
        Some(Negotiation::PassedThrough) => "passed-through",
        Some(Negotiation::NotAcceptable) => "not-acceptable",
        Some(Negotiation::Refused) => "refused",
        Some(Negotiation::BadGateway) => "bad-gateway",
        Some(Negotiation::NotNegotiated) => "not-negotiated",
        None => "proxy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_has_its_own_name() {
        let names = [
            representation(Some(&Negotiation::Served(Representation::Native))),
            representation(Some(&Negotiation::Served(Representation::FhirJson))),
            representation(Some(&Negotiation::Served(Representation::FhirXml))),
            representation(Some(&Negotiation::PassedThrough)),
            representation(Some(&Negotiation::NotAcceptable)),
            representation(Some(&Negotiation::Refused)),
            representation(Some(&Negotiation::BadGateway)),
            representation(Some(&Negotiation::NotNegotiated)),
            representation(None),
        ];
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(names[0], "native");
        assert_eq!(names[8], "proxy");
    }
}
