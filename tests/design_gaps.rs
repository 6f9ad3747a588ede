//! Behaviour that DESIGN.md ("Native response headers") promises and the core does not provide
//! yet. Each test states the contract and is ignored until the core implements it; run them
//! with `cargo test --test design_gaps -- --ignored`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_fhir_binary::BinaryNegotiationLayer;

/// One GET through the default layer in front of a server answering with `json`.
async fn get(json: &'static str, headers: &[(&str, &str)]) -> Response<Bytes> {
    let legacy = service_fn(move |_request: Request<Full<Bytes>>| async move {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/fhir+json")
                .body(Full::new(Bytes::from_static(json.as_bytes())))
                .unwrap(),
        )
    });
    let service = ServiceBuilder::new()
        .layer(BinaryNegotiationLayer::new())
        .service(legacy);
    let mut request = Request::get("/Binary/1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .oneshot(request.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

const HTML: &str =
    r#"{"resourceType":"Binary","id":"1","contentType":"text/html","data":"PGgxPmhpPC9oMT4="}"#;
const SVG: &str =
    r#"{"resourceType":"Binary","id":"1","contentType":"image/svg+xml","data":"PHN2Zy8+"}"#;
const PDF_WITH_META: &str = r#"{"resourceType":"Binary","id":"1","meta":{"versionId":"3","lastUpdated":"2024-01-02T03:04:05Z"},"contentType":"application/pdf","securityContext":{"reference":"DocumentReference/7"},"data":"JVBERi0xLjQK"}"#;

#[tokio::test]
#[ignore = "core: no Content-Security-Policy: sandbox / Content-Disposition: attachment on active content"]
async fn active_content_is_sandboxed_and_downloaded() {
    for json in [HTML, SVG] {
        let response = get(json, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-security-policy"], "sandbox");
        let disposition = response.headers()["content-disposition"].to_str().unwrap();
        assert!(disposition.starts_with("attachment"), "{disposition}");
    }
}

#[tokio::test]
#[ignore = "core: no ETag from meta.versionId, Last-Modified from meta.lastUpdated, X-Security-Context"]
async fn native_headers_come_from_the_binary_metadata() {
    let response = get(PDF_WITH_META, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert_eq!(response.headers()["etag"], "W/\"3\"");
    assert_eq!(
        response.headers()["last-modified"],
        "Tue, 02 Jan 2024 03:04:05 GMT"
    );
    assert_eq!(
        response.headers()["x-security-context"],
        "DocumentReference/7"
    );
    // Passive content stays inline, without a sandbox.
    assert!(response.headers().get("content-security-policy").is_none());
}

#[tokio::test]
#[ignore = "core: Range is removed and never answered with 206 / 416"]
async fn range_gets_206_on_the_native_document() {
    let response = get(PDF_WITH_META, &[("range", "bytes=0-3")]).await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.headers()["content-range"], "bytes 0-3/9");
    assert_eq!(response.body(), "%PDF");

    let response = get(PDF_WITH_META, &[("range", "bytes=100-")]).await;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
#[ignore = "core: If-None-Match is not answered with 304 when the inner did not"]
async fn if_none_match_gets_304() {
    let response = get(PDF_WITH_META, &[("if-none-match", "W/\"3\"")]).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert!(response.body().is_empty());
    assert_eq!(response.headers()["vary"], "Accept");
}
