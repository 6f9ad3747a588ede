//! Serving a tower service over HTTP/1.1 and HTTP/2 on a TCP listener, with connection limits
//! and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::limits::{Dropped, Watchdog};
use super::metrics::Metrics;
use crate::BoxError;

/// How long in-flight connections may take to finish once shutdown has begun.
const GRACE: Duration = Duration::from_secs(10);

/// What a connection beyond the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\ntoo many connections";

/// The two ends of the TCP connection a request came on; found in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    /// The client's address.
    pub(crate) remote: SocketAddr,
    /// The address the client connected to.
    pub(crate) local: SocketAddr,
    /// Whether the connection is TLS.
    pub(crate) tls: bool,
}

/// How much a client connection may take.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) client_send_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_request_head: usize,
    /// Where open and refused connections are counted.
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            client_send_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_request_head: 64 * 1024,
            metrics: None,
        }
    }
}

/// A running HTTP server (the proxy or the demo backend).
///
/// Dropping it leaves the server running until the runtime stops; call
/// [`shutdown`](Server::shutdown) to stop it gracefully.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `service` on `listener` (HTTP/1.1 and HTTP/2 without TLS) in a task of the
    /// current tokio runtime, with the default limits.
    pub(crate) fn spawn<S, B>(listener: TcpListener, service: S) -> io::Result<Server>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Server::spawn_with_limits(listener, service, ConnectionLimits::default(), None)
    }

    /// Serves `service` on `listener` with `limits`, over TLS when `tls` is given.
    pub(crate) fn spawn_with_limits<S, B>(
        listener: TcpListener,
        service: S,
        limits: ConnectionLimits,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Server>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener, local_addr, service, limits, tls, stopped,
        ));
        Ok(Server {
            local_addr,
            stop: Some(stop),
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets the open ones finish their requests (at most 10 s),
    /// then returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Logs a repeated event at most once a second, with how many were not logged.
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last one)` when this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_head).unwrap_or(u32::MAX))
        .max_send_buf_size(64 * 1024)
        .max_concurrent_streams(128);
    builder
}

async fn accept_loop<S, B>(
    listener: TcpListener,
    local: SocketAddr,
    service: S,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    mut stopped: oneshot::Receiver<()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let builder = builder(&limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = Throttle::new();
    let mut refusals = Throttle::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    if let Some(suppressed) = accept_errors.allow() {
                        tracing::warn!(target: "fhir_binary_proxy", suppressed, "accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(&stream);
            if let Some(metrics) = &limits.metrics {
                metrics.refused_connections.inc();
            }
            if let Some(suppressed) = refusals.allow() {
                tracing::info!(
                    target: "fhir_binary_proxy",
                    %remote,
                    status = 503,
                    suppressed,
                    reason = "too many connections",
                    "rejected"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let permit = Open {
            _permit: permit,
            gauge: limits.metrics.as_ref().map(|m| {
                m.open_connections.inc();
                m.open_connections.clone()
            }),
        };
        let service = TowerToHyperService::new(WithConnInfo {
            inner: service.clone(),
            info: ConnInfo {
                remote,
                local,
                tls: tls.is_some(),
            },
        });
        let io = Watchdog::new(
            stream,
            limits.header_read_timeout,
            limits.idle_timeout,
            limits.client_send_timeout,
        );
        match &tls {
            None => {
                let connection = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log_connection_error(remote, &*e);
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(io);
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let result: Result<(), BoxError> =
                        match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                let connection =
                                    builder.serve_connection(TokioIo::new(stream), service);
                                watcher.watch(connection.into_owned()).await
                            }
                            Ok(Err(e)) => Err(TlsFailed(e.to_string()).into()),
                            Err(_) => {
                                Err(TlsFailed(format!("no TLS handshake within {timeout:?}"))
                                    .into())
                            }
                        };
                    if let Err(e) = result {
                        log_connection_error(remote, &*e);
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(GRACE) => {
            tracing::warn!(target: "fhir_binary_proxy", "connections still open after {GRACE:?}, closing them");
        }
    }
}

/// A connection's place under the cap, and in the open connections gauge.
struct Open {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// A TLS handshake that failed or did not finish in time.
#[derive(Debug)]
struct TlsFailed(String);

impl std::fmt::Display for TlsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake: {}", self.0)
    }
}

impl std::error::Error for TlsFailed {}

/// Tells a connection beyond the cap to come back later, without waiting for it.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(BUSY);
}

/// Requests hyper refused (it answers 431, 414 or 400 itself; a head too slow is dropped) and connections the watchdog
/// dropped at `INFO`; the rest (resets, closed sockets) at `DEBUG`.
fn log_connection_error(remote: SocketAddr, error: &(dyn std::error::Error + 'static)) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_parse() || hyper.is_parse_too_large() || hyper.is_timeout() {
                tracing::info!(target: "fhir_binary_proxy", %remote, reason = %hyper, "rejected");
                return;
            }
        }
        if let Some(failed) = e.downcast_ref::<TlsFailed>() {
            tracing::info!(target: "fhir_binary_proxy", %remote, reason = %failed, "connection dropped");
            return;
        }
        if let Some(dropped) = e.downcast_ref::<Dropped>() {
            tracing::info!(target: "fhir_binary_proxy", %remote, reason = %dropped, "connection dropped");
            return;
        }
        source = e.source();
    }
    tracing::debug!(target: "fhir_binary_proxy", "connection from {remote}: {error}");
}

/// Puts the [`ConnInfo`] into each request's extensions.
#[derive(Clone, Debug)]
struct WithConnInfo<S> {
    inner: S,
    info: ConnInfo,
}

impl<S, B> Service<Request<B>> for WithConnInfo<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.info);
        self.inner.call(request)
    }
}

/// Resolves on Ctrl-C, or on SIGTERM on unix.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
