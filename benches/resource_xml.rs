//! FHIR JSON to FHIR XML of any resource through the layer, against baselines measured in the
//! same run:
//!
//! - a 10 MiB searchset Bundle built from the official R4 examples (committed in
//!   `tests/fixtures/examples/r4`), against memcpy of the same bytes and
//!   `serde_json::from_slice::<Value>` of them (the first step of any converter that builds a
//!   tree);
//! - the same Bundle in FHIR XML posted through the layer, which sends the inner service its
//!   FHIR JSON, against quick-xml reading the same bytes into owned events (`into_owned` per
//!   event, what any converter that reads XML events has to do at least);
//! - a Binary of `BENCH_MIB` MiB (default 16) as FHIR XML by the Binary writer, and the same
//!   Binary inside a Bundle, which the general converter writes, against memcpy.
//!
//! `cargo bench --bench resource_xml`.

use std::convert::Infallible;
use std::hint::black_box;

use base64::Engine as _;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{service_fn, Service, ServiceExt};
use tower_fhir_binary::BinaryNegotiationLayer;
use tower_layer::Layer;

#[path = "support/searchset.rs"]
mod searchset;
use searchset::{frames, inner, searchset, Frames};

/// Drives a body to its end, counting bytes without keeping them.
async fn drain<B: Body>(body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += bytes::Buf::remaining(&data);
        }
    }
    total
}

/// A Binary of `size` random bytes, with `meta` before `data`.
fn binary(size: usize) -> String {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let decoded: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let base64 = base64::engine::general_purpose::STANDARD.encode(&decoded);
    format!(
        r#"{{"resourceType":"Binary","id":"bench","meta":{{"versionId":"1"}},"contentType":"application/pdf","data":"{base64}"}}"#
    )
}

fn layer_xml(
    runtime: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    json: &Bytes,
    uri: &'static str,
) {
    let service = BinaryNegotiationLayer::new()
        .select_all()
        .layer(inner(frames(json, 64 << 10)));
    // Checked once: the output is XML, and complete.
    runtime.block_on(async {
        let response = service
            .clone()
            .oneshot(
                Request::get(uri)
                    .body(http_body_util::Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/fhir+xml;charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"</Bundle>") || body.ends_with(b"</Binary>"));
    });
    group.bench_function(name, |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::get(uri)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let response = service.clone().oneshot(request).await.unwrap();
                black_box(drain(response.into_body()).await);
            })
        })
    });
}

fn bench_searchset(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let json = searchset(10 << 20);
    let mut group = c.benchmark_group("10 MiB searchset Bundle of R4 examples, 64 KiB frames");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(json.len() as u64));

    let mut target = vec![0u8; json.len()];
    group.bench_function("baseline: memcpy", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&json));
            black_box(&target);
        })
    });
    group.bench_function("baseline: serde_json::from_slice::<Value>", |b| {
        b.iter(|| {
            let value: serde_json::Value = serde_json::from_slice(black_box(&json)).unwrap();
            black_box(value);
        })
    });
    layer_xml(
        &runtime,
        &mut group,
        "layer: FHIR XML",
        &json,
        "/Bundle?_format=xml",
    );
    group.finish();
}

/// The FHIR XML of `json` (a Bundle), as the layer writes it.
fn xml_of(runtime: &tokio::runtime::Runtime, json: &Bytes) -> Bytes {
    let service = BinaryNegotiationLayer::new()
        .select_all()
        .layer(inner(frames(json, 64 << 10)));
    runtime.block_on(async {
        let request = Request::get("/Bundle?_format=xml")
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    })
}

/// An inner service that reads the request body to its end and answers with its length.
fn draining<B>(
) -> impl Service<Request<B>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
where
    B: Body + Send + 'static,
    B::Error: std::fmt::Debug,
{
    service_fn(|request: Request<B>| async move {
        let total = drain(request.into_body()).await;
        Ok::<_, Infallible>(
            Response::builder()
                .status(201)
                .header("content-type", "text/plain")
                .body(total.to_string())
                .unwrap(),
        )
    })
}

fn bench_xml_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let xml = xml_of(&runtime, &searchset(10 << 20));
    let mut group =
        c.benchmark_group("10 MiB searchset Bundle of R4 examples in FHIR XML, 64 KiB frames");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(xml.len() as u64));

    group.bench_function("baseline: quick-xml events, into_owned", |b| {
        b.iter(|| {
            let mut reader = quick_xml::Reader::from_reader(black_box(&xml[..]));
            let mut events = 0usize;
            loop {
                match reader.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break,
                    event => {
                        black_box(event.into_owned());
                        events += 1;
                    }
                }
            }
            black_box(events);
        })
    });
    let service = BinaryNegotiationLayer::new()
        .select_all()
        .layer(draining::<tower_fhir_binary::RequestBody<Frames>>());
    let post = |xml: &Bytes| {
        Request::post("/Bundle")
            .header("content-type", "application/fhir+xml")
            .body(Frames(frames(xml, 64 << 10).into()))
            .unwrap()
    };
    // Checked once: the inner service gets the whole JSON.
    runtime.block_on(async {
        let response = service.clone().oneshot(post(&xml)).await.unwrap();
        assert_eq!(response.status(), 201);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let length: usize = std::str::from_utf8(&body).unwrap().parse().unwrap();
        assert!(length > xml.len() / 2, "{length}");
    });
    group.bench_function("layer: FHIR XML to FHIR JSON", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = service.clone().oneshot(post(&xml)).await.unwrap();
                black_box(drain(response.into_body()).await);
            })
        })
    });
    group.finish();
}

fn bench_binary(c: &mut Criterion) {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let binary = binary(mib << 20);
    let alone = Bytes::from(binary.clone());
    let in_bundle = Bytes::from(format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{binary}}}]}}"#
    ));
    let mut group = c.benchmark_group(format!("{mib} MiB Binary as FHIR XML, 64 KiB frames"));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(alone.len() as u64));

    let mut target = vec![0u8; alone.len()];
    group.bench_function("baseline: memcpy of the JSON size", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&alone));
            black_box(&target);
        })
    });
    layer_xml(
        &runtime,
        &mut group,
        "layer: the Binary writer",
        &alone,
        "/Binary/bench?_format=xml",
    );
    layer_xml(
        &runtime,
        &mut group,
        "layer: the general converter (the Binary in a Bundle)",
        &in_bundle,
        "/Binary?_format=xml",
    );
    group.finish();
}

criterion_group!(benches, bench_searchset, bench_xml_request, bench_binary);
criterion_main!(benches);
