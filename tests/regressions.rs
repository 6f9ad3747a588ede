//! Faults found by the differential test and the fuzz target, kept as plain cases.

mod common;

use common::*;
use http::StatusCode;
use tower::ServiceExt;
use tower_fhir_binary::BinaryNegotiationLayer;
use tower_layer::Layer;

/// A Binary whose document is `Hello`, with this `contentType`, fetched as the document.
async fn hello_as(content_type: &str, how: Split) -> Got {
    let json = serde_json::json!({
        "resourceType": "Binary",
        "contentType": content_type,
        "data": "SGVsbG8=",
    });
    get(json.to_string().as_bytes(), how).await
}

/// `text/plain; charset=` has an empty parameter value, which RFC 9110 does not allow (a value
/// is a token or a quoted-string); the media type parser took it and the layer sent it on as
/// the document's Content-Type. Wildcards and names outside RFC 6838's characters likewise.
#[tokio::test]
async fn content_types_the_media_type_parser_is_lenient_about_are_refused() {
    for content_type in [
        "text/plain; charset=",
        "text/plain;charset=;a=b",
        "*/*",
        "image/*",
        "te%t/plain",
        "text/pl'in",
        "text/plain; ch*rset=utf-8",
        "text/plain; charset=utf%8",
        "\u{a0}text/plain",
    ] {
        let got = hello_as(content_type, Split::Whole).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{content_type:?}");
        assert!(
            got.diagnostics().contains("contentType"),
            "{content_type:?}: {}",
            got.diagnostics()
        );
    }
    for content_type in [
        "text/plain; charset=\"\"",
        "application/hl7-v3+xml; charset=\"UTF-8\"",
        " image/png ",
        "image/png;",
        "application/vnd.ms-excel",
    ] {
        let got = hello_as(content_type, Split::Whole).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{content_type:?}: {:?}",
            got.body
        );
        assert_eq!(got.bytes().as_ref(), b"Hello");
    }
}

/// RFC 9110 lets a quoted parameter value hold obs-text, so a `contentType` with non-ASCII
/// text there (from a JSON escape such as `\u008e`, or as it stands) is served, its header the
/// UTF-8 octets of the JSON string; outside a quoted string, non-ASCII is not a media type. The
/// fuzz target found the reference reading the header as text, which `to_str` refuses.
#[tokio::test]
async fn non_ascii_content_type_text_is_served_only_inside_a_quoted_parameter() {
    for content_type in [
        "application/hl7-v3+xml; charset=\"x\u{8e}y\"",
        "text/plain; title=\"r\u{e9}sum\u{e9}\"",
    ] {
        let got = hello_as(content_type, Split::Every(1)).await;
        assert_eq!(got.status, StatusCode::OK, "{content_type:?}");
        assert_eq!(
            got.headers["content-type"].as_bytes(),
            content_type.as_bytes(),
            "{content_type:?}"
        );
        assert_eq!(got.bytes().as_ref(), b"Hello");
    }
    for content_type in ["text/pl\u{e9}in", "text/plain; charset=utf\u{e9}8"] {
        let got = hello_as(content_type, Split::Every(1)).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{content_type:?}");
        assert!(
            got.diagnostics().contains("is not a media type"),
            "{content_type:?}: {}",
            got.diagnostics()
        );
    }
}

/// Members sorted by name (PostgreSQL's `jsonb`, `sort_keys`, `jq -S`) put a
/// DocumentReference's `content` array before its `resourceType`. The layer took `content`
/// for a Binary's payload and answered 502 "not a JSON string" when it negotiated every route.
/// Before `resourceType`, a `data` or `content` that is not a string is now read as any other
/// value; a Binary that turns out to carry one is still refused.
#[tokio::test]
async fn a_payload_name_before_the_resource_type_is_not_taken_for_a_binarys_payload() {
    let sorted = r#"{"content":[{"attachment":{"contentType":"text/plain","data":"aGk="}}],"resourceType":"DocumentReference","status":"current"}"#;
    let layer = BinaryNegotiationLayer::new().select_all();
    let call = |legacy: Legacy, request: http::Request<http_body_util::Empty<bytes::Bytes>>| {
        let service = layer.layer(legacy);
        async move { read(service.oneshot(request).await.unwrap()).await }
    };
    for how in splits(sorted.len()) {
        let legacy = || Legacy::binary(sorted.as_bytes().to_vec(), how.clone());
        for accept in [&[][..], &["application/fhir+json"], &["*/*"]] {
            let got = call(legacy(), request("GET", "/DocumentReference/1", accept)).await;
            assert_eq!(got.status, StatusCode::OK, "{how:?} {accept:?}");
            assert_eq!(got.bytes().as_ref(), sorted.as_bytes(), "{how:?}");
        }
        let got = call(
            legacy(),
            request("GET", "/DocumentReference/1?_format=xml", &[]),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{how:?}");
        assert_eq!(
            got.bytes().as_ref(),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><DocumentReference xmlns="http://hl7.org/fhir">"#,
                r#"<status value="current"/><content><attachment><contentType value="text/plain"/>"#,
                r#"<data value="aGk="/></attachment></content></DocumentReference>"#
            )
            .as_bytes(),
            "{how:?}"
        );
    }
    for binary in [
        r#"{"data":["aGk="],"resourceType":"Binary","contentType":"text/plain"}"#,
        r#"{"content":{"a":1},"contentType":"text/plain","resourceType":"Binary"}"#,
    ] {
        for how in splits(binary.len()) {
            let got = get(binary.as_bytes(), how.clone()).await;
            assert_bad_gateway(&got, "is not a JSON string", &format!("{binary} {how:?}"));
        }
    }
}
