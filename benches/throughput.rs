//! Throughput of the layer against baselines measured in the same run: memcpy of the decoded
//! size (the machine's limit), the naive path users write by hand (collect, serde_json, base64
//! STANDARD) and passthrough (the same inner service without the layer). The layer is measured
//! natively and as FHIR XML for each way a backend's serializer writes the base64 (see `Form` in `support/base64_forms.rs`).
//!
//! Also the CPU cost per request of a 4 KiB document against passthrough, the naive path and a
//! hand-written minimum (the least work that gives the same response, nothing checked), for a
//! bare `GET` and for the `GET` a browser sends; and the time to the first byte of a native
//! response for a 1 MiB and a 64 MiB document.
//!
//! `cargo bench --bench throughput`; `BENCH_MIB=16 cargo bench ...` for a smaller document.

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{service_fn, Service, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
use tower_layer::Layer;

#[path = "support/base64_forms.rs"]
mod base64_forms;
use base64_forms::{frames_of, inner, random_bytes, Form, Frames};

/// The inner body of a shared list of frames: the list, and the next frame.
struct Shared(Arc<[Bytes]>, usize);

impl Body for Shared {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.0.get(self.1).cloned();
        self.1 += 1;
        Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
    }
}

struct Document {
    decoded: Vec<u8>,
    /// The Binary JSON, cut into frames.
    frames: Vec<Bytes>,
}

fn document(size: usize, frame: usize, form: Form) -> Document {
    let decoded = random_bytes(size);
    let frames = frames_of(&decoded, frame, form);
    Document { decoded, frames }
}

/// The path users write by hand: collect the Binary JSON, parse it with `serde_json`, decode
/// `data` with base64 STANDARD and serve it with the Binary's content type. Returns the decoded
/// length.
async fn naive<S>(service: &S, request: Request<http_body_util::Empty<bytes::Bytes>>) -> usize
where
    S: Service<
            Request<http_body_util::Empty<bytes::Bytes>>,
            Response = Response<Frames>,
            Error = Infallible,
        > + Clone,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let (mut parts, body) = response.into_parts();
    let json = body.collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value["data"].as_str().unwrap())
        .unwrap();
    let content_type = value["contentType"].as_str().unwrap();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).unwrap(),
    );
    let response = Response::from_parts(parts, http_body_util::Full::new(Bytes::from(decoded)));
    drain(black_box(response).into_body()).await
}

/// The least work that gives the layer's native response for the benchmark's document, written
/// for it alone: the members are found by searching for their names, nothing is checked, and
/// the head gets the same headers (`Content-Type`, `X-Content-Type-Options`,
/// `Content-Disposition`, `ETag`, `Accept-Ranges`, `Vary`) and the same `Negotiation`
/// extension. A floor for the per-request cost, not a way to serve documents. Returns the
/// decoded length.
async fn minimum<S>(service: &S, mut request: Request<http_body_util::Empty<bytes::Bytes>>) -> usize
where
    S: Service<
            Request<http_body_util::Empty<bytes::Bytes>>,
            Response = Response<Frames>,
            Error = Infallible,
        > + Clone,
{
    use http::header::{
        ACCEPT, ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_TYPE, ETAG, VARY,
        X_CONTENT_TYPE_OPTIONS,
    };
    use http::HeaderValue;
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: a search is cheap, building its searcher is not.
    static NAMES: LazyLock<[Finder<'static>; 4]> = LazyLock::new(|| {
        [
            r#""data":""#,
            r#""id":""#,
            r#""versionId":""#,
            r#""contentType":""#,
        ]
        .map(Finder::new)
    });
    static ENGINE: LazyLock<base64::engine::Simd> = LazyLock::new(|| {
        base64::engine::Simd::standard(base64::engine::GeneralPurposeConfig::new())
    });
    /// The text of the string member that `name` finds (by its name alone).
    fn member<'a>(json: &'a Bytes, name: &Finder<'_>) -> &'a [u8] {
        let start = name.find(json).unwrap() + name.needle().len();
        let end = start + memchr::memchr(b'"', &json[start..]).unwrap();
        &json[start..end]
    }
    let [data_name, id_name, version_name, content_type_name] = &*NAMES;
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/fhir+json"));
    let response = service.clone().oneshot(request).await.unwrap();
    let (mut parts, body) = response.into_parts();
    let json = body.collect().await.unwrap().to_bytes();
    let data = member(&json, data_name);
    let mut decoded = vec![0; data.len() / 4 * 3];
    let len = ENGINE.decode_slice(data, &mut decoded).unwrap();
    decoded.truncate(len);
    let id = std::str::from_utf8(member(&json, id_name)).unwrap();
    let version = std::str::from_utf8(member(&json, version_name)).unwrap();
    let headers = &mut parts.headers;
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_bytes(member(&json, content_type_name)).unwrap(),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("inline; filename=\"{id}.pdf\"")).unwrap(),
    );
    headers.insert(
        ETAG,
        HeaderValue::from_str(&format!("W/\"{version}\"")).unwrap(),
    );
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(VARY, HeaderValue::from_static("Accept"));
    parts
        .extensions
        .insert(tower_fhir_binary::Negotiation::Served(
            tower_fhir_binary::Representation::Native,
        ));
    let response = Response::from_parts(parts, http_body_util::Full::new(Bytes::from(decoded)));
    drain(black_box(response).into_body()).await
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

fn bench_large(c: &mut Criterion) {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mib << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let plain = document(size, 64 << 10, Form::Plain);

    let mut group = c.benchmark_group(format!("{mib} MiB Binary, 64 KiB frames"));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size as u64));

    let mut target = vec![0u8; size];
    group.bench_function("baseline: memcpy of the decoded size", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&plain.decoded));
            black_box(&target);
        })
    });

    group.bench_function("baseline: naive collect + serde_json + base64", |b| {
        let service = inner(plain.frames.clone());
        b.iter(|| {
            let decoded = runtime.block_on(naive(
                &service,
                Request::new(http_body_util::Empty::<Bytes>::new()),
            ));
            assert_eq!(decoded, size);
        })
    });

    group.bench_function("baseline: passthrough (no layer)", |b| {
        let service = inner(plain.frames.clone());
        b.iter(|| {
            runtime.block_on(async {
                let response = service
                    .clone()
                    .oneshot(Request::new(http_body_util::Empty::<Bytes>::new()))
                    .await
                    .unwrap();
                black_box(drain(response.into_body()).await);
            })
        })
    });

    group.bench_function("layer: FHIR JSON (passthrough)", |b| {
        let service = BinaryNegotiationLayer::new().layer(inner(plain.frames.clone()));
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::get("/Binary/bench?_format=json")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let response = service.clone().oneshot(request).await.unwrap();
                black_box(drain(response.into_body()).await);
            })
        })
    });

    // Each form of the base64, natively and as FHIR XML; one document at a time in memory.
    for form in Form::ALL {
        let frames = match form {
            Form::Plain => plain.frames.clone(),
            _ => frames_of(&plain.decoded, 64 << 10, form),
        };
        let service = BinaryNegotiationLayer::new().layer(inner(frames));
        for (representation, uri) in [
            ("native", "/Binary/bench"),
            ("FHIR XML", "/Binary/bench?_format=xml"),
        ] {
            let name = match form {
                // The names of the earlier runs, to compare with.
                Form::Plain => format!("layer: {representation}"),
                _ => format!("layer: {representation}, {}", form.name()),
            };
            group.bench_function(name, |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        let request = Request::get(uri)
                            .body(http_body_util::Empty::<Bytes>::new())
                            .unwrap();
                        let response = service.clone().oneshot(request).await.unwrap();
                        let total = drain(response.into_body()).await;
                        if representation == "native" {
                            assert_eq!(total, size);
                        } else {
                            assert!(total > size, "{total}");
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

/// Makes a fresh request for each iteration.
type MakeRequest = fn() -> Request<http_body_util::Empty<bytes::Bytes>>;

/// The request head of a browser opening a document: what most native responses answer.
fn browser_request() -> Request<http_body_util::Empty<bytes::Bytes>> {
    Request::get("/Binary/bench")
        .header("host", "fhir.example.org")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
             image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
        )
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("accept-language", "en-US,en;q=0.9")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap()
}

fn bench_small(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let doc = document(4 << 10, 64 << 10, Form::Plain);
    let mut group = c.benchmark_group("4 KiB Binary, per request");
    let plain = inner(doc.frames.clone());
    let layered = BinaryNegotiationLayer::new().layer(inner(doc.frames.clone()));
    // Each pair gets the same request, so that only the layer differs: a bare `GET`, and the
    // head a browser sends when it opens the document.
    let requests: [(&str, MakeRequest); 2] = [
        ("bare GET", || {
            Request::get("/Binary/bench")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap()
        }),
        ("browser GET", browser_request),
    ];
    for (name, request) in requests {
        group.bench_function(format!("baseline: passthrough (no layer), {name}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let response = plain.clone().oneshot(request()).await.unwrap();
                    black_box(drain(response.into_body()).await);
                })
            })
        });
        group.bench_function(
            format!("baseline: naive collect + serde_json + base64, {name}"),
            |b| b.iter(|| assert_eq!(runtime.block_on(naive(&plain, request())), 4 << 10)),
        );
        group.bench_function(
            format!("baseline: hand-written minimum (no checks), {name}"),
            |b| b.iter(|| assert_eq!(runtime.block_on(minimum(&plain, request())), 4 << 10)),
        );
        group.bench_function(format!("layer: native, {name}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let response = layered.clone().oneshot(request()).await.unwrap();
                    assert_eq!(drain(response.into_body()).await, 4 << 10);
                })
            })
        });
    }
    group.finish();
}

/// Time to the first output frame of a native response, contentType before data: the same
/// for 1 MiB as for 64 MiB, since the head goes out at the first byte of the payload and the
/// first frame is made from the first input frame.
fn bench_first_byte(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("time to first byte, native, 64 KiB frames");
    for mib in [1usize, 64] {
        let doc = document(mib << 20, 64 << 10, Form::Plain);
        // Frames handed out one by one from a shared list, so that making and dropping the
        // inner body costs the same whatever its size.
        let frames: Arc<[Bytes]> = doc.frames.into();
        let service = BinaryNegotiationLayer::new().layer(service_fn(
            move |_: Request<RequestBody<http_body_util::Empty<bytes::Bytes>>>| {
                let body = Shared(Arc::clone(&frames), 0);
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/fhir+json")
                            .body(body)
                            .unwrap(),
                    )
                }
            },
        ));
        group.bench_function(format!("{mib} MiB Binary"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = Request::get("/Binary/bench")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let response = service.clone().oneshot(request).await.unwrap();
                    let mut body = std::pin::pin!(response.into_body());
                    let first = body.frame().await.unwrap().unwrap();
                    black_box(first.into_data().unwrap().len());
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_large, bench_small, bench_first_byte);
criterion_main!(benches);
