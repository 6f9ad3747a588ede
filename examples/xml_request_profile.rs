//! A driver for profilers (callgrind, perf): the 10 MiB searchset of the `resource_xml`
//! benchmark in FHIR XML, posted through the layer `reps` times (`layer`), or read by
//! quick-xml into owned events (`quick`), so that instruction counts of the two can be set
//! side by side (less a run with `reps` 0 for the setup).
//!
//! ```sh
//! cargo build --release --example xml_request_profile
//! valgrind --tool=callgrind target/release/examples/xml_request_profile layer 10 1
//! valgrind --tool=callgrind target/release/examples/xml_request_profile quick 10 1
//! ```
//!
//! Arguments: `layer` or `quick`, the size in MiB of the JSON the XML is made from (the XML is
//! written once to `/tmp/fhir-searchset-<size>.xml` and read from there), the repetitions.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
use tower_layer::Layer;

#[path = "../benches/support/searchset.rs"]
mod searchset;
use searchset::{frames, searchset, Frames};

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    let mib: usize = std::env::args()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let reps: usize = std::env::args()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let json = searchset(mib << 20);
    let xml_path = format!("/tmp/fhir-searchset-{mib}.xml");
    let xml = match std::fs::read(&xml_path) {
        Ok(x) => Bytes::from(x),
        Err(_) => {
            let j = json.clone();
            let svc = BinaryNegotiationLayer::new().select_all().layer(service_fn(
                move |_r: Request<RequestBody<http_body_util::Empty<Bytes>>>| {
                    let f = Frames(frames(&j, 64 << 10).into());
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/fhir+json")
                                .body(f)
                                .unwrap(),
                        )
                    }
                },
            ));
            let x = rt.block_on(async {
                svc.oneshot(
                    Request::get("/Bundle?_format=xml")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
            });
            std::fs::write(&xml_path, &x).unwrap();
            x
        }
    };
    if what == "quick" {
        for _ in 0..reps {
            let mut reader = quick_xml::Reader::from_reader(&xml[..]);
            let mut n = 0;
            loop {
                match reader.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break,
                    e => {
                        std::hint::black_box(e.into_owned());
                        n += 1;
                    }
                }
            }
            std::hint::black_box(n);
        }
        return;
    }
    let inner = service_fn(|request: Request<RequestBody<Frames>>| async move {
        let mut body = request.into_body();
        let mut total = 0;
        let mut last = Bytes::new();
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            total += d.len();
            last = d;
        }
        assert!(last.ends_with(b"}"));
        Ok::<_, Infallible>(Response::new(total.to_string()))
    });
    let svc = BinaryNegotiationLayer::new().select_all().layer(inner);
    let start = std::time::Instant::now();
    for _ in 0..reps {
        let r = rt.block_on(async {
            let req = Request::post("/Bundle")
                .header("content-type", "application/fhir+xml")
                .body(Frames(frames(&xml, 64 << 10).into()))
                .unwrap();
            let resp = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{:?}", resp.headers());
            resp.into_body().collect().await.unwrap().to_bytes()
        });
        std::hint::black_box(r);
    }
    eprintln!(
        "{} bytes xml, {:?} per rep",
        xml.len(),
        start.elapsed() / reps as u32
    );
}
