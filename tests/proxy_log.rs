//! The proxy's access log, one `tracing` event per request.
//!
//! This test has a binary of its own. `tracing` caches, per call site, whether any subscriber is
//! interested; a test that sets a thread-local subscriber while other tests of the same binary
//! log through the same call sites can find them cached as uninteresting, and see nothing. Alone
//! in its process, the test installs the global subscriber before the proxy logs anything.
#![cfg(feature = "proxy")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_fhir_binary::proxy::{start_demo, start_proxy, ProxyOptions};

/// A writer for tracing-subscriber that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `request` and returns the status and the length of the body the client received.
async fn send(request: Request<Full<Bytes>>) -> (u16, usize) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("an HTTP response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("a whole body");
    (status, body.to_bytes().len())
}

#[test]
fn every_request_is_logged_with_its_representation() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sent = runtime.block_on(async {
        let demo = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let upstream = format!("http://{}/fhir", demo.local_addr());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = start_proxy(listener, ProxyOptions::new(upstream.parse().unwrap())).unwrap();
        let base = format!("http://{}", proxy.local_addr());
        let get = |path: &str| {
            Request::get(format!("{base}{path}"))
                .body(Full::default())
                .unwrap()
        };
        let create = Request::post(format!("{base}/Binary"))
            .header("content-type", "application/fhir+json")
            .body(Full::new(Bytes::from_static(
                br#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="}"#,
            )))
            .unwrap();
        let requests = [
            get("/Binary/f006"),
            get("/Binary/f006?_format=json"),
            get("/Binary/f006?_format=xml"),
            get("/Binary/nope"),
            create,
            get("/Binary/f006?_format=ttl"),
            get("/metadata"),
        ];
        let mut sent = Vec::new();
        for request in requests {
            sent.push(send(request).await);
            // The event is written when the response body ends, which the client can see
            // first; waiting for it keeps the lines in the order of the requests.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while logged(&captured).len() < sent.len() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Refused requests: logged at INFO with their reason, by the guard and by hyper.
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        stream
            .write_all(b"GET /%2e%2e/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400"));
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        let big = "a".repeat(200 * 1024);
        stream
            .write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 431"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rejected(&captured).len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.shutdown().await;
        demo.shutdown().await;
        sent
    });
    let refusals = rejected(&captured);
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    assert!(refusals[0].contains(" INFO "), "{}", refusals[0]);
    assert!(refusals[0].contains("status=400"), "{}", refusals[0]);
    assert!(
        refusals[0].contains("reason=an encoded dot"),
        "{}",
        refusals[0]
    );
    assert!(refusals[1].contains(" INFO "), "{}", refusals[1]);
    assert!(refusals[1].contains("too large"), "{}", refusals[1]);
    let lines = logged(&captured);
    // The seven requests, then the refused one that reached the access log (the one hyper
    // refused never reached the service).
    assert_eq!(lines.len(), 8, "{lines:#?}");
    assert!(lines[7].contains("status=400"), "{}", lines[7]);
    assert!(
        lines[7].contains("representation=\"proxy\""),
        "{}",
        lines[7]
    );
    let expect = [
        ("method=GET path=/Binary/f006", "representation=\"native\""),
        (
            "method=GET path=/Binary/f006",
            "representation=\"fhir-json\"",
        ),
        (
            "method=GET path=/Binary/f006",
            "representation=\"fhir-xml\"",
        ),
        (
            "method=GET path=/Binary/nope",
            "representation=\"passed-through\"",
        ),
        // A write: the created Binary comes back as FHIR JSON.
        ("method=POST path=/Binary", "representation=\"fhir-json\""),
        (
            "method=GET path=/Binary/f006",
            "representation=\"not-acceptable\"",
        ),
        (
            "method=GET path=/metadata",
            "representation=\"not-negotiated\"",
        ),
    ];
    assert_eq!(sent[0], (200, 26626));
    assert_eq!(sent[3].0, 404);
    assert_eq!(sent[4].0, 201);
    assert_eq!(sent[5].0, 406);
    for ((line, (request, representation)), (status, bytes)) in lines.iter().zip(expect).zip(sent) {
        assert!(line.contains(request), "{line}");
        assert!(line.contains(representation), "{line}");
        let outcome = format!("status={status} bytes={bytes} ");
        assert!(line.contains(&outcome), "{outcome} in {line}");
        assert!(line.contains("duration_ms="), "{line}");
    }
}

/// The lines about refused requests written so far.
fn rejected(captured: &Captured) -> Vec<String> {
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    logs.lines()
        .filter(|line| line.contains("fhir_binary_proxy: rejected "))
        .map(str::to_owned)
        .collect()
}

/// The access log lines written so far.
fn logged(captured: &Captured) -> Vec<String> {
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    logs.lines()
        .filter(|line| line.contains("fhir_binary_proxy: request "))
        .map(str::to_owned)
        .collect()
}
