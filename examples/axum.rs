//! The layer on the Binary route of an axum app.
//!
//! ```sh
//! cargo run --example axum            # listens on 127.0.0.1:3000
//! cargo run --example axum -- 127.0.0.1:0
//! ```

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_fhir_binary::BinaryNegotiationLayer;

/// The Binary the app holds: the official HL7 example JPEG, in FHIR JSON.
const JPEG_BINARY: &str = include_str!("../tests/fixtures/r4/binary-f006.json");

/// The app's existing handler: it only knows how to answer with Binary JSON.
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

async fn metadata() -> impl IntoResponse {
    (
        [("content-type", "application/fhir+json")],
        r#"{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json","xml"]}"#,
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());

    // On the whole router: the layer negotiates the requests to the Binary endpoint and
    // passes every other one, `/fhir/metadata` and the fallback included, untouched.
    let app = Router::new()
        .route("/fhir/Binary/{id}", get(read_binary_json))
        .route("/fhir/metadata", get(metadata))
        .layer(BinaryNegotiationLayer::new());

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let url = format!("http://{}/fhir", listener.local_addr()?);
    println!("axum example listening on {url}");
    println!("  curl -o f006.jpg {url}/Binary/f006                            # the JPEG itself");
    println!("  curl -H 'Accept: application/fhir+json' {url}/Binary/f006     # FHIR JSON");
    println!("  curl '{url}/Binary/f006?_format=xml'                          # FHIR XML");
    println!(
        "  curl -i {url}/metadata                                        # other routes as before"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
