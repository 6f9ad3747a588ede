//! The proxy's own endpoints for operators: liveness, readiness (the upstream answers
//! `GET [base]/metadata`), Prometheus metrics. Never forwarded.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::forward::Forward;
use super::metrics::Metrics;

/// Where the endpoints are; an empty path turns one off.
#[derive(Clone, Debug)]
pub(crate) struct OpsConfig {
    pub(crate) health_path: String,
    pub(crate) ready_path: String,
    pub(crate) metrics_path: String,
    pub(crate) ready_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Ready,
    Metrics,
}

/// Answers the operators' endpoints, passes everything else to `inner`.
#[derive(Clone, Debug)]
pub(crate) struct Ops<S> {
    inner: S,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: OpsConfig,
    forward: Forward,
    metrics: Arc<Metrics>,
}

impl<S> Ops<S> {
    pub(crate) fn new(
        inner: S,
        config: OpsConfig,
        forward: Forward,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ops {
            inner,
            shared: Arc::new(Shared {
                config,
                forward,
                metrics,
            }),
        }
    }
}

impl Shared {
    fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let config = &self.config;
        [
            (&config.health_path, Endpoint::Health),
            (&config.ready_path, Endpoint::Ready),
            (&config.metrics_path, Endpoint::Metrics),
        ]
        .into_iter()
        .find(|(p, _)| !p.is_empty() && p.as_str() == path)
        .map(|(_, e)| e)
    }

    async fn answer(&self, endpoint: Endpoint, method: Method) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match endpoint {
            Endpoint::Health => text(StatusCode::OK, "ok\n"),
            Endpoint::Ready => match self.upstream_ready().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            Endpoint::Metrics => {
                let mut response = text(StatusCode::OK, &self.metrics.encode());
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
        }
    }

    /// Whether the upstream answers `GET [base]/metadata` with a success in time.
    async fn upstream_ready(&self) -> Result<(), String> {
        let request = Request::get("/metadata")
            .header("accept", "application/fhir+json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let mut forward = self.forward.clone();
        let timeout = self.config.ready_timeout;
        match tokio::time::timeout(timeout, forward.call(request)).await {
            Err(_) => Err(format!("the upstream did not answer within {timeout:?}")),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!(
                "the upstream answered {} to GET [base]/metadata",
                response.status()
            )),
            Ok(Err(never)) => match never {},
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Ops<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = Infallible;
    type Future = OpsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.shared.endpoint(request.uri().path()) {
            None => OpsFuture {
                inner: Some(self.inner.call(request)),
                answer: None,
            },
            Some(endpoint) => {
                let shared = Arc::clone(&self.shared);
                let method = request.method().clone();
                OpsFuture {
                    inner: None,
                    answer: Some(Box::pin(
                        async move { shared.answer(endpoint, method).await },
                    )),
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`Ops`]: the inner service's, or the proxy's own answer.
    pub(crate) struct OpsFuture<F> {
        #[pin]
        inner: Option<F>,
        answer: Option<Answer>,
    }
}

impl<F, B> Future for OpsFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(answer) = this.answer.as_mut() {
            let response = ready!(answer.as_mut().poll(cx));
            return Poll::Ready(Ok(response.map(Either::Right)));
        }
        let inner = this.inner.as_pin_mut().expect("polled after completion");
        let Ok(response) = ready!(inner.poll(cx));
        Poll::Ready(Ok(response.map(Either::Left)))
    }
}
