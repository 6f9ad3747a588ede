//! FHIR XML for any FHIR JSON response to a client that asked for XML: search Bundles,
//! CapabilityStatements, OperationOutcomes of any status, any resource; schema-valid whatever
//! the frame splits, read whole or streamed; 502 naming the element path for JSON that is not
//! FHIR; `fhirVersion` in `Accept`; FHIR JSON untouched when XML was not asked for.

mod common;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use quick_xml::events::Event;
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_fhir_binary::{
    BinaryNegotiationLayer, FhirVersion, Negotiation, Representation, Selector,
};
use tower_layer::Layer;

/// One request through `layer` in front of `legacy`: what the client got, and the extension.
async fn send<P: Selector>(
    layer: &BinaryNegotiationLayer<P>,
    legacy: Legacy,
    request: Request<http_body_util::Empty<bytes::Bytes>>,
) -> (Got, Option<Negotiation>) {
    let response = layer.layer(legacy).oneshot(request).await.unwrap();
    let negotiation = response.extensions().get::<Negotiation>().copied();
    (read(response).await, negotiation)
}

/// The `value` of the first element at `path` (`OperationOutcome/issue/diagnostics`).
fn value_at(xml: &[u8], wanted: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut path: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf).expect("well-formed XML");
        let (start, empty) = match &event {
            Event::Start(e) => (e.clone(), false),
            Event::Empty(e) => (e.clone(), true),
            Event::End(_) => {
                path.pop();
                continue;
            }
            Event::Eof => return None,
            _ => continue,
        };
        path.push(start.name().into_inner().to_owned());
        if path.join("/") == wanted {
            return start
                .attributes()
                .map(Result::unwrap)
                .find(|a| a.key.into_inner() == "value")
                .map(|a| {
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap()
                        .into_owned()
                });
        }
        if empty {
            path.pop();
        }
        buf.clear();
    }
}

/// The official example of `release` whose file name starts with `prefix`.
fn example(release: &str, prefix: &str) -> Vec<u8> {
    let dir = format!(
        "{}/tests/fixtures/examples/{release}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".json"))
        .collect();
    names.sort();
    let name = names.first().unwrap_or_else(|| panic!("{prefix} in {dir}"));
    fixture(&format!("examples/{release}/{name}"))
}

/// A searchset Bundle of the release's two official Binaries, as `GET /Binary?_id=...` gives.
fn binary_search(release: &str) -> Vec<u8> {
    let entries: Vec<Value> = ["binary-example.json", "binary-f006.json"]
        .iter()
        .map(|name| {
            let resource: Value =
                serde_json::from_slice(&fixture(&format!("{release}/{name}"))).unwrap();
            json!({
                "fullUrl": format!("http://example.org/fhir/Binary/{}", resource["id"].as_str().unwrap()),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    // Members in another order than XML's, as servers write them.
    json!({"entry": entries, "total": 2, "type": "searchset", "resourceType": "Bundle", "id": "s1"})
        .to_string()
        .into_bytes()
}

/// The OperationOutcome of a 404.
fn not_found() -> Vec<u8> {
    json!({
        "resourceType": "OperationOutcome",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Not found &amp; gone</p></div>"},
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Patient/nope is not known"}]
    })
    .to_string()
    .into_bytes()
}

struct Case {
    name: &'static str,
    status: StatusCode,
    path: &'static str,
    json: Vec<u8>,
}

fn cases(release: &str) -> Vec<Case> {
    vec![
        Case {
            name: "search Bundle of Binaries",
            status: StatusCode::OK,
            path: "/fhir/Binary?_id=example,f006",
            json: binary_search(release),
        },
        Case {
            name: "CapabilityStatement",
            status: StatusCode::OK,
            path: "/fhir/metadata",
            json: example(release, "CapabilityStatement-"),
        },
        Case {
            name: "OperationOutcome 404",
            status: StatusCode::NOT_FOUND,
            path: "/fhir/Patient/nope",
            json: not_found(),
        },
        Case {
            name: "Patient",
            status: StatusCode::OK,
            path: "/fhir/Patient/p",
            json: example(release, "Patient-"),
        },
        Case {
            name: "transaction-response Bundle",
            status: StatusCode::OK,
            path: "/fhir/Bundle/r",
            json: example(release, "Bundle-bundle-response"),
        },
    ]
}

/// The splits of one case: whole, and random points with fixed seeds.
fn some_splits(len: usize) -> Vec<Split> {
    let mut all = vec![Split::Whole, Split::Every(4096)];
    for seed in 1..=4 {
        all.push(Split::Random {
            seed,
            cuts: 1 + (seed as usize * 97) % len.clamp(1, 600),
        });
    }
    all
}

#[tokio::test]
async fn every_kind_of_response_is_schema_valid_xml_whatever_the_splits() {
    for (release, version) in [
        ("r4", FhirVersion::R4),
        ("stu3", FhirVersion::Stu3),
        ("r5", FhirVersion::R5),
    ] {
        for case in cases(release) {
            let mut first: Option<Bytes> = None;
            for how in some_splits(case.json.len()) {
                // Read whole (known size) and streamed (unknown size, past the limit).
                for (whole, limit) in [(true, 1 << 20), (false, 64)] {
                    let layer = BinaryNegotiationLayer::new()
                        .select_all()
                        .fhir_version(version)
                        .read_whole_limit(limit)
                        .frame_size(997);
                    for (query, accept) in
                        [("?_format=xml", None), ("", Some("application/fhir+xml"))]
                    {
                        let json = case.json.clone();
                        let how2 = how.clone();
                        let legacy = Legacy::new(case.status, "application/fhir+json", move || {
                            let frames = Frames::new(split(&json, &how2));
                            if whole {
                                frames.with_exact_size()
                            } else {
                                frames
                            }
                        });
                        let uri = match (case.path.contains('?'), query) {
                            (true, "?_format=xml") => format!("{}&_format=xml", case.path),
                            _ => format!("{}{query}", case.path),
                        };
                        let accept: Vec<&str> = accept.into_iter().collect();
                        let context = format!(
                            "{release} {} {how:?} whole={whole} {uri} {accept:?}",
                            case.name
                        );
                        let (got, negotiation) =
                            send(&layer, legacy, request("GET", &uri, &accept)).await;
                        assert_eq!(got.status, case.status, "{context}: {:?}", got.body);
                        assert_eq!(
                            got.header("content-type"),
                            Some("application/fhir+xml;charset=utf-8"),
                            "{context}"
                        );
                        assert_eq!(got.header("vary"), Some("Accept"), "{context}");
                        assert_eq!(
                            got.header("x-content-type-options"),
                            Some("nosniff"),
                            "{context}"
                        );
                        assert_eq!(
                            negotiation,
                            Some(Negotiation::Served(Representation::FhirXml)),
                            "{context}"
                        );
                        let bytes = got.bytes().clone();
                        // Error responses of unknown size are read whole while they fit.
                        let read_whole =
                            whole || (!case.status.is_success() && bytes.len() <= limit);
                        assert_eq!(
                            got.header("content-length"),
                            read_whole.then(|| bytes.len().to_string()).as_deref(),
                            "{context}"
                        );
                        match &first {
                            None => {
                                assert_schema_valid(&bytes, release);
                                first = Some(bytes);
                            }
                            Some(first) => assert_eq!(&bytes, first, "{context}"),
                        }
                    }
                }
            }
            let xml = String::from_utf8(first.unwrap().to_vec()).unwrap();
            let root = serde_json::from_slice::<Value>(&case.json).unwrap()["resourceType"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                xml.starts_with(&format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{root} xmlns=\"http://hl7.org/fhir\">"
                )),
                "{release} {}",
                case.name
            );
        }
    }
}

#[tokio::test]
async fn the_binaries_of_a_search_keep_their_payload_and_the_outcome_its_text() {
    let layer = BinaryNegotiationLayer::new().select_all();
    let json = binary_search("r4");
    let (got, _) = send(
        &layer,
        Legacy::binary(json, Split::Every(1000)),
        request("GET", "/fhir/Binary?_id=example,f006&_format=xml", &[]),
    )
    .await;
    let xml = got.bytes();
    let data = value_at(xml, "Bundle/entry/resource/Binary/data").unwrap();
    assert_eq!(sha256_hex(&decode_base64(&data)), PDF_SHA256);
    assert_eq!(value_at(xml, "Bundle/total").as_deref(), Some("2"));
    assert_eq!(value_at(xml, "Bundle/type").as_deref(), Some("searchset"));

    let (got, _) = send(
        &layer,
        Legacy::new(StatusCode::NOT_FOUND, "application/fhir+json", || {
            Frames::new(vec![Bytes::from(not_found())])
        }),
        request("GET", "/fhir/Patient/nope", &["application/fhir+xml"]),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(
        value_at(got.bytes(), "OperationOutcome/issue/diagnostics").as_deref(),
        Some("Patient/nope is not known")
    );
    let text = std::str::from_utf8(got.bytes()).unwrap();
    assert!(
        text.contains(
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Not found &amp; gone</p></div>"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn json_that_is_not_fhir_is_a_502_naming_the_element_path() {
    let bad = br#"{"resourceType":"Patient","id":"p","name":[{"family":"X","nickname":"Y"}]}"#;
    for how in some_splits(bad.len()) {
        for (status, exact) in [(StatusCode::OK, true), (StatusCode::NOT_FOUND, false)] {
            let how2 = how.clone();
            let legacy = Legacy::new(status, "application/fhir+json", move || {
                let frames = Frames::new(split(bad, &how2));
                if exact {
                    frames.with_exact_size()
                } else {
                    frames
                }
            });
            let layer = BinaryNegotiationLayer::new().select_all();
            let (got, negotiation) = send(
                &layer,
                legacy,
                request("GET", "/Patient/p?_format=xml", &[]),
            )
            .await;
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{how:?} {status}");
            assert_eq!(negotiation, Some(Negotiation::BadGateway));
            assert_eq!(
                got.header("content-type"),
                Some("application/fhir+xml;charset=utf-8")
            );
            assert_schema_valid(got.bytes(), "r4");
            let diagnostics = value_at(got.bytes(), "OperationOutcome/issue/diagnostics").unwrap();
            assert!(
                diagnostics.contains("Patient.name[0]: unknown element `nickname`"),
                "{diagnostics}"
            );
        }
    }
    // Other faults the converter finds: an unknown resource type, a wrong JSON kind, not JSON.
    for (json, path) in [
        (&br#"{"resourceType":"Patent","id":"p"}"#[..], "Patent"),
        (
            br#"{"resourceType":"Patient","active":"yes"}"#,
            "Patient.active",
        ),
        (br#"{"resourceType":"Patient","id":"p""#, ""),
    ] {
        let legacy = Legacy::new(StatusCode::OK, "application/fhir+json", move || {
            Frames::new(vec![Bytes::from_static(json)]).with_exact_size()
        });
        let layer = BinaryNegotiationLayer::new().select_all();
        let (got, _) = send(
            &layer,
            legacy,
            request("GET", "/Patient/p?_format=xml", &[]),
        )
        .await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        let diagnostics = value_at(got.bytes(), "OperationOutcome/issue/diagnostics").unwrap();
        assert!(diagnostics.contains(path), "{diagnostics}");
        assert!(
            diagnostics.contains("cannot be given as FHIR XML"),
            "{diagnostics}"
        );
    }
}

#[tokio::test]
async fn a_fault_after_the_head_breaks_the_transfer() {
    // A streamed search whose last entry is not FHIR: the head has gone out with the first
    // entry (larger than the reorder limit, so written before the end); the body fails rather
    // than ending as a document with an entry left out.
    // A Binary whose payload, larger than the reorder limit, streams.
    let pdf = format!(
        r#"{{"resourceType":"Binary","id":"big","contentType":"application/pdf","data":"{}"}}"#,
        "QUJD".repeat(50_000)
    );
    let bad = r#"{"resourceType":"Patient","id":"q","colour":"blue"}"#;
    let json = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":2,"entry":[{{"resource":{pdf}}},{{"resource":{bad}}}]}}"#
    )
    .into_bytes();
    let layer = BinaryNegotiationLayer::new()
        .select_all()
        .read_whole_limit(1024)
        .reorder_buffer_limit(64 * 1024)
        .frame_size(4096);
    let (got, negotiation) = send(
        &layer,
        Legacy::binary(json, Split::Every(8192)),
        request("GET", "/fhir/Binary?_format=xml", &[]),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.header("content-length"), None);
    assert_eq!(
        negotiation,
        Some(Negotiation::Served(Representation::FhirXml))
    );
    let error = got.body.expect_err("a broken transfer");
    let message = error.to_string();
    assert!(message.contains("Bundle.entry[1].resource"), "{message}");
    assert!(message.contains("Patient"), "{message}");
    assert!(message.contains("colour"), "{message}");
}

#[tokio::test]
async fn head_has_the_length_of_the_get() {
    let layer = BinaryNegotiationLayer::new()
        .select_all()
        .read_whole_limit(16);
    let json = example("r4", "Patient-");
    let legacy = |json: Vec<u8>| Legacy::binary(json, Split::Every(100));
    let (get_got, _) = send(
        &layer,
        legacy(json.clone()),
        request("GET", "/Patient/p?_format=xml", &[]),
    )
    .await;
    let (head_got, negotiation) = send(
        &layer,
        legacy(json),
        request("HEAD", "/Patient/p?_format=xml", &[]),
    )
    .await;
    assert_eq!(head_got.status, StatusCode::OK);
    assert!(head_got.bytes().is_empty());
    assert_eq!(
        head_got.header("content-length"),
        Some(get_got.bytes().len().to_string().as_str())
    );
    assert_eq!(
        negotiation,
        Some(Negotiation::Served(Representation::FhirXml))
    );
}

#[tokio::test]
async fn fhir_json_stays_untouched_unless_xml_is_asked_for() {
    let json = example("r4", "CapabilityStatement-");
    let layer = BinaryNegotiationLayer::new().select_all();
    for accept in [
        &[][..],
        &["*/*"],
        &["application/fhir+json"],
        &["application/json"],
        &["application/fhir+json; fhirVersion=4.0"],
        // A browser: HTML first, XML that is not FHIR, then anything.
        &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
    ] {
        let (got, negotiation) = send(
            &layer,
            Legacy::binary(json.clone(), Split::Every(333)),
            request("GET", "/metadata", accept),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{accept:?}");
        assert_eq!(got.bytes().as_ref(), json.as_slice(), "{accept:?}");
        assert_eq!(got.header("content-type"), Some("application/fhir+json"));
        assert_eq!(got.header("vary"), Some("Accept"));
        // An explicit FHIR JSON is served as such; anything else passes the JSON through.
        let expected = match accept
            .first()
            .is_some_and(|a| a.starts_with("application/fhir+json"))
        {
            true => Negotiation::Served(Representation::FhirJson),
            false => Negotiation::PassedThrough,
        };
        assert_eq!(negotiation, Some(expected), "{accept:?}");
    }
    // Neither FHIR format acceptable: 406.
    let (got, negotiation) = send(
        &layer,
        Legacy::binary(json, Split::Whole),
        request("GET", "/metadata", &["application/pdf"]),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(negotiation, Some(Negotiation::NotAcceptable));
}

#[tokio::test]
async fn a_fhir_version_parameter_is_honoured_for_the_configured_release_only() {
    let json = example("r4", "Patient-");
    for (version, accept, expected) in [
        (
            FhirVersion::R4,
            "application/fhir+xml; fhirVersion=4.0",
            StatusCode::OK,
        ),
        (
            FhirVersion::R4B,
            "application/fhir+xml; fhirVersion=4.3",
            StatusCode::OK,
        ),
        (
            FhirVersion::R4,
            "application/fhir+xml; fhirVersion=3.0",
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            FhirVersion::R5,
            "application/fhir+xml; fhirVersion=4.0",
            StatusCode::NOT_ACCEPTABLE,
        ),
    ] {
        let layer = BinaryNegotiationLayer::new()
            .select_all()
            .fhir_version(version);
        let legacy = Legacy::binary(json.clone(), Split::Whole);
        let seen = legacy.seen.clone();
        let (got, negotiation) =
            send(&layer, legacy, request("GET", "/Patient/p", &[accept])).await;
        assert_eq!(got.status, expected, "{version:?} {accept}");
        if expected == StatusCode::OK {
            assert_eq!(
                got.header("content-type"),
                Some("application/fhir+xml;charset=utf-8"),
                "{accept}"
            );
            assert_eq!(
                negotiation,
                Some(Negotiation::Served(Representation::FhirXml))
            );
            assert!(value_at(got.bytes(), "Patient/id").is_some());
        } else {
            assert_eq!(negotiation, Some(Negotiation::NotAcceptable));
            assert!(
                seen.requests.lock().unwrap().is_empty(),
                "decided before the inner call"
            );
        }
    }
}

#[tokio::test]
async fn an_axum_router_of_fhir_routes_answers_in_xml() {
    fn fhir_json(bytes: Vec<u8>) -> axum::response::Response {
        ([("content-type", "application/fhir+json")], bytes).into_response()
    }
    use axum::response::IntoResponse;
    let app = Router::new()
        .route(
            "/fhir/metadata",
            get(|| async { fhir_json(example("r4", "CapabilityStatement-")) }),
        )
        .route(
            "/fhir/Patient/{id}",
            get(|| async { fhir_json(example("r4", "Patient-")) }),
        )
        .route(
            "/fhir/Binary",
            get(|| async { fhir_json(binary_search("r4")) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, fhir_json(not_found())) })
        .layer(BinaryNegotiationLayer::new().select_all());
    for (uri, status, root) in [
        (
            "/fhir/metadata?_format=xml",
            StatusCode::OK,
            "CapabilityStatement",
        ),
        (
            "/fhir/Patient/p?_format=application/fhir%2Bxml",
            StatusCode::OK,
            "Patient",
        ),
        (
            "/fhir/Binary?_id=example&_format=xml",
            StatusCode::OK,
            "Bundle",
        ),
        (
            "/fhir/Nope/1?_format=xml",
            StatusCode::NOT_FOUND,
            "OperationOutcome",
        ),
    ] {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{uri}");
        assert_eq!(
            response.headers()["content-type"],
            "application/fhir+xml;charset=utf-8",
            "{uri}"
        );
        assert_eq!(
            response.extensions().get::<Negotiation>(),
            Some(&Negotiation::Served(Representation::FhirXml))
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_schema_valid(&body, "r4");
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(&format!("<{root} xmlns=\"http://hl7.org/fhir\">")),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn a_compressed_answer_to_an_xml_request_is_a_502_never_json() {
    // A compression layer inside this one: the layer cannot read the 404's OperationOutcome,
    // and passing the gzipped JSON on would give JSON to a client that asked for XML.
    let gzipping = tower::service_fn(
        |_request: Request<tower_fhir_binary::RequestBody<http_body_util::Empty<bytes::Bytes>>>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header("content-type", "application/fhir+json")
                    .header("content-encoding", "gzip")
                    .body(Frames::new(vec![Bytes::from_static(b"\x1f\x8b gzip")]))
                    .unwrap(),
            )
        },
    );
    let layer = BinaryNegotiationLayer::new().select_all();
    let response = layer
        .layer(gzipping)
        .oneshot(request("GET", "/Patient/p?_format=xml", &[]))
        .await
        .unwrap();
    let negotiation = response.extensions().get::<Negotiation>().copied();
    let got = read(response).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(negotiation, Some(Negotiation::BadGateway));
    let diagnostics = value_at(got.bytes(), "OperationOutcome/issue/diagnostics").unwrap();
    assert!(diagnostics.contains("compressed"), "{diagnostics}");
}

#[tokio::test]
async fn a_resource_read_whole_is_reordered_whatever_the_xml_reorder_limit() {
    // A Patient whose `id` comes after 4 KiB of names: FHIR XML writes `id` first.
    let names: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"family":"Family{i:04}-with-some-padding"}}"#))
        .collect();
    let json = format!(
        r#"{{"resourceType":"Patient","name":[{}],"id":"late"}}"#,
        names.join(",")
    )
    .into_bytes();
    let layer = BinaryNegotiationLayer::new()
        .select_all()
        .xml_reorder_limit(1024);
    // Of known size within `read_whole_limit`: converted whole before the head, so reordered
    // whole.
    let known = {
        let json = json.clone();
        Legacy::new(StatusCode::OK, "application/fhir+json", move || {
            Frames::new(split(&json, &Split::Every(512))).with_exact_size()
        })
    };
    let (got, _) = send(&layer, known, request("GET", "/Patient/p?_format=xml", &[])).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    let xml = got.body.expect("a whole body");
    let xml = String::from_utf8_lossy(&xml);
    assert!(
        xml.contains(r#"<Patient xmlns="http://hl7.org/fhir"><id value="late"/><name><family value="Family0000-with-some-padding"/>"#),
        "{xml}"
    );
    // Of unknown size: the `id` comes after more than the limit, and is never left out.
    let (got, _) = send(
        &layer,
        Legacy::binary(json, Split::Every(512)),
        request("GET", "/Patient/p?_format=xml", &[]),
    )
    .await;
    match got.status {
        StatusCode::BAD_GATEWAY => {}
        StatusCode::OK => assert!(got.body.is_err(), "a clean end without the late id"),
        other => panic!("{other}"),
    }
}
