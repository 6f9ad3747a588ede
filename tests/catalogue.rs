//! The catalogue of bad inputs in `docs/bad-inputs.md`, one test case per row: what the inner
//! service sends, and what the client gets. Each case runs with every frame split, streamed
//! (size unknown) and read whole (size known), and the document's row must say what the test
//! checks.

mod common;

use common::*;
use http::StatusCode;
use tower_fhir_binary::{BinaryNegotiationLayer, InvalidBinary};

/// What the client gets.
#[derive(Clone, Debug)]
enum Gets {
    /// 502 with an OperationOutcome whose diagnostics contain the text, whichever way the body
    /// comes.
    BadGateway(&'static str),
    /// Streamed: 200 with the document's head, then a body error ([`InvalidBinary`]) containing
    /// the text. Read whole (known size below the read-whole limit): 502 with that text.
    Broken(&'static str),
    /// 200 with the inner body untouched.
    PassThrough,
    /// 200 with this document.
    Document(&'static [u8]),
}

struct Case {
    id: &'static str,
    body: Vec<u8>,
    layer: BinaryNegotiationLayer,
    gets: Gets,
    /// The frame splits to run with, when not every one applies.
    splits: Option<Vec<Split>>,
}

const CT: &str = r#"{"resourceType":"Binary","id":"1","contentType":"text/plain","data":"#;

fn binary(data: &str) -> Vec<u8> {
    format!("{CT}{data}}}").into_bytes()
}

fn case(id: &'static str, body: impl Into<Vec<u8>>, gets: Gets) -> Case {
    Case {
        id,
        body: body.into(),
        layer: BinaryNegotiationLayer::new(),
        gets,
        splits: None,
    }
}

fn catalogue() -> Vec<Case> {
    use Gets::*;
    let deep = 100_000;
    vec![
        case("empty-body", "", BadGateway("the body is empty")),
        case(
            "invalid-json",
            r#"{"resourceType":"Binary","id":1 2}"#,
            BadGateway("invalid JSON: expected ',' or '}', found '2'"),
        ),
        case(
            "invalid-json-in-skipped-member",
            r#"{"resourceType":"Binary","extension":[{"url":"x",}],"contentType":"text/plain","data":"SGVsbG8="}"#,
            BadGateway("invalid JSON: unexpected '}'"),
        ),
        case(
            "not-an-object",
            r#"[{"resourceType":"Binary"}]"#,
            BadGateway("the body is not a JSON object"),
        ),
        case(
            "wrong-resource-type",
            r#"{"resourceType":"Patient","contentType":"text/plain","data":"not base64!"}"#,
            PassThrough,
        ),
        case(
            "resource-type-not-a-string",
            r#"{"resourceType":42,"contentType":"text/plain","data":"SGVsbG8="}"#,
            PassThrough,
        ),
        case(
            "no-data",
            r#"{"resourceType":"Binary","id":"1","contentType":"text/plain"}"#,
            PassThrough,
        ),
        case(
            "missing-content-type",
            r#"{"resourceType":"Binary","data":"SGVsbG8="}"#,
            BadGateway("the Binary has no contentType"),
        ),
        case(
            "empty-content-type",
            r#"{"resourceType":"Binary","contentType":" ","data":"SGVsbG8="}"#,
            BadGateway("the Binary's contentType is empty"),
        ),
        case(
            "content-type-not-a-string",
            r#"{"resourceType":"Binary","contentType":["text/plain"],"data":"SGVsbG8="}"#,
            BadGateway("the Binary's contentType is not a string"),
        ),
        case(
            "content-type-crlf",
            r#"{"resourceType":"Binary","contentType":"text/plain\r\nSet-Cookie: a=b","data":"SGVsbG8="}"#,
            BadGateway("cannot be sent as a header"),
        ),
        case(
            "content-type-not-a-token",
            r#"{"resourceType":"Binary","contentType":"text/pl ain","data":"SGVsbG8="}"#,
            BadGateway("is not a media type"),
        ),
        case(
            "content-type-empty-parameter",
            r#"{"resourceType":"Binary","contentType":"text/plain; charset=","data":"SGVsbG8="}"#,
            BadGateway("is not a media type"),
        ),
        case(
            "content-type-wildcard",
            r#"{"resourceType":"Binary","contentType":"*/*","data":"SGVsbG8="}"#,
            BadGateway("is not a media type"),
        ),
        case(
            "duplicate-before-payload",
            r#"{"resourceType":"Binary","contentType":"text/plain","contentType":"text/html","data":"SGVsbG8="}"#,
            BadGateway("duplicate member `contentType`"),
        ),
        case(
            "duplicate-resource-type",
            r#"{"resourceType":"Binary","resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="}"#,
            BadGateway("duplicate member `resourceType`"),
        ),
        case(
            "duplicate-after-payload",
            binary(r#""SGVsbG8=","id":"2""#),
            Broken("duplicate member `id`"),
        ),
        case(
            "duplicate-data",
            binary(r#""SGVsbG8=","data":"SGVsbG8=""#),
            Broken("duplicate member `data`"),
        ),
        case(
            "duplicate-unknown-member",
            binary(r#""SGVsbG8=","text":1,"text":2"#),
            Document(b"Hello"),
        ),
        case(
            "data-and-content",
            binary(r#""SGVsbG8=","content":"SGVsbG8=""#),
            Broken("the Binary has both `data` and `content`"),
        ),
        case(
            "content-and-data-before-content-type",
            r#"{"resourceType":"Binary","content":"SGVsbG8=","data":"SGVsbG8=","contentType":"text/plain"}"#,
            BadGateway("the Binary has both `data` and `content`"),
        ),
        case(
            "payload-not-a-string",
            r#"{"resourceType":"Binary","contentType":"text/plain","data":["SGVsbG8="]}"#,
            BadGateway("`data` is not a JSON string"),
        ),
        case(
            "payload-not-a-string-before-resource-type",
            r#"{"data":["SGVsbG8="],"resourceType":"Binary","contentType":"text/plain"}"#,
            BadGateway("`data` is not a JSON string"),
        ),
        case(
            "content-array-before-resource-type",
            r#"{"content":[{"attachment":{"data":"SGVsbG8="}}],"resourceType":"DocumentReference","status":"current"}"#,
            PassThrough,
        ),
        case(
            "base64-bad-character",
            binary(r#""SGVs-G8=""#),
            Broken("invalid base64 character '-' (0x2d) at position 4"),
        ),
        case(
            "base64-non-ascii",
            binary("\"SGVsbG8é\""),
            Broken("invalid base64 character 0xc3 (not ASCII) at position 7"),
        ),
        case(
            "base64-raw-control-character",
            binary("\"SGVs\tbG8=\""),
            Broken("control character 0x09 inside a JSON string at position 4"),
        ),
        case(
            "base64-length",
            binary(r#""SGVsbG8""#),
            Broken("base64 length is not a multiple of 4"),
        ),
        case(
            "base64-padding-before-the-end",
            binary(r#""SG=sbG8=""#),
            Broken("base64 padding '=' before the end of the data at position 2"),
        ),
        case(
            "base64-misplaced-padding",
            binary(r#""SGVsS===""#),
            Broken("misplaced base64 padding '=' at position 5"),
        ),
        case(
            "base64-extra-padding",
            binary(r#""SGVsbA===""#),
            Broken("too much base64 padding"),
        ),
        case(
            "base64-junk-after-padding",
            binary(r#""SGVsbG8=SGVs""#),
            Broken("data after base64 padding at position 8"),
        ),
        case(
            "base64-non-canonical",
            binary(r#""SGVsbG9=""#),
            Broken("non-canonical base64: non-zero trailing bits in '9' at position 6"),
        ),
        case(
            "base64-url-safe",
            binary(r#""SGVs_G8=""#),
            Broken("invalid base64 character '_' (0x5f) at position 4"),
        ),
        case(
            "base64-escaped-non-base64",
            binary(r#""SGVs\u0021bG8=""#),
            Broken("invalid base64 character '!' (0x21, written as a JSON escape) at position 4"),
        ),
        case(
            "base64-escaped-quote",
            binary(r#""SGVs\"bG8=""#),
            Broken("invalid base64 character '\"' (0x22, written as a JSON escape)"),
        ),
        case(
            "base64-escaped-surrogate",
            binary(r#""SGVs\ud83d\ude00""#),
            Broken("is not a base64 character"),
        ),
        case(
            "base64-whitespace-and-escapes",
            binary(r#"" SGVs\nbG8\u003d\r\n""#),
            Document(b"Hello"),
        ),
        case(
            "deep-nesting",
            format!(
                r#"{{"resourceType":"Binary","extension":{}{}}}"#,
                "[".repeat(deep),
                "]".repeat(deep)
            ),
            BadGateway("JSON nested deeper than the limit of 128 levels"),
        ),
        case(
            "deep-nesting-after-payload",
            binary(&format!(
                r#""SGVsbG8=","meta":{}{}"#,
                r#"{"a":"#.repeat(deep),
                "}".repeat(deep)
            )),
            Broken("JSON nested deeper than the limit of 128 levels"),
        ),
        case(
            "id-over-the-metadata-cap",
            format!(
                r#"{{"resourceType":"Binary","id":"{}","contentType":"text/plain","data":"SGVsbG8="}}"#,
                "a".repeat(70_000)
            ),
            BadGateway("the Binary's elements other than its payload exceed the limit of 65536 bytes"),
        ),
        case(
            "meta-over-the-metadata-cap",
            binary(&format!(
                r#""SGVsbG8=","meta":{{"tag":[{}{{}}]}}"#,
                r#"{"code":"x"},"#.repeat(6_000)
            )),
            Broken("the Binary's elements other than its payload exceed the limit of 65536 bytes"),
        ),
        Case {
            id: "content-type-after-a-large-payload",
            body: format!(
                r#"{{"resourceType":"Binary","data":"{}","contentType":"text/plain"}}"#,
                "QUFB".repeat(1_000)
            )
            .into_bytes(),
            layer: BinaryNegotiationLayer::new().reorder_buffer_limit(1024),
            gets: BadGateway(
                "the Binary's resourceType and contentType were not found within the first 1024 bytes",
            ),
            // The limit is checked between frames: a frame is in memory already, and one that
            // holds the deciding member is decided.
            splits: Some(vec![Split::Every(1), Split::Every(100), Split::Every(1024)]),
        },
        case(
            "number-out-of-range-in-meta",
            r#"{"resourceType":"Binary","meta":{"versionId":1e400},"contentType":"text/plain","data":"SGVsbG8="}"#,
            BadGateway("invalid JSON: number out of range"),
        ),
        case(
            "invalid-utf8",
            b"{\"resourceType\":\"Binary\",\"text\":\"\xc3\x28\",\"contentType\":\"text/plain\",\"data\":\"SGVsbG8=\"}".to_vec(),
            BadGateway("invalid UTF-8 inside a JSON string"),
        ),
        case(
            "lone-surrogate",
            r#"{"resourceType":"Binary","text":"\ud800x","contentType":"text/plain","data":"SGVsbG8="}"#,
            BadGateway("invalid JSON: lone surrogate in \\u escape"),
        ),
        case(
            "control-character-in-a-string",
            b"{\"resourceType\":\"Binary\",\"id\":\"a\x01\",\"contentType\":\"text/plain\",\"data\":\"SGVsbG8=\"}".to_vec(),
            BadGateway("invalid JSON: control character 0x01 inside a string"),
        ),
        case(
            "junk-after-the-object",
            binary(r#""SGVsbG8=""#).into_iter().chain(*b" x").collect::<Vec<u8>>(),
            Broken("data after the end of the JSON object"),
        ),
        case(
            "ends-before-the-head",
            r#"{"resourceType":"Binary","contentType":"text/pl"#,
            BadGateway("the body ends before the JSON object is closed"),
        ),
        case(
            "ends-inside-the-payload",
            format!("{CT}\"SGVsbG8gd29y"),
            Broken("the body ends inside `data`"),
        ),
        case(
            "ends-after-the-payload",
            format!("{CT}\"SGVsbG8=\""),
            Broken("the body ends before the JSON object is closed"),
        ),
    ]
}

fn describe(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(120)]);
    format!("{text:?}{}", if body.len() > 120 { "..." } else { "" })
}

async fn run(case: &Case) {
    // Whole, every byte, and random cuts (fewer for the large bodies).
    let splits = if let Some(splits) = &case.splits {
        splits.clone()
    } else if case.body.len() > 10_000 {
        vec![
            Split::Whole,
            Split::Every(4096),
            Split::Random { seed: 3, cuts: 40 },
        ]
    } else {
        splits(case.body.len())
    };
    for how in splits {
        for exact in [false, true] {
            let body = case.body.clone();
            let how2 = how.clone();
            let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", move || {
                let frames = Frames::new(split(&body, &how2));
                if exact {
                    frames.with_exact_size()
                } else {
                    frames
                }
            });
            let got = call(&case.layer, legacy, request("GET", "/Binary/1", &[])).await;
            let context = format!("{}: {how:?}, exact size {exact}", case.id);
            let read_whole = exact && case.body.len() <= 256 * 1024;
            match case.gets {
                Gets::BadGateway(text) => assert_bad_gateway(&got, text, &context),
                Gets::Broken(text) if read_whole => assert_bad_gateway(&got, text, &context),
                Gets::Broken(text) => {
                    assert_eq!(got.status, StatusCode::OK, "{context}");
                    assert_eq!(got.header("content-type"), Some("text/plain"), "{context}");
                    let error = got.body.as_ref().expect_err(&context);
                    let invalid = error
                        .downcast_ref::<InvalidBinary>()
                        .unwrap_or_else(|| panic!("{context}: {error}"));
                    assert!(invalid.message().contains(text), "{context}: {invalid}");
                }
                Gets::PassThrough => {
                    assert_eq!(got.status, StatusCode::OK, "{context}");
                    assert_eq!(got.header("content-type"), Some("application/fhir+json"));
                    assert_eq!(got.bytes().as_ref(), case.body.as_slice(), "{context}");
                }
                Gets::Document(bytes) => {
                    assert_eq!(got.status, StatusCode::OK, "{context}: {:?}", got.body);
                    assert_eq!(got.header("content-type"), Some("text/plain"));
                    assert_eq!(got.bytes().as_ref(), bytes, "{context}");
                }
            }
        }
    }
    // HEAD reads the whole body before the head: every fault is a 502 without a body.
    let body = case.body.clone();
    let how = case.splits.as_ref().map_or(Split::Whole, |s| s[0].clone());
    let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", move || {
        Frames::new(split(&body, &how))
    });
    let got = call(&case.layer, legacy, request("HEAD", "/Binary/1", &[])).await;
    let want = match case.gets {
        Gets::BadGateway(_) | Gets::Broken(_) => StatusCode::BAD_GATEWAY,
        Gets::PassThrough | Gets::Document(_) => StatusCode::OK,
    };
    assert_eq!(got.status, want, "{} HEAD", case.id);
    assert_eq!(got.bytes().len(), 0, "{} HEAD", case.id);
}

#[tokio::test]
async fn every_bad_input_of_the_catalogue_gets_what_the_catalogue_says() {
    for case in catalogue() {
        run(&case).await;
    }
}

#[test]
fn the_catalogue_document_lists_every_case_with_its_answer() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bad-inputs.md"))
        .expect("docs/bad-inputs.md");
    let cases = catalogue();
    for case in &cases {
        let row = doc
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", case.id)))
            .unwrap_or_else(|| {
                panic!(
                    "docs/bad-inputs.md has no row for `{}` ({})",
                    case.id,
                    describe(&case.body)
                )
            });
        let (answer, text) = match case.gets {
            Gets::BadGateway(text) => ("502", text),
            Gets::Broken(text) => ("broken transfer", text),
            Gets::PassThrough => ("passed through", ""),
            Gets::Document(_) => ("the document", ""),
        };
        assert!(
            row.contains(answer),
            "row of `{}` must say {answer:?}",
            case.id
        );
        let escaped = text.replace('|', "\\|");
        assert!(
            row.contains(&escaped),
            "row of `{}` must quote {escaped:?}: {row}",
            case.id
        );
    }
    let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, cases.len(), "one row per case, no more");
}
