//! One `tracing` event per request, once its response body has been sent (or given up).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::header::{HeaderValue, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::metrics::Metrics;

/// Logs every request at `INFO` with target `fhir_binary_proxy`: method, path,
/// representation, status, bytes of body sent and duration, when the response body ends.
///
/// The representation is told by comparing the response with what the upstream answered (the
/// [`Forward`](super::Forward) service below records it): `native` when the layer decoded the
/// document, `fhir-xml` when it rendered XML, `fhir-json` for FHIR JSON, `pass-through` for
/// anything else and for methods other than `GET` and `HEAD`. Without that record (a response
/// the proxy made itself) it is read off the response alone.
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let upstream = UpstreamHead::default();
        request.extensions_mut().insert(upstream.clone());
        let entry = Entry {
            upstream,
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
                let upstream = entry.upstream.take();
                entry.representation = representation(
                    &entry.method,
                    entry.status,
                    response.headers(),
                    upstream.as_ref(),
                );
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

/// The head of the upstream's answer, as far as the access log needs it: put into the request's
/// extensions by [`AccessLog`], filled in by the service that talks to the upstream.
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamHead(Arc<Mutex<Option<UpstreamSeen>>>);

#[derive(Clone, Debug)]
pub(crate) struct UpstreamSeen {
    /// Whether the upstream itself sent `X-Content-Type-Options: nosniff`.
    nosniff: bool,
}

impl UpstreamHead {
    /// Records the upstream's response headers.
    pub(crate) fn record(&self, headers: &HeaderMap) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(UpstreamSeen {
                nosniff: headers.contains_key(X_CONTENT_TYPE_OPTIONS),
            });
        }
    }

    fn take(&self) -> Option<UpstreamSeen> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// What is logged for one request.
struct Entry {
    upstream: UpstreamHead,
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

/// The representation a response carries.
fn representation(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    upstream: Option<&UpstreamSeen>,
) -> &'static str {
    if method != Method::GET && method != Method::HEAD {
        return "pass-through";
    }
    let kind = media_kind(headers.get(CONTENT_TYPE));
    match upstream {
        Some(upstream) => {
            // The layer marks every document it decodes with nosniff.
            if headers.contains_key(X_CONTENT_TYPE_OPTIONS) && !upstream.nosniff {
                "native"
            } else {
                match kind {
                    Kind::Json => "fhir-json",
                    Kind::Xml => "fhir-xml",
                    Kind::Other => "pass-through",
                }
            }
        }
        None => match kind {
            Kind::Json => "fhir-json",
            Kind::Xml => "fhir-xml",
            Kind::Other if status.is_success() || status == StatusCode::NOT_MODIFIED => "native",
            Kind::Other => "error",
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Json,
    Xml,
    Other,
}

fn media_kind(content_type: Option<&HeaderValue>) -> Kind {
    let essence = content_type
        .and_then(|v| v.to_str().ok())
        .map(crate::negotiate::essence)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/fhir+json" | "application/json+fhir" => Kind::Json,
        "application/fhir+xml" | "application/xml+fhir" => Kind::Xml,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str, nosniff: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, content_type.parse().unwrap());
        if nosniff {
            headers.insert(X_CONTENT_TYPE_OPTIONS, "nosniff".parse().unwrap());
        }
        headers
    }

    fn seen(nosniff: bool) -> UpstreamSeen {
        UpstreamSeen { nosniff }
    }

    #[test]
    fn representation_is_told_by_what_the_layer_changed() {
        let json = seen(false);
        let ok = StatusCode::OK;
        let get = Method::GET;
        let native = headers("application/pdf", true);
        assert_eq!(representation(&get, ok, &native, Some(&json)), "native");
        // A Binary whose own content type is FHIR JSON, served natively.
        let fhir_native = headers("application/fhir+json", true);
        assert_eq!(
            representation(&get, ok, &fhir_native, Some(&json)),
            "native"
        );
        let passed = headers("application/fhir+json", false);
        assert_eq!(representation(&get, ok, &passed, Some(&json)), "fhir-json");
        let xml = headers("application/fhir+xml;charset=utf-8", false);
        assert_eq!(
            representation(&Method::HEAD, ok, &xml, Some(&json)),
            "fhir-xml"
        );
        let html = headers("text/html", false);
        let page = seen(false);
        assert_eq!(representation(&get, ok, &html, Some(&page)), "pass-through");
        assert_eq!(
            representation(&Method::POST, ok, &native, Some(&json)),
            "pass-through"
        );
    }

    #[test]
    fn without_the_upstream_it_is_read_off_the_response() {
        let ok = StatusCode::OK;
        let get = Method::GET;
        assert_eq!(
            representation(&get, ok, &headers("application/pdf", true), None),
            "native"
        );
        assert_eq!(
            representation(
                &get,
                StatusCode::BAD_GATEWAY,
                &headers("application/fhir+json", false),
                None
            ),
            "fhir-json"
        );
        assert_eq!(
            representation(
                &get,
                StatusCode::BAD_GATEWAY,
                &headers("text/plain", false),
                None
            ),
            "error"
        );
    }
}
