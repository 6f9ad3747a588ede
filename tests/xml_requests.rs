//! FHIR XML request bodies: a `POST` or `PUT` in FHIR XML reaches a real HTTP backend on
//! 127.0.0.1, which parses what it receives strictly, as the equivalent FHIR JSON; XML that is
//! not FHIR, or that ends early, is refused before the backend sees it when it shows within
//! the read-ahead, and makes the backend's read of the body fail when it shows later.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{paced_split, PacedFrames, Rng};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, BoxError, FhirVersion, RequestBody};
use tower_layer::Layer;

/// What the backend got: its `Content-Type`, whether it had a `Content-Length`, and the body
/// parsed strictly, or why reading or parsing it failed.
#[derive(Debug)]
struct Received {
    content_type: Option<String>,
    content_length: Option<String>,
    body: Result<Value, String>,
}

/// A backend that reads each body whole and parses it with `serde_json`.
async fn strict_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_owned())
                        };
                        let content_type = header("content-type");
                        let content_length = header("content-length");
                        // Read in a task of its own: when the client breaks the connection
                        // off, the server drops this future, but the read still ends.
                        let body = request.into_body();
                        let read = tokio::spawn(async move {
                            let body = match body.collect().await {
                                Err(e) => Err(format!("body read failed: {e}")),
                                Ok(body) => serde_json::from_slice::<Value>(&body.to_bytes())
                                    .map_err(|e| format!("not JSON: {e}")),
                            };
                            let ok = body.is_ok();
                            let _ = tx.send(Received {
                                content_type,
                                content_length,
                                body,
                            });
                            ok
                        });
                        let ok = read.await.unwrap_or(false);
                        let (status, answer) = if ok {
                            (
                                201,
                                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#,
                            )
                        } else {
                            (
                                400,
                                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"structure"}]}"#,
                            )
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/fhir+json")
                                .body(Full::new(Bytes::from_static(answer.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// The layer in front of a service that forwards each request to `backend` over HTTP.
async fn send<B>(
    layer: BinaryNegotiationLayer<impl tower_fhir_binary::Selector>,
    backend: SocketAddr,
    request: Request<B>,
) -> (StatusCode, Bytes)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let client: Client<_, RequestBody<B>> = Client::builder(TokioExecutor::new()).build_http();
    let inner = service_fn(move |request: Request<RequestBody<B>>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().unwrap().clone();
            parts.uri = format!("http://{backend}{path}").parse().unwrap();
            let response = match client.request(Request::from_parts(parts, body)).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Response::from_parts(parts, Full::new(body))
                }
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Full::default())
                    .unwrap(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let response =
        tokio::time::timeout(Duration::from_secs(60), layer.layer(inner).oneshot(request))
            .await
            .expect("the request took too long")
            .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn xml_request<B>(method: &str, uri: &str, content_type: &str, body: B) -> Request<B> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

/// A Binary in FHIR XML with `size` bytes of base64.
fn binary_xml(payload: &str, size: usize, rng: &mut Rng) -> (String, String) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let base64: String = (0..size)
        .map(|_| char::from(ALPHABET[rng.below(64)]))
        .collect();
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Binary xmlns=\"http://hl7.org/fhir\">\n  <id value=\"b-1\"/>\n  <contentType value=\"application/pdf\"/>\n  <{payload} value=\"{base64}\"/>\n</Binary>\n"
    );
    (xml, base64)
}

#[tokio::test]
async fn an_xml_binary_upload_arrives_as_binary_json() {
    let (backend, mut received) = strict_backend().await;
    let mut rng = Rng::new(0x0019_0003);
    for (version, payload, media_type) in [
        (FhirVersion::R4, "data", "application/fhir+json"),
        (FhirVersion::R5, "data", "application/fhir+json"),
        (FhirVersion::Stu3, "content", "application/fhir+json"),
        (FhirVersion::Dstu2, "content", "application/json+fhir"),
    ] {
        for (size, content_type, read_ahead) in [
            (8, "application/fhir+xml", None),
            (400_000, "application/xml+fhir", None),
            (1_000_000, "application/xml", None),
            (400_000, "application/fhir+xml", Some(64 << 10)),
        ] {
            let (xml, base64) = binary_xml(payload, size, &mut rng);
            let mut layer = BinaryNegotiationLayer::new().fhir_version(version);
            if let Some(bytes) = read_ahead {
                layer = layer.xml_request_read_ahead(bytes);
            }
            let request = xml_request(
                "PUT",
                "/fhir/Binary/b-1",
                content_type,
                paced_split(xml.as_bytes(), &mut rng, 30),
            );
            let (status, _) = send(layer, backend, request).await;
            assert_eq!(status, StatusCode::CREATED, "{version:?} {size}");
            let got = received.recv().await.unwrap();
            assert_eq!(got.content_type.as_deref(), Some(media_type));
            let expected = json!({"resourceType": "Binary", "id": "b-1", "contentType": "application/pdf", payload: base64});
            let length = serde_json::to_vec(&expected).unwrap().len().to_string();
            match read_ahead {
                // Converted whole within the read-ahead (1 MiB): its exact length.
                None => assert_eq!(got.content_length, Some(length), "{version:?} {size}"),
                // Longer than the read-ahead: chunked.
                Some(_) => assert_eq!(got.content_length, None),
            }
            assert_eq!(got.body.unwrap(), expected, "{version:?} {size}");
        }
    }
}

/// A 64 MiB document as a Binary in FHIR XML, in 64 KiB frames: the strict backend gets its
/// bytes back from the Binary JSON, byte for byte (the converter streams the base64; its
/// memory is measured by `examples/upload_peak_rss.rs`).
#[tokio::test]
async fn a_64_mib_xml_binary_upload_arrives_byte_for_byte() {
    use base64::Engine as _;
    let (backend, mut received) = strict_backend().await;
    let mut rng = Rng::new(0x0019_0064);
    let document: Vec<u8> = (0..64 << 20).map(|_| rng.below(256) as u8).collect();
    let base64 = base64::engine::general_purpose::STANDARD.encode(&document);
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Binary xmlns=\"http://hl7.org/fhir\">\n  <id value=\"big\"/>\n  <meta><versionId value=\"1\"/></meta>\n  <contentType value=\"application/pdf\"/>\n  <data value=\"{base64}\"/>\n</Binary>\n"
    );
    drop(base64);
    let frames = PacedFrames::new(xml.as_bytes().chunks(64 << 10).map(Bytes::copy_from_slice));
    drop(xml);
    let request = xml_request("PUT", "/Binary/big", "application/fhir+xml", frames);
    let (status, _) = send(BinaryNegotiationLayer::new(), backend, request).await;
    assert_eq!(status, StatusCode::CREATED);
    let got = received.recv().await.unwrap().body.unwrap();
    assert_eq!(got["resourceType"], "Binary");
    assert_eq!(got["id"], "big");
    assert_eq!(got["meta"]["versionId"], "1");
    assert_eq!(got["contentType"], "application/pdf");
    let data = base64::engine::general_purpose::STANDARD
        .decode(got["data"].as_str().unwrap())
        .unwrap();
    assert!(data == document, "the document differs");
}

const PATIENT_XML: &str = r#"<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">Peter &amp; <b>James</b></div></text>
  <active value="true"/>
  <name><family value="Chalmers"/><given value="Peter"/><given id="g2"><extension url="http://e/q"><valueCode value="MID"/></extension></given></name>
  <birthDate value="1974-12-25"/>
  <multipleBirthInteger value="2"/>
</Patient>"#;

#[tokio::test]
async fn an_xml_patient_arrives_as_json_when_every_request_is_selected() {
    let (backend, mut received) = strict_backend().await;
    let mut rng = Rng::new(0x0019_0004);
    for _ in 0..20 {
        let layer = BinaryNegotiationLayer::new().select_all();
        let request = xml_request(
            "PUT",
            "/fhir/Patient/p1",
            "application/fhir+xml; charset=utf-8",
            paced_split(PATIENT_XML.as_bytes(), &mut rng, 8),
        );
        let (status, _) = send(layer, backend, request).await;
        let got = received.recv().await.unwrap();
        assert_eq!(got.content_type.as_deref(), Some("application/fhir+json"));
        assert_eq!(
            got.body.unwrap(),
            json!({
                "resourceType": "Patient",
                "id": "p1",
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter &amp; <b>James</b></div>"},
                "active": true,
                "name": [{"family": "Chalmers", "given": ["Peter", null], "_given": [null, {"id": "g2", "extension": [{"url": "http://e/q", "valueCode": "MID"}]}]}],
                "birthDate": "1974-12-25",
                "multipleBirthInteger": 2
            })
        );
        assert_eq!(status, StatusCode::CREATED);
    }
    // Not selected (the default selector, a Patient): the XML goes on untouched.
    let request = xml_request(
        "POST",
        "/fhir/Patient",
        "application/fhir+xml",
        Full::new(Bytes::from_static(PATIENT_XML.as_bytes())),
    );
    let _ = send(BinaryNegotiationLayer::new(), backend, request).await;
    let got = received.recv().await.unwrap();
    assert_eq!(got.content_type.as_deref(), Some("application/fhir+xml"));
    assert!(got.body.unwrap_err().starts_with("not JSON"));
}

#[tokio::test]
async fn xml_that_is_not_fhir_or_ends_early_fails_the_backends_read() {
    let (backend, mut received) = strict_backend().await;
    let mut rng = Rng::new(0x0019_0005);
    let (xml, _) = binary_xml("data", 200_000, &mut rng);
    let unknown = xml.replace("<id value", "<nickname value");
    let wrong_kind = PATIENT_XML.replace("<active value=\"true\"", "<active value=\"yes\"");
    let trailing = format!("{xml}<Binary xmlns=\"http://hl7.org/fhir\"/>");
    // What is wrong, and what the answer says.
    let cases: Vec<(&str, &str, Vec<u8>, bool, &str)> = vec![
        (
            "truncated",
            "/Binary",
            xml.as_bytes()[..xml.len() - 12].to_vec(),
            false,
            "Binary.data: the document ends inside a tag",
        ),
        (
            "truncated in the value",
            "/Binary",
            xml.as_bytes()[..xml.len() / 2].to_vec(),
            false,
            // The value streams: the element it is cut in is named.
            "Binary.data: the document ends inside a tag",
        ),
        (
            "unknown element",
            "/Binary",
            unknown.into_bytes(),
            false,
            "Binary: <nickname> is not an element here",
        ),
        (
            "wrong kind",
            "/Patient/p1",
            wrong_kind.into_bytes(),
            false,
            "Patient.active: \"yes\" is not a boolean",
        ),
        (
            "a second root",
            "/Binary",
            trailing.into_bytes(),
            false,
            "<Binary> after the root element",
        ),
        (
            "not XML",
            "/Binary",
            b"{\"resourceType\":\"Binary\"}".to_vec(),
            false,
            "text where FHIR XML has only elements",
        ),
        (
            "client failed",
            "/Binary",
            xml.clone().into_bytes(),
            true,
            "",
        ),
    ];
    // Within the read-ahead (1 MiB by default) every fault is found before the backend is
    // called: 400, and the backend sees nothing. With a read-ahead of 16 KiB, most faults show
    // after the call: the backend's read of the body fails.
    for read_ahead in [None, Some(16 << 10)] {
        let mut seen = 0;
        for (what, path, body, fail_at_end, diagnostics) in &cases {
            for _ in 0..3 {
                let mut frames = paced_split(body, &mut rng, 10);
                frames.fail_at_end = *fail_at_end;
                let request = xml_request("PUT", path, "application/fhir+xml", frames);
                let mut layer = BinaryNegotiationLayer::new().select_all();
                if let Some(bytes) = read_ahead {
                    layer = layer.xml_request_read_ahead(bytes);
                }
                let (status, answer) = send(layer, backend, request).await;
                if diagnostics.is_empty() && read_ahead.is_some() {
                    // The client's own failure after the call: what the backend made of it
                    // (here a 502).
                    assert!(!status.is_success(), "{what}: {status}");
                } else {
                    // Whatever the backend answered, the client learns what is wrong.
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
                    let outcome: Value = serde_json::from_slice(&answer).unwrap();
                    assert_eq!(outcome["resourceType"], "OperationOutcome");
                    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
                    let diagnostics = match diagnostics.is_empty() {
                        true => "the request body failed: the client went away",
                        false => *diagnostics,
                    };
                    assert!(text.contains(diagnostics), "{what}: {text}");
                }
                // The backend never has a complete document; when it saw the request at all,
                // its read of the body failed.
                if let Ok(Some(got)) =
                    tokio::time::timeout(Duration::from_millis(300), received.recv())
                        .await
                        .map(Some)
                {
                    let got = got.unwrap();
                    assert!(got.body.is_err(), "{what}: {:?}", got.body);
                    seen += 1;
                }
            }
        }
        match read_ahead {
            None => assert_eq!(seen, 0, "the backend was called"),
            // Most reach the backend before the XML goes wrong.
            Some(_) => assert!(seen >= 10, "{seen}"),
        }
    }
}

/// A narrative `div` that is not FHIR XHTML, after 100 KB of text: the client gets 400 with an
/// OperationOutcome naming the `div`. Within the read-ahead the backend sees nothing; with a
/// read-ahead of 16 KiB the text streams to the backend, and its read of the body fails.
#[tokio::test]
async fn a_narrative_that_is_not_fhir_xhtml_gets_400_and_the_backend_no_document() {
    let (backend, mut received) = strict_backend().await;
    let mut rng = Rng::new(0x0019_0006);
    let long = "x".repeat(100_000);
    let cases = [
        (
            "a script",
            "<script>alert(1)</script>",
            "element not allowed",
        ),
        (
            "an end tag that does not match",
            "<p>a</b>",
            "not well-formed XML",
        ),
        (
            "an undefined entity",
            "<p>a &bogus; b</p>",
            "undefined entity",
        ),
        (
            "an event attribute",
            "<p onclick=\"alert(1)\">a</p>",
            "attribute not allowed",
        ),
        (
            "a script link",
            "<p><a href=\"javascript:alert(1)\">a</a></p>",
            "active content in a link",
        ),
    ];
    for (what, fault, reason) in cases {
        let xml = PATIENT_XML.replace("Peter &amp; <b>James</b>", &format!("<p>{long}</p>{fault}"));
        for read_ahead in [None, None, Some(16 << 10), Some(16 << 10)] {
            let request = xml_request(
                "PUT",
                "/fhir/Patient/p1",
                "application/fhir+xml",
                paced_split(xml.as_bytes(), &mut rng, 10),
            );
            let mut layer = BinaryNegotiationLayer::new().select_all();
            if let Some(bytes) = read_ahead {
                layer = layer.xml_request_read_ahead(bytes);
            }
            let (status, answer) = send(layer, backend, request).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
            let outcome: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
            assert!(
                text.contains(&format!(
                    "Patient.text.div: the narrative is not FHIR XHTML: {reason}"
                )),
                "{what}: {text}"
            );
            if read_ahead.is_none() {
                let got = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
                assert!(got.is_err(), "{what}: the backend was called: {got:?}");
                continue;
            }
            let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .expect("the backend saw the request")
                .unwrap();
            assert!(got.body.is_err(), "{what}: {:?}", got.body);
        }
    }
    // The same narrative, FHIR XHTML, arrives as written: a `mailto:` link, `&nbsp;`.
    let div = format!(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{long}&nbsp;<a href=\"mailto:a@example.org\">a</a></p></div>"
    );
    let xml = PATIENT_XML.replace(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter &amp; <b>James</b></div>",
        &div,
    );
    let request = xml_request(
        "PUT",
        "/fhir/Patient/p1",
        "application/fhir+xml",
        paced_split(xml.as_bytes(), &mut rng, 10),
    );
    let (status, _) = send(BinaryNegotiationLayer::new().select_all(), backend, request).await;
    assert_eq!(status, StatusCode::CREATED);
    let got = received.recv().await.unwrap().body.unwrap();
    assert_eq!(got["text"]["div"], div);
}

/// Past the read-ahead (here none), an inner service that reads the body, whatever comes of
/// it, and answers 201.
#[tokio::test]
async fn xml_that_is_not_fhir_gets_400_whatever_the_inner_service_says() {
    let careless = service_fn(|request: Request<RequestBody<Full<Bytes>>>| async move {
        let read = request.into_body().collect().await;
        assert!(read.is_err(), "the inner service got a complete body");
        Ok::<_, Infallible>(
            Response::builder()
                .status(201)
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
    });
    let request = xml_request(
        "POST",
        "/Binary?_format=xml",
        "application/fhir+xml",
        Full::new(Bytes::from_static(b"<Binary xmlns=\"http://hl7.org/fhir\"><data value=\"%%\"/><contentType value=\"a/b\"/></Binary>")),
    );
    let response = BinaryNegotiationLayer::new()
        .xml_request_read_ahead(0)
        .layer(careless)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/fhir+xml"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"),
        "{text}"
    );
    assert!(
        text.contains("Binary: &lt;contentType&gt; repeated or out of the definition order"),
        "{text}"
    );
}

#[tokio::test]
async fn an_encoded_xml_body_is_refused_before_the_backend() {
    let (backend, mut received) = strict_backend().await;
    let request = Request::post("/Binary")
        .header("content-type", "application/fhir+xml")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from_static(b"\x1f\x8b")))
        .unwrap();
    let (status, _) = send(BinaryNegotiationLayer::new(), backend, request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(received.try_recv().is_err());
}

/// The demo backend stores the Binary an XML upload becomes; reading it back gives the bytes.
#[cfg(feature = "proxy")]
#[tokio::test]
async fn an_xml_binary_upload_is_stored_and_read_back_as_the_document() {
    use tower_fhir_binary::proxy::DemoBackend;
    let demo = DemoBackend::new();
    let document = b"%PDF-1.4 a document \x00\xff in XML".to_vec();
    let base64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&document)
    };
    let xml = format!(
        "<Binary xmlns=\"http://hl7.org/fhir\"><contentType value=\"application/pdf\"/><data value=\"{base64}\"/></Binary>"
    );
    let request = xml_request(
        "POST",
        "http://h/fhir/Binary",
        "application/fhir+xml",
        Full::new(Bytes::from(xml)),
    );
    let created = BinaryNegotiationLayer::new()
        .layer(demo.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let read = Request::get(&location)
        .body(Full::<Bytes>::default())
        .unwrap();
    let native = BinaryNegotiationLayer::new()
        .layer(demo)
        .oneshot(read)
        .await
        .unwrap();
    assert_eq!(native.status(), StatusCode::OK);
    assert_eq!(native.headers()["content-type"], "application/pdf");
    let body = native.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, document);
}
