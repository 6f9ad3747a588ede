//! Serves one generated Binary of the given size through the layer and prints how much the
//! process's peak resident memory (VmHWM) grew: the layer's memory must not grow with the
//! document.
//!
//! ```sh
//! cargo run --release --example peak_rss -- 1024            # a 1 GiB document
//! cargo run --release --example peak_rss -- 64 xml          # 64 MiB, as FHIR XML
//! cargo run --release --example peak_rss -- 1024 searchset  # a 1 GiB searchset Bundle as FHIR XML
//! ```
//!
//! The document is made on the fly, 48 KiB at a time, as base64 inside Binary JSON; it is never
//! stored whole, so what the peak grows by is the layer's own working memory. `searchset` serves
//! instead a searchset Bundle of the official R4 examples in `tests/fixtures/examples/r4`,
//! repeated (read once, before the peak is first taken), entry by entry in frames of about 64
//! KiB, through the converter of any resource to FHIR XML.

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

/// A searchset Bundle of at least `remaining` bytes, made entry by entry from `examples`.
struct Searchset {
    examples: std::sync::Arc<Vec<String>>,
    remaining: usize,
    entry: usize,
    stage: u8,
}

impl Body for Searchset {
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
                    br#"{"resourceType":"Bundle","id":"big","type":"searchset","entry":["#,
                )
            }
            1 if self.remaining > 0 => {
                let mut frame = String::with_capacity(80 << 10);
                while frame.len() < 64 << 10 && self.remaining > frame.len() {
                    let n = self.entry;
                    let example = &self.examples[n % self.examples.len()];
                    if n > 0 {
                        frame.push(',');
                    }
                    frame.push_str(&format!(
                        r#"{{"fullUrl":"urn:uuid:{n}","resource":{example},"search":{{"mode":"match"}}}}"#
                    ));
                    self.entry += 1;
                }
                self.remaining = self.remaining.saturating_sub(frame.len());
                Bytes::from(frame)
            }
            1 => {
                self.stage = 2;
                Bytes::from_static(b"]}")
            }
            _ => return Poll::Ready(None),
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// The official R4 examples of the fixtures, each on one line as written.
fn r4_examples() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("the R4 examples")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .expect("an example")
                .trim()
                .to_owned()
        })
        .collect()
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
    let mode = std::env::args().nth(2);
    if mode.as_deref() == Some("searchset") {
        return searchset(mib);
    }
    let uri = match mode.as_deref() {
        Some("xml") => "/Binary/big?_format=xml",
        _ => "/Binary/big",
    };
    let size = mib << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let inner = service_fn(
        move |_request: Request<RequestBody<http_body_util::Empty<bytes::Bytes>>>| async move {
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
        },
    );
    let service = BinaryNegotiationLayer::new().layer(inner);
    let before = peak_rss_kib();
    let total = runtime.block_on(async {
        let request = Request::get(uri)
            .body(http_body_util::Empty::new())
            .expect("a request");
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

/// A searchset Bundle of `mib` MiB of the official R4 examples through the layer as FHIR XML.
fn searchset(mib: usize) {
    let examples = std::sync::Arc::new(r4_examples());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let inner = service_fn(
        move |_request: Request<RequestBody<http_body_util::Empty<bytes::Bytes>>>| {
            let examples = examples.clone();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/fhir+json")
                        .body(Searchset {
                            examples,
                            remaining: mib << 20,
                            entry: 0,
                            stage: 0,
                        })
                        .expect("a response"),
                )
            }
        },
    );
    let service = BinaryNegotiationLayer::new().select_all().layer(inner);
    let before = peak_rss_kib();
    let total = runtime.block_on(async {
        let request = Request::get("/Bundle?_format=xml")
            .body(http_body_util::Empty::new())
            .expect("a request");
        let response = service.oneshot(request).await.expect("a response");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/fhir+xml;charset=utf-8"
        );
        let mut body = response.into_body();
        let mut total = 0u64;
        let mut end = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("a frame").into_data() {
                total += data.len() as u64;
                // The last bytes, to check that the XML ends.
                end.extend_from_slice(&data[data.len().saturating_sub(16)..]);
                end.drain(..end.len().saturating_sub(16));
            }
        }
        assert!(end.ends_with(b"</Bundle>"), "the XML is complete");
        total
    });
    let after = peak_rss_kib();
    println!(
        "searchset Bundle {mib} MiB as FHIR XML: {total} bytes out; peak RSS {before} KiB before, {after} KiB after: +{} KiB",
        after.saturating_sub(before)
    );
}
