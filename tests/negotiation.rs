//! Negotiation through the service: what a client gets for each way of asking, and what the
//! inner service is asked.

mod common;

use common::*;
use http::StatusCode;
use tower_fhir_binary::{BinaryNegotiationLayer, FhirVersion};

const CHROMIUM: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8";

#[derive(Debug, PartialEq)]
enum Kind {
    Native,
    Json,
    Xml,
    NotAcceptable,
}

async fn ask(fixture_path: &str, uri: &str, accept: &[&str]) -> (Kind, Got) {
    let json = fixture(fixture_path);
    let got = call(
        &BinaryNegotiationLayer::new(),
        Legacy::binary(json.clone(), Split::Every(1000)),
        request("GET", uri, accept),
    )
    .await;
    assert_eq!(got.header("vary"), Some("Accept"), "{uri} {accept:?}");
    let kind = match (got.status, got.header("content-type").unwrap_or_default()) {
        (StatusCode::NOT_ACCEPTABLE, ct) => {
            assert!(ct.starts_with("application/fhir+"), "{ct}");
            assert!(!got.diagnostics().is_empty());
            Kind::NotAcceptable
        }
        (StatusCode::OK, "application/fhir+json") => {
            // The inner body, untouched.
            assert_eq!(got.bytes().as_ref(), json.as_slice());
            Kind::Json
        }
        (StatusCode::OK, ct)
            if ct.starts_with("application/fhir+xml") || ct.starts_with("application/xml+fhir") =>
        {
            assert_schema_valid(got.bytes(), "r4");
            Kind::Xml
        }
        (StatusCode::OK, _) => Kind::Native,
        (status, ct) => panic!("{uri} {accept:?}: {status} {ct}"),
    };
    (kind, got)
}

#[tokio::test]
async fn the_design_table() {
    let pdf = "r4/binary-example.json";
    let jpeg = "r4/binary-f006.json";
    let cases: &[(&str, &str, &[&str], Kind)] = &[
        (pdf, "/Binary/example", &[], Kind::Native),
        (pdf, "/Binary/example", &["*/*"], Kind::Native),
        (pdf, "/Binary/example", &[CHROMIUM], Kind::Native),
        (jpeg, "/Binary/f006", &[CHROMIUM], Kind::Native),
        (
            pdf,
            "/Binary/example",
            &["application/fhir+json"],
            Kind::Json,
        ),
        (
            pdf,
            "/Binary/example",
            &["application/json+fhir"],
            Kind::Json,
        ),
        (
            pdf,
            "/Binary/example",
            &["application/fhir+xml;q=0.9, */*;q=0.1"],
            Kind::Xml,
        ),
        (
            jpeg,
            "/Binary/f006",
            &["application/pdf"],
            Kind::NotAcceptable,
        ),
        (jpeg, "/Binary/f006", &["image/*"], Kind::Native),
        (jpeg, "/Binary/f006", &["*/*;q=0"], Kind::NotAcceptable),
        (
            pdf,
            "/Binary/example",
            &["application/fhir+json;q=0"],
            Kind::NotAcceptable,
        ),
        (
            jpeg,
            "/Binary/f006",
            &["text/html", "image/jpeg"],
            Kind::Native,
        ),
        (
            jpeg,
            "/Binary/f006",
            &["image/jpeg;q=0.5", "application/fhir+json;q=0.6"],
            Kind::Json,
        ),
        (
            jpeg,
            "/Binary/f006",
            &["image/jpeg;q=0.7", "application/fhir+json;q=0.6"],
            Kind::Native,
        ),
        (
            jpeg,
            "/Binary/f006",
            &["image/jpeg", "application/fhir+xml"],
            Kind::Xml,
        ),
        (
            pdf,
            "/Binary/example?_format=xml",
            &["application/fhir+json"],
            Kind::Xml,
        ),
        (
            pdf,
            "/Binary/example?_format=application/fhir+json",
            &[],
            Kind::Json,
        ),
        (
            pdf,
            "/Binary/example?_format=application%2Ffhir%2Bjson",
            &[],
            Kind::Json,
        ),
        (
            pdf,
            "/Binary/example?_format=json&x=1",
            &[CHROMIUM],
            Kind::Json,
        ),
        (pdf, "/Binary/example?_format=text/xml", &[], Kind::Xml),
        (pdf, "/Binary/example?_format=ttl", &[], Kind::NotAcceptable),
        (
            pdf,
            "/Binary/example?_format=html",
            &["*/*"],
            Kind::NotAcceptable,
        ),
        (
            pdf,
            "/Binary/example?_format=application/pdf",
            &[],
            Kind::NotAcceptable,
        ),
    ];
    for (path, uri, accept, want) in cases {
        let (kind, got) = ask(path, uri, accept).await;
        assert_eq!(&kind, want, "{uri} {accept:?}");
        if kind == Kind::Native {
            let ct = if path.contains("f006") {
                "image/jpeg"
            } else {
                "application/pdf"
            };
            assert_eq!(got.header("content-type"), Some(ct));
        }
    }
}

#[tokio::test]
async fn a_binary_whose_own_type_is_fhir_json_comes_back_as_the_resource() {
    use base64::Engine as _;
    let inner = r#"{"resourceType":"Patient","id":"p"}"#;
    let data = base64::engine::general_purpose::STANDARD.encode(inner);
    let json = format!(
        r#"{{"resourceType":"Binary","contentType":"application/fhir+json","data":"{data}"}}"#
    );
    for (accept, want_native) in [(&["application/fhir+json"][..], false), (&[][..], true)] {
        let got = call(
            &BinaryNegotiationLayer::new(),
            Legacy::binary(json.clone().into_bytes(), Split::Whole),
            request("GET", "/Binary/b", accept),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        let body = got.bytes().as_ref().to_vec();
        if want_native {
            assert_eq!(body, inner.as_bytes());
        } else {
            assert_eq!(body, json.as_bytes());
        }
    }
}

#[tokio::test]
async fn the_inner_service_is_asked_plainly_for_fhir_json() {
    let legacy = Legacy::binary(fixture("r4/binary-f006.json"), Split::Whole);
    let seen = legacy.seen.clone();
    let request = http::Request::builder()
        .method("HEAD")
        .uri("http://fhir.example/base/Binary/f006?_format=xml&_pretty=true")
        .header("accept", "application/fhir+xml")
        .header("accept", "text/html")
        .header("authorization", "Bearer secret")
        .header("if-none-match", "W/\"1\"")
        .header("range", "bytes=0-10")
        .body(http_body_util::Empty::new())
        .unwrap();
    let got = call(&BinaryNegotiationLayer::new(), legacy, request).await;
    assert_eq!(got.status, StatusCode::OK);
    let requests = seen.requests.lock().unwrap();
    let (method, uri, headers) = &requests[0];
    assert_eq!(method, "GET");
    assert_eq!(uri, "http://fhir.example/base/Binary/f006?_pretty=true");
    let accepts: Vec<_> = headers.get_all("accept").iter().collect();
    assert_eq!(accepts, ["application/fhir+json"]);
    assert_eq!(headers["authorization"], "Bearer secret");
    assert_eq!(headers["if-none-match"], "W/\"1\"");
    assert!(headers.get("range").is_none());
}

#[tokio::test]
async fn dstu2_layer_asks_with_the_dstu2_spelling() {
    let legacy = Legacy::binary(fixture("dstu2/binary-f006.json"), Split::Whole);
    let seen = legacy.seen.clone();
    let layer = BinaryNegotiationLayer::new().fhir_version(FhirVersion::Dstu2);
    let got = call(&layer, legacy, request("GET", "/Binary/f006", &[])).await;
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert_eq!(
        seen.requests.lock().unwrap()[0].2["accept"],
        "application/json+fhir"
    );
}

#[tokio::test]
async fn other_methods_pass_through_untouched() {
    let legacy = Legacy::binary(fixture("r4/binary-f006.json"), Split::Whole);
    let seen = legacy.seen.clone();
    let got = call(
        &BinaryNegotiationLayer::new(),
        legacy,
        request(
            "DELETE",
            "/Binary/f006?_format=xml",
            &["application/fhir+xml"],
        ),
    )
    .await;
    assert_eq!(got.header("content-type"), Some("application/fhir+json"));
    assert_eq!(got.header("vary"), None);
    assert_eq!(
        got.bytes().as_ref(),
        fixture("r4/binary-f006.json").as_slice()
    );
    let requests = seen.requests.lock().unwrap();
    assert_eq!(requests[0].1, "/Binary/f006?_format=xml");
    assert_eq!(requests[0].2["accept"], "application/fhir+xml");
}

#[tokio::test]
async fn unknown_format_is_answered_without_asking_the_inner_service() {
    let legacy = Legacy::binary(fixture("r4/binary-f006.json"), Split::Whole);
    let seen = legacy.seen.clone();
    let got = call(
        &BinaryNegotiationLayer::new(),
        legacy,
        request("GET", "/Binary/f006?_format=ttl", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(
        got.header("content-type"),
        Some("application/fhir+json;charset=utf-8")
    );
    assert!(seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn not_acceptable_can_be_served_natively_by_choice() {
    let layer = BinaryNegotiationLayer::new().serve_native_when_not_acceptable(true);
    let got = call(
        &layer,
        Legacy::binary(fixture("r4/binary-f006.json"), Split::Whole),
        request("GET", "/Binary/f006", &["application/pdf"]),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert_eq!(sha256_hex(got.bytes()), JPEG_SHA256);
    // An unknown _format still names a format the server cannot produce.
    let got = call(
        &layer,
        Legacy::binary(fixture("r4/binary-f006.json"), Split::Whole),
        request("GET", "/Binary/f006?_format=ttl", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn head_has_the_get_head_and_no_body() {
    for how in [Split::Whole, Split::Every(1), Split::Every(4096)] {
        let get = call(
            &BinaryNegotiationLayer::new(),
            Legacy::binary(fixture("r4/binary-example.json"), how.clone()),
            request("GET", "/Binary/example", &[]),
        )
        .await;
        let head = call(
            &BinaryNegotiationLayer::new(),
            Legacy::binary(fixture("r4/binary-example.json"), how),
            request("HEAD", "/Binary/example", &[]),
        )
        .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-length"), Some("130068"));
        assert_eq!(head.header("content-type"), Some("application/pdf"));
        assert_eq!(head.header("vary"), Some("Accept"));
        assert!(head.bytes().is_empty());
        assert_eq!(get.bytes().len(), PDF_LEN);
    }
}

#[tokio::test]
async fn a_binary_without_data_is_answered_with_its_json() {
    let json = br#"{"resourceType":"Binary","id":"x","contentType":"application/pdf"}"#;
    for how in splits(json.len()) {
        let got = get(json, how).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/fhir+json"));
        assert_eq!(got.header("vary"), Some("Accept"));
        assert_eq!(got.bytes().as_ref(), json);
    }
}
