//! The demo backend as a strict, versioning, JSON-only FHIR server: creates, updates,
//! preferences, preconditions and refusals, through a real HTTP client on 127.0.0.1.
#![cfg(feature = "proxy")]

mod common;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use common::Got;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_fhir_binary::proxy::{start_demo, Server};

/// The sample Binaries a new demo backend holds (`example`, `f006`, `cda`, `html`, `svg`,
/// `patient`).
const SAMPLES: u64 = 6;

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test took too long")
}

async fn demo() -> (Server, String) {
    let server = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let base = format!("http://{}/fhir", server.local_addr());
    (server, base)
}

async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.expect("an HTTP response");
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(Into::into),
    }
}

const JSON: (&str, &str) = ("content-type", "application/fhir+json");
const HELLO: &str = r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="}"#;

/// How many Binaries a search finds.
async fn count(base: &str) -> u64 {
    let got = send("GET", &format!("{base}/Binary"), &[], "").await;
    got.json()["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read_every_version() {
    bounded(async {
        let (server, base) = demo().await;
        let created = send("POST", &format!("{base}/Binary"), &[JSON], HELLO).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let location = created.header("location").unwrap().to_owned();
        assert_eq!(location, format!("{base}/Binary/created-1/_history/1"));
        assert_eq!(created.header("etag"), Some("W/\"1\""));
        assert!(created.header("last-modified").unwrap().ends_with(" GMT"));
        assert_eq!(created.header("preference-applied"), Some("return=representation"));
        let resource = created.json();
        assert_eq!(resource["id"], "created-1");
        assert_eq!(resource["meta"]["versionId"], "1");
        let instant = resource["meta"]["lastUpdated"].as_str().unwrap();
        assert!(instant.len() == 24 && instant.ends_with('Z') && instant.as_bytes()[10] == b'T', "{instant}");
        assert_eq!(resource["data"], "SGVsbG8=");

        let read = send("GET", &location, &[], "").await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.json(), resource);

        // An update makes version 2; version 1 stays readable.
        let update = r#"{"resourceType":"Binary","id":"created-1","contentType":"text/plain","data":"V29ybGQ="}"#;
        let updated = send("PUT", &format!("{base}/Binary/created-1"), &[JSON], update).await;
        assert_eq!(updated.status, StatusCode::OK);
        assert_eq!(updated.header("location"), Some(format!("{base}/Binary/created-1/_history/2").as_str()));
        assert_eq!(updated.header("etag"), Some("W/\"2\""));
        assert_eq!(updated.json()["meta"]["versionId"], "2");
        let current = send("GET", &format!("{base}/Binary/created-1"), &[], "").await;
        assert_eq!(current.json()["data"], "V29ybGQ=");
        assert_eq!(current.header("etag"), Some("W/\"2\""));
        let first = send("GET", &location, &[], "").await;
        assert_eq!(first.json()["data"], "SGVsbG8=");
        let none = send("GET", &format!("{base}/Binary/created-1/_history/3"), &[], "").await;
        assert_eq!(none.status, StatusCode::NOT_FOUND);

        // PUT to a new id creates it with that id.
        let put_new = r#"{"resourceType":"Binary","id":"mine.1","contentType":"image/png","data":"AA=="}"#;
        let created = send("PUT", &format!("{base}/Binary/mine.1"), &[JSON], put_new).await;
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.header("location"), Some(format!("{base}/Binary/mine.1/_history/1").as_str()));
        // A second POST gets the next id; an id in a POST body is ignored, as FHIR says.
        let with_id = r#"{"resourceType":"Binary","id":"ignored","contentType":"text/plain","data":"SGVsbG8="}"#;
        let second = send("POST", &format!("{base}/Binary"), &[JSON], with_id).await;
        assert_eq!(second.json()["id"], "created-2");
        assert_eq!(count(&base).await, SAMPLES + 3);
        server.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_return_is_honoured() {
    bounded(async {
        let (server, base) = demo().await;
        let minimal = send(
            "POST",
            &format!("{base}/Binary"),
            &[JSON, ("prefer", "return=minimal")],
            HELLO,
        )
        .await;
        assert_eq!(minimal.status, StatusCode::CREATED);
        assert!(minimal.bytes().is_empty());
        assert!(minimal.header("content-type").is_none());
        assert_eq!(minimal.header("preference-applied"), Some("return=minimal"));
        let location = minimal.header("location").unwrap();
        assert_eq!(
            send("GET", location, &[], "").await.json()["data"],
            "SGVsbG8="
        );

        let outcome = send(
            "POST",
            &format!("{base}/Binary"),
            &[JSON, ("prefer", "respond-async, return=OperationOutcome")],
            HELLO,
        )
        .await;
        assert_eq!(outcome.status, StatusCode::CREATED);
        assert_eq!(outcome.json()["resourceType"], "OperationOutcome");
        assert_eq!(outcome.json()["issue"][0]["severity"], "information");
        assert!(outcome
            .header("location")
            .unwrap()
            .ends_with("/Binary/created-2/_history/1"));

        let full = send(
            "POST",
            &format!("{base}/Binary"),
            &[JSON, ("prefer", "return=representation")],
            HELLO,
        )
        .await;
        assert_eq!(full.json()["resourceType"], "Binary");
        server.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_refuse_a_lost_update() {
    bounded(async {
        let (server, base) = demo().await;
        let url = format!("{base}/Binary/cda");
        let body = |text: &str| {
            format!(
                r#"{{"resourceType":"Binary","id":"cda","contentType":"text/xml","data":"{text}"}}"#
            )
        };
        let stale = send(
            "PUT",
            &url,
            &[JSON, ("if-match", "W/\"2\"")],
            &body("PGEvPg=="),
        )
        .await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(stale.json()["resourceType"], "OperationOutcome");
        let ok = send(
            "PUT",
            &url,
            &[JSON, ("if-match", "W/\"1\"")],
            &body("PGEvPg=="),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.header("etag"), Some("W/\"2\""));
        // The same If-Match again is now stale: the second writer loses, nothing is stored.
        let lost = send(
            "PUT",
            &url,
            &[JSON, ("if-match", "W/\"1\"")],
            &body("PGIvPg=="),
        )
        .await;
        assert_eq!(lost.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(send("GET", &url, &[], "").await.json()["data"], "PGEvPg==");
        // If-Match on a Binary that does not exist, If-None-Match: * on one that does.
        let missing =
            r#"{"resourceType":"Binary","id":"nope","contentType":"text/xml","data":"PGEvPg=="}"#;
        let got = send(
            "PUT",
            &format!("{base}/Binary/nope"),
            &[JSON, ("if-match", "*")],
            missing,
        )
        .await;
        assert_eq!(got.status, StatusCode::PRECONDITION_FAILED);
        let got = send(
            "PUT",
            &url,
            &[JSON, ("if-none-match", "*")],
            &body("PGEvPg=="),
        )
        .await;
        assert_eq!(got.status, StatusCode::PRECONDITION_FAILED);
        // Conditional create: an existing match is returned, nothing is created.
        let got = send(
            "POST",
            &format!("{base}/Binary"),
            &[JSON, ("if-none-exist", "_id=cda")],
            HELLO,
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.json()["id"], "cda");
        let got = send(
            "POST",
            &format!("{base}/Binary"),
            &[JSON, ("if-none-exist", "contenttype=x")],
            HELLO,
        )
        .await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST);
        assert_eq!(count(&base).await, SAMPLES);
        server.shutdown().await;
    })
    .await
}

/// Method, URL, headers, body, and the status a strict server answers.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    StatusCode,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_strict_server_refuses_is_refused_and_not_stored() {
    bounded(async {
        let (server, base) = demo().await;
        let post = format!("{base}/Binary");
        let put = format!("{base}/Binary/x1");
        let cases: &[Case] = &[
            ("POST", &post, &[("content-type", "application/pdf")], "%PDF-1.4", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("POST", &post, &[], HELLO, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("POST", &post, &[("content-type", "application/fhir+xml")], "<Binary/>", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("POST", &post, &[JSON], "{", StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="}x"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Patient"}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"[1]"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","data":"SGVsbG8="}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8"}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain","data":""}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain","content":"SGVsbG8="}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8=","data":"AA=="}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"not a type","data":"SGVsbG8="}"#, StatusCode::BAD_REQUEST),
            ("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain","securityContext":"Patient/1"}"#, StatusCode::BAD_REQUEST),
            ("PUT", &put, &[JSON], HELLO, StatusCode::BAD_REQUEST),
            ("PUT", &put, &[JSON], r#"{"resourceType":"Binary","id":"x2","contentType":"text/plain"}"#, StatusCode::BAD_REQUEST),
            ("PUT", &format!("{base}/Binary/a_b"), &[JSON], r#"{"resourceType":"Binary","id":"a_b","contentType":"text/plain"}"#, StatusCode::BAD_REQUEST),
            ("DELETE", &put, &[], "", StatusCode::METHOD_NOT_ALLOWED),
        ];
        for (method, url, headers, body, status) in cases {
            let got = send(method, url, headers, body).await;
            assert_eq!(got.status, *status, "{method} {body}: {:?}", got.body);
            assert_eq!(got.json()["resourceType"], "OperationOutcome", "{body}");
        }
        assert_eq!(count(&base).await, SAMPLES);
        // What it accepts: a Binary without data, sorted keys, whitespace in the base64.
        let fine = r#"{"contentType":"text/plain","data":"SGVs bG8=","resourceType":"Binary","meta":{"tag":[{"code":"t"}]}}"#;
        let got = send("POST", &post, &[("content-type", "application/json; charset=utf-8")], fine).await;
        assert_eq!(got.status, StatusCode::CREATED, "{:?}", got.body);
        assert_eq!(got.json()["meta"]["tag"][0]["code"], "t");
        let got = send("POST", &post, &[JSON], r#"{"resourceType":"Binary","contentType":"text/plain"}"#).await;
        assert_eq!(got.status, StatusCode::CREATED);
        server.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_short_stores_nothing() {
    bounded(async {
        let (server, base) = demo().await;
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        let head = format!(
            "POST /fhir/Binary HTTP/1.1\r\nHost: {}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
            server.local_addr(),
            HELLO.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&HELLO.as_bytes()[..HELLO.len() - 2]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(!String::from_utf8_lossy(&answer).contains("201"), "{}", String::from_utf8_lossy(&answer));
        assert_eq!(count(&base).await, SAMPLES);
        server.shutdown().await;
    })
    .await
}
