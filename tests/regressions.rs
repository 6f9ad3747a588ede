//! Faults found by the differential test and the fuzz target, kept as plain cases.

mod common;

use common::*;
use http::StatusCode;

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
        let json = serde_json::json!({
            "resourceType": "Binary",
            "contentType": content_type,
            "data": "SGVsbG8=",
        });
        let got = get(json.to_string().as_bytes(), Split::Whole).await;
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
        let json = serde_json::json!({
            "resourceType": "Binary",
            "contentType": content_type,
            "data": "SGVsbG8=",
        });
        let got = get(json.to_string().as_bytes(), Split::Whole).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{content_type:?}: {:?}",
            got.body
        );
        assert_eq!(got.bytes().as_ref(), b"Hello");
    }
}
