//! What operators see: health and readiness endpoints, Prometheus metrics, the command line's
//! environment variables, JSON logs, credentials never printed.
#![cfg(feature = "proxy")]

use std::future::Future;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_fhir_binary::proxy::{start_demo, start_proxy, ProxyOptions, Server};

const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

async fn request(method: &str, url: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    request_with(&client, method, url).await
}

async fn request_with(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn proxy(upstream: &str, configure: impl FnOnce(&mut ProxyOptions)) -> Server {
    let mut options = ProxyOptions::new(upstream.parse().unwrap());
    options.ready_timeout = Duration::from_secs(1);
    configure(&mut options);
    start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap()
}

/// An upstream that accepts connections and never answers; counts the requests it read.
async fn silent_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    bounded(async {
        let demo = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let up = proxy(&format!("http://{}/fhir", demo.local_addr()), |_| {}).await;
        let base = format!("http://{}", up.local_addr());
        assert_eq!(
            request("GET", &format!("{base}/healthz")).await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(
            request("GET", &format!("{base}/readyz")).await,
            (StatusCode::OK, "ready\n".into())
        );
        assert_eq!(
            request("HEAD", &format!("{base}/readyz")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            request("POST", &format!("{base}/healthz")).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );

        // An upstream that never answers: alive, not ready; nothing forwarded but the check.
        let (silent, seen) = silent_upstream().await;
        let stuck = proxy(&format!("http://{silent}/fhir"), |_| {}).await;
        let base = format!("http://{}", stuck.local_addr());
        assert_eq!(
            request("GET", &format!("{base}/healthz")).await.0,
            StatusCode::OK
        );
        let (status, body) = request("GET", &format!("{base}/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("did not answer within 1s"), "{body}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A down upstream: not ready either.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = listener.local_addr().unwrap();
        drop(listener);
        let unreachable = proxy(&format!("http://{down}/fhir"), |_| {}).await;
        let (status, body) = request(
            "GET",
            &format!("http://{}/readyz", unreachable.local_addr()),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("502"), "{body}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_configurable_and_never_forwarded() {
    bounded(async {
        let (silent, seen) = silent_upstream().await;
        let proxy = proxy(&format!("http://{silent}/fhir"), |o| {
            o.health_path = "/-/live".into();
            o.metrics_path = "/-/metrics".into();
            o.ready_path = String::new();
        })
        .await;
        let base = format!("http://{}", proxy.local_addr());
        assert_eq!(
            request("GET", &format!("{base}/-/live")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            request("GET", &format!("{base}/-/metrics")).await.0,
            StatusCode::OK
        );
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_bytes_errors_and_connections() {
    bounded(async {
        let demo = start_demo(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let proxy = proxy(&format!("http://{}/fhir", demo.local_addr()), |o| {
            o.max_connections = 2
        })
        .await;
        // One connection, kept alive. (A pooled client may open a second one when the first is
        // not back in its pool yet, which the proxy would count or refuse.)
        let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
        let host = proxy.local_addr().to_string();
        let on_one_connection = |path: &str| {
            let (sender, host) = (sender.clone(), host.clone());
            let request = Request::get(path)
                .header("host", host)
                .body(Full::<Bytes>::default())
                .unwrap();
            async move {
                let mut sender = sender.lock().await;
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        for _ in 0..3 {
            assert_eq!(on_one_connection("/Binary/example").await.0, StatusCode::OK);
        }
        assert_eq!(
            on_one_connection("/Binary/example?_format=json").await.0,
            StatusCode::OK
        );
        assert_eq!(
            on_one_connection("/%2e%2e/x").await.0,
            StatusCode::BAD_REQUEST
        );
        // The client's connection and this one open: the next is refused.
        let held = TcpStream::connect(proxy.local_addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut refused = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let mut answer = String::new();
        refused.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(held);
        // Until the proxy has counted the refused connection and seen the held one close:
        // then only the client's is open.
        let expected = [
            "fhir_binary_proxy_requests_total{method=\"GET\",representation=\"native\",status=\"200\"} 3",
            "fhir_binary_proxy_requests_total{method=\"GET\",representation=\"fhir-json\",status=\"200\"} 1",
            // The proxy's own 400 for an unsafe path, before the layer.
            "fhir_binary_proxy_requests_total{method=\"GET\",representation=\"proxy\",status=\"400\"} 1",
            "fhir_binary_proxy_request_duration_seconds_count{method=\"GET\",representation=\"native\"} 3",
            "fhir_binary_proxy_refused_connections_total 1",
            // The client's connection.
            "fhir_binary_proxy_open_connections 1",
        ];
        let mut text = String::new();
        for _ in 0..100 {
            let (status, got) = on_one_connection("/metrics").await;
            assert_eq!(status, StatusCode::OK);
            text = got;
            if expected.iter().all(|line| text.contains(line)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for line in expected {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let bytes_out: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("fhir_binary_proxy_response_body_bytes_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(bytes_out > 3 * 130_068, "{bytes_out}");

        // A dead upstream is counted.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = listener.local_addr().unwrap();
        drop(listener);
        let unreachable = proxy_to_down(down).await;
        let base = format!("http://{}", unreachable.local_addr());
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = |method: &'static str, url: String| {
            let client = client.clone();
            async move { request_with(&client, method, &url).await }
        };
        assert_eq!(request("GET", format!("{base}/Binary/1")).await.0, StatusCode::BAD_GATEWAY);
        let (_, text) = request("GET", format!("{base}/metrics")).await;
        assert!(
            text.contains("fhir_binary_proxy_upstream_errors_total{kind=\"connect\"} 1"),
            "{text}"
        );
    })
    .await
}

async fn proxy_to_down(down: std::net::SocketAddr) -> Server {
    proxy(&format!("http://{down}/fhir"), |_| {}).await
}

/// Runs the binary with `args` and `env` until it has printed its URL (or exited), then stops
/// it; returns what it wrote on stdout and stderr.
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhir-binary-proxy"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&text).contains("listening on") {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() || child.try_wait().unwrap().is_some()
        {
            break;
        }
    }
    // Let the start-up log lines out, then stop it.
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {} 2>/dev/null", child.id())])
        .status();
    let _ = child.wait();
    (out.join().unwrap(), err.join().unwrap())
}

#[test]
fn flags_come_from_the_environment_logs_can_be_json_and_passwords_are_never_printed() {
    let (stdout, stderr) = run_binary(
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        &[
            (
                "FHIR_BINARY_PROXY_UPSTREAM",
                "http://alice:s3cret@127.0.0.1:9/fhir",
            ),
            ("FHIR_BINARY_PROXY_ALLOWED_HOSTS", "*"),
        ],
    );
    assert!(
        stdout.contains("forwarding to http://***@127.0.0.1:9/fhir"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret") && !stderr.contains("s3cret"),
        "{stdout}{stderr}"
    );
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN"
                && l["message"].as_str().unwrap().contains("--allowed-hosts")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "listening"),
        "{stderr}"
    );

    // A bad value in the environment is named.
    let (_, stderr) = run_binary(&[], &[("FHIR_BINARY_PROXY_MAX_REQUEST_BODY", "lots")]);
    assert!(stderr.contains("lots"), "{stderr}");
}
