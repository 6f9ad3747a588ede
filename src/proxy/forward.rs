//! The forwarding service: every request to the upstream, every response back.

use std::convert::Infallible;
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_LOCATION, CONTENT_TYPE, HOST, LOCATION,
};
use http::response::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_http::decompression::{Decompression, DecompressionLayer};
use tower_layer::Layer;
use tower_service::Service;

use super::guard::{head_size, StallSeen};
use super::headers::{
    add_forwarded, client_host, remove_hop_by_hop, AllowedHosts, Rebase, TrustedProxies,
};
use super::limits::{
    CompressedBytes, CountedBody, InflateLimitBody, InflateLimits, LimitedBody, StallBody, Tripped,
    UpstreamStalled,
};
use super::metrics::Metrics;
use super::outcome::outcome_response;
use super::rewrite::{json_escaped, UrlRewriter};
use super::rewrite_body::RewrittenBody;
use super::server::ConnInfo;
use super::tls;
use super::ProxyOptions;
use crate::{BoxError, FhirVersion};

/// The body of the forwarder's responses (and of the requests it sends on).
pub(crate) type ForwardBody = UnsyncBoxBody<Bytes, BoxError>;

type CountedResponse = Response<CountedBody<hyper::body::Incoming>>;

/// The upstream client: hyper's, its bodies counted as received when compressed, then
/// decompressed.
type UpstreamClient = Decompression<
    tower::util::MapResponse<
        Client<HttpsConnector<HttpConnector>, ForwardBody>,
        fn(Response<hyper::body::Incoming>) -> CountedResponse,
    >,
>;

type UpstreamResponse =
    Response<tower_http::decompression::DecompressionBody<CountedBody<hyper::body::Incoming>>>;

/// Counts the body as received when the upstream compressed it.
fn count_compressed(response: Response<hyper::body::Incoming>) -> CountedResponse {
    let (mut parts, body) = response.into_parts();
    let counter = parts
        .headers
        .contains_key(http::header::CONTENT_ENCODING)
        .then(CompressedBytes::default);
    if let Some(counter) = &counter {
        parts.extensions.insert(counter.clone());
    }
    Response::from_parts(parts, CountedBody::new(body, counter))
}

type UpstreamFuture = Pin<
    Box<dyn Future<Output = Result<UpstreamResponse, hyper_util::client::legacy::Error>> + Send>,
>;

/// Forwards every request to the upstream FHIR server and returns its answer; answers 502 or
/// 504 with an OperationOutcome itself when the upstream cannot be reached or is too slow.
///
/// This is the inner service of the proxy, below
/// [`BinaryNegotiationLayer`](crate::BinaryNegotiationLayer). It never fails.
#[derive(Clone, Debug)]
pub(crate) struct Forward {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: UpstreamClient,
    scheme: Scheme,
    authority: http::uri::Authority,
    /// `Basic` credentials from the upstream URL's user info, sent when the client sends none.
    authorization: Option<HeaderValue>,
    /// The upstream base path, without a trailing slash.
    base_path: String,
    rebase: Rebase,
    public_base: Option<String>,
    /// The upstream base that JSON bodies are rewritten from (credentials left out), when
    /// [`ProxyOptions::rewrite_body_urls`] is on.
    body_base: Option<Bytes>,
    /// `public_base`, JSON-escaped.
    public_base_json: Option<Bytes>,
    allowed_hosts: AllowedHosts,
    trusted_proxies: TrustedProxies,
    response_timeout: Duration,
    upstream_idle_timeout: Duration,
    max_request_body: u64,
    max_upstream_head: usize,
    inflate: InflateLimits,
    fhir_version: FhirVersion,
    metrics: Option<Arc<Metrics>>,
}

impl Forward {
    /// A forwarder to `options.upstream`.
    ///
    /// Fails when the upstream URL is not an absolute `http` or `https` URL, a trusted proxy is
    /// not an address or CIDR, or the TLS configuration cannot be made.
    pub(crate) fn new(
        options: &ProxyOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> io::Result<Forward> {
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "upstream URL {}: {what}",
                    super::cli::redacted(&options.upstream)
                ),
            )
        };
        let upstream = &options.upstream;
        let scheme = match upstream.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            _ => return Err(invalid("only http:// and https:// upstreams are supported")),
        };
        let https = scheme == Scheme::HTTPS;
        if !https && (options.upstream_ca.is_some() || options.upstream_client_cert.is_some()) {
            return Err(invalid(
                "an upstream CA or client certificate needs an https:// upstream",
            ));
        }
        let with_user_info = upstream.authority().ok_or_else(|| invalid("no host"))?;
        let (authorization, authority) = match with_user_info.as_str().rsplit_once('@') {
            Some((user_info, host)) => (
                Some(basic_authorization(user_info).ok_or_else(|| invalid("bad user info"))?),
                host.parse().map_err(|_| invalid("bad host"))?,
            ),
            None => (None, with_user_info.clone()),
        };
        if upstream.query().is_some() {
            return Err(invalid("a base URL has no query"));
        }
        let without_user_info = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(upstream.path())
            .build()
            .map_err(|_| invalid("not a base URL"))?;
        let public_base = match &options.public_base_url {
            Some(url) => {
                if url.scheme().is_none() || url.authority().is_none() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("public base URL {url}: not an absolute URL"),
                    ));
                }
                Some(url.to_string().trim_end_matches('/').to_owned())
            }
            None => None,
        };

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let tls = if https {
            tls::client_config(
                options.upstream_ca.as_deref(),
                options
                    .upstream_client_cert
                    .as_ref()
                    .map(|(cert, key)| (cert.as_path(), key.as_path())),
            )?
        } else {
            tls::unused_client_config()?
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(options.max_upstream_head)
            .build(connector);
        let count: fn(Response<hyper::body::Incoming>) -> CountedResponse = count_compressed;
        let client = DecompressionLayer::new().layer(tower::util::MapResponse::new(client, count));

        Ok(Forward {
            shared: Arc::new(Shared {
                client,
                scheme,
                authority,
                authorization,
                base_path: upstream.path().trim_end_matches('/').to_owned(),
                rebase: Rebase::new(&without_user_info),
                body_base: options.rewrite_body_urls.then(|| {
                    Bytes::from(
                        without_user_info
                            .to_string()
                            .trim_end_matches('/')
                            .to_owned(),
                    )
                }),
                public_base_json: public_base.as_deref().map(json_escaped),
                public_base,
                allowed_hosts: AllowedHosts::new(&options.allowed_hosts),
                trusted_proxies: TrustedProxies::parse(&options.trusted_proxies)?,
                response_timeout: options.response_timeout,
                upstream_idle_timeout: options.upstream_idle_timeout,
                max_request_body: options.max_request_body,
                max_upstream_head: options.max_upstream_head,
                inflate: InflateLimits {
                    max_size: options.max_decompressed_size,
                    max_ratio: options.max_decompression_ratio,
                    ratio_after: 1 << 20,
                },
                fhir_version: options.fhir_version,
                metrics,
            }),
        })
    }
}

/// The size up to which a JSON body whose URLs are rewritten is read whole before the head: the
/// layer's default `read_whole_limit`, below which it serves a Binary with its length.
const READ_WHOLE_LIMIT: u64 = 256 * 1024;

/// Whether a response has a JSON body whose URLs may be rewritten: a JSON content type, not
/// compressed (an encoding the proxy could not undo), and neither a range nor bodiless.
fn has_json_to_rewrite(parts: &Parts) -> bool {
    !matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
    ) && !parts.headers.contains_key(CONTENT_ENCODING)
        && parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::head::is_fhir_json)
}

/// `Basic` credentials for `user:password` (percent-encoded, as in a URL).
fn basic_authorization(user_info: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let decoded: Vec<u8> = percent_decode(user_info)?;
    let mut value = HeaderValue::try_from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(decoded)
    ))
    .ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

impl<B> Service<Request<B>> for Forward
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ForwardBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ForwardBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(shared.forward(request).await) })
    }
}

impl Shared {
    async fn forward<B>(&self, request: Request<B>) -> Response<ForwardBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let is_head = parts.method == Method::HEAD;
        let host = client_host(&parts.headers, &parts.uri);
        let conn = parts.extensions.get::<ConnInfo>().copied();
        let stall = parts
            .extensions
            .get::<StallSeen>()
            .map_or_else(Tripped::default, |s| s.0.clone());
        let proto = if conn.is_some_and(|c| c.tls) {
            "https"
        } else {
            "http"
        };
        let public_base = match (&self.public_base, &host, conn) {
            (Some(base), _, _) => base.clone(),
            (None, Some(host), _) if self.allowed_hosts.allows(host) => format!("{proto}://{host}"),
            (None, _, Some(conn)) => format!("{proto}://{}", conn.local),
            (None, _, None) => String::new(),
        };

        parts.uri = match self.upstream_uri(&parts.uri) {
            Some(uri) => uri,
            None => {
                return self.outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "the request target cannot be forwarded",
                )
            }
        };
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(HOST);
        // The client's encodings are not ours to ask for: the upstream is asked for what the
        // decompression below can undo, so that a compressed Binary can still be decoded.
        parts.headers.remove(ACCEPT_ENCODING);
        let client_ip = conn.map(|c| c.remote.ip());
        add_forwarded(
            &mut parts.headers,
            client_ip,
            client_ip.is_some_and(|ip| self.trusted_proxies.contains(ip)),
            host.as_deref(),
            proto,
        );
        if let Some(authorization) = &self.authorization {
            if !parts.headers.contains_key(AUTHORIZATION) {
                parts.headers.insert(AUTHORIZATION, authorization.clone());
            }
        }
        // Clients may speak HTTP/2; the upstream is spoken to in HTTP/1.1.
        parts.version = Version::HTTP_11;
        let too_large = Tripped::default();
        let body = LimitedBody::new(
            body,
            self.max_request_body,
            too_large.clone(),
            self.metrics.clone(),
        );
        let request = Request::from_parts(parts, body.boxed_unsync());

        let answer = tokio::time::timeout(self.response_timeout, self.send(request)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(_)) if too_large.is_tripped() => {
                return self.outcome(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-costly",
                    &format!(
                        "the request body is larger than {} bytes",
                        self.max_request_body
                    ),
                )
            }
            Ok(Err(e)) => return self.upstream_error(&e),
            Err(_) => {
                self.count_error("timeout");
                return self.outcome(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    &format!(
                        "the upstream FHIR server did not answer within {:?}",
                        self.response_timeout
                    ),
                );
            }
        };

        if response.status().is_informational() {
            self.count_error("other");
            // A 101 (or any 1xx as a final answer) would hand the connection over: never
            // relayed.
            return self.outcome(
                StatusCode::BAD_GATEWAY,
                "transient",
                &format!(
                    "the upstream FHIR server answered {}, which is not relayed",
                    response.status()
                ),
            );
        }
        let (mut parts, body) = response.into_parts();
        let size = head_size(17 + parts.status.as_str().len(), &parts.headers);
        if size > self.max_upstream_head {
            self.count_error("head_too_large");
            return self.outcome(
                StatusCode::BAD_GATEWAY,
                "transient",
                &format!(
                    "the upstream's response head ({size} bytes) is larger than {} bytes",
                    self.max_upstream_head
                ),
            );
        }
        remove_hop_by_hop(&mut parts.headers);
        if !public_base.is_empty() {
            for name in [LOCATION, CONTENT_LOCATION] {
                self.rebase
                    .rewrite_header(&mut parts.headers, name, &public_base);
            }
        }
        let compressed = parts.extensions.remove::<CompressedBytes>();
        let body = InflateLimitBody::new(body, compressed, self.inflate, self.metrics.clone());
        let body = StallBody::new(
            body,
            self.upstream_idle_timeout,
            stall,
            self.metrics.clone(),
        );
        match &self.body_base {
            Some(base) if !public_base.is_empty() && has_json_to_rewrite(&parts) => {
                if is_head {
                    // The body a GET would have is rewritten: its length is not known.
                    parts.headers.remove(CONTENT_LENGTH);
                    return Response::from_parts(parts, body.boxed_unsync());
                }
                let replacement = match &self.public_base_json {
                    Some(json) => json.clone(),
                    None => json_escaped(&public_base),
                };
                self.rewritten(parts, body, UrlRewriter::new(base.clone(), replacement))
                    .await
            }
            _ => Response::from_parts(parts, body.boxed_unsync()),
        }
    }

    /// The response with the upstream's URLs in its JSON body rewritten. A body of known size
    /// up to [`READ_WHOLE_LIMIT`] is read whole first, so that the response still says its
    /// length (and the layer can still serve a small Binary with its length); others stream.
    async fn rewritten<B>(
        &self,
        mut parts: Parts,
        body: B,
        mut rewriter: UrlRewriter,
    ) -> Response<ForwardBody>
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        parts.headers.remove(CONTENT_LENGTH);
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= READ_WHOLE_LIMIT);
        if !small {
            let body = RewrittenBody::new(body, rewriter);
            return Response::from_parts(parts, body.boxed_unsync());
        }
        let whole = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<UpstreamStalled>() => {
                return self.outcome(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    &format!("the upstream FHIR server stopped sending its answer: {e}"),
                )
            }
            Err(e) => {
                return self.outcome(
                    StatusCode::BAD_GATEWAY,
                    "transient",
                    &format!("the upstream FHIR server's answer broke off: {e}"),
                )
            }
        };
        let mut out = rewriter.push(whole);
        let rest = rewriter.finish();
        if !rest.is_empty() {
            out = [out, rest].concat().into();
        }
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
        Response::from_parts(parts, Full::new(out).map_err(|e| match e {}).boxed_unsync())
    }

    /// Sends `request` upstream. (Boxed outside of `forward` so that the compiler checks the
    /// future's `Send` with concrete lifetimes.)
    fn send(&self, request: Request<ForwardBody>) -> UpstreamFuture {
        Box::pin(self.client.clone().oneshot(request))
    }

    /// The upstream URI for a request to the proxy: the upstream base, then the request's path
    /// and query.
    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let path = match uri.path() {
            "*" | "" => "/",
            path => path,
        };
        let path_and_query = match uri.query() {
            Some(query) => format!("{}{path}?{query}", self.base_path),
            None => format!("{}{path}", self.base_path),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path_and_query).ok()?)
            .build()
            .ok()
    }

    /// 504 when connecting timed out, else 502.
    fn upstream_error(&self, error: &hyper_util::client::legacy::Error) -> Response<ForwardBody> {
        let mut timed_out = false;
        let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
        let mut detail = String::new();
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                timed_out |= io.kind() == io::ErrorKind::TimedOut;
            }
            detail = e.to_string();
            source = e.source();
        }
        let what = if error.is_connect() {
            "could not connect to the upstream FHIR server"
        } else {
            "the upstream FHIR server failed to answer"
        };
        let diagnostics = if detail.is_empty() {
            format!("{what}: {error}")
        } else {
            format!("{what}: {error}: {detail}")
        };
        tracing::warn!(target: "fhir_binary_proxy", "{diagnostics}");
        self.count_error(if timed_out {
            "timeout"
        } else if error.is_connect() {
            "connect"
        } else {
            "other"
        });
        if timed_out {
            self.outcome(StatusCode::GATEWAY_TIMEOUT, "timeout", &diagnostics)
        } else {
            self.outcome(StatusCode::BAD_GATEWAY, "transient", &diagnostics)
        }
    }

    fn count_error(&self, kind: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.upstream_error(kind);
        }
    }

    fn outcome(
        &self,
        status: StatusCode,
        code: &'static str,
        diagnostics: &str,
    ) -> Response<ForwardBody> {
        outcome_response(status, code, diagnostics, self.fhir_version, |json| {
            Full::new(json).map_err(|e| match e {}).boxed_unsync()
        })
    }
}
