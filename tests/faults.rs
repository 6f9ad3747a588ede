//! Faults of the inner service: an `Err` from `call`, a body that fails, a connection that
//! drops. The broken transfers are checked end to end: a hyper server on 127.0.0.1 serves the
//! layer, and a hyper client must see an error, never a clean end.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, BoxError};
use tower_layer::Layer;

const HEAD: &str = r#"{"resourceType":"Binary","id":"1","contentType":"text/plain","data":"#;

#[derive(Debug, PartialEq, Eq)]
struct Refused(&'static str);

#[tokio::test]
async fn an_error_from_call_is_the_layers_error() {
    let inner = service_fn(
        |_request: Request<tower_fhir_binary::RequestBody<http_body_util::Empty<bytes::Bytes>>>| async {
            Err::<Response<Frames>, _>(Refused("backend down"))
        },
    );
    let service = BinaryNegotiationLayer::new().layer(inner);
    for (method, uri, content_type) in [
        ("GET", "/Binary/1", None),
        ("HEAD", "/Binary/1", None),
        ("GET", "/Binary/1?_format=xml", None),
        ("POST", "/Binary", Some("application/fhir+json")),
        ("PUT", "/Binary/1", Some("application/pdf")),
    ] {
        let mut request = request(method, uri, &[]);
        if let Some(content_type) = content_type {
            request
                .headers_mut()
                .insert("content-type", content_type.parse().unwrap());
        }
        let error = service
            .clone()
            .oneshot(request)
            .await
            .expect_err("the inner error");
        assert_eq!(error, Refused("backend down"), "{method} {uri}");
    }
}

#[tokio::test]
async fn an_error_from_poll_ready_is_the_layers_error() {
    #[derive(Clone)]
    struct NotReady;
    impl<B> tower::Service<Request<B>> for NotReady {
        type Response = Response<Frames>;
        type Error = Refused;
        type Future = std::future::Ready<Result<Response<Frames>, Refused>>;
        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Refused>> {
            std::task::Poll::Ready(Err(Refused("overloaded")))
        }
        fn call(&mut self, _request: Request<B>) -> Self::Future {
            unreachable!("not ready")
        }
    }
    let error = BinaryNegotiationLayer::new()
        .layer(NotReady)
        .oneshot(request("GET", "/Binary/1", &[]))
        .await
        .expect_err("the inner error");
    assert_eq!(error, Refused("overloaded"));
}

/// Serves `service` over HTTP/1.1 on 127.0.0.1; returns the address.
async fn serve<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    address
}

/// The inner body type of the served layers: canned frames, or what an upstream sent.
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What an HTTP client got: the status, the body bytes that came, and whether the body ended
/// with an error.
struct Fetched {
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
    error: Option<String>,
}

async fn fetch(address: SocketAddr, path: &str) -> Fetched {
    tokio::time::timeout(Duration::from_secs(20), async {
        let stream = TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut body = response.into_body();
        let mut fetched = Fetched {
            status,
            content_type,
            body: Vec::new(),
            error: None,
        };
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        fetched.body.extend_from_slice(&data);
                    }
                }
                Err(e) => {
                    fetched.error = Some(e.to_string());
                    break;
                }
            }
        }
        fetched
    })
    .await
    .expect("the client got an answer in time")
}

/// A body fed through a channel, as an upstream on a network sends it.
struct Channel(tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(http_body::Frame::data)))
    }
}

/// An inner body that sends `frames` with a pause before each (so that the response head has
/// reached the client before the fault), then `error`, if any.
fn canned(frames: Vec<Bytes>, error: Option<&'static str>) -> impl Fn() -> Body + Clone {
    move || {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(4);
        let frames = frames.clone();
        tokio::spawn(async move {
            for frame in frames {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            if let Some(message) = error {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(Box::new(UpstreamError(message.into())))).await;
            }
        });
        Channel(rx).boxed_unsync()
    }
}

async fn serve_canned(make: impl Fn() -> Body + Clone + Send + Sync + 'static) -> SocketAddr {
    let inner = service_fn(
        move |_request: Request<tower_fhir_binary::RequestBody<Incoming>>| {
            let body = make();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/fhir+json")
                        .body(body)
                        .unwrap(),
                )
            }
        },
    );
    serve(BinaryNegotiationLayer::new().layer(inner)).await
}

#[tokio::test]
async fn bad_base64_after_the_head_is_a_broken_transfer_for_a_real_client() {
    let good = "SGVsbG8gd29ybGQh".repeat(4096);
    let frames = vec![
        Bytes::from(format!("{HEAD}\"{good}")),
        Bytes::from_static(b"SGVs-G8=\"}"),
    ];
    let address = serve_canned(canned(frames, None)).await;
    let fetched = fetch(address, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.content_type.as_deref(), Some("text/plain"));
    let error = fetched.error.expect("a broken transfer, not a clean end");
    assert!(!error.is_empty());
    // What came is a true prefix of the document: never wrong bytes.
    let document = b"Hello world!".repeat(4096);
    assert!(fetched.body.len() <= document.len() + 3);
    assert_eq!(
        fetched.body,
        &document[..fetched.body.len().min(document.len())]
    );

    // The same document whole is served whole, and ends cleanly.
    let frames = vec![Bytes::from(format!("{HEAD}\"{good}\"}}"))];
    let address = serve_canned(canned(frames, None)).await;
    let fetched = fetch(address, "/Binary/1").await;
    assert_eq!(fetched.error, None);
    assert_eq!(fetched.body, document);
}

#[tokio::test]
async fn an_inner_body_error_after_the_head_is_a_broken_transfer_for_a_real_client() {
    let frames = vec![Bytes::from(format!("{HEAD}\"SGVsbG8gd29y"))];
    let address = serve_canned(canned(frames, Some("connection reset by peer"))).await;
    let fetched = fetch(address, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert!(
        fetched.error.is_some(),
        "a broken transfer, not a clean end"
    );
    assert!(b"Hello wor".starts_with(&fetched.body));
}

#[tokio::test]
async fn an_inner_body_error_before_the_head_is_a_502_for_a_real_client() {
    let frames = vec![Bytes::from_static(br#"{"resourceType":"Binary","conte"#)];
    let address = serve_canned(canned(frames, Some("connection reset by peer"))).await;
    let fetched = fetch(address, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::BAD_GATEWAY);
    assert_eq!(fetched.error, None);
    let outcome: serde_json::Value = serde_json::from_slice(&fetched.body).unwrap();
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("connection reset by peer"),
        "{diagnostics}"
    );
}

/// A legacy upstream on 127.0.0.1 that answers every connection with `response` (raw HTTP/1.1)
/// and then closes it, whatever the response promised.
async fn upstream(response: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(&response).await;
                // Let what was sent reach the client, then close the connection mid-body.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    address
}

/// The layer in front of a proxy to `upstream`: the inner body is hyper's `Incoming`.
async fn serve_proxy(upstream: SocketAddr) -> SocketAddr {
    let inner = service_fn(
        move |_request: Request<tower_fhir_binary::RequestBody<Incoming>>| async move {
            let stream = TcpStream::connect(upstream).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = Request::get("/Binary/1")
                .header("host", "upstream")
                .body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            Ok::<_, BoxError>(
                response.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
            )
        },
    );
    serve(BinaryNegotiationLayer::new().layer(inner)).await
}

fn chunked(head: &str, chunk: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{head}",
        chunk.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn the_inner_dropping_the_connection_mid_document_breaks_the_transfer() {
    // Chunked, cut inside the payload: the head has gone out, the client must see an error.
    let cut = chunked("", &format!("{HEAD}\"SGVsbG8gd29y"));
    let proxy = serve_proxy(upstream(cut).await).await;
    let fetched = fetch(proxy, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.content_type.as_deref(), Some("text/plain"));
    assert!(
        fetched.error.is_some(),
        "a broken transfer, not a clean end"
    );
    assert!(b"Hello wor".starts_with(&fetched.body));

    // Cut before the payload: nothing was sent yet, so a 502 says what happened.
    let cut = chunked("", r#"{"resourceType":"Binary","conten"#);
    let proxy = serve_proxy(upstream(cut).await).await;
    let fetched = fetch(proxy, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::BAD_GATEWAY);
    let outcome: serde_json::Value = serde_json::from_slice(&fetched.body).unwrap();
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.starts_with("the inner service's response body failed"),
        "{diagnostics}"
    );

    // A Content-Length the upstream does not keep: small, so read whole, so a 502.
    let json = format!("{HEAD}\"SGVsbG8gd29y");
    let short = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len() + 10
    );
    let proxy = serve_proxy(upstream(short.into_bytes()).await).await;
    let fetched = fetch(proxy, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::BAD_GATEWAY);
    assert_eq!(fetched.error, None);

    // The same body whole, properly ended: the document.
    let whole = chunked("0\r\n\r\n", &format!("{HEAD}\"SGVsbG8gd29ybGQh\"}}"));
    let proxy = serve_proxy(upstream(whole).await).await;
    let fetched = fetch(proxy, "/Binary/1").await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.error, None);
    assert_eq!(fetched.body, b"Hello world!");
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_is_the_inner_error() {
    // Bind and close a port so that nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = serve_proxy(closed).await;
    // The inner error goes to hyper, which ends the connection without a response.
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/Binary/1")
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .expect("an answer in time");
    assert!(
        result.is_err(),
        "no response: {:?}",
        result.map(|r| r.status())
    );
}
