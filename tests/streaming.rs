//! Streaming is real: the document reaches the client while the inner service is still
//! sending, and memory does not hold the whole document.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::{service_fn, ServiceExt};
use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
use tower_layer::Layer;

/// A body fed through a channel, as a slow upstream would send it.
struct Channel(mpsc::Receiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn the_first_half_reaches_the_client_before_the_second_is_sent() {
    let document: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let base64 = base64::engine::general_purpose::STANDARD.encode(&document);
    let json = format!(
        r#"{{"resourceType":"Binary","id":"big","contentType":"application/octet-stream","data":"{base64}"}}"#
    );
    let half = json.len() / 2;
    let (first, second) = (
        Bytes::copy_from_slice(&json.as_bytes()[..half]),
        Bytes::copy_from_slice(&json.as_bytes()[half..]),
    );

    let (tx, rx) = mpsc::channel(4);
    // Shared, so that the inner service is `Clone` as the layer asks.
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let inner = service_fn(
        move |_request: Request<RequestBody<http_body_util::Empty<bytes::Bytes>>>| {
            let rx = rx.lock().unwrap().take().expect("one request");
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/fhir+json")
                        .body(Channel(rx))
                        .unwrap(),
                )
            }
        },
    );
    let service = BinaryNegotiationLayer::new().layer(inner);

    tx.send(first).await.unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        service.oneshot(
            Request::get("/Binary/big")
                .body(http_body_util::Empty::new())
                .unwrap(),
        ),
    )
    .await
    .expect("the head goes out before the body is complete")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert!(response.headers().get("content-length").is_none());

    let mut body = response.into_body();
    let mut received = Vec::new();
    // Everything decodable from the first half arrives while the second is not yet sent.
    let decodable = (half - json.find("\"data\":\"").unwrap() - 8) / 4 * 3;
    while received.len() < decodable {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("decoded bytes of the first half arrive before the second half is sent")
            .expect("a frame")
            .unwrap();
        received.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(received.len(), decodable);
    assert_eq!(received, document[..decodable]);

    tx.send(second).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(received, document);
}

#[tokio::test]
async fn output_frames_are_bounded_by_the_frame_size() {
    let document = vec![0x5au8; 3 << 20];
    let base64 = base64::engine::general_purpose::STANDARD.encode(&document);
    let json = format!(
        r#"{{"resourceType":"Binary","contentType":"application/octet-stream","data":"{base64}"}}"#
    );
    // One 4 MiB frame from the inner service still comes out in bounded pieces.
    let json = Bytes::from(json);
    let inner = service_fn(
        move |_request: Request<RequestBody<http_body_util::Empty<bytes::Bytes>>>| {
            let json = json.clone();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/fhir+json")
                        .body(common::Frames::new(vec![json]))
                        .unwrap(),
                )
            }
        },
    );
    let service = BinaryNegotiationLayer::new()
        .frame_size(64 * 1024)
        .layer(inner);
    let response = service
        .oneshot(
            Request::get("/Binary/1")
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut total = 0;
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(data.len() <= 96 * 1024, "a frame of {} bytes", data.len());
        assert!(data.iter().all(|&b| b == 0x5a));
        total += data.len();
        frames += 1;
    }
    assert_eq!(total, document.len());
    assert!(frames >= 48, "{frames} frames");
}
