//! One `tracing` event per request, once its response body has been sent (or given up).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

/// Logs every request at `INFO` with target `fhir_binary_proxy`: method, path,
/// representation, status, bytes of body sent and duration, when the response body ends.
///
/// The representation is read off the response: `fhir-json` or `fhir-xml` when it carries a
/// FHIR media type, `native` for any other successful answer to `GET` or `HEAD`, `error` for
/// any other failed one, and `pass-through` for the other methods.
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S> AccessLog<S> {
    /// Logs the requests `inner` serves.
    pub fn new(inner: S) -> Self {
        AccessLog { inner }
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
        };
        AccessLogFuture {
            future: self.inner.call(request),
            entry: Some(entry),
        }
    }
}

pin_project! {
    /// The response future of [`AccessLog`].
    pub struct AccessLogFuture<F> {
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
                entry.representation =
                    representation(&entry.method, entry.status, response.headers());
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
    pub struct AccessLogBody<B> {
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
}

impl Entry {
    fn log(&mut self) {
        if self.logged {
            return;
        }
        self.logged = true;
        let duration = self.start.elapsed();
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

/// The representation a response carries, read off its head.
fn representation(method: &Method, status: StatusCode, headers: &HeaderMap) -> &'static str {
    if method != Method::GET && method != Method::HEAD {
        return "pass-through";
    }
    let essence = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/fhir+json" | "application/json+fhir" => "fhir-json",
        "application/fhir+xml" | "application/xml+fhir" => "fhir-xml",
        _ if status.is_success() || status == StatusCode::NOT_MODIFIED => "native",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representation_is_read_off_the_response() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/pdf".parse().unwrap());
        assert_eq!(
            representation(&Method::GET, StatusCode::OK, &headers),
            "native"
        );
        assert_eq!(
            representation(&Method::POST, StatusCode::OK, &headers),
            "pass-through"
        );
        headers.insert(
            CONTENT_TYPE,
            "application/fhir+xml;charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            representation(&Method::HEAD, StatusCode::OK, &headers),
            "fhir-xml"
        );
        headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            representation(&Method::GET, StatusCode::BAD_GATEWAY, &headers),
            "error"
        );
    }
}
