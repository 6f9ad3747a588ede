//! The layer composed with tower-http's compression, decompression and tracing, with axum's
//! `Router::layer` and `route_layer`, and with tonic's `Server::builder().layer`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{fixture, sha256_hex, PDF_SHA256};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, Negotiation};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::DecompressionLayer;
use tower_http::trace::TraceLayer;

const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

/// A legacy FHIR server: the official PDF Binary in JSON, whatever is asked.
fn legacy_pdf<B>(
) -> impl tower::Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    service_fn(|_request: Request<B>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/fhir+json")
                .body(Full::new(Bytes::from(fixture("r4/binary-example.json"))))
                .unwrap(),
        )
    })
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn read<B>(response: Response<B>) -> Got
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::default()).unwrap()
}

/// Decompresses a gzip body with tower-http's `DecompressionLayer`, used as a client would.
async fn gunzip(compressed: Bytes) -> Bytes {
    let answer = service_fn(move |_request: Request<Full<Bytes>>| {
        let compressed = compressed.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-encoding", "gzip")
                    .body(Full::new(compressed))
                    .unwrap(),
            )
        }
    });
    let client = ServiceBuilder::new()
        .layer(DecompressionLayer::new())
        .service(answer);
    let response = client.oneshot(request("/", &[])).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

// ---------------------------------------------------------------------------------------------
// CompressionLayer: outside the negotiation (right), inside it (wrong).

#[tokio::test]
async fn compression_outside_compresses_the_document() {
    bounded(async {
        let service = ServiceBuilder::new()
            .layer(CompressionLayer::new())
            .layer(BinaryNegotiationLayer::new())
            .service(legacy_pdf());
        let got = read(
            service
                .oneshot(request("/Binary/example", &[("accept-encoding", "gzip")]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(got.header("content-encoding"), Some("gzip"));
        let vary = got.headers.get_all("vary").iter().count();
        assert!(vary >= 1);
        assert_eq!(sha256_hex(&gunzip(got.body).await), PDF_SHA256);
    })
    .await
}

#[tokio::test]
async fn compression_inside_hides_the_binary_from_the_layer() {
    bounded(async {
        let service = ServiceBuilder::new()
            .layer(BinaryNegotiationLayer::new())
            .layer(CompressionLayer::new())
            .service(legacy_pdf());
        // The client's Accept-Encoding reaches the compression, which gzips the Binary JSON;
        // the layer cannot read it, and rather than pass FHIR JSON to a client that asked for
        // the document it answers 502, naming the misordered layer.
        let response = service
            .clone()
            .oneshot(request("/Binary/example", &[("accept-encoding", "gzip")]))
            .await
            .unwrap();
        assert_eq!(
            response.extensions().get::<Negotiation>(),
            Some(&Negotiation::BadGateway)
        );
        let got = read(response).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            got.header("content-type"),
            Some("application/fhir+json;charset=utf-8")
        );
        assert_eq!(got.header("content-encoding"), None);
        let outcome: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(
            diagnostics.contains("compressed")
                && diagnostics.contains("decompression layer inside"),
            "{diagnostics}"
        );

        // A client that asked for FHIR JSON gets it, compressed as it accepts.
        let got = read(
            service
                .clone()
                .oneshot(request(
                    "/Binary/example?_format=json",
                    &[("accept-encoding", "gzip")],
                ))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-encoding"), Some("gzip"));
        assert_eq!(gunzip(got.body).await, fixture("r4/binary-example.json"));

        // Without Accept-Encoding nothing is compressed and the document is served.
        let got = read(
            service
                .oneshot(request("/Binary/example", &[]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(sha256_hex(&got.body), PDF_SHA256);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// DecompressionLayer in front of an inner that compresses: inside the negotiation (right),
// outside it (wrong).

#[tokio::test]
async fn decompression_inside_lets_the_layer_decode_a_gzipped_binary() {
    bounded(async {
        let service = ServiceBuilder::new()
            .layer(BinaryNegotiationLayer::new())
            .layer(DecompressionLayer::new())
            .layer(CompressionLayer::new())
            .service(legacy_pdf());
        let got = read(
            service
                .oneshot(request("/Binary/example", &[]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(got.header("content-encoding"), None);
        assert_eq!(sha256_hex(&got.body), PDF_SHA256);
    })
    .await
}

#[tokio::test]
async fn decompression_outside_decodes_too_late() {
    bounded(async {
        let service = ServiceBuilder::new()
            .layer(DecompressionLayer::new())
            .layer(BinaryNegotiationLayer::new())
            .layer(CompressionLayer::new())
            .service(legacy_pdf());
        // The layer saw gzip, which it cannot read: 502, never the Binary JSON in place of the
        // document.
        let got = read(
            service
                .oneshot(request("/Binary/example", &[]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            got.header("content-type"),
            Some("application/fhir+json;charset=utf-8")
        );
        assert!(String::from_utf8_lossy(&got.body).contains("compressed"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// TraceLayer: outside sees what the client gets, inside sees what the inner service answered.

/// An `on_response` callback that records the Content-Type it sees.
fn record<B>(
    seen: Arc<Mutex<Vec<String>>>,
) -> impl Fn(&Response<B>, Duration, &tracing::Span) + Clone {
    move |response, _latency, _span| {
        let content_type = response.headers()["content-type"].to_str().unwrap();
        seen.lock().unwrap().push(content_type.to_owned());
    }
}

#[tokio::test]
async fn trace_outside_and_inside() {
    bounded(async {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));

        let outside = ServiceBuilder::new()
            .layer(TraceLayer::new_for_http().on_response(record(seen.clone())))
            .layer(BinaryNegotiationLayer::new())
            .service(legacy_pdf());
        let got = read(
            outside
                .oneshot(request("/Binary/example", &[]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(sha256_hex(&got.body), PDF_SHA256);

        let inside = ServiceBuilder::new()
            .layer(BinaryNegotiationLayer::new())
            .layer(TraceLayer::new_for_http().on_response(record(seen.clone())))
            .service(legacy_pdf());
        let got = read(
            inside
                .oneshot(request("/Binary/example", &[]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(sha256_hex(&got.body), PDF_SHA256);

        assert_eq!(
            *seen.lock().unwrap(),
            ["application/pdf", "application/fhir+json"]
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// axum.

async fn read_binary_json(Path(id): Path<String>) -> AxumResponse {
    if id == "example" {
        (
            [("content-type", "application/fhir+json")],
            fixture("r4/binary-example.json"),
        )
            .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/fhir+json")],
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
        )
            .into_response()
    }
}

fn axum_get(uri: &str) -> Request<axum::body::Body> {
    Request::get(uri).body(axum::body::Body::empty()).unwrap()
}

#[tokio::test]
async fn axum_router_layer_negotiates_the_binary_route_only() {
    bounded(async {
        let app = Router::new()
            .route("/fhir/Binary/{id}", get(read_binary_json))
            .layer(BinaryNegotiationLayer::new());
        let got = read(
            app.clone()
                .oneshot(axum_get("/fhir/Binary/example"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(sha256_hex(&got.body), PDF_SHA256);

        let got = read(
            app.clone()
                .oneshot(axum_get("/fhir/Binary/nope"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert_eq!(got.header("vary"), Some("Accept"));

        // The fallback is wrapped too, but not negotiated: its response comes back untouched.
        let response = app.oneshot(axum_get("/elsewhere")).await.unwrap();
        assert_eq!(
            response.extensions().get::<Negotiation>(),
            Some(&Negotiation::NotNegotiated)
        );
        let got = read(response).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert_eq!(got.header("vary"), None);
    })
    .await
}

#[tokio::test]
async fn axum_route_layer_covers_matched_routes_only() {
    bounded(async {
        let app = Router::new()
            .route("/fhir/Binary/{id}", get(read_binary_json))
            .route_layer(BinaryNegotiationLayer::new());
        let got = read(
            app.clone()
                .oneshot(axum_get("/fhir/Binary/example?_format=json"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.header("content-type"), Some("application/fhir+json"));
        assert_eq!(got.body, fixture("r4/binary-example.json"));

        let got = read(
            app.clone()
                .oneshot(axum_get("/fhir/Binary/example"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(sha256_hex(&got.body), PDF_SHA256);

        let got = read(app.oneshot(axum_get("/elsewhere")).await.unwrap()).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert_eq!(got.header("vary"), None);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// tonic: the layer on the server builder, gRPC next to a Binary route.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_server_layer_serves_binary_and_passes_grpc_through() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tonic::service::Routes;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::Server;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    bounded(async {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("fhir", tonic_health::ServingStatus::Serving)
            .await;
        let router = Routes::new(health)
            .into_axum_router()
            .route("/fhir/Binary/{id}", get(read_binary_json));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .accept_http1(true)
                .layer(BinaryNegotiationLayer::new())
                .add_routes(Routes::from(router))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );

        // gRPC goes through the layer untouched (POST, application/grpc).
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let answer = health
            .check(HealthCheckRequest {
                service: "fhir".into(),
            })
            .await
            .unwrap();
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
        let missing = health
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        // The Binary route, over HTTP/1.1 and over HTTP/2.
        for http2 in [false, true] {
            let client = Client::builder(TokioExecutor::new())
                .http2_only(http2)
                .build_http::<Full<Bytes>>();
            let uri = format!("http://{addr}/fhir/Binary/example");
            let response = client.request(request(&uri, &[])).await.unwrap();
            let got = read(response).await;
            assert_eq!(got.status, StatusCode::OK, "http2: {http2}");
            assert_eq!(got.header("content-type"), Some("application/pdf"));
            assert_eq!(sha256_hex(&got.body), PDF_SHA256);
        }

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    })
    .await
}
