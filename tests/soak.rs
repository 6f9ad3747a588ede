//! Soak: 200,000 mixed requests (the document, FHIR JSON, FHIR XML, HEAD, ranges, bad Binaries
//! and failing inner bodies) through one layer in one process. Every answer is checked, and
//! the process's resident memory after the run must be within a few MiB of what it was after
//! the first 10,000 requests: nothing leaks, nothing grows.
//!
//! `SOAK_REQUESTS` changes the count (default 200,000). This is the only test of its binary,
//! so nothing else runs in the process while it measures. It takes minutes in a debug build,
//! so it is ignored by the normal run; run it with
//! `cargo test --release --all-features --test soak -- --ignored --nocapture`.

mod common;
mod oracle;

use std::convert::Infallible;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use oracle::gen::Rng;
use oracle::{now, Frames};
use tower::Service;
use tower_fhir_binary::BinaryNegotiationLayer;
use tower_layer::Layer;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// One Binary the inner service can answer with, and what its document is.
struct Doc {
    json: Bytes,
    /// The decoded document, when the Binary is valid.
    document: Option<Vec<u8>>,
}

fn docs() -> Vec<Doc> {
    let mut rng = Rng::new(7);
    let mut docs = Vec::new();
    for (i, len) in [0usize, 1, 100, 3_000, 20_000, 70_000, 150_000]
        .into_iter()
        .enumerate()
    {
        let document: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&document);
        // Line-wrapped like the HL7 examples for some, data before contentType for others.
        let b64 = if i % 2 == 0 {
            b64.as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\\n")
        } else {
            b64
        };
        let json = if i % 3 == 0 {
            format!(
                r#"{{"resourceType":"Binary","id":"d{i}","meta":{{"versionId":"{i}","lastUpdated":"2024-01-02T03:04:05Z"}},"contentType":"application/pdf","data":"{b64}"}}"#
            )
        } else {
            format!(
                r#"{{"resourceType":"Binary","id":"d{i}","data":"{b64}","contentType":"application/pdf"}}"#
            )
        };
        docs.push(Doc {
            json: Bytes::from(json),
            document: Some(document),
        });
    }
    for bad in [
        r#"{"resourceType":"Binary","contentType":"application/pdf","data":"SGVs-G8="}"#.to_owned(),
        format!(
            r#"{{"resourceType":"Binary","contentType":"application/pdf","data":"{}SGVsbG8=AAAA"}}"#,
            "QUFB".repeat(100_000)
        ),
        r#"{"resourceType":"Binary","data":"SGVsbG8="}"#.to_owned(),
        r#"{"resourceType":"Binary","contentType":"application/pdf","data":"SGVsbG8="} junk"#
            .to_owned(),
        format!(
            r#"{{"resourceType":"Binary","meta":{}{},"contentType":"application/pdf","data":"SGVsbG8="}}"#,
            "[".repeat(1_000),
            "]".repeat(1_000)
        ),
    ] {
        docs.push(Doc {
            json: Bytes::from(bad),
            document: None,
        });
    }
    docs
}

/// How a request asks.
#[derive(Clone, Copy, Debug)]
enum Ask {
    Native,
    Head,
    Json,
    Xml,
    Range(u64, u64),
}

fn ask(rng: &mut Rng) -> Ask {
    match rng.below(10) {
        0..=3 => Ask::Native,
        4 => Ask::Head,
        5 => Ask::Json,
        6 => Ask::Xml,
        _ => {
            let first = rng.below(5_000) as u64;
            Ask::Range(first, first + rng.below(70_000) as u64)
        }
    }
}

fn request(ask: Ask, doc: usize) -> Request<http_body_util::Empty<bytes::Bytes>> {
    let uri = format!("/Binary/{doc}");
    let builder = match ask {
        Ask::Native => Request::get(uri),
        Ask::Head => Request::head(uri),
        Ask::Json => Request::get(format!("{uri}?_format=json")),
        Ask::Xml => Request::get(format!("{uri}?_format=xml")),
        Ask::Range(first, last) => {
            Request::get(uri).header("range", format!("bytes={first}-{last}"))
        }
    };
    builder.body(http_body_util::Empty::new()).unwrap()
}

/// Reads a whole response body; Err when it fails.
fn collect<B: Body<Data = Bytes>>(body: B) -> Result<Vec<u8>, B::Error> {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => return Err(e),
            Poll::Ready(None) => return Ok(out),
            Poll::Pending => panic!("an inner body that never waits made the layer wait"),
        }
    }
}

/// Checks one answer; Err says what is wrong.
fn check(
    ask: Ask,
    doc: &Doc,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: Result<Vec<u8>, String>,
) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(document) = &doc.document else {
        // A bad Binary: a 502, or a broken transfer; never a clean 200 document.
        return match (status, body) {
            (StatusCode::BAD_GATEWAY, Ok(_)) => Ok(()),
            (_, Err(_)) => Ok(()),
            (StatusCode::OK, Ok(_)) if matches!(ask, Ask::Json) => Ok(()),
            // A range that lies before the fault is answered from the bytes made so far
            // (`Content-Range: bytes a-b/*`) without reading on: the bytes are right, and
            // the fault is never reached. Only the large bad Binary (all `QUFB`) does that.
            (StatusCode::PARTIAL_CONTENT, Ok(body))
                if matches!(ask, Ask::Range(..)) && body.iter().all(|&b| b == b'A') =>
            {
                Ok(())
            }
            (status, Ok(body)) => Err(format!("{status} with {} bytes", body.len())),
        };
    };
    let body = body.map_err(|e| format!("{status}: body failed: {e}"))?;
    match ask {
        Ask::Native | Ask::Head => {
            if status != StatusCode::OK || header("content-type") != Some("application/pdf") {
                return Err(format!("{status} {:?}", header("content-type")));
            }
            let want: &[u8] = if matches!(ask, Ask::Head) {
                b""
            } else {
                document
            };
            if body != want {
                return Err(format!("{} bytes, want {}", body.len(), want.len()));
            }
        }
        Ask::Json => {
            if status != StatusCode::OK || body != doc.json {
                return Err(format!("{status}: JSON not passed through"));
            }
        }
        Ask::Xml => {
            let text = String::from_utf8(body).map_err(|_| "XML not UTF-8")?;
            if status != StatusCode::OK || !text.contains("<Binary xmlns=\"http://hl7.org/fhir\">")
            {
                return Err(format!("{status}: not a Binary in XML"));
            }
            let value = text
                .split("<data value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("");
            let value = value.replace("&#10;", "");
            let decoded = oracle::decode_base64(&value)?;
            if decoded != *document {
                return Err("XML data differs".into());
            }
        }
        Ask::Range(first, last) => {
            let total = document.len() as u64;
            match status {
                // RFC 9110 lets a server ignore a range.
                StatusCode::OK if body == *document => {}
                StatusCode::PARTIAL_CONTENT => {
                    let want_last = last.min(total.saturating_sub(1));
                    let range = header("content-range").unwrap_or("");
                    if !range.starts_with(&format!("bytes {first}-{want_last}/")) {
                        return Err(format!("content-range {range:?} for {first}-{last}"));
                    }
                    if body != document[first as usize..=want_last as usize] {
                        return Err("partial content differs".into());
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE if first >= total => {}
                status => return Err(format!("{status} to a range on {total} bytes")),
            }
        }
    }
    Ok(())
}

#[test]
#[ignore = "minutes in a debug build: cargo test --release --test soak -- --ignored --nocapture"]
fn two_hundred_thousand_mixed_requests_neither_fail_nor_leak() {
    let requests: usize = std::env::var("SOAK_REQUESTS")
        .ok()
        .map_or(200_000, |v| v.parse().expect("SOAK_REQUESTS"));
    let docs = docs();
    let json: Vec<Bytes> = docs.iter().map(|d| d.json.clone()).collect();
    // The inner service: the Binary named by the path, in frames cut at seeded places, the
    // size announced for some, failing midway for some.
    let inner = tower::service_fn(
        move |request: Request<
            tower_fhir_binary::RequestBody<http_body_util::Empty<bytes::Bytes>>,
        >| {
            let path = request.uri().path();
            let index: usize = path.rsplit('/').next().unwrap().parse().unwrap();
            let body = &json[index];
            let mut rng = Rng::new(index as u64 ^ request.headers().len() as u64);
            let ends = oracle::gen::cuts(&mut rng, body.len());
            let frames = Frames::new(body, &ends, rng.chance(30));
            std::future::ready(Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/fhir+json")
                    .body(frames)
                    .unwrap(),
            ))
        },
    );
    let mut service = BinaryNegotiationLayer::new()
        .read_whole_limit(64 * 1024)
        .layer(inner);
    // The XML of every good Binary is valid against the schema; it is the same whatever the
    // frames, and the loop below checks its bytes.
    for (index, doc) in docs.iter().enumerate() {
        if doc.document.is_none() {
            continue;
        }
        let response = match now(service.call(request(Ask::Xml, index))) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        assert_eq!(parts.status, StatusCode::OK, "XML of doc {index}");
        common::assert_schema_valid(&collect(body).expect("an XML body"), "r4");
    }
    let mut rng = Rng::new(0x50A4);
    let started = Instant::now();
    let mut baseline = None;
    let mut wrong = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for n in 0..requests {
        if n == 10_000 {
            baseline = Some(rss());
        }
        let index = rng.below(docs.len());
        let ask = ask(&mut rng);
        let response = match now(service.call(request(ask, index))) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        *statuses.entry(parts.status.as_u16()).or_default() += 1;
        let body = collect(body).map_err(|e| e.to_string());
        if let Err(what) = check(ask, &docs[index], parts.status, &parts.headers, body) {
            if wrong.len() < 10 {
                wrong.push(format!("request {n} ({ask:?} of doc {index}): {what}"));
            }
        }
    }
    let after = rss();
    let baseline = baseline.unwrap_or(after);
    println!(
        "{requests} requests in {:.1?}; statuses {statuses:?}; RSS after 10,000: {:.1} MiB, \
         after all: {:.1} MiB",
        started.elapsed(),
        baseline as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert!(
        after <= baseline + 4 * 1024 * 1024,
        "resident memory grew from {baseline} to {after} bytes"
    );
}
