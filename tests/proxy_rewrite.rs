//! URLs inside response bodies: JSON strings that begin with the upstream's base URL reach the
//! client naming the proxy, in FHIR JSON, FHIR XML and native responses; a real upstream and a
//! real client on 127.0.0.1.
#![cfg(feature = "proxy")]

mod common;

use std::future::Future;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::{Request as AxumRequest, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use common::{sha256_hex, split, Frames, Got, Rng, Split};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tower_fhir_binary::proxy::{start_proxy, ProxyOptions, Server};

const PUBLIC: &str = "https://fhir.example.org/proxy";

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test took too long")
}

/// What the upstream serves, written with its own base URL.
#[derive(Clone)]
struct Upstream {
    /// `http://127.0.0.1:port/fhir`.
    base: String,
    /// A 1 MiB document, and its Binary JSON with every `/` escaped as `\/` (as PHP writes).
    big: (Bytes, Bytes),
}

/// `text` with `/` escaped as `\/`.
fn php(text: &str) -> String {
    text.replace('/', "\\/")
}

impl Upstream {
    /// A search Bundle naming the upstream in every place a URL goes, some of them escaped,
    /// one naming another server and one a base that only starts like the upstream's.
    fn bundle(&self) -> String {
        let b = &self.base;
        let escaped = php(b);
        format!(
            r#"{{"resourceType":"Bundle","type":"searchset","total":3,"link":[{{"relation":"self","url":"{b}/Binary?_count=2"}},{{"relation":"next","url":"{escaped}?_getpages=abc&_getpagesoffset=2"}}],"entry":[{{"fullUrl":"{b}/Binary/doc","resource":{{"resourceType":"Binary","id":"doc","contentType":"text/plain","securityContext":{{"reference":"{b}/Patient/1"}},"data":"{data}"}},"search":{{"mode":"match"}}}},{{"fullUrl":"{escaped}\/Binary\/php","resource":{{"resourceType":"Binary","id":"php","contentType":"text/plain","data":"aGk="}}}},{{"fullUrl":"http://elsewhere.example/fhir/Binary/x","resource":{{"resourceType":"Binary","id":"x","contentType":"text/plain","securityContext":{{"reference":"{b}x/Patient/2"}}}}}}]}}"#,
            data = self.doc_data(),
        )
    }

    /// A short text that names the upstream.
    fn doc(&self) -> String {
        format!("See {}/Patient/1 (\"{}\").\n", self.base, self.base)
    }

    fn doc_data(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.doc())
    }

    fn doc_binary(&self) -> String {
        format!(
            r#"{{"resourceType":"Binary","id":"doc","contentType":"text/plain","securityContext":{{"reference":"{}/Patient/1"}},"data":"{}"}}"#,
            self.base,
            self.doc_data()
        )
    }
}

async fn upstream_handler(State(upstream): State<Upstream>, request: AxumRequest) -> AxumResponse {
    let json = |body: AxumBody| {
        (
            StatusCode::OK,
            [("content-type", "application/fhir+json;charset=utf-8")],
            body,
        )
            .into_response()
    };
    // Chunked, in small frames: the proxy streams it.
    let chunked = |text: String, every: usize| {
        AxumBody::new(Frames::new(split(text.as_bytes(), &Split::Every(every))))
    };
    let query = request.uri().query().unwrap_or("");
    match request.uri().path() {
        "/fhir/Binary" if query.contains("stream") => json(chunked(upstream.bundle(), 5)),
        // With its length: the proxy reads it whole.
        "/fhir/Binary" => json(AxumBody::from(upstream.bundle())),
        "/fhir/Binary/doc" => json(AxumBody::from(upstream.doc_binary())),
        "/fhir/Binary/big" => json(AxumBody::new(Frames::new(split(
            &upstream.big.1,
            &Split::Random { seed: 3, cuts: 400 },
        )))),
        _ => (StatusCode::NOT_FOUND, "no such resource").into_response(),
    }
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let mut rng = Rng::new(99);
    let document: Vec<u8> = (0..1 << 20).map(|_| rng.next_u64() as u8).collect();
    let data = php(&base64::engine::general_purpose::STANDARD.encode(&document));
    let big_json = format!(
        r#"{{"resourceType":"Binary","contentType":"application/octet-stream","securityContext":{{"reference":"{}\/Patient\/1"}},"data":"{data}"}}"#,
        php(&base)
    );
    let upstream = Upstream {
        base,
        big: (document.into(), big_json.into()),
    };
    let app = Router::new()
        .fallback(upstream_handler)
        .with_state(upstream.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    upstream
}

async fn proxy(upstream: &Upstream, configure: impl FnOnce(&mut ProxyOptions)) -> Server {
    let mut options = ProxyOptions::new(upstream.base.parse().unwrap());
    options.public_base_url = Some(PUBLIC.parse().unwrap());
    configure(&mut options);
    start_proxy(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap()
}

async fn get(server: &Server, path: &str, accept: &str) -> Got {
    let request = Request::get(format!("http://{}{path}", server.local_addr()))
        .header("accept", accept)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .expect("an HTTP response");
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

/// Asserts that the Bundle names the proxy at `public` where it named the upstream.
fn assert_rebased(bundle: &Value, upstream: &Upstream, public: &str) {
    let b = &upstream.base;
    assert_eq!(
        bundle["link"][0]["url"],
        format!("{public}/Binary?_count=2")
    );
    assert_eq!(
        bundle["link"][1]["url"],
        format!("{public}?_getpages=abc&_getpagesoffset=2")
    );
    let entry = &bundle["entry"];
    assert_eq!(entry[0]["fullUrl"], format!("{public}/Binary/doc"));
    assert_eq!(
        entry[0]["resource"]["securityContext"]["reference"],
        format!("{public}/Patient/1")
    );
    assert_eq!(entry[1]["fullUrl"], format!("{public}/Binary/php"));
    // Another server, and a base that only begins like the upstream's: untouched.
    assert_eq!(
        entry[2]["fullUrl"],
        "http://elsewhere.example/fhir/Binary/x"
    );
    assert_eq!(
        entry[2]["resource"]["securityContext"]["reference"],
        format!("{b}x/Patient/2")
    );
    // The base64 is untouched, and the document in it still names the upstream.
    assert_eq!(entry[0]["resource"]["data"], upstream.doc_data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_bundle_names_the_proxy_in_json_and_in_xml() {
    bounded(async {
        let upstream = start_upstream().await;
        let proxy = proxy(&upstream, |_| {}).await;
        for path in ["/Binary?_count=2", "/Binary?_count=2&stream=1"] {
            let got = get(&proxy, path, "application/fhir+json").await;
            assert_eq!(got.status, StatusCode::OK, "{path}");
            assert_eq!(
                got.header("content-type"),
                Some("application/fhir+json;charset=utf-8")
            );
            // Read whole (the upstream said its length): the response says its own.
            if !path.contains("stream") {
                assert_eq!(
                    got.header("content-length"),
                    Some(got.bytes().len().to_string().as_str())
                );
            }
            assert_rebased(&got.json(), &upstream, PUBLIC);

            let xml_path = format!("{path}&_format=xml");
            let got = get(&proxy, &xml_path, "*/*").await;
            assert_eq!(got.status, StatusCode::OK, "{xml_path}");
            common::assert_schema_valid(got.bytes(), "r4");
            let xml = std::str::from_utf8(got.bytes()).unwrap();
            for expected in [
                format!(r#"<fullUrl value="{PUBLIC}/Binary/doc"/>"#),
                format!(r#"<fullUrl value="{PUBLIC}/Binary/php"/>"#),
                format!(r#"<url value="{PUBLIC}/Binary?_count=2"/>"#),
                format!(r#"<url value="{PUBLIC}?_getpages=abc&amp;_getpagesoffset=2"/>"#),
                format!(r#"<reference value="{PUBLIC}/Patient/1"/>"#),
                format!(r#"<reference value="{}x/Patient/2"/>"#, upstream.base),
                r#"<fullUrl value="http://elsewhere.example/fhir/Binary/x"/>"#.to_owned(),
            ] {
                assert!(xml.contains(&expected), "{expected} not in {xml}");
            }
            assert!(!xml.contains(&format!("{}/", upstream.base)), "{xml}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_base_the_urls_name_the_address_the_client_used() {
    bounded(async {
        let upstream = start_upstream().await;
        let proxy = proxy(&upstream, |o| o.public_base_url = None).await;
        let got = get(&proxy, "/Binary?_count=2", "application/fhir+json").await;
        let public = format!("http://{}", proxy.local_addr());
        assert_rebased(&got.json(), &upstream, &public);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_the_bodies_are_the_upstreams() {
    bounded(async {
        let upstream = start_upstream().await;
        let proxy = proxy(&upstream, |o| o.rewrite_body_urls = false).await;
        for path in ["/Binary?_count=2", "/Binary?_count=2&stream=1"] {
            let got = get(&proxy, path, "application/fhir+json").await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.bytes(), upstream.bundle().as_bytes(), "{path}");
        }
        let got = get(&proxy, "/Binary/doc", "text/plain").await;
        assert_eq!(
            got.header("x-security-context"),
            Some(format!("{}/Patient/1", upstream.base).as_str())
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_read_natively_is_unchanged_byte_for_byte() {
    bounded(async {
        let upstream = start_upstream().await;
        for rewrite in [true, false] {
            let proxy = proxy(&upstream, |o| o.rewrite_body_urls = rewrite).await;
            // Small, with its length: a text that names the upstream.
            let got = get(&proxy, "/Binary/doc", "text/plain").await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.header("content-type"), Some("text/plain"));
            assert_eq!(got.bytes(), upstream.doc().as_bytes());
            assert_eq!(
                got.header("content-length"),
                Some(upstream.doc().len().to_string().as_str())
            );
            let security_context = if rewrite {
                format!("{PUBLIC}/Patient/1")
            } else {
                format!("{}/Patient/1", upstream.base)
            };
            assert_eq!(
                got.header("x-security-context"),
                Some(security_context.as_str())
            );

            // 1 MiB, streamed in random frames, every `/` escaped.
            let got = get(&proxy, "/Binary/big", "application/octet-stream").await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.bytes().len(), upstream.big.0.len());
            assert_eq!(sha256_hex(got.bytes()), sha256_hex(&upstream.big.0));
            assert_eq!(
                got.header("x-security-context"),
                Some(security_context.as_str())
            );

            // Its FHIR JSON: only the reference changes.
            let got = get(&proxy, "/Binary/big", "application/fhir+json").await;
            let expected = if rewrite {
                String::from_utf8(upstream.big.1.to_vec())
                    .unwrap()
                    .replacen(&php(&upstream.base), PUBLIC, 1)
            } else {
                String::from_utf8(upstream.big.1.to_vec()).unwrap()
            };
            assert!(got.bytes()[..] == *expected.as_bytes(), "rewrite {rewrite}");
        }
    })
    .await
}

/// A child process, stopped when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary, started with `env` in front of `upstream`, until `test` has run with its URL.
async fn with_binary(upstream: &Upstream, env: &[(&str, &str)], test: impl AsyncFnOnce(&str)) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhir-binary-proxy"));
    command
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.base])
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = KillOnDrop(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .strip_prefix("fhir-binary-proxy listening on ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    test(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_rewrites_by_default_and_not_with_the_environment_variable() {
    bounded(async {
        let upstream = start_upstream().await;
        let fetch = async |url: &str| {
            let request = Request::get(format!("{url}/Binary?_count=2"))
                .header("accept", "application/fhir+json")
                .body(Full::<Bytes>::default())
                .unwrap();
            let response = Client::builder(TokioExecutor::new())
                .build_http()
                .request(request)
                .await
                .unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        };
        with_binary(&upstream, &[], async |url| {
            let bundle: Value = serde_json::from_slice(&fetch(url).await).unwrap();
            assert_rebased(&bundle, &upstream, url);
        })
        .await;
        for value in ["true", "1"] {
            with_binary(
                &upstream,
                &[("FHIR_BINARY_PROXY_NO_REWRITE_BODY_URLS", value)],
                async |url| assert_eq!(fetch(url).await, upstream.bundle().as_bytes()),
            )
            .await;
        }
    })
    .await
}
