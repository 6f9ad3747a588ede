//! The proxy in front of real HTTP servers on 127.0.0.1, checked with a real HTTP client.
#![cfg(feature = "proxy")]

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request as AxumRequest, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use common::{decode_base64, fixture, sha256_hex, Got, JPEG_LEN, JPEG_SHA256, PDF_LEN, PDF_SHA256};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_fhir_binary::proxy::{start_demo, start_proxy, ProxyOptions, Server};
use tower_http::compression::CompressionLayer;

/// Every test is bounded by this.
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

// ---------------------------------------------------------------------------------------------
// A JSON-only upstream: it ignores `_format` and `Accept` and always answers FHIR JSON.
//
// Base paths: `/fhir` answers at once, `/fhir/gz` gzips when asked to, `/fhir/slow` waits 5 s,
// `/fhir/lag` 300 ms.

/// Method, URI, headers and body of a request the upstream saw.
type Seen = (Method, Uri, HeaderMap, Bytes);

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request upstream")
    }
}

async fn upstream_handler(State(upstream): State<Upstream>, request: AxumRequest) -> AxumResponse {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    upstream.seen.lock().unwrap().push((
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
        body.clone(),
    ));
    let mut path = parts.uri.path().strip_prefix("/fhir").unwrap_or("");
    for prefix in ["/gz", "/slow", "/lag"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            path = rest;
        }
    }
    if parts.uri.path().starts_with("/fhir/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if parts.uri.path().starts_with("/fhir/lag") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let json = |status: StatusCode, body: Bytes| {
        (status, [("content-type", "application/fhir+json")], body).into_response()
    };
    match (&parts.method, path) {
        (&Method::GET, "/Binary/example") => {
            json(StatusCode::OK, fixture("r4/binary-example.json").into())
        }
        (&Method::GET, "/Binary/f006") => json(StatusCode::OK, fixture("r4/binary-f006.json").into()),
        (&Method::POST, "/Binary") => {
            let mut response = json(StatusCode::CREATED, body);
            let host = parts.headers["host"].to_str().unwrap().to_owned();
            let headers = response.headers_mut();
            let location = format!("http://{host}/fhir/Binary/new/_history/1");
            headers.insert("location", location.parse().unwrap());
            headers.insert(
                "content-location",
                "/fhir/Binary/new/_history/1".parse().unwrap(),
            );
            headers.insert("x-upstream-method", "POST".parse().unwrap());
            response
        }
        _ => json(
            StatusCode::NOT_FOUND,
            Bytes::from_static(
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such resource"}]}"#,
            ),
        ),
    }
}

/// Starts the upstream; returns its address and what it saw.
async fn start_upstream() -> (std::net::SocketAddr, Upstream) {
    let upstream = Upstream::default();
    let app = Router::new()
        .route("/fhir/gz/{*rest}", any(upstream_handler))
        .route_layer(CompressionLayer::new())
        .fallback(upstream_handler)
        .with_state(upstream.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, upstream)
}

/// Starts the proxy in front of `upstream` with small timeouts (the slow upstream takes 5 s).
async fn start_proxy_to(upstream: &str) -> Server {
    let mut options = ProxyOptions::new(upstream.parse().unwrap());
    options.connect_timeout = Duration::from_secs(2);
    options.response_timeout = Duration::from_secs(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_proxy(listener, options).unwrap()
}

// ---------------------------------------------------------------------------------------------
// A real HTTP client.

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(request: Request<Full<Bytes>>) -> Got {
    let response = client().request(request).await.expect("an HTTP response");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(Into::into);
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::default()).unwrap()).await
}

/// A media type without its parameters.
fn essence(content_type: Option<&str>) -> &str {
    content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap()
        .trim()
}

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.local_addr())
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_pdf_is_the_published_document() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;

        let got = get(&url(&proxy, "/Binary/example"), &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(got.header("vary"), Some("Accept"));
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(got.bytes().len(), PDF_LEN);
        assert_eq!(sha256_hex(got.bytes()), PDF_SHA256);

        // The upstream was asked plainly, under its base path.
        let (method, uri, headers, _) = upstream.last();
        assert_eq!(method, Method::GET);
        assert_eq!(uri.path(), "/fhir/Binary/example");
        assert_eq!(headers["accept"], "application/fhir+json");
        assert_eq!(headers["host"], addr.to_string().as_str());

        let got = get(&url(&proxy, "/Binary/f006"), &[("accept", "image/*")]).await;
        assert_eq!(got.header("content-type"), Some("image/jpeg"));
        assert_eq!(got.bytes().len(), JPEG_LEN);
        assert_eq!(sha256_hex(got.bytes()), JPEG_SHA256);

        proxy.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_head_of_the_document() {
    bounded(async {
        let (addr, _) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let request = Request::head(url(&proxy, "/Binary/example"))
            .body(Full::default())
            .unwrap();
        let got = send(request).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(got.header("content-length"), Some("130068"));
        assert!(got.bytes().is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_xml_gives_fhir_xml() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let got = get(
            &url(&proxy, "/Binary/f006?_format=xml&_pretty=false"),
            &[("accept", "application/fhir+json")],
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
        assert_eq!(essence(got.header("content-type")), "application/fhir+xml");
        common::assert_schema_valid(got.bytes(), "r4");
        let xml = std::str::from_utf8(got.bytes()).unwrap();
        assert!(
            xml.contains("<Binary xmlns=\"http://hl7.org/fhir\">"),
            "{xml:.300}"
        );
        assert!(
            xml.contains("<contentType value=\"image/jpeg\"/>"),
            "{xml:.300}"
        );
        // `_format` stays with the proxy; the rest of the query goes on.
        let (_, uri, headers, _) = upstream.last();
        assert_eq!(
            uri.path_and_query().unwrap(),
            "/fhir/Binary/f006?_pretty=false"
        );
        assert_eq!(headers["accept"], "application/fhir+json");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_fhir_json_gives_the_upstream_json_untouched() {
    bounded(async {
        let (addr, _) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let got = get(
            &url(&proxy, "/Binary/example"),
            &[("accept", "application/fhir+json")],
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/fhir+json"));
        assert_eq!(got.header("vary"), Some("Accept"));
        assert_eq!(got.bytes()[..], fixture("r4/binary-example.json")[..]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_passes_through() {
    bounded(async {
        let (addr, _) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let got = get(&url(&proxy, "/Binary/nope"), &[]).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert_eq!(got.header("content-type"), Some("application/fhir+json"));
        assert_eq!(got.header("vary"), Some("Accept"));
        assert_eq!(got.diagnostics(), "no such resource");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_passes_through_with_its_body_and_locations_are_rebased() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir/")).await;
        let body = r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="}"#;
        let request = Request::post(url(&proxy, "/Binary?x=1"))
            .header("content-type", "application/fhir+json")
            .header("authorization", "Bearer secret")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let got = send(request).await;
        assert_eq!(got.status, StatusCode::CREATED);
        assert_eq!(got.header("x-upstream-method"), Some("POST"));
        assert_eq!(got.bytes(), body.as_bytes(), "the upstream echoes the body");
        assert_eq!(
            got.header("location"),
            Some(url(&proxy, "/Binary/new/_history/1").as_str())
        );
        assert_eq!(
            got.header("content-location"),
            Some("/Binary/new/_history/1")
        );

        let (method, uri, headers, seen_body) = upstream.last();
        assert_eq!(method, Method::POST);
        assert_eq!(uri.path_and_query().unwrap(), "/fhir/Binary?x=1");
        assert_eq!(seen_body, body.as_bytes());
        assert_eq!(headers["authorization"], "Bearer secret");
        assert_eq!(headers["content-type"], "application/fhir+json");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_added_and_hop_by_hop_headers_removed() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let proxy_host = proxy.local_addr().to_string();
        let got = get(
            &url(&proxy, "/Binary/example"),
            &[
                ("connection", "x-private"),
                ("x-private", "1"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic eDp5"),
                ("accept-encoding", "br"),
                ("x-forwarded-for", "10.1.2.3"),
            ],
        )
        .await;
        // A client that is no trusted proxy cannot add to the chain.
        assert_eq!(got.status, StatusCode::OK);
        let (_, _, headers, _) = upstream.last();
        for name in ["x-private", "te", "proxy-authorization"] {
            assert!(headers.get(name).is_none(), "{name} went upstream");
        }
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], proxy_host.as_str());
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(
            headers["forwarded"],
            format!("for=127.0.0.1;host=\"{proxy_host}\";proto=http").as_str()
        );
        // The proxy asks for what it can decompress, not for what the client named.
        let accept_encoding = headers["accept-encoding"].to_str().unwrap();
        assert!(accept_encoding.contains("gzip"), "{accept_encoding}");
        assert!(!accept_encoding.contains("br"), "{accept_encoding}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_from_upstream_is_decoded() {
    bounded(async {
        let (addr, _) = start_upstream().await;
        // The upstream does gzip the Binary JSON when asked.
        let direct = get(
            &format!("http://{addr}/fhir/gz/Binary/example"),
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(direct.header("content-encoding"), Some("gzip"));
        assert!(direct.bytes().len() < 176_064);

        let proxy = start_proxy_to(&format!("http://{addr}/fhir/gz")).await;
        let got = get(
            &url(&proxy, "/Binary/example"),
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(got.header("content-encoding"), None);
        assert_eq!(sha256_hex(got.bytes()), PDF_SHA256);

        let got = get(&url(&proxy, "/Binary/f006?_format=json"), &[]).await;
        assert_eq!(got.header("content-encoding"), None);
        assert_eq!(got.bytes()[..], fixture("r4/binary-f006.json")[..]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_502_operation_outcome() {
    bounded(async {
        // A port nobody listens on any more.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let got = get(&url(&proxy, "/Binary/example"), &[]).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        // The same media type as the layer's own OperationOutcomes.
        assert_eq!(
            got.header("content-type"),
            Some("application/fhir+json;charset=utf-8")
        );
        let diagnostics = got.diagnostics();
        assert!(diagnostics.contains("could not connect"), "{diagnostics}");
        assert_eq!(got.json()["issue"][0]["code"], "transient");

        // A client that asked for FHIR XML gets the OperationOutcome in XML.
        let got = get(&url(&proxy, "/Binary/example?_format=xml"), &[]).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(essence(got.header("content-type")), "application/fhir+xml");
        common::assert_schema_valid(got.bytes(), "r4");
        let xml = std::str::from_utf8(got.bytes()).unwrap();
        assert!(
            xml.contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"),
            "{xml}"
        );
        assert!(xml.contains("could not connect"), "{xml}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_too_slow_is_a_504_operation_outcome() {
    bounded(async {
        let (addr, _) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir/slow")).await;
        let got = get(&url(&proxy, "/Binary/example"), &[]).await;
        assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            got.header("content-type"),
            Some("application/fhir+json;charset=utf-8")
        );
        assert_eq!(got.json()["issue"][0]["code"], "timeout");
        // The proxy stays up after a timeout.
        let proxy2 = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let got = get(&url(&proxy2, "/Binary/f006"), &[]).await;
        assert_eq!(sha256_hex(got.bytes()), JPEG_SHA256);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_streams_through_intact() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir")).await;
        let body: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let request = Request::post(url(&proxy, "/Binary"))
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let got = send(request).await;
        assert_eq!(got.status, StatusCode::CREATED);
        // A raw upload reaches the upstream as Binary JSON, with its exact length.
        let (_, _, headers, json) = upstream.last();
        assert_eq!(headers["content-type"], "application/fhir+json");
        assert_eq!(headers["content-length"], json.len().to_string().as_str());
        let resource: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(resource["contentType"], "application/octet-stream");
        let data = decode_base64(resource["data"].as_str().unwrap());
        assert_eq!(sha256_hex(&data), sha256_hex(&body));
        // The upstream's answer (here, what it received) comes back untouched, as FHIR JSON.
        assert_eq!(got.header("content-type"), Some("application/fhir+json"));
        assert_eq!(sha256_hex(got.bytes()), sha256_hex(&json));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let proxy = start_proxy_to(&format!("http://{addr}/fhir/lag")).await;
        let proxy_addr = proxy.local_addr();
        let in_flight =
            tokio::spawn(
                async move { get(&format!("http://{proxy_addr}/Binary/example"), &[]).await },
            );
        // Wait until the request has reached the upstream, which answers 300 ms later.
        while upstream.seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.shutdown().await;
        let got = in_flight.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(sha256_hex(got.bytes()), PDF_SHA256);
        // And nobody listens any more.
        assert!(tokio::net::TcpStream::connect(proxy_addr).await.is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstu2_speaks_the_dstu2_media_types() {
    bounded(async {
        let (addr, upstream) = start_upstream().await;
        let mut options = ProxyOptions::new(format!("http://{addr}/fhir").parse().unwrap());
        options.fhir_version = tower_fhir_binary::FhirVersion::Dstu2;
        let proxy = start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
        let got = get(&url(&proxy, "/Binary/f006"), &[]).await;
        assert_eq!(sha256_hex(got.bytes()), JPEG_SHA256);
        assert_eq!(upstream.last().2["accept"], "application/json+fhir");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = listener.local_addr().unwrap();
        drop(listener);
        let mut options = ProxyOptions::new(format!("http://{down}/fhir").parse().unwrap());
        options.fhir_version = tower_fhir_binary::FhirVersion::Dstu2;
        let proxy = start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
        let got = get(&url(&proxy, "/Binary/f006"), &[]).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            got.header("content-type"),
            Some("application/json+fhir;charset=utf-8")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_not_http_is_refused_up_front() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = ProxyOptions::new("ftp://127.0.0.1:1/fhir".parse().unwrap());
    let error = start_proxy(listener, options).unwrap_err();
    assert!(
        error.to_string().contains("only http:// and https://"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// The demo backend behind the proxy.

/// The decoded `data` of a Binary JSON.
fn decoded_data(json: &serde_json::Value) -> Vec<u8> {
    decode_base64(json["data"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_binaries_in_all_three_representations() {
    bounded(async {
        let demo = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let base = format!("http://{}/fhir", demo.local_addr());
        let proxy = start_proxy_to(&base).await;

        // The samples, as the demo lists them.
        let listing = get(&format!("{base}/Binary"), &[]).await.json();
        let samples: Vec<(String, String)> = listing["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                let resource = &entry["resource"];
                let text = |name: &str| resource[name].as_str().unwrap().to_owned();
                (text("id"), text("contentType"))
            })
            .collect();
        assert!(samples.len() >= 6, "{samples:?}");
        for (id, content_type) in &samples {
            let id = id.as_str();
            // The demo is a legacy server: FHIR JSON whatever is asked.
            let direct = get(
                &format!("{base}/Binary/{id}?_format=xml"),
                &[("accept", "application/fhir+xml")],
            )
            .await;
            assert_eq!(direct.status, StatusCode::OK, "{id}");
            assert!(direct
                .header("content-type")
                .unwrap()
                .starts_with("application/fhir+json"));
            let resource = direct.json();
            assert_eq!(resource["contentType"], content_type.as_str(), "{id}");

            // Native.
            let native = get(&url(&proxy, &format!("/Binary/{id}")), &[]).await;
            assert_eq!(native.status, StatusCode::OK, "{id}");
            assert_eq!(
                native.header("content-type"),
                Some(content_type.as_str()),
                "{id}"
            );
            assert_eq!(native.bytes()[..], decoded_data(&resource)[..], "{id}");
            match id {
                "example" => assert_eq!(sha256_hex(native.bytes()), PDF_SHA256),
                "f006" => assert_eq!(sha256_hex(native.bytes()), JPEG_SHA256),
                _ => {}
            }

            // FHIR JSON, untouched.
            let json = get(
                &url(&proxy, &format!("/Binary/{id}")),
                &[("accept", "application/fhir+json")],
            )
            .await;
            assert_eq!(json.status, StatusCode::OK, "{id}");
            assert_eq!(json.bytes(), direct.bytes(), "{id}");
            assert_eq!(json.json()["resourceType"], "Binary", "{id}");

            // FHIR XML.
            let xml = get(&url(&proxy, &format!("/Binary/{id}?_format=xml")), &[]).await;
            assert_eq!(xml.status, StatusCode::OK, "{id}: {:?}", xml.body);
            assert_eq!(
                essence(xml.header("content-type")),
                "application/fhir+xml",
                "{id}"
            );
            common::assert_schema_valid(xml.bytes(), "r4");
            let text = std::str::from_utf8(xml.bytes()).unwrap();
            assert!(
                text.contains("<Binary xmlns=\"http://hl7.org/fhir\">"),
                "{id}"
            );
            assert!(text.contains(&format!("<id value=\"{id}\"/>")), "{id}");
            assert!(
                text.contains(&format!("<contentType value=\"{content_type}\"/>")),
                "{id}"
            );
        }

        // A search Bundle is no Binary: it passes through.
        let bundle = get(&url(&proxy, "/Binary"), &[]).await;
        assert_eq!(bundle.status, StatusCode::OK);
        assert_eq!(bundle.json()["resourceType"], "Bundle");
        assert_eq!(bundle.json()["total"], samples.len());

        let missing = get(&url(&proxy, "/Binary/nope"), &[]).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json()["resourceType"], "OperationOutcome");

        proxy.shutdown().await;
        demo.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_create_then_read_through_the_proxy() {
    bounded(async {
        let demo = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let proxy = start_proxy_to(&format!("http://{}/fhir", demo.local_addr())).await;
        let request = Request::post(url(&proxy, "/Binary"))
            .header("content-type", "application/fhir+json")
            .body(Full::new(Bytes::from_static(
                br#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="}"#,
            )))
            .unwrap();
        let created = send(request).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let location = created.header("location").unwrap().to_owned();
        assert_eq!(location, url(&proxy, "/Binary/created-1/_history/1"));
        let got = get(&location, &[]).await;
        assert_eq!(got.header("content-type"), Some("text/plain"));
        assert_eq!(got.bytes(), "Hello");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The binary itself, as a child process.

#[cfg(unix)]
#[test]
fn the_binary_serves_the_demo_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    // Killed however this test ends.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_fhir-binary-proxy"))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();

    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let base = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the proxy prints its URL");
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("fhir-binary-proxy listening on ") {
            break rest.split(',').next().unwrap().to_owned();
        }
    };
    // The curl lines come next.
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(5)) {
        let done = line.starts_with("Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let printed = printed.join("\n");
    assert!(
        printed.contains(&format!("curl -o example.pdf {base}/Binary/example")),
        "{printed}"
    );
    assert!(printed.contains("_format=xml"), "{printed}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bounded(async {
        let got = get(&format!("{base}/Binary/example"), &[]).await;
        assert_eq!(got.header("content-type"), Some("application/pdf"));
        assert_eq!(sha256_hex(got.bytes()), PDF_SHA256);
    }));

    // The shell's own `kill`, so that no procps package is needed.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn the_binary_has_help() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-binary-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--upstream",
        "--fhir-version",
        "--connect-timeout",
        "--response-timeout",
        "--public-base-url",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}
