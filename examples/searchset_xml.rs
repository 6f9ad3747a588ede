//! Converts a searchset Bundle of the official R4 examples (`tests/fixtures/examples/r4`) to
//! FHIR XML through the layer a given number of times, draining the output: a fixed amount of
//! work for a profiler, which criterion's timing loop is not. `serde` instead parses the same
//! bytes into a `serde_json::Value` once, the baseline of `benches/resource_xml.rs`.
//!
//! ```sh
//! cargo build --release --example searchset_xml
//! valgrind --tool=callgrind target/release/examples/searchset_xml 2 1   # 2 MiB, once
//! valgrind --tool=callgrind target/release/examples/searchset_xml 2 2   # twice: the difference is one conversion
//! valgrind --tool=callgrind target/release/examples/searchset_xml 2 1 serde
//! ```
//!
//! The Bundle is made by the benchmark's own code (`benches/support/searchset.rs`), before the
//! first conversion.

use http::Request;
use http_body::Body;
use tower::ServiceExt;
use tower_fhir_binary::BinaryNegotiationLayer;
use tower_layer::Layer;

#[path = "../benches/support/searchset.rs"]
mod searchset;
use searchset::{frames, inner, searchset};

/// The inner body: ready frames, the size not announced.
fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2);
    let times: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(1);
    let json = searchset(mib << 20);
    if args.next().as_deref() == Some("serde") {
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        println!(
            "{} bytes parsed, {} members",
            json.len(),
            value.as_object().map_or(0, |o| o.len())
        );
        return;
    }
    let service = BinaryNegotiationLayer::new()
        .select_all()
        .layer(inner(frames(&json, 64 << 10)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut total = 0usize;
    for _ in 0..times {
        total += runtime.block_on(async {
            let request = Request::get("/Bundle?_format=xml")
                .body(http_body_util::Empty::new())
                .expect("a request");
            let response = service.clone().oneshot(request).await.expect("a response");
            assert_eq!(response.status(), 200);
            let mut body = std::pin::pin!(response.into_body());
            let mut n = 0;
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                if let Ok(data) = frame.expect("a frame").into_data() {
                    n += data.len();
                }
            }
            n
        });
    }
    println!(
        "{} bytes of JSON, {total} bytes of XML in {times} conversions",
        json.len()
    );
}
