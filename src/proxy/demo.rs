//! The embedded demo backend: a legacy FHIR server that only speaks Binary JSON.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, ETAG, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower_service::Service;

use super::headers::client_host;
use super::outcome::outcome_response;
use super::Server;
use crate::{BoxError, FhirVersion};

/// The base path the demo backend serves under.
const BASE: &str = "/fhir";

/// Largest Binary a client may create on the demo backend.
const MAX_CREATE: usize = 32 * 1024 * 1024;

/// Most Binaries the demo backend keeps besides its samples.
const MAX_CREATED: usize = 64;

/// One of the sample Binaries of the demo backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoBinary {
    /// Its id: `GET /fhir/Binary/{id}`.
    pub id: &'static str,
    /// Its `contentType`.
    pub content_type: &'static str,
    /// What it is.
    pub description: &'static str,
}

/// The sample Binaries every demo backend starts with.
pub const DEMO_BINARIES: [DemoBinary; 6] = [
    DemoBinary {
        id: "example",
        content_type: "application/pdf",
        description: "the official HL7 example PDF (130068 bytes)",
    },
    DemoBinary {
        id: "f006",
        content_type: "image/jpeg",
        description: "the official HL7 example JPEG (26626 bytes)",
    },
    DemoBinary {
        id: "cda",
        content_type: "text/xml",
        description: "a CDA document",
    },
    DemoBinary {
        id: "html",
        content_type: "text/html",
        description: "an HTML page",
    },
    DemoBinary {
        id: "svg",
        content_type: "image/svg+xml",
        description: "an SVG image",
    },
    DemoBinary {
        id: "patient",
        content_type: "application/fhir+json",
        description: "a Binary that carries a FHIR Patient resource",
    },
];

// The official HL7 examples, the same files the tests read (one copy in the repository and
// in the package).
const PDF_JSON: &[u8] = include_bytes!("../../tests/fixtures/r4/binary-example.json");
const JPEG_JSON: &[u8] = include_bytes!("../../tests/fixtures/r4/binary-f006.json");

const CDA: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="2.16.840.1.113883.19.5.99999.1" extension="demo-1"/>
  <code code="34133-9" codeSystem="2.16.840.1.113883.6.1" displayName="Summary of episode note"/>
  <title>Summary of episode note</title>
  <effectiveTime value="20240101120000+0000"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <recordTarget>
    <patientRole>
      <id extension="12345" root="2.16.840.1.113883.19.5"/>
      <patient>
        <name><given>Jane</given><family>Doe</family></name>
        <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
        <birthTime value="19700101"/>
      </patient>
    </patientRole>
  </recordTarget>
  <component>
    <structuredBody>
      <component>
        <section>
          <title>Problems</title>
          <text>No known problems.</text>
        </section>
      </component>
    </structuredBody>
  </component>
</ClinicalDocument>
"#;

const HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Discharge letter</title></head>
<body>
<h1>Discharge letter</h1>
<p>Jane Doe was discharged in good health on 1 January 2024.</p>
<script>document.title += " (scripts run only if the sandbox is missing)";</script>
</body>
</html>
"#;

const SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="120" viewBox="0 0 120 120">
  <rect width="120" height="120" rx="16" fill="#d33"/>
  <rect x="50" y="20" width="20" height="80" fill="#fff"/>
  <rect x="20" y="50" width="80" height="20" fill="#fff"/>
</svg>
"##;

const PATIENT: &str = r#"{"resourceType":"Patient","id":"demo","name":[{"family":"Doe","given":["Jane"]}],"gender":"female","birthDate":"1970-01-01"}"#;

/// The demo backend as a tower service: a JSON-only, legacy-style FHIR server under `/fhir`.
///
/// It ignores `_format` and `Accept` and always answers with FHIR JSON:
///
/// - `GET /fhir/Binary/{id}` (and `/_history/1`): the Binary, `application/fhir+json`, or 404
///   with an OperationOutcome;
/// - `GET /fhir/Binary`: a searchset Bundle of every Binary;
/// - `POST /fhir/Binary`: creates a Binary (201 with `Location`), kept in memory;
/// - `GET /fhir/metadata`: a CapabilityStatement.
///
/// It holds the [`DEMO_BINARIES`].
#[derive(Clone, Debug)]
pub struct DemoBackend {
    store: Arc<RwLock<Store>>,
}

#[derive(Debug)]
struct Store {
    binaries: BTreeMap<String, Bytes>,
    created: usize,
}

impl Default for DemoBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoBackend {
    /// A backend holding the sample Binaries.
    pub fn new() -> Self {
        let mut binaries = BTreeMap::new();
        binaries.insert("example".to_owned(), Bytes::from_static(PDF_JSON));
        binaries.insert("f006".to_owned(), Bytes::from_static(JPEG_JSON));
        for (id, content_type, text) in [
            ("cda", "text/xml", CDA),
            ("html", "text/html", HTML),
            ("svg", "image/svg+xml", SVG),
            ("patient", "application/fhir+json", PATIENT),
        ] {
            binaries.insert(id.to_owned(), small_binary(id, content_type, text));
        }
        DemoBackend {
            store: Arc::new(RwLock::new(Store {
                binaries,
                created: 0,
            })),
        }
    }

    async fn handle<B>(self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let host =
            client_host(request.headers(), request.uri()).unwrap_or_else(|| "127.0.0.1".to_owned());
        let base = format!("http://{host}{BASE}");
        let path = request.uri().path().to_owned();
        let Some(rest) = path.strip_prefix(BASE) else {
            return not_found(&path);
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        match (segments.as_slice(), read, request.method()) {
            (["metadata"], true, _) => fhir_json(StatusCode::OK, capability_statement()),
            (["Binary"], true, _) => fhir_json(StatusCode::OK, self.search(&base)),
            (["Binary"], false, &Method::POST) => self.create(request.into_body(), &base).await,
            (["Binary", id], true, _) | (["Binary", id, "_history", "1"], true, _) => {
                self.read(id, &path)
            }
            (["metadata"] | ["Binary"] | ["Binary", _], false, _) => outcome(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                &format!("{} is not supported on {path}", request.method()),
            ),
            _ => not_found(&path),
        }
    }

    fn read(&self, id: &str, path: &str) -> Response<Full<Bytes>> {
        let found = self
            .store
            .read()
            .ok()
            .and_then(|s| s.binaries.get(id).cloned());
        match found {
            Some(json) => {
                let mut response = fhir_json(StatusCode::OK, json);
                response
                    .headers_mut()
                    .insert(ETAG, HeaderValue::from_static("W/\"1\""));
                response
            }
            None => not_found(path),
        }
    }

    fn search(&self, base: &str) -> Bytes {
        let entries: Vec<Value> = self
            .store
            .read()
            .map(|s| {
                s.binaries
                    .iter()
                    .filter_map(|(id, json)| {
                        let resource: Value = serde_json::from_slice(json).ok()?;
                        Some(json!({
                            "fullUrl": format!("{base}/Binary/{id}"),
                            "resource": resource,
                            "search": {"mode": "match"},
                        }))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{base}/Binary")}],
            "entry": entries,
        });
        Bytes::from(bundle.to_string())
    }

    async fn create<B>(&self, body: B, base: &str) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let bytes = match Limited::new(body, MAX_CREATE).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return outcome(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-costly",
                    &format!("the Binary could not be read: {e}"),
                )
            }
        };
        let mut resource: Value = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) if map.get("resourceType") == Some(&json!("Binary")) => {
                Value::Object(map)
            }
            _ => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "the body is not a FHIR Binary in JSON",
                )
            }
        };
        if !resource["contentType"].is_string() {
            return outcome(
                StatusCode::BAD_REQUEST,
                "required",
                "Binary.contentType is missing",
            );
        }
        let Ok(mut store) = self.store.write() else {
            return outcome(StatusCode::INTERNAL_SERVER_ERROR, "exception", "store lost");
        };
        if store.created >= MAX_CREATED {
            return outcome(
                StatusCode::INSUFFICIENT_STORAGE,
                "too-costly",
                "the demo backend keeps at most 64 created Binaries",
            );
        }
        store.created += 1;
        let id = format!("created-{}", store.created);
        resource["id"] = json!(id);
        resource["meta"] = json!({"versionId": "1"});
        let json = Bytes::from(resource.to_string());
        store.binaries.insert(id.clone(), json.clone());
        drop(store);
        let mut response = fhir_json(StatusCode::CREATED, json);
        if let Ok(location) = HeaderValue::from_str(&format!("{base}/Binary/{id}/_history/1")) {
            response.headers_mut().insert(LOCATION, location);
        }
        response
            .headers_mut()
            .insert(ETAG, HeaderValue::from_static("W/\"1\""));
        response
    }
}

impl<B> Service<Request<B>> for DemoBackend
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

/// Starts a [`DemoBackend`] on `listener`; its FHIR base is `http://{local_addr}/fhir`.
pub fn start_demo(listener: TcpListener) -> io::Result<Server> {
    Server::spawn(listener, DemoBackend::new())
}

/// A small Binary in FHIR JSON carrying `text`.
fn small_binary(id: &str, content_type: &str, text: &str) -> Bytes {
    let data = base64::engine::general_purpose::STANDARD.encode(text);
    let resource = json!({
        "resourceType": "Binary",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T12:00:00Z"},
        "contentType": content_type,
        "data": data,
    });
    Bytes::from(resource.to_string())
}

fn capability_statement() -> Bytes {
    let resource = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "software": {"name": "fhir-binary-proxy demo backend"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": [{
                "type": "Binary",
                "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "create"}],
            }],
        }],
    });
    Bytes::from(resource.to_string())
}

fn fhir_json(status: StatusCode, json: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json;charset=utf-8"),
    );
    response
}

fn outcome(status: StatusCode, code: &'static str, diagnostics: &str) -> Response<Full<Bytes>> {
    outcome_response(status, code, diagnostics, FhirVersion::R4, Full::new)
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("no resource at {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_a_binary_with_its_content_type() {
        let backend = DemoBackend::new();
        let store = backend.store.read().unwrap();
        assert_eq!(store.binaries.len(), DEMO_BINARIES.len());
        for sample in DEMO_BINARIES {
            let json: Value = serde_json::from_slice(&store.binaries[sample.id]).unwrap();
            assert_eq!(json["resourceType"], "Binary");
            assert_eq!(json["id"], sample.id);
            assert_eq!(json["contentType"], sample.content_type);
            assert!(json["data"].is_string());
        }
    }
}
