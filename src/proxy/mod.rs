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
//! - `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Proto` are added;
//! - the upstream is asked for `gzip` or `deflate` and its answer is decompressed, so that a
//!   compressed Binary can still be served natively;
//! - `Location` and `Content-Location` pointing into the upstream base are rewritten to the
//!   proxy's base (the `Host` the client addressed, or [`ProxyOptions::public_base_url`]);
//! - an upstream that cannot be reached is answered with 502 Bad Gateway, one that does not
//!   answer in time with 504 Gateway Timeout, both with a FHIR JSON OperationOutcome;
//! - each request is logged with `tracing` at `INFO` (target `fhir_binary_proxy`): method,
//!   path, representation, status, bytes sent and duration.
//!
//! Resource bodies are not rewritten: absolute URLs inside a search Bundle still name the
//! upstream.
//!
//! The pieces are public so that tests and other programs can run the proxy in-process:
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
mod headers;
mod log;
mod outcome;
mod server;

use std::io;
use std::time::Duration;

use http::Uri;
use tokio::net::TcpListener;
use tower_layer::Layer;

use crate::{BinaryNegotiationLayer, FhirVersion};

pub use cli::{run, Args};
pub use demo::{start_demo, DemoBackend, DEMO_BINARIES};
pub use forward::{Forward, ForwardBody};
pub use log::{AccessLog, AccessLogBody};
pub use server::{shutdown_signal, ConnInfo, Server};

/// What the proxy forwards to and how.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The upstream FHIR base URL (`http://host:port/base`); request paths and queries are
    /// appended after its path. Only `http` is supported.
    pub upstream: Uri,
    /// The FHIR release the layer speaks where it must choose (see
    /// [`BinaryNegotiationLayer::fhir_version`]).
    pub fhir_version: FhirVersion,
    /// How long to wait for a TCP connection to the upstream (default 5 s).
    pub connect_timeout: Duration,
    /// How long to wait for the upstream's response head, connection included (default 60 s).
    /// The body then streams for as long as it takes.
    pub response_timeout: Duration,
    /// The proxy's own base URL as clients should see it, used to rewrite `Location` and
    /// `Content-Location`; by default `http://` and the `Host` the client addressed.
    pub public_base_url: Option<Uri>,
}

impl ProxyOptions {
    /// Options for `upstream` with the defaults.
    pub fn new(upstream: Uri) -> Self {
        ProxyOptions {
            upstream,
            fhir_version: FhirVersion::R4,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            public_base_url: None,
        }
    }
}

/// The proxy's whole service: access log, then the negotiation layer, then the forwarder.
pub type ProxyService = AccessLog<crate::BinaryNegotiation<Forward>>;

/// Builds the proxy's service for `options`.
///
/// Fails when the upstream URL is not an absolute `http` URL.
pub fn proxy_service(options: &ProxyOptions) -> io::Result<ProxyService> {
    let forward = Forward::new(options)?;
    let negotiation = BinaryNegotiationLayer::new()
        .fhir_version(options.fhir_version)
        .layer(forward);
    Ok(AccessLog::new(negotiation))
}

/// Starts the proxy on `listener`, on the current tokio runtime.
///
/// Fails when the upstream URL is not an absolute `http` URL.
pub fn start_proxy(listener: TcpListener, options: ProxyOptions) -> io::Result<Server> {
    let service = proxy_service(&options)?;
    Server::spawn(listener, service)
}
