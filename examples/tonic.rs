//! The layer on a tonic server, next to a gRPC service: gRPC passes through untouched, and the
//! Binary route (plain HTTP/1.1 or HTTP/2) is negotiated.
//!
//! ```sh
//! cargo run --example tonic           # listens on 127.0.0.1:3002
//! cargo run --example tonic -- 127.0.0.1:0
//! ```

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tower_fhir_binary::BinaryNegotiationLayer;

/// The Binary the server holds: the official HL7 example JPEG, in FHIR JSON.
const JPEG_BINARY: &str = include_str!("../tests/fixtures/r4/binary-f006.json");

async fn read_binary_json(Path(id): Path<String>) -> Response {
    if id == "f006" {
        ([("content-type", "application/fhir+json")], JPEG_BINARY).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/fhir+json")],
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
        )
            .into_response()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3002".into());

    // A ready-made gRPC service (grpc.health.v1.Health), and an HTTP route beside it.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = Routes::new(health)
        .into_axum_router()
        .route("/fhir/Binary/{id}", get(read_binary_json));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("tonic example listening on http://{local} (gRPC and HTTP)");
    println!("  curl -o f006.jpg http://{local}/fhir/Binary/f006              # the JPEG itself");
    println!("  curl 'http://{local}/fhir/Binary/f006?_format=xml' | head -c 300");
    println!("  # gRPC health check, untouched by the layer (answer ends in 08 01: SERVING):");
    println!(
        "  printf '\\0\\0\\0\\0\\0' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' \
         -H 'te: trailers' --data-binary @- http://{local}/grpc.health.v1.Health/Check | od -An -tx1"
    );

    Server::builder()
        // Without this, tonic serves HTTP/2 only.
        .accept_http1(true)
        .layer(BinaryNegotiationLayer::new())
        .add_routes(Routes::from(routes))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
