//! Serves one generated Binary of the given size through the layer and prints how much the
//! process's peak resident memory (VmHWM) grew: the layer's memory must not grow with the
//! document.
//!
//! ```sh
//! cargo run --release --example peak_rss -- 1024        # a 1 GiB document
//! cargo run --release --example peak_rss -- 64 xml      # 64 MiB, as FHIR XML
//! ```
//!
//! The document is made on the fly, 48 KiB at a time, as base64 inside Binary JSON; it is never
//! stored whole, so what the peak grows by is the layer's own working memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
use tower_layer::Layer;

/// Decoded bytes per generated frame (64 KiB of base64).
const CHUNK: usize = 48 * 1024;

/// Binary JSON for a document of `size` bytes, generated frame by frame.
struct Generated {
    remaining: usize,
    state: u64,
    stage: u8,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.stage {
            0 => {
                self.stage = 1;
                Bytes::from_static(
                    br#"{"resourceType":"Binary","id":"big","contentType":"application/octet-stream","data":""#,
                )
            }
            1 if self.remaining > 0 => {
                let n = self.remaining.min(CHUNK);
                self.remaining -= n;
                let mut chunk = vec![0u8; n];
                for byte in &mut chunk {
                    self.state ^= self.state << 13;
                    self.state ^= self.state >> 7;
                    self.state ^= self.state << 17;
                    *byte = self.state as u8;
                }
                Bytes::from(base64::engine::general_purpose::STANDARD.encode(&chunk))
            }
            1 => {
                self.stage = 2;
                Bytes::from_static(b"\"}")
            }
            _ => return Poll::Ready(None),
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// The process's peak resident set size, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let uri = match std::env::args().nth(2).as_deref() {
        Some("xml") => "/Binary/big?_format=xml",
        _ => "/Binary/big",
    };
    let size = mib << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let inner = service_fn(move |_request: Request<RequestBody<()>>| async move {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/fhir+json")
                .body(Generated {
                    remaining: size,
                    state: 0x9E37_79B9_7F4A_7C15,
                    stage: 0,
                })
                .expect("a response"),
        )
    });
    let service = BinaryNegotiationLayer::new().layer(inner);
    let before = peak_rss_kib();
    let total = runtime.block_on(async {
        let request = Request::get(uri).body(()).expect("a request");
        let response = service.oneshot(request).await.expect("a response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("a frame").into_data() {
                total += data.len() as u64;
            }
        }
        total
    });
    let after = peak_rss_kib();
    println!(
        "document {mib} MiB ({uri}): {total} bytes out; peak RSS {before} KiB before, {after} KiB after: +{} KiB",
        after.saturating_sub(before)
    );
}
