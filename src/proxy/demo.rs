//! The embedded demo backend: a legacy FHIR server that only speaks Binary JSON.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LAST_MODIFIED,
    LOCATION,
};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use mediatype::MediaType;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tower_service::Service;

use super::headers::client_host;
use super::outcome::outcome_response;
use super::Server;
use crate::{BoxError, FhirVersion};

/// The base path the demo backend serves under.
const BASE: &str = "/fhir";

/// Largest Binary JSON a client may send the demo backend.
const MAX_REQUEST: usize = 64 * 1024 * 1024;

/// Most versions the demo backend keeps besides its samples.
const MAX_STORED_VERSIONS: usize = 256;

/// Most bytes of Binary JSON the demo backend keeps besides its samples.
const MAX_STORED_BYTES: usize = 256 * 1024 * 1024;

const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

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
/// - `GET /fhir/Binary/{id}`: the current version of the Binary, `application/fhir+json`, with
///   `ETag: W/"{versionId}"` and `Last-Modified`; `GET /fhir/Binary/{id}/_history/{vid}`: that
///   version; 404 with an OperationOutcome when there is none;
/// - `GET /fhir/Binary`: a searchset Bundle of the current version of every Binary;
/// - `POST /fhir/Binary`: creates a Binary (201 with
///   `Location: [base]/Binary/{id}/_history/1`); `PUT /fhir/Binary/{id}` updates it (200) or
///   creates it with that id (201). Both take FHIR JSON only, honour `Prefer:
///   return=minimal|representation|OperationOutcome` (default `representation`), `If-Match`
///   (412 when the version differs; `PUT` only), `If-None-Match: *` on `PUT` and
///   `If-None-Exist: _id=..` on `POST`, and refuse what a strict FHIR server refuses: 415 for
///   a body that is not FHIR JSON, 400 for invalid JSON, another resource type, duplicate or
///   unknown elements, a missing `contentType`, invalid base64, a `PUT` whose id differs from
///   the URL's;
/// - `GET /fhir/metadata`: a CapabilityStatement.
///
/// It holds six sample Binaries (a PDF, a JPEG, a CDA document, an HTML page, an SVG image
/// and a FHIR Patient) and keeps what clients store in memory: at most
/// 256 stored versions and 256 MiB of Binary JSON besides the samples, 64 MiB per request
/// (507 and 413 beyond).
#[derive(Clone, Debug)]
pub struct DemoBackend {
    store: Arc<RwLock<Store>>,
}

/// Every Binary, each a list of its versions (`versionId` n at index n - 1).
#[derive(Debug)]
struct Store {
    binaries: BTreeMap<String, Vec<Version>>,
    /// How many ids `POST` has assigned.
    created: usize,
    /// Versions and bytes stored by clients.
    stored_versions: usize,
    stored_bytes: usize,
}

#[derive(Clone, Debug)]
struct Version {
    json: Bytes,
    last_modified: SystemTime,
}

/// What `Prefer: return=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

impl Default for DemoBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoBackend {
    /// A backend holding the sample Binaries.
    pub fn new() -> Self {
        let sample_date = UNIX_EPOCH + Duration::from_secs(1_704_110_400); // 2024-01-01T12:00:00Z
        let mut binaries = BTreeMap::new();
        let mut add = |id: &str, json: Bytes| {
            let version = Version {
                json,
                last_modified: sample_date,
            };
            binaries.insert(id.to_owned(), vec![version]);
        };
        add("example", Bytes::from_static(PDF_JSON));
        add("f006", Bytes::from_static(JPEG_JSON));
        for (id, content_type, text) in [
            ("cda", "text/xml", CDA),
            ("html", "text/html", HTML),
            ("svg", "image/svg+xml", SVG),
            ("patient", "application/fhir+json", PATIENT),
        ] {
            add(id, small_binary(id, content_type, text));
        }
        DemoBackend {
            store: Arc::new(RwLock::new(Store {
                binaries,
                created: 0,
                stored_versions: 0,
                stored_bytes: 0,
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
            (["Binary"], false, &Method::POST) => self.write(request, None, &base).await,
            (["Binary", id], false, &Method::PUT) => {
                let id = (*id).to_owned();
                self.write(request, Some(id), &base).await
            }
            (["Binary", id], true, _) => self.read(id, None, &path),
            (["Binary", id, "_history", vid], true, _) => self.read(id, Some(vid), &path),
            (["metadata"] | ["Binary"] | ["Binary", _], false, _) => outcome(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                &format!("{} is not supported on {path}", request.method()),
            ),
            _ => not_found(&path),
        }
    }

    /// The current version of `id`, or version `vid`.
    fn read(&self, id: &str, vid: Option<&str>, path: &str) -> Response<Full<Bytes>> {
        let found = self.store.read().ok().and_then(|store| {
            let versions = store.binaries.get(id)?;
            let n = match vid {
                None => versions.len(),
                Some(vid) => vid.parse::<usize>().ok().filter(|n| *n >= 1)?,
            };
            Some((n, versions.get(n - 1)?.clone()))
        });
        match found {
            Some((n, version)) => {
                with_validators(fhir_json(StatusCode::OK, version.json.clone()), n, &version)
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
                    .filter_map(|(id, versions)| {
                        let resource: Value =
                            serde_json::from_slice(&versions.last()?.json).ok()?;
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

    /// `POST` (`id` None) or `PUT` of a Binary.
    async fn write<B>(
        &self,
        request: Request<B>,
        id: Option<String>,
        base: &str,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        if let Some(id) = &id {
            if !is_fhir_id(id) {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("{id:?} is not a FHIR id"),
                );
            }
        }
        if !is_fhir_json(parts.headers.get(CONTENT_TYPE)) {
            return outcome(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "this server takes FHIR JSON only (application/fhir+json)",
            );
        }
        let prefer = prefer_return(&parts.headers);
        let bytes = match Limited::new(body, MAX_REQUEST).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return outcome(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-costly",
                    &format!("the demo backend takes at most {MAX_REQUEST} bytes of Binary JSON"),
                )
            }
            Err(e) => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "incomplete",
                    &format!("the request body could not be read: {e}"),
                )
            }
        };
        let mut resource = match check_binary(&bytes, id.as_deref()) {
            Ok(resource) => resource,
            Err(diagnostics) => return outcome(StatusCode::BAD_REQUEST, "invalid", &diagnostics),
        };

        let Ok(mut store) = self.store.write() else {
            return outcome(StatusCode::INTERNAL_SERVER_ERROR, "exception", "store lost");
        };
        let id = match id {
            Some(id) => {
                let current = store.binaries.get(&id).map(Vec::len);
                if let Err(diagnostics) = check_preconditions(&parts.headers, current) {
                    return outcome(StatusCode::PRECONDITION_FAILED, "conflict", &diagnostics);
                }
                id
            }
            None => {
                match if_none_exist(&parts.headers) {
                    Err(diagnostics) => {
                        return outcome(StatusCode::BAD_REQUEST, "not-supported", &diagnostics)
                    }
                    Ok(Some(existing)) => {
                        if let Some(versions) = store.binaries.get(&existing) {
                            // One match: the create is not done and the match is returned.
                            let n = versions.len();
                            let version = versions[n - 1].clone();
                            drop(store);
                            let response = fhir_json(StatusCode::OK, version.json.clone());
                            return with_validators(response, n, &version);
                        }
                    }
                    Ok(None) => {}
                }
                loop {
                    store.created += 1;
                    let id = format!("created-{}", store.created);
                    if !store.binaries.contains_key(&id) {
                        break id;
                    }
                }
            }
        };
        let previous = store.binaries.get(&id).map_or(0, Vec::len);
        let n = previous + 1;
        let now = SystemTime::now();
        let object = resource.as_object_mut().expect("checked to be an object");
        object.insert("id".into(), json!(id));
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        meta["versionId"] = json!(n.to_string());
        meta["lastUpdated"] = json!(fhir_instant(now));
        let json = Bytes::from(in_server_order(object));
        if store.stored_versions >= MAX_STORED_VERSIONS
            || store.stored_bytes + json.len() > MAX_STORED_BYTES
        {
            return outcome(
                StatusCode::INSUFFICIENT_STORAGE,
                "too-costly",
                &format!(
                    "the demo backend keeps at most {MAX_STORED_VERSIONS} versions and \
                     {MAX_STORED_BYTES} bytes besides its samples"
                ),
            );
        }
        store.stored_versions += 1;
        store.stored_bytes += json.len();
        let version = Version {
            json,
            last_modified: now,
        };
        store
            .binaries
            .entry(id.clone())
            .or_default()
            .push(version.clone());
        drop(store);

        let (status, verb) = if previous == 0 {
            (StatusCode::CREATED, "created")
        } else {
            (StatusCode::OK, "updated")
        };
        let mut response = match prefer {
            Return::Representation => fhir_json(status, version.json.clone()),
            Return::Minimal => {
                let mut response = Response::new(Full::default());
                *response.status_mut() = status;
                response
            }
            Return::OperationOutcome => {
                let resource = json!({
                    "resourceType": "OperationOutcome",
                    "issue": [{
                        "severity": "information",
                        "code": "informational",
                        "diagnostics": format!("Binary/{id} {verb}, version {n}"),
                    }]
                });
                fhir_json(status, Bytes::from(resource.to_string()))
            }
        };
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&format!("{base}/Binary/{id}/_history/{n}")) {
            headers.insert(LOCATION, location);
        }
        headers.insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static(match prefer {
                Return::Minimal => "return=minimal",
                Return::Representation => "return=representation",
                Return::OperationOutcome => "return=OperationOutcome",
            }),
        );
        with_validators(response, n, &version)
    }
}

/// The elements an R4 Binary may have, primitive extensions included.
const BINARY_ELEMENTS: [&str; 12] = [
    "resourceType",
    "id",
    "_id",
    "meta",
    "implicitRules",
    "_implicitRules",
    "language",
    "_language",
    "contentType",
    "_contentType",
    "securityContext",
    "data",
];

/// The resource, when `bytes` is a Binary a strict R4 server would store; else why not.
fn check_binary(bytes: &[u8], url_id: Option<&str>) -> Result<Value, String> {
    let StrictObject(map) = serde_json::from_slice(bytes)
        .map_err(|e| format!("the body is not a FHIR resource in JSON: {e}"))?;
    match map.get("resourceType") {
        Some(Value::String(t)) if t == "Binary" => {}
        Some(Value::String(t)) => {
            return Err(format!("a {t} cannot be stored at the Binary endpoint"))
        }
        _ => return Err("the body is not a FHIR resource in JSON: no resourceType".into()),
    }
    for (name, value) in &map {
        if !BINARY_ELEMENTS.contains(&name.as_str()) && name != "_data" {
            return Err(format!("unknown element Binary.{name}"));
        }
        if value.as_str() == Some("") {
            return Err(format!("Binary.{name} is an empty string"));
        }
        if value.is_null() {
            return Err(format!("Binary.{name} is null"));
        }
    }
    match map.get("contentType") {
        Some(Value::String(ct)) if MediaType::parse(ct).is_ok() && ct.trim() == ct => {}
        Some(other) => return Err(format!("Binary.contentType {other} is not a media type")),
        None => return Err("Binary.contentType is required".into()),
    }
    match map.get("id") {
        None if url_id.is_some() => return Err("the Binary to update has no id".into()),
        Some(Value::String(id)) if !is_fhir_id(id) => {
            return Err(format!("Binary.id {id:?} is not a FHIR id"))
        }
        Some(Value::String(id)) if url_id.is_some_and(|url_id| url_id != id) => {
            return Err(format!("Binary.id {id:?} is not the id in the URL"))
        }
        Some(Value::String(_)) | None => {}
        Some(other) => return Err(format!("Binary.id {other} is not a string")),
    }
    if let Some(data) = map.get("data") {
        let text = data.as_str().ok_or("Binary.data is not a string")?;
        let clean: String = text.split_ascii_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map_err(|e| format!("Binary.data is not base64: {e}"))?;
    }
    for object in ["meta", "securityContext"] {
        if map.get(object).is_some_and(|v| !v.is_object()) {
            return Err(format!("Binary.{object} is not an object"));
        }
    }
    if let Some(context) = map.get("securityContext") {
        if !context.get("reference").is_some_and(Value::is_string)
            && context.get("identifier").is_none()
        {
            return Err("Binary.securityContext has neither reference nor identifier".into());
        }
    }
    Ok(Value::Object(map))
}

/// A stored Binary as servers such as HAPI write it: `resourceType`, `id` and `meta` first,
/// the payload last, so that a large document can be read back natively as it streams
/// (`serde_json` would write the members sorted by name, `resourceType` after `data`).
fn in_server_order(object: &serde_json::Map<String, Value>) -> String {
    const FIRST: [&str; 3] = ["resourceType", "id", "meta"];
    const LAST: [&str; 2] = ["data", "content"];
    let first = FIRST.iter().filter_map(|name| object.get_key_value(*name));
    let middle = object
        .iter()
        .filter(|(name, _)| !FIRST.contains(&name.as_str()) && !LAST.contains(&name.as_str()));
    let last = LAST.iter().filter_map(|name| object.get_key_value(*name));
    let members: Vec<String> = first
        .chain(middle)
        .chain(last)
        .map(|(name, value)| format!("{}:{value}", Value::from(name.as_str())))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A JSON object whose members are refused when they appear twice (`serde_json::Value` keeps
/// the last one silently).
struct StrictObject(serde_json::Map<String, Value>);

impl<'de> serde_core::Deserialize<'de> for StrictObject {
    fn deserialize<D: serde_core::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde_core::de::Visitor<'de> for Members {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde_core::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<StrictObject, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((name, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&name) {
                        return Err(serde_core::de::Error::custom(format!(
                            "{name} appears twice"
                        )));
                    }
                    map.insert(name, value);
                }
                Ok(StrictObject(map))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// `If-Match` and `If-None-Match: *` of a `PUT`, against the current version (None: no such
/// Binary yet).
fn check_preconditions(headers: &HeaderMap, current: Option<usize>) -> Result<(), String> {
    if let Some(value) = headers.get(IF_MATCH) {
        let text = value.to_str().unwrap_or("");
        let matches = match (text.trim(), current) {
            (_, None) => false,
            ("*", Some(_)) => true,
            (tag, Some(n)) => tag.split(',').any(|t| version_of_tag(t.trim()) == Some(n)),
        };
        if !matches {
            return Err(match current {
                Some(n) => {
                    format!("If-Match {text:?} does not match the current version W/\"{n}\"")
                }
                None => format!("If-Match {text:?}: there is no such Binary"),
            });
        }
    }
    if let Some(value) = headers.get(IF_NONE_MATCH) {
        if value.as_bytes() == b"*" && current.is_some() {
            return Err("If-None-Match: * and the Binary exists".into());
        }
    }
    Ok(())
}

/// The version number of an entity tag `W/"n"` or `"n"`.
fn version_of_tag(tag: &str) -> Option<usize> {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// The id `If-None-Exist: _id=..` names; an error for any other search (the demo has none).
fn if_none_exist(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("if-none-exist") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    match text.trim().strip_prefix("_id=") {
        Some(id) if is_fhir_id(id) => Ok(Some(id.to_owned())),
        _ => Err(format!(
            "If-None-Exist {text:?}: the demo backend only searches by _id"
        )),
    }
}

/// `Prefer: return=...`, `representation` when absent or unknown.
fn prefer_return(headers: &HeaderMap) -> Return {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(
            |pref| match pref.trim().strip_prefix("return=")?.trim_matches('"') {
                "minimal" => Some(Return::Minimal),
                "representation" => Some(Return::Representation),
                "OperationOutcome" => Some(Return::OperationOutcome),
                _ => None,
            },
        )
        .unwrap_or(Return::Representation)
}

/// Whether the request body is labelled FHIR JSON.
fn is_fhir_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(media_type) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| MediaType::parse(v).ok())
    else {
        return false;
    };
    let subtype = media_type.subty.as_str().to_ascii_lowercase();
    let suffix = media_type.suffix.map(|s| s.as_str().to_ascii_lowercase());
    media_type.ty.as_str().eq_ignore_ascii_case("application")
        && matches!(
            (subtype.as_str(), suffix.as_deref()),
            ("fhir", Some("json")) | ("json", Some("fhir")) | ("json", None)
        )
}

/// FHIR's id: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A FHIR instant in UTC with milliseconds.
fn fhir_instant(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(0);
    let Ok(t) = OffsetDateTime::from_unix_timestamp(seconds) else {
        return "1970-01-01T00:00:00.000Z".into();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        since.subsec_millis()
    )
}

/// `ETag` and `Last-Modified` of version `n`.
fn with_validators(
    mut response: Response<Full<Bytes>>,
    n: usize,
    version: &Version,
) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{n}\"")) {
        headers.insert(ETAG, etag);
    }
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(version.last_modified)) {
        headers.insert(LAST_MODIFIED, date);
    }
    response
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
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "interaction": [
                    {"code": "read"},
                    {"code": "vread"},
                    {"code": "search-type"},
                    {"code": "create"},
                    {"code": "update"},
                ],
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
            let json: Value = serde_json::from_slice(&store.binaries[sample.id][0].json).unwrap();
            assert_eq!(json["resourceType"], "Binary");
            assert_eq!(json["id"], sample.id);
            assert_eq!(json["contentType"], sample.content_type);
            assert!(json["data"].is_string());
        }
    }

    #[test]
    fn a_stored_binary_has_its_metadata_first_and_its_payload_last() {
        let json = r#"{"data":"SGk=","contentType":"text/plain","resourceType":"Binary","meta":{"versionId":"2"},"id":"a","securityContext":{"reference":"Patient/p"}}"#;
        let Value::Object(object) = serde_json::from_str(json).unwrap() else {
            unreachable!()
        };
        let written = in_server_order(&object);
        assert_eq!(
            written,
            r#"{"resourceType":"Binary","id":"a","meta":{"versionId":"2"},"contentType":"text/plain","securityContext":{"reference":"Patient/p"},"data":"SGk="}"#
        );
    }
}
