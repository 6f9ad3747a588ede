//! The raw document: the official fixtures and the ways real servers serialize them, decoded
//! to exactly the published bytes whatever the frame boundaries.

mod common;

use common::*;
use http::StatusCode;
use serde_json::Value;

struct Doc {
    content_type: String,
    base64: String,
    bytes: Vec<u8>,
}

/// The content type, base64 text (whitespace removed) and decoded bytes of a fixture.
fn load(path: &str) -> Doc {
    let value: Value = serde_json::from_slice(&fixture(path)).unwrap();
    let text = value
        .get("data")
        .or_else(|| value.get("content"))
        .and_then(Value::as_str)
        .unwrap();
    Doc {
        content_type: value["contentType"].as_str().unwrap().to_owned(),
        base64: text.chars().filter(|c| !c.is_whitespace()).collect(),
        bytes: decode_base64(text),
    }
}

async fn assert_native(json: &[u8], content_type: &str, len: usize, sha: &str) {
    for how in splits(json.len()) {
        let got = get(json, how.clone()).await;
        assert_eq!(got.status, StatusCode::OK, "{how:?}");
        assert_eq!(got.header("content-type"), Some(content_type), "{how:?}");
        assert_eq!(got.header("vary"), Some("Accept"), "{how:?}");
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        let body = got.bytes();
        assert_eq!(body.len(), len, "{how:?}");
        assert_eq!(sha256_hex(body), sha, "{how:?}");
    }
}

#[tokio::test]
async fn official_r4_pdf_decodes_to_the_published_bytes() {
    let json = fixture("r4/binary-example.json");
    assert_native(&json, "application/pdf", PDF_LEN, PDF_SHA256).await;
}

#[tokio::test]
async fn official_r4_jpeg_decodes_to_the_published_bytes() {
    let json = fixture("r4/binary-f006.json");
    assert_native(&json, "image/jpeg", JPEG_LEN, JPEG_SHA256).await;
}

#[tokio::test]
async fn every_release_of_the_fixtures_decodes_to_the_same_bytes() {
    for version in ["dstu2", "stu3", "r4b", "r5"] {
        let pdf = fixture(&format!("{version}/binary-example.json"));
        assert_native(&pdf, "application/pdf", PDF_LEN, PDF_SHA256).await;
        let jpeg = fixture(&format!("{version}/binary-f006.json"));
        assert_native(&jpeg, "image/jpeg", JPEG_LEN, JPEG_SHA256).await;
    }
}

#[tokio::test]
async fn known_size_bodies_are_read_whole_and_get_a_content_length() {
    let json = fixture("r4/binary-f006.json");
    let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", move || {
        Frames::new(split(&json, &Split::Every(1000))).with_exact_size()
    });
    let got = call(
        &tower_fhir_binary::BinaryNegotiationLayer::new(),
        legacy,
        request("GET", "/Binary/f006", &[]),
    )
    .await;
    assert_eq!(got.header("content-length"), Some("26626"));
    assert_eq!(sha256_hex(got.bytes()), JPEG_SHA256);
}

#[tokio::test]
async fn streamed_bodies_have_no_content_length() {
    let got = get(&fixture("r4/binary-example.json"), Split::Every(4096)).await;
    assert_eq!(got.header("content-length"), None);
    assert_eq!(got.bytes().len(), PDF_LEN);
}

/// A JSON document from members given as raw JSON text, in the given order.
fn members(items: &[(&str, String)], pretty: bool) -> Vec<u8> {
    let sep = if pretty { ",\n  " } else { "," };
    let body: Vec<String> = items
        .iter()
        .map(|(k, v)| {
            if pretty {
                format!("\"{k}\" : {v}")
            } else {
                format!("\"{k}\":{v}")
            }
        })
        .collect();
    if pretty {
        format!("{{\n  {}\n}}\n", body.join(sep)).into_bytes()
    } else {
        format!("{{{}}}", body.join(sep)).into_bytes()
    }
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// The ways servers write the same base64 inside a JSON string.
fn encodings(base64: &str) -> Vec<(&'static str, String)> {
    let wrap = |sep: &str| {
        base64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(sep)
    };
    vec![
        ("plain", base64.to_owned()),
        ("slash escaped (PHP)", base64.replace('/', "\\/")),
        ("plus as \\u002B (.NET)", base64.replace('+', "\\u002B")),
        ("equals as \\u003d (Gson)", base64.replace('=', "\\u003d")),
        ("wrapped with spaces", wrap(" ")),
        ("wrapped with \\n", wrap("\\n")),
        ("wrapped with \\r\\n", wrap("\\r\\n")),
        (
            "everything at once",
            wrap("\\n")
                .replace('/', "\\/")
                .replace('+', "\\u002b")
                .replace('=', "\\u003D"),
        ),
    ]
}

#[tokio::test]
async fn serializations_of_real_servers_decode_identically() {
    let doc = load("r4/binary-f006.json");
    let sha = sha256_hex(&doc.bytes);
    let ct = quoted(&doc.content_type);
    let meta = r#"{"versionId":"2","tag":[{"system":"http://example.org","code":"data"}],"data":"not the payload","extension":[{"url":"http://example.org/data","valueString":"data"}]}"#.to_owned();
    for (name, text) in encodings(&doc.base64) {
        let data = quoted(&text);
        let orders: Vec<(&str, Vec<(&str, String)>)> = vec![
            (
                "usual order",
                vec![
                    ("resourceType", quoted("Binary")),
                    ("id", quoted("f006")),
                    ("contentType", ct.clone()),
                    ("data", data.clone()),
                ],
            ),
            (
                "contentType after data",
                vec![
                    ("resourceType", quoted("Binary")),
                    ("data", data.clone()),
                    ("contentType", ct.clone()),
                ],
            ),
            (
                "resourceType last",
                vec![
                    ("id", quoted("f006")),
                    ("data", data.clone()),
                    ("contentType", ct.clone()),
                    ("resourceType", quoted("Binary")),
                ],
            ),
            (
                "unknown keys and decoys",
                vec![
                    ("resourceType", quoted("Binary")),
                    ("meta", meta.clone()),
                    (
                        "unknown",
                        r#"{"data":"AAAA","content":[1,2.5e-3,true,null,{"a":[]}]}"#.into(),
                    ),
                    ("contentType", ct.clone()),
                    (
                        "_contentType",
                        r#"{"extension":[{"url":"u","valueCode":"x"}]}"#.into(),
                    ),
                    ("other", r#"[[["\"data\": \u00e9 \ud83d\ude00"]]]"#.into()),
                    ("data", data.clone()),
                    ("trailing", "-0.5E+10".into()),
                ],
            ),
        ];
        for (order, items) in orders {
            for pretty in [false, true] {
                let json = members(&items, pretty);
                for how in [
                    Split::Whole,
                    Split::Every(1),
                    Split::Random { seed: 7, cuts: 300 },
                ] {
                    let got = get(&json, how.clone()).await;
                    assert_eq!(
                        got.status,
                        StatusCode::OK,
                        "{name}, {order}, pretty {pretty}, {how:?}: {:?}",
                        got.body
                    );
                    assert_eq!(got.header("content-type"), Some("image/jpeg"));
                    assert_eq!(
                        sha256_hex(got.bytes()),
                        sha,
                        "{name}, {order}, pretty {pretty}, {how:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn pretty_printed_by_serde_json_with_sorted_keys() {
    let value: Value = serde_json::from_slice(&fixture("r4/binary-example.json")).unwrap();
    let json = serde_json::to_vec_pretty(&value).unwrap();
    assert_native(&json, "application/pdf", PDF_LEN, PDF_SHA256).await;
}

#[tokio::test]
async fn empty_data_is_an_empty_document() {
    let got = get(
        br#"{"resourceType":"Binary","contentType":"text/plain","data":""}"#,
        Split::Whole,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-type"), Some("text/plain"));
    assert!(got.bytes().is_empty());
}
