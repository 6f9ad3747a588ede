//! Faults found by the differential test and the fuzz target, kept as plain cases.

mod common;

use common::*;
use http::StatusCode;

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
