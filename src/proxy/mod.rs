//! `fhir-binary-proxy`: a reverse proxy that puts [`BinaryNegotiationLayer`] in front of a FHIR
//! server you cannot change (feature `proxy`).
//!
//! Every request, whatever its method, is forwarded to the upstream base URL with its path and
//! query appended after the base path, request and response bodies streaming both ways, and the
//! layer applied, so that `GET [proxy]/Binary/[id]` answers with the document itself, FHIR JSON
//! or FHIR XML as the client asks. On the way:
//!
//! - hop-by-hop headers (`Connection` and the headers it names, `Keep-Alive`, `TE`,
//!   `Transfer-Encoding`, `Upgrade`, `Proxy-*`, `Trailer`) are removed in both directions;
//! - `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Proto` are set (and
//!   `X-Real-IP` dropped), replacing what the client sent unless it is one of
//!   [`ProxyOptions::trusted_proxies`];
//! - paths have their dot segments resolved, and those that would leave the root or hide a
//!   `.`, `/` or `\` in percent-encoding are refused with 400; `CONNECT`, `TRACE` and protocol
//!   upgrades are refused too, as are a missing or doubled `Host`, and heads and bodies above
//!   the limits (431, 413);
//! - slow or silent clients and upstreams are cut off after the timeouts of [`ProxyOptions`],
//!   and at most [`ProxyOptions::max_connections`] clients are served at once;
//! - clients may speak HTTP/1.1 or HTTP/2 (h2c); the upstream is spoken to in HTTP/1.1;
//! - the upstream is asked for `gzip` or `deflate` and its answer is decompressed, so that a
//!   compressed Binary can still be served natively;
//! - `Location` and `Content-Location` pointing into the upstream base are rewritten to the
//!   proxy's base ([`ProxyOptions::public_base_url`], or the `Host` the client addressed when
//!   it is one of [`ProxyOptions::allowed_hosts`], or the address it connected to), and so are
//!   the JSON strings of a JSON response body that begin with the upstream base (a search
//!   Bundle's `fullUrl`s and `link.url`s, references), unless
//!   [`ProxyOptions::rewrite_body_urls`] is off;
//! - an upstream that cannot be reached is answered with 502 Bad Gateway, one that does not
//!   answer in time with 504 Gateway Timeout, both with a FHIR JSON OperationOutcome;
//! - each request is logged with `tracing` at `INFO` (target `fhir_binary_proxy`): method,
//!   path, representation, status, bytes sent and duration.
//!
//! Programs can run the proxy (or the demo backend, [`start_demo`]) in-process:
//!
//! ```no_run
//! use tower_fhir_binary::proxy::{start_proxy, ProxyOptions};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let options = ProxyOptions::new("http://127.0.0.1:9090/fhir".parse().unwrap());
//! let proxy = start_proxy(listener, options)?;
//! println!("proxy on http://{}", proxy.local_addr());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! [`BinaryNegotiationLayer`]: crate::BinaryNegotiationLayer

mod cli;
mod demo;
mod forward;
mod guard;
mod headers;
mod limits;
mod log;
mod metrics;
mod ops;
mod outcome;
mod rewrite;
mod rewrite_body;
mod server;
mod tls;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokio::net::TcpListener;
use tower_layer::Layer;

use crate::{BinaryNegotiationLayer, FhirVersion};

pub use cli::main;
pub use demo::{start_demo, DemoBackend};
pub use server::Server;

use forward::Forward;
use guard::{Guard, GuardConfig};
use log::AccessLog;
use metrics::Metrics;
use ops::{Ops, OpsConfig};
use server::ConnectionLimits;

/// What the proxy forwards to and how; [`ProxyOptions::new`] gives the defaults, then set the
/// fields to change.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// The upstream FHIR base URL (`http://` or `https://host:port/base`); request paths and
    /// queries are appended after its path. User info in it (`user:password@`) is sent as
    /// `Basic` authorization when the client sends none.
    pub upstream: Uri,
    /// A PEM file of CA certificates that are the only roots trusted for an `https` upstream;
    /// by default the system's roots.
    pub upstream_ca: Option<PathBuf>,
    /// A PEM certificate chain and private key the proxy presents to an `https` upstream that
    /// asks for one (mutual TLS).
    pub upstream_client_cert: Option<(PathBuf, PathBuf)>,
    /// A PEM certificate chain and private key: the proxy then listens with TLS (ALPN `h2` and
    /// `http/1.1`) instead of plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The FHIR release the layer speaks where it must choose (see
    /// [`BinaryNegotiationLayer::fhir_version`]).
    pub fhir_version: FhirVersion,
    /// How long to wait for a TCP connection to the upstream (default 5 s).
    pub connect_timeout: Duration,
    /// How long to wait for the upstream's response head, connection included (default 60 s):
    /// 504 after it.
    pub response_timeout: Duration,
    /// How long the upstream may send nothing in the middle of a response body (default 60 s):
    /// after it the transfer is broken off (504 when the client has not had the head yet).
    pub upstream_idle_timeout: Duration,
    /// The proxy's own base URL as clients should see it, used to rewrite `Location` and
    /// `Content-Location`. Without it they are rewritten to `http://` and the `Host` the client
    /// used when that host is in [`allowed_hosts`](Self::allowed_hosts), else to the address
    /// the client connected to.
    pub public_base_url: Option<Uri>,
    /// Whether JSON strings in JSON response bodies (`application/fhir+json`,
    /// `application/json+fhir`, `application/json`) that begin with the upstream base URL
    /// (credentials left out; followed by `/`, `?`, `#` or the string's end) are rewritten to
    /// begin with the proxy's base, the same one `Location` is rewritten to (default true).
    /// The rewriting happens before the negotiation layer, so FHIR JSON, FHIR XML and native
    /// responses (`X-Security-Context`) all name the proxy.
    pub rewrite_body_urls: bool,
    /// The `Host` values (`name` or `name:port`, compared without case) that may be used to
    /// rewrite `Location`; `*` allows any (which lets clients choose where the rewritten URLs
    /// point). Empty by default.
    pub allowed_hosts: Vec<String>,
    /// Addresses (CIDRs such as `10.0.0.0/8`, or single addresses) of proxies in front of this
    /// one whose `Forwarded`, `X-Forwarded-*` and `X-Real-IP` headers are kept and appended to.
    /// From anyone else these headers are replaced. Empty by default.
    pub trusted_proxies: Vec<String>,
    /// Time allowed to receive a request head, counted from the connection's start or from the
    /// end of the previous response, so also how long an idle HTTP/1 keep-alive connection is
    /// kept (default 30 s).
    pub header_read_timeout: Duration,
    /// A client connection on which nothing is read or written for this long is closed
    /// (default 75 s).
    pub idle_timeout: Duration,
    /// A client that reads nothing of a response for this long is disconnected (default 60 s).
    pub client_send_timeout: Duration,
    /// Client connections served at once (default 4,096); beyond it new connections get 503
    /// with `Retry-After` and are closed.
    pub max_connections: usize,
    /// The largest request head accepted, in bytes (default 64 KiB, at least 8 KiB): 431 (or
    /// 414 for a long request line) beyond it. It also bounds the connection's buffers.
    pub max_request_head: usize,
    /// The largest request body forwarded, in bytes (default 1 GiB): 413 beyond it.
    pub max_request_body: u64,
    /// The largest upstream response head accepted, in bytes (default 16 KiB, at least 8 KiB):
    /// 502 beyond it. It is also the size of the reads from the upstream, about three of which
    /// a response holds while its client is slow.
    pub max_upstream_head: usize,
    /// The most a compressed upstream body may decompress to, in bytes (default 4 GiB): beyond
    /// it the transfer is broken off (502 when the client has not had the head yet).
    pub max_decompressed_size: u64,
    /// The most a compressed upstream body may grow by decompression, as a ratio checked once
    /// 1 MiB has come out (default 100; base64 in JSON compresses about 1.3 times, text rarely
    /// past 20): beyond it the transfer is broken off.
    pub max_decompression_ratio: u64,
    /// Where `GET` answers `ok` while the proxy runs (default `/healthz`; empty: none).
    pub health_path: String,
    /// Where `GET` answers 200 when the upstream answers `GET [base]/metadata` with a success
    /// within [`ready_timeout`](Self::ready_timeout), else 503 (default `/readyz`; empty: none).
    pub ready_path: String,
    /// How long the readiness check waits for the upstream (default 2 s).
    pub ready_timeout: Duration,
    /// Where `GET` answers the Prometheus metrics (default `/metrics`; empty: none).
    pub metrics_path: String,
    /// The most of an upstream body held to write FHIR XML in element order (default 64 KiB;
    /// see [`BinaryNegotiationLayer::xml_reorder_limit`]). It stays in memory until the client
    /// has read what comes before it, so it bounds what a slow FHIR XML reader holds.
    pub xml_reorder_limit: usize,
    /// The most of a FHIR XML request body's JSON read ahead before the upstream is called
    /// (default 1 MiB; see [`BinaryNegotiationLayer::xml_request_read_ahead`]).
    pub xml_request_read_ahead: usize,
}

impl ProxyOptions {
    /// Options for `upstream` with the defaults.
    pub fn new(upstream: Uri) -> Self {
        ProxyOptions {
            upstream,
            upstream_ca: None,
            upstream_client_cert: None,
            tls: None,
            fhir_version: FhirVersion::R4,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(60),
            public_base_url: None,
            rewrite_body_urls: true,
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            client_send_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_request_head: 64 * 1024,
            max_request_body: 1 << 30,
            max_upstream_head: 16 * 1024,
            max_decompressed_size: 4 << 30,
            max_decompression_ratio: 100,
            health_path: "/healthz".into(),
            ready_path: "/readyz".into(),
            ready_timeout: Duration::from_secs(2),
            metrics_path: "/metrics".into(),
            xml_reorder_limit: 64 * 1024,
            xml_request_read_ahead: 1 << 20,
        }
    }

    fn connection_limits(&self, metrics: &Arc<Metrics>) -> io::Result<ConnectionLimits> {
        for (name, size) in [
            ("max_request_head", self.max_request_head),
            ("max_upstream_head", self.max_upstream_head),
        ] {
            if size < 8192 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name}: {size} bytes is below the minimum of 8192"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_connections: at least 1",
            ));
        }
        Ok(ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            client_send_timeout: self.client_send_timeout,
            max_connections: self.max_connections,
            max_request_head: self.max_request_head,
            metrics: Some(Arc::clone(metrics)),
        })
    }
}

/// The proxy's whole service: its own endpoints, access log, refusals, the negotiation layer,
/// the forwarder.
type ProxyService = Ops<AccessLog<Guard<crate::BinaryNegotiation<Forward>>>>;

/// Builds the proxy's service for `options`.
fn proxy_service(options: &ProxyOptions, metrics: &Arc<Metrics>) -> io::Result<ProxyService> {
    let forward = Forward::new(options, Some(Arc::clone(metrics)))?;
    let negotiation = BinaryNegotiationLayer::new()
        .fhir_version(options.fhir_version)
        .xml_reorder_limit(options.xml_reorder_limit)
        .xml_request_read_ahead(options.xml_request_read_ahead)
        .layer(forward.clone());
    let guard = Guard::new(
        negotiation,
        GuardConfig {
            max_request_head: options.max_request_head,
            max_request_body: options.max_request_body,
            fhir_version: options.fhir_version,
        },
    );
    let log = AccessLog::new(guard, Some(Arc::clone(metrics)));
    Ok(Ops::new(
        log,
        OpsConfig {
            health_path: options.health_path.clone(),
            ready_path: options.ready_path.clone(),
            metrics_path: options.metrics_path.clone(),
            ready_timeout: options.ready_timeout,
        },
        forward,
        Arc::clone(metrics),
    ))
}

/// Starts the proxy on `listener`, on the current tokio runtime.
///
/// Fails when the upstream URL is not an absolute `http` or `https` URL, an option is out of
/// range, or a certificate or key cannot be read.
pub fn start_proxy(listener: TcpListener, options: ProxyOptions) -> io::Result<Server> {
    let metrics = Metrics::new();
    let limits = options.connection_limits(&metrics)?;
    let service = proxy_service(&options, &metrics)?;
    let tls = match &options.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            tls::server_config(cert, key)?,
        ))),
        None => None,
    };
    Server::spawn_with_limits(listener, service, limits, tls)
}
