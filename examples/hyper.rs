//! The layer in a plain hyper 1 server, served with hyper-util.
//!
//! ```sh
//! cargo run --example hyper           # listens on 127.0.0.1:3001
//! cargo run --example hyper -- 127.0.0.1:0
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::{service_fn, ServiceBuilder};
use tower_fhir_binary::BinaryNegotiationLayer;

/// The Binary the server holds: the official HL7 example PDF, in FHIR JSON.
const PDF_BINARY: &str = include_str!("../tests/fixtures/r4/binary-example.json");

/// A legacy FHIR endpoint: Binary JSON, whatever the client asked for.
async fn legacy<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if request.uri().path() == "/fhir/Binary/example" {
        (StatusCode::OK, PDF_BINARY)
    } else {
        (
            StatusCode::NOT_FOUND,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
        )
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let service = ServiceBuilder::new()
        .layer(BinaryNegotiationLayer::new())
        .service(service_fn(legacy));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let url = format!("http://{}/fhir", listener.local_addr()?);
    println!("hyper example listening on {url}");
    println!("  curl -o example.pdf {url}/Binary/example                      # the PDF itself");
    println!("  curl --http2-prior-knowledge -I {url}/Binary/example          # HTTP/2, HEAD");
    println!("  curl '{url}/Binary/example?_format=json' | head -c 200        # FHIR JSON");
    println!("  curl -H 'Accept: application/fhir+xml' {url}/Binary/example | head -c 300");

    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let service = TowerToHyperService::new(service.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection: {e}");
            }
        });
    }
}
