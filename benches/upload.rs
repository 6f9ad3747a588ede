//! Throughput of a raw upload through the layer (the document becoming Binary JSON for the
//! inner service) against baselines measured in the same run: memcpy of the upload's size and
//! the naive path users write by hand (collect the body, `STANDARD.encode`, build the JSON
//! with `serde_json`). Also the cost per request of a 4 KiB raw upload against passing the
//! same Binary JSON through the layer untouched, and against the hand-written minimum of a raw
//! upload (the conversion written for this one request, without a layer) and against encoding
//! the 4 KiB alone.
//!
//! `cargo bench --bench upload`; `BENCH_MIB=16 cargo bench --bench upload` for a smaller one.

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::engine::Simd;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
use tower_layer::Layer;

/// The client's upload: `frames` of one shared buffer, ready at once, as a fast client
/// delivers them.
struct Upload {
    frame: Bytes,
    remaining: usize,
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.frame.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.frame.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        // As hyper's body says once its `Content-Length` has arrived.
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}

fn frame(size: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

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

/// The inner service: reads the Binary JSON to its end and answers 201.
async fn sink<B: Body>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B::Error: std::fmt::Debug,
{
    black_box(drain(request.into_body()).await);
    Ok(Response::builder()
        .status(201)
        .body(Full::default())
        .unwrap())
}

fn upload_request(uri: &str, frame: &Bytes, size: usize) -> Request<Upload> {
    Request::post(uri)
        .header("content-type", "application/pdf")
        .header("content-length", size)
        .body(Upload {
            frame: frame.clone(),
            remaining: size,
        })
        .unwrap()
}

/// What users write by hand: the whole upload collected, encoded, and put in a `Value`.
async fn naive(request: Request<Upload>) -> usize {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::json!({
        "resourceType": "Binary",
        "contentType": parts.headers["content-type"].to_str().unwrap(),
        "data": STANDARD.encode(&bytes),
    })
    .to_string();
    let inner = Request::from_parts(parts, Full::new(Bytes::from(json)));
    drain(inner.into_body()).await
}

fn bench_large(c: &mut Criterion) {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mib << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let frame = frame(64 << 10);
    let json_size = size.div_ceil(3) * 4;

    let mut group = c.benchmark_group(format!("{mib} MiB raw upload, 64 KiB frames"));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size as u64));

    let source: Vec<u8> = frame.iter().copied().cycle().take(size).collect();
    let mut target = vec![0u8; size];
    group.bench_function("baseline: memcpy of the upload's size", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&source));
            black_box(&target);
        })
    });
    drop((source, target));

    group.bench_function(
        "baseline: naive collect + STANDARD.encode + serde_json",
        |b| {
            b.iter(|| {
                let total = runtime.block_on(naive(upload_request("/Binary", &frame, size)));
                assert!(total > json_size);
            })
        },
    );

    let service = BinaryNegotiationLayer::new().layer(service_fn(sink::<RequestBody<Upload>>));
    group.bench_function("layer: raw upload to Binary JSON", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = upload_request("/Binary", &frame, size);
                let response = service.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 201);
            })
        })
    });
    group.finish();
}

/// The base64 crate's fastest engine for this machine, as the layer uses it.
static ENGINE: LazyLock<Simd> =
    LazyLock::new(|| Simd::standard(base64::engine::general_purpose::PAD));

/// The least any raw upload costs, written by hand for this request: the media type checked,
/// the whole upload encoded into the Binary JSON in one buffer, the inner request's
/// `Content-Type` and `Content-Length` set, then the same inner service. No layer, no route or
/// negotiation, no streaming.
async fn minimum(request: Request<Upload>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let content_type = parts.headers[CONTENT_TYPE]
        .to_str()
        .ok()
        .filter(|value| value.contains('/') && !value.bytes().any(|b| b == b'"' || b == b'\\'))
        .expect("a media type")
        .to_owned();
    let upload = body.collect().await.unwrap().to_bytes();
    let prefix = r#"{"resourceType":"Binary","contentType":""#;
    let encoded = upload.len().div_ceil(3) * 4;
    let mut json = BytesMut::with_capacity(prefix.len() + content_type.len() + encoded + 12);
    json.extend_from_slice(prefix.as_bytes());
    json.extend_from_slice(content_type.as_bytes());
    json.extend_from_slice(br#"","data":""#);
    let start = json.len();
    json.resize(start + encoded, 0);
    ENGINE.encode_slice(&upload, &mut json[start..]).unwrap();
    json.extend_from_slice(br#""}"#);
    parts.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(json.len()));
    sink(Request::from_parts(parts, Full::new(json.freeze()))).await
}

fn bench_small(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let size = 4 << 10;
    let frame = frame(size);
    let json = Bytes::from(
        serde_json::json!({
            "resourceType": "Binary",
            "contentType": "application/pdf",
            "data": STANDARD.encode(&frame),
        })
        .to_string(),
    );
    let mut group = c.benchmark_group("4 KiB upload, per request");
    let raw = BinaryNegotiationLayer::new().layer(service_fn(sink::<RequestBody<Upload>>));
    group.bench_function("layer: raw upload to Binary JSON", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = upload_request("/Binary", &frame, size);
                let response = raw.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 201);
            })
        })
    });
    let fhir = BinaryNegotiationLayer::new().layer(service_fn(sink::<RequestBody<Full<Bytes>>>));
    group.bench_function(
        "baseline: the same Binary JSON through the layer untouched",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = Request::post("/Binary")
                        .header("content-type", "application/fhir+json")
                        .header("content-length", json.len())
                        .body(Full::new(json.clone()))
                        .unwrap();
                    let response = fhir.clone().oneshot(request).await.unwrap();
                    assert_eq!(response.status(), 201);
                })
            })
        },
    );
    group.bench_function("baseline: hand-written minimum of a raw upload", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = upload_request("/Binary", &frame, size);
                let response = minimum(request).await.unwrap();
                assert_eq!(response.status(), 201);
            })
        })
    });
    // The floor under any raw upload: this plus the untouched request is what a layer would
    // cost if encoding were all it did.
    let mut encoded = vec![0u8; size.div_ceil(3) * 4];
    group.bench_function("baseline: encoding the 4 KiB alone", |b| {
        b.iter(|| black_box(ENGINE.encode_slice(black_box(&frame[..]), &mut encoded)))
    });
    group.finish();
}

criterion_group!(benches, bench_large, bench_small);
criterion_main!(benches);
