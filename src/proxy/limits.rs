//! Time and size limits on what clients and the upstream send: a connection watchdog, a request
//! body cap and a stall timeout on upstream bodies.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::metrics::Metrics;
use crate::BoxError;

pin_project! {
    /// A client connection that is closed when nothing moves on it for `idle` (`first` until
    /// its first byte), or when a write to it stays blocked (the client reads nothing) for
    /// `send`.
    ///
    /// One timer serves both; it is re-armed only when it fires early or must fire sooner, so
    /// that traffic costs a clock read per read or write and nothing more.
    pub(crate) struct Watchdog<T> {
        #[pin]
        io: T,
        first: Duration,
        idle: Duration,
        send: Duration,
        read_any: bool,
        last_activity: Instant,
        write_blocked_since: Option<Instant>,
        // Boxed: hyper wants an `Unpin` connection.
        timer: Pin<Box<Sleep>>,
    }
}

impl<T> Watchdog<T> {
    pub(crate) fn new(io: T, first: Duration, idle: Duration, send: Duration) -> Self {
        let now = Instant::now();
        Watchdog {
            io,
            first,
            idle,
            send,
            read_any: false,
            last_activity: now,
            write_blocked_since: None,
            timer: Box::pin(tokio::time::sleep_until(now + first.min(idle))),
        }
    }
}

/// Why a [`Watchdog`] closed a connection; the `io::Error`'s inner error.
#[derive(Debug)]
pub(crate) enum Dropped {
    /// Nothing was read or written for this long.
    Idle(Duration),
    /// The client read nothing of the response for this long.
    SlowReader(Duration),
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::Idle(d) => write!(f, "nothing read or written for {d:?}"),
            Dropped::SlowReader(d) => write!(f, "the client read nothing for {d:?}"),
        }
    }
}

impl std::error::Error for Dropped {}

impl<T> Watchdog<T> {
    /// On a pending read or write: `Ready(Err)` once a limit has passed, else `Pending` with the
    /// timer armed.
    fn poll_limits(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Error> {
        let this = self.project();
        loop {
            let idle = if *this.read_any {
                *this.idle
            } else {
                (*this.first).min(*this.idle)
            };
            let idle_at = *this.last_activity + idle;
            let (deadline, why) = match *this.write_blocked_since {
                Some(since) if since + *this.send < idle_at => {
                    (since + *this.send, Dropped::SlowReader(*this.send))
                }
                _ => (idle_at, Dropped::Idle(idle)),
            };
            if deadline < this.timer.deadline() {
                this.timer.as_mut().reset(deadline);
            }
            ready!(this.timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            // Fired for an older deadline that activity has since pushed back.
            this.timer.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watchdog<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.as_mut().project();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    *this.last_activity = Instant::now();
                    *this.read_any = true;
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_limits(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite> Watchdog<T> {
    fn after_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        match result {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    *this.last_activity = Instant::now();
                    *this.write_blocked_since = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.write_blocked_since.is_none() {
                    *this.write_blocked_since = Some(Instant::now());
                }
                match self.poll_limits(cx) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for Watchdog<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.as_mut().project().io.poll_write(cx, buf);
        self.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.as_mut().project().io.poll_write_vectored(cx, bufs);
        self.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A flag shared between a body and the service that reads the error it ended with.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tripped(Arc<AtomicBool>);

impl Tripped {
    fn trip(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The error of a request body longer than the limit.
#[derive(Debug)]
pub(crate) struct BodyTooLarge(pub(crate) u64);

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body is larger than {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

pin_project! {
    /// A request body that fails with [`BodyTooLarge`] (and trips its flag) past `limit` bytes.
    pub(crate) struct LimitedBody<B> {
        #[pin]
        body: B,
        remaining: u64,
        limit: u64,
        tripped: Tripped,
        metrics: Option<Arc<Metrics>>,
    }
}

impl<B> LimitedBody<B> {
    /// Counts what passes in `metrics`.
    pub(crate) fn new(
        body: B,
        limit: u64,
        tripped: Tripped,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        LimitedBody {
            body,
            remaining: limit,
            limit,
            tripped,
            metrics,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match ready!(this.body.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.remaining() as u64;
                    if len > *this.remaining {
                        this.tripped.trip();
                        return Poll::Ready(Some(Err(BodyTooLarge(*this.limit).into())));
                    }
                    *this.remaining -= len;
                    if let Some(metrics) = this.metrics {
                        metrics.bytes_in(len);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error of an upstream body that sent nothing for too long.
#[derive(Debug)]
pub(crate) struct UpstreamStalled(pub(crate) Duration);

impl fmt::Display for UpstreamStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the upstream sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for UpstreamStalled {}

pin_project! {
    /// An upstream body that fails with [`UpstreamStalled`] (and trips its flag) when, polled,
    /// it has no frame for `timeout`. Time the reader spends not polling does not count.
    pub(crate) struct StallBody<B> {
        #[pin]
        body: B,
        timeout: Duration,
        waiting_since: Option<Instant>,
        // Made the first time the body has to wait: a body that never waits costs no timer.
        timer: Option<Pin<Box<Sleep>>>,
        tripped: Tripped,
        metrics: Option<Arc<Metrics>>,
    }
}

impl<B> StallBody<B> {
    /// Counts a stall in `metrics`.
    pub(crate) fn new(
        body: B,
        timeout: Duration,
        tripped: Tripped,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        StallBody {
            body,
            timeout,
            waiting_since: None,
            timer: None,
            tripped,
            metrics,
        }
    }
}

impl<B> Body for StallBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting_since = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = *this.waiting_since.get_or_insert_with(Instant::now) + *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        this.tripped.trip();
        if let Some(metrics) = this.metrics {
            metrics.upstream_error("stall");
        }
        Poll::Ready(Some(Err(UpstreamStalled(*this.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How many compressed bytes the upstream has sent for one response; in the response's
/// extensions when it came with a `Content-Encoding`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CompressedBytes(pub(crate) Arc<AtomicU64>);

pin_project! {
    /// An upstream body as received, counting its bytes into `counter` when it has one.
    pub(crate) struct CountedBody<B> {
        #[pin]
        body: B,
        counter: Option<CompressedBytes>,
    }
}

impl<B> CountedBody<B> {
    pub(crate) fn new(body: B, counter: Option<CompressedBytes>) -> Self {
        CountedBody { body, counter }
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let (Some(counter), Some(Ok(frame))) = (this.counter.as_ref(), frame.as_ref()) {
            if let Some(data) = frame.data_ref() {
                counter
                    .0
                    .fetch_add(data.remaining() as u64, Ordering::Relaxed);
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

/// Limits on what a compressed upstream body may decompress to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InflateLimits {
    /// At most this many bytes decompressed.
    pub(crate) max_size: u64,
    /// At most this many decompressed bytes per compressed byte, checked once
    /// `ratio_after` bytes have come out.
    pub(crate) max_ratio: u64,
    pub(crate) ratio_after: u64,
}

/// The error of a compressed upstream body past the [`InflateLimits`].
#[derive(Debug)]
pub(crate) struct InflateLimitExceeded(pub(crate) String);

impl fmt::Display for InflateLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InflateLimitExceeded {}

pin_project! {
    /// A decompressed upstream body that fails with [`InflateLimitExceeded`] past the limits
    /// (only when the upstream compressed it: `compressed` is then set).
    pub(crate) struct InflateLimitBody<B> {
        #[pin]
        body: B,
        compressed: Option<CompressedBytes>,
        produced: u64,
        limits: InflateLimits,
        metrics: Option<Arc<Metrics>>,
    }
}

impl<B> InflateLimitBody<B> {
    pub(crate) fn new(
        body: B,
        compressed: Option<CompressedBytes>,
        limits: InflateLimits,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        InflateLimitBody {
            body,
            compressed,
            produced: 0,
            limits,
            metrics,
        }
    }
}

impl<B> Body for InflateLimitBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match ready!(this.body.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let (Some(compressed), Some(data)) = (this.compressed.as_ref(), frame.data_ref()) {
            *this.produced += data.remaining() as u64;
            let limits = *this.limits;
            let compressed = compressed.0.load(Ordering::Relaxed).max(1);
            let exceeded = if *this.produced > limits.max_size {
                Some(format!(
                    "the upstream's compressed body decompresses to more than {} bytes",
                    limits.max_size
                ))
            } else if *this.produced > limits.ratio_after
                && *this.produced / compressed > limits.max_ratio
            {
                Some(format!(
                    "the upstream's compressed body decompresses more than {} times ({} bytes from {compressed})",
                    limits.max_ratio, this.produced
                ))
            } else {
                None
            };
            if let Some(why) = exceeded {
                tracing::warn!(target: "fhir_binary_proxy", "{why}");
                if let Some(metrics) = this.metrics {
                    metrics.upstream_error("decompression_limit");
                }
                return Poll::Ready(Some(Err(InflateLimitExceeded(why).into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_body_past_the_limit_fails_and_trips() {
        let tripped = Tripped::default();
        let body = LimitedBody::new(
            Full::new(Bytes::from(vec![0u8; 11])),
            10,
            tripped.clone(),
            None,
        );
        let error = body.collect().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the request body is larger than 10 bytes"
        );
        assert!(tripped.is_tripped());

        let tripped = Tripped::default();
        let body = LimitedBody::new(
            Full::new(Bytes::from(vec![0u8; 10])),
            10,
            tripped.clone(),
            None,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!tripped.is_tripped());
    }

    #[tokio::test]
    async fn decompressed_bodies_are_limited_in_size_and_ratio() {
        let limits = InflateLimits {
            max_size: 1000,
            max_ratio: 10,
            ratio_after: 100,
        };
        let chunks = |n: usize| {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            for _ in 0..n {
                tx.try_send(Ok(Frame::data(Bytes::from(vec![b'a'; 50]))))
                    .unwrap();
            }
            ChannelBody(rx)
        };
        // 10 compressed bytes: the ratio check fires past 100 bytes out (150 > 10 x 10).
        let compressed = CompressedBytes::default();
        compressed.0.store(10, Ordering::Relaxed);
        let mut body = std::pin::pin!(InflateLimitBody::new(
            chunks(10),
            Some(compressed),
            limits,
            None
        ));
        for _ in 0..2 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("more than 10 times"), "{error}");

        // A good ratio, but past the absolute size.
        let compressed = CompressedBytes::default();
        compressed.0.store(900, Ordering::Relaxed);
        let mut body = std::pin::pin!(InflateLimitBody::new(
            chunks(30),
            Some(compressed),
            limits,
            None
        ));
        let mut passed = 0;
        let error = loop {
            match body.frame().await.unwrap() {
                Ok(_) => passed += 50,
                Err(e) => break e,
            }
        };
        assert_eq!(passed, 1000);
        assert!(
            error.to_string().contains("more than 1000 bytes"),
            "{error}"
        );

        // Not compressed: no limit.
        let mut body = std::pin::pin!(InflateLimitBody::new(chunks(30), None, limits, None));
        for _ in 0..30 {
            assert!(body.frame().await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_and_trips() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let tripped = Tripped::default();
        let mut body = std::pin::pin!(StallBody::new(
            ChannelBody(rx),
            Duration::from_secs(60),
            tripped.clone(),
            None,
        ));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        // Time the reader does not poll does not count.
        tokio::time::sleep(Duration::from_secs(120)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // 59 s of waiting, a frame, then another wait.
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(59)).await;
            sender
                .send(Ok(Frame::data(Bytes::from_static(b"b"))))
                .await
                .unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(error.to_string(), "the upstream sent nothing for 60s");
        assert!(tripped.is_tripped());
        drop(tx);
    }

    /// A body whose frames come from a channel.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dropped_when_idle() {
        let (client, server) = tokio::io::duplex(64);
        let (mut client, server) = (client, server);
        let mut watched = Watchdog::new(
            server,
            Duration::from_secs(3),
            Duration::from_secs(5),
            Duration::from_secs(2),
        );
        // Nothing ever sent: dropped after `first`.
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let error = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // After a first byte, `idle`.
        let (mut client2, server) = tokio::io::duplex(64);
        let mut watched = Watchdog::new(
            server,
            Duration::from_secs(3),
            Duration::from_secs(5),
            Duration::from_secs(2),
        );
        client2.write_all(b"x").await.unwrap();
        watched.read_exact(&mut buf[..1]).await.unwrap();
        let started = Instant::now();
        let error = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        client.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_connection_alive_and_a_blocked_write_ends_it() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut watched = Watchdog::new(
            server,
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(2),
        );
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client.write_all(b"x").await.unwrap();
            let mut buf = [0u8; 1];
            watched.read_exact(&mut buf).await.unwrap();
        }
        // The client stops reading: the 16-byte pipe fills, the write blocks for 2 s.
        let started = Instant::now();
        let error = watched.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(error.to_string().contains("read nothing"), "{error}");
    }
}
