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
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
use tower_layer::Layer;

struct Frames(std::collections::VecDeque<Bytes>);
impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}
fn frames(b: &Bytes, n: usize) -> Frames {
    Frames(
        (0..b.len())
            .step_by(n)
            .map(|at| b.slice(at..(at + n).min(b.len())))
            .collect(),
    )
}

fn searchset(size: usize) -> Bytes {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let examples: Vec<String> = names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().trim().to_owned())
        .collect();
    let mut json =
        String::from(r#"{"resourceType":"Bundle","id":"bench","type":"searchset","entry":["#);
    let mut n = 0;
    while json.len() < size {
        if n > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"fullUrl":"urn:uuid:{n}","resource":{},"search":{{"mode":"match"}}}}"#,
            examples[n % examples.len()]
        ));
        n += 1;
    }
    json.push_str("]}");
    Bytes::from(json)
}

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
                    let f = frames(&j, 64 << 10);
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
                .body(frames(&xml, 64 << 10))
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
