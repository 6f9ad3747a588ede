//! The proxy against hostile clients and misbehaving upstreams, over raw TCP on 127.0.0.1: slow
//! and oversize heads, too many connections, oversize bodies, stalls, unsafe paths, spoofed
//! forwarding headers, methods that are never forwarded, HTTP/2 from clients.
#![cfg(feature = "proxy")]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fixture, sha256_hex, PDF_LEN, PDF_SHA256};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_fhir_binary::proxy::{start_proxy, ProxyOptions, Server};

/// Every test is bounded by this.
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

// ---------------------------------------------------------------------------------------------
// A scripted upstream on raw TCP: for every request it reads the head (and a declared body),
// records the head, then plays its script.

#[derive(Clone)]
enum Step {
    Send(Vec<u8>),
    Sleep(Duration),
}

#[derive(Clone, Default)]
struct Heads(Arc<Mutex<Vec<String>>>);

impl Heads {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn last(&self) -> String {
        self.all().last().cloned().expect("a request upstream")
    }
}

async fn scripted_upstream(script: Vec<Step>) -> (SocketAddr, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Heads::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let script = script.clone();
            tokio::spawn(async move {
                loop {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    seen.0.lock().unwrap().push(head);
                    for step in &script {
                        match step {
                            Step::Send(bytes) => {
                                if stream.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Step::Sleep(d) => tokio::time::sleep(*d).await,
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Reads a request head and skips its `Content-Length` body.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head)
}

/// A complete `200` FHIR JSON response carrying `json`.
fn json_response(json: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    response.extend_from_slice(json);
    response
}

/// An upstream that answers every request with the PDF Binary.
async fn pdf_upstream() -> (SocketAddr, Heads) {
    scripted_upstream(vec![Step::Send(json_response(&fixture(
        "r4/binary-example.json",
    )))])
    .await
}

async fn proxy_with(upstream: SocketAddr, configure: impl FnOnce(&mut ProxyOptions)) -> Server {
    let mut options = ProxyOptions::new(format!("http://{upstream}/fhir").parse().unwrap());
    options.connect_timeout = Duration::from_secs(2);
    options.response_timeout = Duration::from_secs(5);
    configure(&mut options);
    start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Raw clients.

/// Sends `bytes` on a new connection and reads until the server closes it (at most 10 s).
async fn raw(proxy: &Server, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection stayed open");
    String::from_utf8_lossy(&got).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn get_request(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Connection limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_is_dropped_after_the_header_read_timeout() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |o| o.header_read_timeout = Duration::from_secs(1)).await;
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        stream
            .write_all(b"GET /Binary/1 HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        // A header byte every 200 ms, never the end of the head.
        let mut closed = false;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"X").await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "still open after 4 s");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(heads.all().is_empty());

        // A connection that sends nothing at all goes the same way.
        let mut silent = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    bounded(async {
        let (upstream, _) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |o| o.header_read_timeout = Duration::from_secs(1)).await;
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        stream
            .write_all(b"HEAD /Binary/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let started = Instant::now();
        assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= Duration::from_millis(900));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_with_retry_after() {
    bounded(async {
        let (upstream, _) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |o| o.max_connections = 2).await;
        let first = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let _second = TcpStream::connect(proxy.local_addr()).await.unwrap();
        // Let the proxy accept both.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let third = raw(&proxy, &get_request("/Binary/1")).await;
        assert!(third.starts_with("HTTP/1.1 503 "), "{third}");
        assert!(third.contains("Retry-After: 1"), "{third}");

        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = raw(&proxy, &get_request("/Binary/1")).await;
        assert_eq!(status_of(&again), 200, "{}", &again[..100]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_head_gets_431_and_nothing_goes_upstream() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |o| o.max_request_head = 16 * 1024).await;
        let big = "a".repeat(20 * 1024);
        let response = raw(
            &proxy,
            format!("GET /Binary/1 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&response), 431, "{response}");
        // Just under the limit is fine.
        let fits = "a".repeat(15 * 1024);
        let response = raw(
            &proxy,
            format!(
                "GET /Binary/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {fits}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&response), 200);
        assert_eq!(heads.all().len(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_gets_413() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |o| o.max_request_body = 1000).await;
        // Declared too large: refused before anything is forwarded.
        let response = raw(
            &proxy,
            format!(
                "POST /Patient HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1001\r\n\r\n{}",
                "a".repeat(1001)
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&response), 413, "{response}");
        assert!(response.contains("OperationOutcome"));
        assert!(heads.all().is_empty());

        // Chunked, found too large on the way.
        let chunk = "a".repeat(600);
        let response = raw(
            &proxy,
            format!(
                "POST /Patient HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&response), 413, "{response}");

        // At the limit it goes through.
        let response = raw(
            &proxy,
            format!(
                "POST /Patient HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n{}",
                "a".repeat(1000)
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&response), 200, "{response}");
    })
    .await
}

fn xml_post(xml: &str) -> Vec<u8> {
    format!(
        "POST /Binary HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/fhir+xml\r\nContent-Length: {}\r\n\r\n{xml}",
        xml.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_xml_uploads_are_read_ahead_before_the_upstream_is_called() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |_| {}).await;
        // Not FHIR: answered by the proxy, nothing goes upstream.
        let bad = r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><colour value="red"/></Binary>"#;
        let response = raw(&proxy, &xml_post(bad)).await;
        assert_eq!(status_of(&response), 400, "{response}");
        assert!(response.contains("OperationOutcome"), "{response}");
        assert!(heads.all().is_empty(), "{:?}", heads.all());

        // FHIR, within the read-ahead: the upstream gets the JSON with its length.
        let data = "QUJD".repeat(64);
        let good = format!(
            r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><data value="{data}"/></Binary>"#
        );
        let json = format!(r#"{{"resourceType":"Binary","contentType":"text/plain","data":"{data}"}}"#);
        let response = raw(&proxy, &xml_post(&good)).await;
        assert_eq!(status_of(&response), 200, "{response}");
        let head = heads.last();
        assert_eq!(header(&head, "content-length"), [json.len().to_string()], "{head}");
        assert_eq!(header(&head, "content-type"), ["application/fhir+json"], "{head}");

        // A read-ahead shorter than the JSON: the upstream is called with the body streaming.
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |o| o.xml_request_read_ahead = 64).await;
        let response = raw(&proxy, &xml_post(&good)).await;
        assert_eq!(status_of(&response), 200, "{response}");
        let head = heads.all().first().cloned().expect("a request upstream");
        assert!(header(&head, "content-length").is_empty(), "{head}");
        assert_eq!(header(&head, "transfer-encoding"), ["chunked"], "{head}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_upstream_head_is_a_502() {
    bounded(async {
        let big = "a".repeat(100 * 1024);
        let (upstream, _) = scripted_upstream(vec![Step::Send(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
        )])
        .await;
        let proxy = proxy_with(upstream, |_| {}).await;
        let response = raw(&proxy, &get_request("/Binary/1")).await;
        assert_eq!(status_of(&response), 502, "{}", &response[..200.min(response.len())]);
        assert!(!response.contains(&big[..1000]));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. Stalls and slow readers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_before_the_content_type_gives_504() {
    bounded(async {
        let (upstream, _) = scripted_upstream(vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{\"resourceType\":\"Binary\",".to_vec(),
            ),
            Step::Sleep(Duration::from_secs(20)),
        ])
        .await;
        let proxy = proxy_with(upstream, |o| {
            o.upstream_idle_timeout = Duration::from_secs(1)
        })
        .await;
        let started = Instant::now();
        let response = raw(&proxy, &get_request("/Binary/1")).await;
        assert_eq!(status_of(&response), 504, "{response}");
        assert!(response.contains("sent nothing for 1s"), "{response}");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_body_breaks_the_transfer() {
    bounded(async {
        // Larger than the 256 KiB the proxy reads whole to rewrite URLs in it: it streams.
        let data = "QUJD".repeat(100 * 1024);
        let large = format!(
            r#"{{"resourceType":"Binary","contentType":"application/pdf","data":"{data}"}}"#
        );
        // The small one is read whole before its head: a stall is a 504 for every
        // representation.
        let small = fixture("r4/binary-example.json");
        for (json, small) in [(large.into_bytes(), false), (small, true)] {
            let mut head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
                json.len()
            )
            .into_bytes();
            head.extend_from_slice(&json[..json.len() / 2]);
            let (upstream, _) =
                scripted_upstream(vec![Step::Send(head), Step::Sleep(Duration::from_secs(20))])
                    .await;
            let proxy = proxy_with(upstream, |o| {
                o.upstream_idle_timeout = Duration::from_secs(1)
            })
            .await;
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            // The untouched JSON streams: its head is out when the upstream stalls. The layer
            // may hold the head of the other two until it has read more: then 504.
            for target in [
                "/Binary/1?_format=json",
                "/Binary/1",
                "/Binary/1?_format=xml",
            ] {
                let uri = format!("http://{}{target}", proxy.local_addr());
                let response = client.get(uri.parse().unwrap()).await.unwrap();
                let status = response.status();
                let body =
                    tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
                        .await
                        .expect("the transfer ends");
                match status {
                    StatusCode::OK if !small => {
                        assert!(body.is_err(), "{target}: a truncated body ended cleanly")
                    }
                    StatusCode::GATEWAY_TIMEOUT if small || !target.ends_with("json") => {}
                    other => panic!("{target} (small: {small}): {other}"),
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_dropped() {
    bounded(async {
        // 48 MiB of document: more than the loopback socket buffers hold.
        let data = vec![b'A'; 64 * 1024 * 1024];
        let json = format!(
            r#"{{"resourceType":"Binary","contentType":"application/octet-stream","data":"{}"}}"#,
            std::str::from_utf8(&data).unwrap()
        );
        let (upstream, _) =
            scripted_upstream(vec![Step::Send(json_response(json.as_bytes()))]).await;
        let proxy = proxy_with(upstream, |o| {
            o.client_send_timeout = Duration::from_secs(1);
        })
        .await;
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        stream.write_all(&get_request("/Binary/1")).await.unwrap();
        // Read nothing for 3 s, then everything there is.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the connection stayed open");
        assert!(
            got < 48 * 1024 * 1024,
            "{got} bytes: the client was not dropped"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_xml_reorders_elements_only_within_the_xml_reorder_limit() {
    bounded(async {
        // 640 KiB of payload (more than the layer reads whole before the head), then `meta`,
        // which FHIR XML writes before the payload.
        let json = format!(
            r#"{{"resourceType":"Binary","contentType":"text/plain","data":"{}","meta":{{"versionId":"7"}}}}"#,
            "QUFB".repeat(160 * 1024)
        );
        let (upstream, _) =
            scripted_upstream(vec![Step::Send(json_response(json.as_bytes()))]).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        // By default the proxy holds 64 KiB: the XML streams, and breaks at the late `meta`
        // rather than leave it out.
        let proxy = proxy_with(upstream, |_| {}).await;
        let uri = format!("http://{}/Binary/1?_format=xml", proxy.local_addr());
        let response = client.get(uri.parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err(), "a clean end without meta");
        // With a limit above the document, `meta` goes first.
        let proxy = proxy_with(upstream, |o| o.xml_reorder_limit = 1 << 20).await;
        let uri = format!("http://{}/Binary/1?_format=xml", proxy.local_addr());
        let response = client.get(uri.parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let xml = response.into_body().collect().await.unwrap().to_bytes();
        let xml = String::from_utf8_lossy(&xml);
        assert!(
            xml.contains(r#"<meta><versionId value="7"/></meta><contentType value="text/plain"/><data value="QUFB"#),
            "{}",
            &xml[..300.min(xml.len())]
        );
        assert!(xml.ends_with("\"/></Binary>"), "{}", &xml[xml.len() - 100..]);
        // A body small enough to be read whole before the head is reordered whatever the
        // limit: 128 KiB of payload, then `meta`.
        let json = format!(
            r#"{{"resourceType":"Binary","contentType":"text/plain","data":"{}","meta":{{"versionId":"7"}}}}"#,
            "QUFB".repeat(32 * 1024)
        );
        let (upstream, _) =
            scripted_upstream(vec![Step::Send(json_response(json.as_bytes()))]).await;
        let proxy = proxy_with(upstream, |_| {}).await;
        let uri = format!("http://{}/Binary/1?_format=xml", proxy.local_addr());
        let response = client.get(uri.parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let xml = response.into_body().collect().await.unwrap().to_bytes();
        let xml = String::from_utf8_lossy(&xml);
        assert!(
            xml.contains(r#"<meta><versionId value="7"/></meta><contentType value="text/plain"/><data value="QUFB"#),
            "{}",
            &xml[..300.min(xml.len())]
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Paths.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_paths_get_400_and_nothing_goes_upstream() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |_| {}).await;
        for target in [
            "/../admin",
            "/Binary/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/..%2fadmin",
            "/..%2Fadmin",
            "/..%5cadmin",
            "/..\\admin",
            "/Binary/..;/..;/admin",
        ] {
            let response = raw(&proxy, &get_request(target)).await;
            assert_eq!(status_of(&response), 400, "{target}: {response}");
            assert!(
                response.contains("\"resourceType\":\"OperationOutcome\""),
                "{target}"
            );
        }
        assert!(heads.all().is_empty(), "{:?}", heads.all());

        // Dot segments that stay inside the root are resolved before forwarding.
        for (target, upstream_target) in [
            ("/Binary/x/../example", "/fhir/Binary/example"),
            ("/./Binary//example", "/fhir/Binary/example"),
            ("//evil.example/Binary/1", "/fhir/evil.example/Binary/1"),
            ("/Binary;/../metadata?x=1", "/fhir/metadata?x=1"),
        ] {
            let response = raw(&proxy, &get_request(target)).await;
            assert_eq!(status_of(&response), 200, "{target}");
            let head = heads.last();
            assert!(
                head.starts_with(&format!("GET {upstream_target} HTTP/1.1\r\n")),
                "{target}: {head}"
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. Forwarding headers and Host.

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_clients_are_replaced_unless_trusted() {
    bounded(async {
        let spoofed = "GET /Binary/1 HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\
            X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n\
            X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |_| {}).await;
        assert_eq!(status_of(&raw(&proxy, spoofed.as_bytes()).await), 200);
        let head = heads.last();
        assert_eq!(header(&head, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(header(&head, "x-forwarded-host"), ["proxy.test"]);
        assert_eq!(header(&head, "x-forwarded-proto"), ["http"]);
        assert_eq!(
            header(&head, "forwarded"),
            ["for=127.0.0.1;host=\"proxy.test\";proto=http"]
        );
        assert!(header(&head, "x-real-ip").is_empty());

        // From a trusted proxy they are kept and appended to.
        let proxy = proxy_with(upstream, |o| o.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
        assert_eq!(status_of(&raw(&proxy, spoofed.as_bytes()).await), 200);
        let head = heads.last();
        assert_eq!(header(&head, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
        assert_eq!(header(&head, "x-forwarded-host"), ["evil.example"]);
        assert_eq!(header(&head, "x-real-ip"), ["6.6.6.6"]);
        assert_eq!(
            header(&head, "forwarded"),
            ["for=6.6.6.6, for=127.0.0.1;host=\"proxy.test\";proto=http"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_follows_the_host_only_when_allowed() {
    bounded(async {
        let created = |upstream: SocketAddr| {
            format!(
                "HTTP/1.1 201 Created\r\nLocation: http://{upstream}/fhir/Binary/9/_history/1\r\nContent-Length: 0\r\n\r\n"
            )
        };
        // The upstream's address is only known once it listens: a first upstream tells it.
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = probe.local_addr().unwrap();
        drop(probe);
        let listener = TcpListener::bind(upstream_addr).await.unwrap();
        let script = created(upstream_addr).into_bytes();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let script = script.clone();
                tokio::spawn(async move {
                    while read_head(&mut stream).await.is_some() {
                        stream.write_all(&script).await.unwrap();
                    }
                });
            }
        });
        let post = |host: &str| {
            format!("POST /Patient HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        };

        let proxy = proxy_with(upstream_addr, |_| {}).await;
        let response = raw(&proxy, post("evil.example").as_bytes()).await;
        let own = format!("http://{}/Binary/9/_history/1", proxy.local_addr());
        assert!(response.contains(&format!("location: {own}\r\n")), "{response}");

        let proxy = proxy_with(upstream_addr, |o| {
            o.allowed_hosts = vec!["fhir.example.org".into()]
        })
        .await;
        let response = raw(&proxy, post("fhir.example.org").as_bytes()).await;
        assert!(
            response.contains("location: http://fhir.example.org/Binary/9/_history/1\r\n"),
            "{response}"
        );
        let response = raw(&proxy, post("evil.example").as_bytes()).await;
        assert!(!response.contains("evil.example"), "{response}");

        let proxy = proxy_with(upstream_addr, |o| {
            o.public_base_url = Some("https://fhir.example.org/r4".parse().unwrap())
        })
        .await;
        let response = raw(&proxy, post("evil.example").as_bytes()).await;
        assert!(
            response.contains("location: https://fhir.example.org/r4/Binary/9/_history/1\r\n"),
            "{response}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_or_two_hosts_get_400() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |_| {}).await;
        for request in [
            "GET /Binary/1 HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /Binary/1 HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        ] {
            let response = raw(&proxy, request.as_bytes()).await;
            assert_eq!(status_of(&response), 400, "{request}: {response}");
        }
        assert!(heads.all().is_empty());
        // HTTP/1.0 needs none.
        let response = raw(&proxy, b"GET /Binary/1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_of(&response), 200);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. Methods.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_trace_and_upgrades_are_never_forwarded() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |_| {}).await;
        // Refused upgrades close the connection: what follows may be another protocol.
        let response = raw(
            &proxy,
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&response), 405, "{response}");
        let response = raw(
            &proxy,
            b"TRACE /Binary/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&response), 405, "{response}");
        assert!(response.to_ascii_lowercase().contains("allow: get"), "{response}");
        let response = raw(
            &proxy,
            b"GET /Binary/1 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&response), 501, "{response}");
        assert!(heads.all().is_empty(), "{:?}", heads.all());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_101_is_never_relayed() {
    bounded(async {
        let (upstream, _) = scripted_upstream(vec![
            Step::Send(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: evil\r\n\r\nraw bytes".to_vec(),
            ),
            Step::Sleep(Duration::from_secs(5)),
        ])
        .await;
        let proxy = proxy_with(upstream, |_| {}).await;
        let response = raw(&proxy, &get_request("/Binary/1")).await;
        assert_eq!(status_of(&response), 502, "{response}");
        assert!(!response.contains("raw bytes"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP/2 from clients.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_served() {
    bounded(async {
        let (upstream, heads) = pdf_upstream().await;
        let proxy = proxy_with(upstream, |_| {}).await;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let request = Request::get(format!("http://{}/Binary/example", proxy.local_addr()))
            .body(Full::default())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "application/pdf");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), PDF_LEN);
        assert_eq!(sha256_hex(&body), PDF_SHA256);
        // The upstream was spoken to in HTTP/1.1.
        assert!(heads
            .last()
            .starts_with("GET /fhir/Binary/example HTTP/1.1\r\n"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 9. Decompression limits.

/// An upstream that gzips (when asked) a Binary JSON of 8 MiB of `A`: about 1,000 to 1.
async fn bomb_upstream() -> SocketAddr {
    use axum::routing::get;
    let json = Bytes::from(format!(
        r#"{{"resourceType":"Binary","contentType":"text/plain","data":"{}"}}"#,
        "A".repeat(8 << 20)
    ));
    let app = axum::Router::new()
        .route(
            "/fhir/Binary/bomb",
            get(move || {
                let json = json.clone();
                async move { ([("content-type", "application/fhir+json")], json) }
            }),
        )
        .layer(tower_http::compression::CompressionLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_cut_off() {
    bounded(async {
        let upstream = bomb_upstream().await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let fetch = |proxy: &Server, target: &str| {
            let uri = format!("http://{}{target}", proxy.local_addr());
            let client = client.clone();
            async move {
                let response = client.get(uri.parse().unwrap()).await.unwrap();
                let status = response.status();
                (
                    status,
                    response.into_body().collect().await.map(|b| b.to_bytes()),
                )
            }
        };

        // Within the limits: the whole document. (The default ratio, 100, would stop it.)
        let generous = proxy_with(upstream, |o| o.max_decompression_ratio = 10_000).await;
        let (status, body) = fetch(&generous, "/Binary/bomb?_format=json").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap().len(), (8 << 20) + 62);

        for (name, configure) in [
            (
                "ratio",
                Box::new(|o: &mut ProxyOptions| o.max_decompression_ratio = 100)
                    as Box<dyn FnOnce(&mut ProxyOptions)>,
            ),
            (
                "size",
                Box::new(|o: &mut ProxyOptions| {
                    o.max_decompression_ratio = 1 << 40;
                    o.max_decompressed_size = 2 << 20;
                }),
            ),
        ] {
            let mut options = ProxyOptions::new(format!("http://{upstream}/fhir").parse().unwrap());
            options.max_decompression_ratio = 10_000;
            configure(&mut options);
            let proxy =
                start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
            // Streamed untouched or decoded, the head is out: the transfer breaks.
            for target in ["/Binary/bomb?_format=json", "/Binary/bomb"] {
                let (status, body) = fetch(&proxy, target).await;
                assert_eq!(status, StatusCode::OK, "{name} {target}");
                assert!(
                    body.is_err(),
                    "{name} {target}: a cut-off body ended cleanly"
                );
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Credentials in the upstream URL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_info_in_the_upstream_url_is_sent_as_basic_authorization() {
    bounded(async {
        let (upstream, heads) = scripted_upstream(vec![Step::Send(
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )])
        .await;
        let mut options =
            ProxyOptions::new(format!("http://alice:s%3Acret@{upstream}/fhir").parse().unwrap());
        options.connect_timeout = Duration::from_secs(2);
        let proxy = start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
        let post = "POST /Patient HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status_of(&raw(&proxy, post.as_bytes()).await), 201);
        let head = heads.last();
        // base64("alice:s:cret")
        assert_eq!(header(&head, "authorization"), ["Basic YWxpY2U6czpjcmV0"]);
        assert_eq!(header(&head, "host"), [upstream.to_string().as_str()]);
        // A client's own credentials are left alone.
        let own = "POST /Patient HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status_of(&raw(&proxy, own.as_bytes()).await), 201);
        assert_eq!(header(&heads.last(), "authorization"), ["Bearer t"]);
    })
    .await
}
