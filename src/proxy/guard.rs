//! What the proxy refuses before anything reaches the layer or the upstream: unsafe paths,
//! methods it does not forward, a missing or doubled `Host`, a body declared too large.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::limits::Tripped;
use super::outcome::outcome_response;
use crate::FhirVersion;

/// A request the proxy answers itself, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    /// The OperationOutcome issue code.
    pub(crate) code: &'static str,
    pub(crate) reason: Cow<'static, str>,
    /// Whether the connection is closed after the answer.
    pub(crate) closes: bool,
}

impl Rejection {
    fn bad_request(reason: &'static str) -> Self {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            reason: Cow::Borrowed(reason),
            closes: false,
        }
    }
}

/// The path with its dot segments resolved (RFC 3986 5.2.4) and empty segments merged, or why
/// it is refused: a backslash, `%2e`, `%2f`, `%5c` or `%00` anywhere, a dot segment with
/// parameters (`..;x`), or `..` climbing above the root.
///
/// A path that needs no change is returned borrowed.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, Rejection> {
    if path == "*" || path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(Rejection::bad_request(
            "the request path does not start with /",
        ));
    }
    if path.contains('\\') {
        return Err(Rejection::bad_request("a backslash in the request path"));
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'%', &bytes[i..]) {
        let at = i + offset;
        let decoded = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or_else(|| Rejection::bad_request("a malformed percent-encoding in the path"))?;
        if matches!(decoded, b'.' | b'/' | b'\\' | 0) {
            return Err(Rejection::bad_request(
                "an encoded dot, slash, backslash or NUL (%2e, %2f, %5c, %00) in the request path",
            ));
        }
        i = at + 3;
    }
    if !path.contains("/.") && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = path.ends_with('/');
    for segment in path[1..].split('/') {
        let bare = segment.split(';').next().unwrap_or_default();
        if (bare == "." || bare == "..") && bare != segment {
            return Err(Rejection::bad_request(
                "a dot segment with parameters in the request path",
            ));
        }
        match segment {
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(Rejection::bad_request(
                        "the request path climbs above the root",
                    ));
                }
                trailing_slash = true;
            }
            _ => {
                out.push(segment);
                trailing_slash = path.ends_with('/');
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &out {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    Ok(Cow::Owned(normalized))
}

/// Refuses the methods the proxy never forwards: `CONNECT` and `TRACE` (405), and protocol
/// upgrades (501).
pub(crate) fn check_method(method: &Method, headers: &HeaderMap) -> Result<(), Rejection> {
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "not-supported",
            reason: Cow::Owned(format!("{method} is not forwarded")),
            closes: true,
        });
    }
    if headers.contains_key(UPGRADE) {
        return Err(Rejection {
            status: StatusCode::NOT_IMPLEMENTED,
            code: "not-supported",
            reason: Cow::Borrowed("protocol upgrades are not supported"),
            closes: true,
        });
    }
    Ok(())
}

/// An HTTP/1.1 request has exactly one well-formed `Host`; others at most one.
pub(crate) fn check_host(
    version: Version,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(), Rejection> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::bad_request("more than one Host header"));
    }
    match first {
        None if version == Version::HTTP_11 && uri.authority().is_none() => {
            Err(Rejection::bad_request("no Host header"))
        }
        Some(host)
            if host
                .to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .is_none_or(|a| a.as_str().contains('@')) =>
        {
            Err(Rejection::bad_request("a malformed Host header"))
        }
        _ => Ok(()),
    }
}

/// A declared `Content-Length` above `limit`: 413.
pub(crate) fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), Rejection> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too-costly",
            reason: Cow::Owned(format!(
                "the request body ({length} bytes) is larger than {limit} bytes"
            )),
            closes: true,
        }),
        _ => Ok(()),
    }
}

/// The size of a message head as sent in HTTP/1.1: the start line (`start`) and each header
/// line with its CRLF.
pub(crate) fn head_size(start: usize, headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + start
        + 2
}

/// A request head above `limit`: 431. (hyper's buffer limit stops a head somewhere between
/// the limit and twice it; this makes the limit exact.)
pub(crate) fn check_head_size(parts: &http::request::Parts, limit: usize) -> Result<(), Rejection> {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len() + 3)
        + parts.uri.scheme_str().map_or(0, str::len);
    let start = parts.method.as_str().len() + target + 11;
    let size = head_size(start, &parts.headers);
    if size > limit {
        return Err(Rejection {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "too-costly",
            reason: Cow::Owned(format!(
                "the request head ({size} bytes) is larger than {limit} bytes"
            )),
            closes: true,
        });
    }
    Ok(())
}

/// Everything [`check`] needs to know.
#[derive(Debug)]
pub(crate) struct GuardConfig {
    pub(crate) max_request_head: usize,
    pub(crate) max_request_body: u64,
    pub(crate) fhir_version: FhirVersion,
}

/// Runs every check on a request head; rewrites its path to the normalised one.
pub(crate) fn check(
    parts: &mut http::request::Parts,
    config: &GuardConfig,
) -> Result<(), Rejection> {
    check_head_size(parts, config.max_request_head)?;
    check_method(&parts.method, &parts.headers)?;
    check_host(parts.version, &parts.headers, &parts.uri)?;
    check_length(&parts.headers, config.max_request_body)?;
    let normalized = match normalize_path(parts.uri.path())? {
        Cow::Borrowed(same) if same == parts.uri.path() => return Ok(()),
        other => other.into_owned(),
    };
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(
        PathAndQuery::try_from(path_and_query)
            .map_err(|_| Rejection::bad_request("the request target cannot be forwarded"))?,
    );
    parts.uri = Uri::from_parts(uri)
        .map_err(|_| Rejection::bad_request("the request target cannot be forwarded"))?;
    Ok(())
}

/// Set in a request's extensions by [`Guard`]; tripped by the forwarder when the upstream
/// stalled, so that a 502 the layer made of the broken body becomes a 504.
#[derive(Clone, Debug, Default)]
pub(crate) struct StallSeen(pub(crate) Tripped);

/// The service in front of the layer that answers refused requests itself.
#[derive(Clone, Debug)]
pub(crate) struct Guard<S> {
    inner: S,
    config: Arc<GuardConfig>,
}

impl<S> Guard<S> {
    pub(crate) fn new(inner: S, config: GuardConfig) -> Self {
        Guard {
            inner,
            config: Arc::new(config),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Guard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        if let Err(rejection) = check(&mut parts, &self.config) {
            tracing::info!(
                target: "fhir_binary_proxy",
                method = %parts.method,
                status = rejection.status.as_u16(),
                reason = %rejection.reason,
                "rejected"
            );
            let mut response = outcome_response(
                rejection.status,
                rejection.code,
                &rejection.reason,
                self.config.fhir_version,
                Full::new,
            );
            if rejection.status == StatusCode::METHOD_NOT_ALLOWED {
                response.headers_mut().insert(
                    ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            if rejection.closes && parts.version < Version::HTTP_2 {
                // What the client sends next may be another protocol, or a body not wanted.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            return GuardFuture {
                inner: None,
                stall: None,
                rejected: Some(response),
            };
        }
        let stall = StallSeen::default();
        parts.extensions.insert(stall.clone());
        GuardFuture {
            inner: Some(self.inner.call(Request::from_parts(parts, body))),
            stall: Some(stall),
            rejected: None,
        }
    }
}

pin_project! {
    /// The response future of [`Guard`].
    pub(crate) struct GuardFuture<F> {
        #[pin]
        inner: Option<F>,
        stall: Option<StallSeen>,
        rejected: Option<Response<Full<Bytes>>>,
    }
}

impl<F, B> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(rejected) = this.rejected.take() {
            return Poll::Ready(Ok(rejected.map(Either::Right)));
        }
        let inner = this.inner.as_pin_mut().expect("polled after completion");
        let Ok(mut response) = ready!(inner.poll(cx));
        let stalled = this.stall.as_ref().is_some_and(|s| s.0.is_tripped());
        if stalled && response.status() == StatusCode::BAD_GATEWAY {
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        }
        Poll::Ready(Ok(response.map(Either::Left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, StatusCode> {
        normalize_path(path)
            .map(Cow::into_owned)
            .map_err(|r| r.status)
    }

    #[test]
    fn clean_paths_are_borrowed_unchanged() {
        for path in ["/", "/Binary/1", "/Binary/1/_history/2", "/a%20b", "/x.y"] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
        assert_eq!(normal("/x.y/.z/..z"), Ok("/x.y/.z/..z".into()));
        assert_eq!(normal("*"), Ok("/".into()));
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normal("/a/./b"), Ok("/a/b".into()));
        assert_eq!(normal("/a/b/../c"), Ok("/a/c".into()));
        assert_eq!(normal("/a/b/.."), Ok("/a/".into()));
        assert_eq!(normal("/a/b/."), Ok("/a/b/".into()));
        assert_eq!(normal("/a/.."), Ok("/".into()));
        assert_eq!(normal("//host/x"), Ok("/host/x".into()));
        assert_eq!(normal("/a//b/"), Ok("/a/b/".into()));
        assert_eq!(normal("/Binary;/../x"), Ok("/x".into()));
        assert_eq!(normal("/.well-known/x"), Ok("/.well-known/x".into()));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for path in [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/..%2fadmin",
            "/..%2Fadmin",
            "/..%5cadmin",
            "/..\\admin",
            "/a\\b",
            "/a/..;/..;/admin",
            "/a/.;x/b",
            "/a%00b",
            "/a%zz",
            "/a%2",
            "relative",
        ] {
            assert_eq!(normal(path), Err(StatusCode::BAD_REQUEST), "{path}");
        }
    }

    #[test]
    fn methods() {
        let none = HeaderMap::new();
        assert!(check_method(&Method::GET, &none).is_ok());
        assert!(check_method(&Method::DELETE, &none).is_ok());
        assert_eq!(
            check_method(&Method::CONNECT, &none).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            check_method(&Method::TRACE, &none).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let mut upgrade = HeaderMap::new();
        upgrade.insert(UPGRADE, "websocket".parse().unwrap());
        assert_eq!(
            check_method(&Method::GET, &upgrade).unwrap_err().status,
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn hosts() {
        let path: Uri = "/x".parse().unwrap();
        let mut one = HeaderMap::new();
        one.insert(HOST, "example.org:8080".parse().unwrap());
        assert!(check_host(Version::HTTP_11, &one, &path).is_ok());
        assert!(check_host(Version::HTTP_11, &HeaderMap::new(), &path).is_err());
        assert!(check_host(Version::HTTP_10, &HeaderMap::new(), &path).is_ok());
        let absolute: Uri = "http://h/x".parse().unwrap();
        assert!(check_host(Version::HTTP_2, &HeaderMap::new(), &absolute).is_ok());
        let mut two = one.clone();
        two.append(HOST, "evil.example".parse().unwrap());
        assert!(check_host(Version::HTTP_11, &two, &path).is_err());
        for junk in ["a b", "user@evil", ""] {
            let mut bad = HeaderMap::new();
            bad.insert(HOST, junk.parse().unwrap());
            assert!(check_host(Version::HTTP_11, &bad, &path).is_err(), "{junk}");
        }
    }

    #[test]
    fn head_sizes_are_counted_as_sent() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "h".parse().unwrap());
        // "GET / HTTP/1.1\r\n" + "host: h\r\n" + "\r\n"
        assert_eq!(head_size(16, &headers), 16 + 9 + 2);
        let request = Request::get("/x").header("host", "h").body(()).unwrap();
        let (parts, ()) = request.into_parts();
        assert!(check_head_size(&parts, 30).is_ok());
        assert_eq!(
            check_head_size(&parts, 20).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn declared_lengths() {
        let mut headers = HeaderMap::new();
        assert!(check_length(&headers, 10).is_ok());
        headers.insert(CONTENT_LENGTH, "10".parse().unwrap());
        assert!(check_length(&headers, 10).is_ok());
        headers.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(
            check_length(&headers, 10).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
