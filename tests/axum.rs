//! The layer on an axum 0.8 router, through `Router::layer`.

mod common;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::*;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_fhir_binary::BinaryNegotiationLayer;

async fn read_binary(Path(id): Path<String>) -> axum::response::Response {
    let path = match id.as_str() {
        "example" => "r4/binary-example.json",
        "f006" => "r4/binary-f006.json",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [(header::CONTENT_TYPE, "application/fhir+json")],
        fixture(path),
    )
        .into_response()
}

fn app() -> Router {
    Router::new()
        .route("/fhir/Binary/{id}", get(read_binary))
        .layer(BinaryNegotiationLayer::new())
}

#[tokio::test]
async fn router_layer_serves_the_document() {
    let response = app()
        .oneshot(
            Request::get("/fhir/Binary/example")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert_eq!(response.headers()["vary"], "Accept");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), PDF_LEN);
    assert_eq!(sha256_hex(&body), PDF_SHA256);
}

#[tokio::test]
async fn router_layer_serves_fhir_json_and_xml() {
    let response = app()
        .oneshot(
            Request::get("/fhir/Binary/f006")
                .header("accept", "application/fhir+json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/fhir+json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), fixture("r4/binary-f006.json").as_slice());

    let response = app()
        .oneshot(
            Request::get("/fhir/Binary/f006?_format=xml")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/fhir+xml;charset=utf-8"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_schema_valid(&body, "r4");
}

#[tokio::test]
async fn unknown_routes_keep_their_status() {
    let response = app()
        .oneshot(
            Request::get("/fhir/Binary/missing")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["vary"], "Accept");
}
