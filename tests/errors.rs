//! Bad input from the inner service: a clear error, never a panic, never a silently truncated
//! 200, never a header built from unchecked input.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use tower_fhir_binary::{BinaryNegotiationLayer, InvalidBinary};

/// Runs `json` through the layer, streamed (size unknown) and read whole (size known), with
/// every split; checks that the streamed answer is 502 with `diagnostic` when the fault comes
/// before the payload, or a broken transfer when it comes after the head went out.
async fn assert_rejected(json: &[u8], diagnostic: &str, fault_after_head: bool) {
    for how in splits(json.len()) {
        for exact in [false, true] {
            let body = json.to_vec();
            let how2 = how.clone();
            let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", move || {
                let frames = Frames::new(split(&body, &how2));
                if exact {
                    frames.with_exact_size()
                } else {
                    frames
                }
            });
            let got = call(
                &BinaryNegotiationLayer::new(),
                legacy,
                request("GET", "/Binary/1", &[]),
            )
            .await;
            let context = format!("{how:?}, exact size {exact}");
            if fault_after_head && !exact {
                assert_eq!(got.status, StatusCode::OK, "{context}");
                let error = got.body.as_ref().expect_err(&context);
                let invalid = error
                    .downcast_ref::<InvalidBinary>()
                    .unwrap_or_else(|| panic!("{context}: {error}"));
                assert!(
                    invalid.message().contains(diagnostic),
                    "{context}: {invalid}"
                );
            } else {
                assert_bad_gateway(&got, diagnostic, &context);
            }
        }
    }
}

const HEAD: &str = r#"{"resourceType":"Binary","id":"1","contentType":"text/plain","data":"#;

#[tokio::test]
async fn invalid_json_before_the_payload() {
    assert_rejected(
        br#"{"resourceType":"Binary","id":1 2}"#,
        "invalid JSON",
        false,
    )
    .await;
    assert_rejected(
        br#"{"resourceType":"Binary" "id":"1"}"#,
        "invalid JSON",
        false,
    )
    .await;
    assert_rejected(br#"["resourceType","Binary"]"#, "not a JSON object", false).await;
    assert_rejected(b"", "empty", false).await;
    assert_rejected(br#"{"resourceType":"Binary","id":"a"#, "ends before", false).await;
}

#[tokio::test]
async fn bad_base64_breaks_the_transfer_or_is_a_502() {
    let cases = [
        ("\"SGVs-G8=\"}", "invalid base64 character '-'"),
        ("\"SGVsbG8\"}", "not a multiple of 4"),
        ("\"SGVsbG8=SGVs\"}", "data after base64 padding"),
        ("\"SG=sbG8=\"}", "padding"),
        ("\"SGVsbG9=\"}", "non-canonical"),
        (
            "\"SGVs\\u0022bG8=\"}",
            "'\"' (0x22, written as a JSON escape)",
        ),
        ("\"SGVs\\\"bG8=\"}", "written as a JSON escape"),
    ];
    for (tail, diagnostic) in cases {
        let json = format!("{HEAD}{tail}");
        assert_rejected(json.as_bytes(), diagnostic, true).await;
    }
}

#[tokio::test]
async fn faults_after_the_payload_break_the_transfer() {
    assert_rejected(
        format!("{HEAD}\"SGVsbG8=\",\"data\":\"SGVsbG8=\"}}").as_bytes(),
        "duplicate member `data`",
        true,
    )
    .await;
    assert_rejected(
        format!("{HEAD}\"SGVsbG8=\",\"content\":\"SGVsbG8=\"}}").as_bytes(),
        "both `data` and `content`",
        true,
    )
    .await;
    assert_rejected(
        format!("{HEAD}\"SGVsbG8=\"}} x").as_bytes(),
        "after the end",
        true,
    )
    .await;
    assert_rejected(
        format!("{HEAD}\"SGVsbG8=\"").as_bytes(),
        "ends before",
        true,
    )
    .await;
    assert_rejected(
        format!("{HEAD}\"SGVsbG8=").as_bytes(),
        "ends inside `data`",
        true,
    )
    .await;
}

#[tokio::test]
async fn content_type_faults_are_502() {
    assert_rejected(
        br#"{"resourceType":"Binary","data":"SGVsbG8="}"#,
        "no contentType",
        false,
    )
    .await;
    assert_rejected(
        br#"{"resourceType":"Binary","contentType":"text/plain\r\nX-Injected: yes","data":"SGVsbG8="}"#,
        "cannot be sent as a header",
        false,
    )
    .await;
    assert_rejected(
        br#"{"resourceType":"Binary","contentType":"not a media type","data":"SGVsbG8="}"#,
        "not a media type",
        false,
    )
    .await;
    assert_rejected(
        br#"{"resourceType":"Binary","contentType":"","data":"SGVsbG8="}"#,
        "empty",
        false,
    )
    .await;
    assert_rejected(
        br#"{"resourceType":"Binary","contentType":42,"data":"SGVsbG8="}"#,
        "not a string",
        false,
    )
    .await;
    assert_rejected(
        br#"{"resourceType":"Binary","contentType":"text/plain","contentType":"text/html","data":"SGVsbG8="}"#,
        "duplicate member `contentType`",
        false,
    )
    .await;
}

#[tokio::test]
async fn a_payload_that_is_not_a_string_is_a_502() {
    assert_rejected(
        br#"{"resourceType":"Binary","contentType":"text/plain","data":["SGVsbG8="]}"#,
        "`data` is not a JSON string",
        false,
    )
    .await;
}

#[tokio::test]
async fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    let json = format!(
        r#"{{"resourceType":"Binary","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let got = get(json.as_bytes(), Split::Every(4096)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(
        got.diagnostics().contains("nested deeper"),
        "{}",
        got.diagnostics()
    );
}

#[tokio::test]
async fn metadata_larger_than_the_cap_is_a_502() {
    let json = format!(
        r#"{{"resourceType":"Binary","id":"{}","contentType":"text/plain","data":"SGVsbG8="}}"#,
        "a".repeat(100)
    );
    let layer = BinaryNegotiationLayer::new().max_metadata_size(64);
    let got = call(
        &layer,
        Legacy::binary(json.into_bytes(), Split::Whole),
        request("GET", "/Binary/1", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(got.diagnostics().contains("exceed the limit of 64 bytes"));
}

#[tokio::test]
async fn content_type_after_a_payload_larger_than_the_buffer_is_a_502() {
    let json = format!(
        r#"{{"resourceType":"Binary","data":"{}","contentType":"text/plain"}}"#,
        "QUFB".repeat(1000)
    );
    let layer = BinaryNegotiationLayer::new().reorder_buffer_limit(1024);
    let got = call(
        &layer,
        Legacy::binary(json.into_bytes(), Split::Every(100)),
        request("GET", "/Binary/1", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(
        got.diagnostics().contains("within the first 1024 bytes"),
        "{}",
        got.diagnostics()
    );
}

#[tokio::test]
async fn other_resources_and_errors_pass_through_untouched() {
    let patient = br#"{"resourceType":"Patient","id":"p","data":"not base64!"}"#.to_vec();
    for how in splits(patient.len()) {
        let got = get(&patient, how).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes().as_ref(), patient.as_slice());
        assert_eq!(got.header("vary"), Some("Accept"));
    }
    let outcome =
        br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#
            .to_vec();
    let body = outcome.clone();
    let legacy = Legacy::new(StatusCode::NOT_FOUND, "application/fhir+json", move || {
        Frames::new(vec![Bytes::from(body.clone())])
    });
    let got = call(
        &BinaryNegotiationLayer::new(),
        legacy,
        request("GET", "/Binary/nope", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.bytes().as_ref(), outcome.as_slice());
    assert_eq!(got.header("vary"), Some("Accept"));
}

#[tokio::test]
async fn an_inner_body_error_before_the_head_is_a_502() {
    let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", || {
        Frames::new(vec![Bytes::from_static(
            br#"{"resourceType":"Binary","contentType":"te"#,
        )])
        .failing_after("connection reset by peer")
    });
    let got = call(
        &BinaryNegotiationLayer::new(),
        legacy,
        request("GET", "/Binary/1", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(got.diagnostics().contains("connection reset by peer"));
}

#[tokio::test]
async fn an_inner_body_error_after_the_head_breaks_the_transfer() {
    let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", || {
        Frames::new(vec![Bytes::from(format!("{HEAD}\"SGVsbG8gd29y"))])
            .failing_after("connection reset by peer")
    });
    let got = call(
        &BinaryNegotiationLayer::new(),
        legacy,
        request("GET", "/Binary/1", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-type"), Some("text/plain"));
    let error = got.body.expect_err("a broken transfer");
    assert_eq!(error.to_string(), "connection reset by peer");
}
