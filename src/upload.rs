//! What a `POST [base]/Binary` or `PUT [base]/Binary/[id]` carries, decided from the request
//! head alone, and the Binary JSON a raw document becomes.
//!
//! By `Content-Type`:
//!
//! - FHIR JSON (`application/fhir+json`, `application/json+fhir`, `application/json`): a
//!   resource already; it goes to the inner service untouched.
//! - FHIR XML (`application/fhir+xml`, `application/xml+fhir`, `application/xml`): a Binary in
//!   XML; it goes on as the equivalent FHIR JSON, converted as it arrives.
//! - Anything else, `text/xml` included (a CDA document is `text/xml`): the raw document. With
//!   `UploadOptions::generic_types_as_documents`, plain `application/json` and
//!   `application/xml` are documents too.
//! - No `Content-Type`: 400. A raw upload says what it is; guessing `application/octet-stream`
//!   would store a document nobody can open as what it is.
//!
//! A `POST` or `PUT` elsewhere (another resource, a transaction Bundle to the base), when the
//! layer selects it, is a write only when it is FHIR XML (the three media types above, plain
//! `application/xml` included): it goes on as FHIR JSON too. Anything else goes on untouched.
//!
//! A raw document becomes, in this order, `{"resourceType":"Binary","id":..,"contentType":..,
//! "securityContext":{"reference":..},"data":"<base64>"}` (`content` for DSTU2 and STU3; no
//! `securityContext` on DSTU2, which has no such element: a security context there is refused
//! rather than dropped). An empty upload becomes a Binary without `data`: FHIR JSON allows no
//! empty strings.

use bytes::Bytes;
#[cfg(test)]
use bytes::{BufMut, BytesMut};
use http::header::{HeaderMap, HeaderName, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, StatusCode};
use mediatype::MediaType;

pub(crate) use crate::config::UploadOptions;
use crate::head::X_SECURITY_CONTEXT;
use crate::outcome::Outcome;
use crate::FhirVersion;

/// The closing of the Binary JSON after the base64 text.
pub(crate) const SUFFIX: &[u8] = b"\"}";

/// What a request to the Binary endpoint is, as far as writing goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upload {
    /// Not a create or an update of a Binary (any other method or path): passed on as it is.
    NotAWrite,
    /// A Binary resource in FHIR JSON: passed on untouched.
    FhirJson,
    /// A resource in FHIR XML: passed on as FHIR JSON, with this `Content-Type`.
    FhirXml { json_media_type: &'static str },
    /// A raw document: passed on as the Binary JSON of [`Envelope`].
    Document(Envelope),
}

/// The Binary JSON around the base64 of a raw document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// Everything up to and including the opening quote of the payload's value.
    prefix: Bytes,
    /// The length of the prefix without the payload member's name (`,"data":"`).
    head_len: usize,
    /// The upload's length, from `Content-Length`.
    upload_length: Option<u64>,
    /// The `Content-Type` of the Binary JSON, in the configured release's spelling.
    json_media_type: &'static str,
}

impl Envelope {
    /// The Binary JSON up to the base64 text.
    pub(crate) fn into_prefix(self) -> Bytes {
        self.prefix
    }

    /// The length of the prefix without the payload member's name (`,"data":"`).
    pub(crate) fn head_len(&self) -> usize {
        self.head_len
    }

    /// The whole Binary JSON of an empty upload: no payload member at all.
    #[cfg(test)]
    pub(crate) fn empty_document(&self) -> Bytes {
        let mut json = BytesMut::with_capacity(self.head_len + 1);
        json.put_slice(&self.prefix[..self.head_len]);
        json.put_u8(b'}');
        json.freeze()
    }

    /// The upload's length when `Content-Length` announced it.
    pub(crate) fn upload_length(&self) -> Option<u64> {
        self.upload_length
    }

    /// The exact length of the Binary JSON for an upload of `upload_length` bytes.
    pub(crate) fn json_length(&self, upload_length: u64) -> u64 {
        if upload_length == 0 {
            return self.head_len as u64 + 1;
        }
        self.prefix.len() as u64 + base64_length(upload_length) + SUFFIX.len() as u64
    }

    /// The `Content-Type` the inner request gets.
    pub(crate) fn json_media_type(&self) -> &'static str {
        self.json_media_type
    }
}

/// The length of the padded base64 of `n` bytes.
pub(crate) fn base64_length(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Decides what the request with this head is, or the 4xx answer it gets.
pub(crate) fn plan(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    version: FhirVersion,
    options: &UploadOptions,
) -> Result<Upload, Outcome> {
    let id = match (method, binary_target(path)) {
        (&Method::POST, Some(Target::Type)) => None,
        (&Method::PUT, Some(Target::Instance(id))) => Some(id),
        (&Method::POST | &Method::PUT, _) => return plan_other_write(headers, version),
        _ => return Ok(Upload::NotAWrite),
    };
    let content_type = single_header(headers, &CONTENT_TYPE)?.ok_or_else(|| {
        bad_request(
            "invalid",
            "a raw upload needs a Content-Type: the media type of the document".into(),
        )
    })?;
    let media_type = MediaType::parse(content_type).map_err(|e| {
        bad_request(
            "invalid",
            format!("Content-Type {content_type:?} is not a media type: {e}"),
        )
    })?;
    match kind(&media_type, options) {
        Kind::FhirJson => return Ok(Upload::FhirJson),
        Kind::FhirXml => return fhir_xml(headers, version),
        Kind::Document => {}
    }
    if let Some(encoding) = single_header(headers, &CONTENT_ENCODING)? {
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(Outcome {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "not-supported",
                diagnostics: format!(
                    "a raw upload with Content-Encoding {encoding:?} would be stored encoded: \
                     send the document as it is"
                ),
            });
        }
    }
    if let Some(id) = id {
        if !is_fhir_id(id) {
            return Err(bad_request(
                "invalid",
                format!("{id:?} is not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters)"),
            ));
        }
    }
    let security_context = single_header(headers, &X_SECURITY_CONTEXT)?;
    if let Some(reference) = security_context {
        if !is_reference(reference) {
            return Err(bad_request(
                "invalid",
                format!("X-Security-Context {reference:?} is not a FHIR reference"),
            ));
        }
        if version == FhirVersion::Dstu2 {
            return Err(Outcome {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "not-supported",
                diagnostics: "a DSTU2 Binary has no securityContext: the upload is refused \
                              rather than stored without its X-Security-Context"
                    .into(),
            });
        }
    }
    let upload_length = match single_header(headers, &CONTENT_LENGTH)? {
        None => None,
        Some(text) => Some(parse_length(text).ok_or_else(|| {
            bad_request(
                "invalid",
                format!("Content-Length {text:?} is not a length"),
            )
        })?),
    };
    if let Some(length) = upload_length {
        if length > options.max_upload_size {
            return Err(too_large(Some(length), options.max_upload_size));
        }
    }
    Ok(Upload::Document(envelope(
        id,
        content_type,
        security_context,
        upload_length,
        version,
    )))
}

/// A `POST` or `PUT` that is not a write of a Binary: FHIR XML is converted, anything else
/// goes on untouched (a head that cannot be read included: it is the inner service's).
fn plan_other_write(headers: &HeaderMap, version: FhirVersion) -> Result<Upload, Outcome> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Ok(Upload::NotAWrite);
    };
    let Some(media_type) = value.to_str().ok().and_then(|t| MediaType::parse(t).ok()) else {
        return Ok(Upload::NotAWrite);
    };
    // Without a Binary endpoint there are no raw documents: plain `application/xml` is FHIR.
    match kind(&media_type, &UploadOptions::default()) {
        Kind::FhirXml => fhir_xml(headers, version),
        Kind::FhirJson | Kind::Document => Ok(Upload::NotAWrite),
    }
}

/// A resource in FHIR XML, unless its body is encoded (it is converted as it arrives).
fn fhir_xml(headers: &HeaderMap, version: FhirVersion) -> Result<Upload, Outcome> {
    if let Some(encoding) = single_header(headers, &CONTENT_ENCODING)? {
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(Outcome {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "not-supported",
                diagnostics: format!(
                    "FHIR XML with Content-Encoding {encoding:?} cannot be converted: send it \
                     as it is"
                ),
            });
        }
    }
    Ok(Upload::FhirXml {
        json_media_type: version.json_media_type(),
    })
}

/// 413 for an upload of `length` bytes (`None`: more than the limit, found while streaming).
pub(crate) fn too_large(length: Option<u64>, max: u64) -> Outcome {
    let what = match length {
        Some(length) => format!("the upload of {length} bytes"),
        None => "the upload".to_owned(),
    };
    Outcome {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "too-costly",
        diagnostics: format!("{what} is larger than the {max} bytes this server accepts"),
    }
}

/// Builds the Binary JSON around the payload.
fn envelope(
    id: Option<&str>,
    content_type: &str,
    security_context: Option<&str>,
    upload_length: Option<u64>,
    version: FhirVersion,
) -> Envelope {
    let mut head = String::with_capacity(96 + content_type.len());
    head.push_str(r#"{"resourceType":"Binary""#);
    if let Some(id) = id {
        head.push_str(r#","id":"#);
        push_json_string(&mut head, id);
    }
    head.push_str(r#","contentType":"#);
    push_json_string(&mut head, content_type);
    if let Some(reference) = security_context {
        head.push_str(r#","securityContext":{"reference":"#);
        push_json_string(&mut head, reference);
        head.push('}');
    }
    let head_len = head.len();
    head.push_str(match version {
        FhirVersion::Dstu2 | FhirVersion::Stu3 => r#","content":""#,
        _ => r#","data":""#,
    });
    Envelope {
        prefix: Bytes::from(head),
        head_len,
        upload_length,
        json_media_type: version.json_media_type(),
    }
}

/// Appends `text` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    push_json_escaped(out, text);
    out.push('"');
}

/// Appends `text` as the inside of a JSON string, escaped as [`push_json_string`] says.
pub(crate) fn push_json_escaped(out: &mut String, text: &str) {
    let mut rest = text;
    // The bytes looked for are ASCII: `at` is always on a character boundary.
    while let Some(at) = rest
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < b' ')
    {
        out.push_str(&rest[..at]);
        let c = rest.as_bytes()[at];
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(b"0123456789abcdef"[usize::from(c >> 4)]));
                out.push(char::from(b"0123456789abcdef"[usize::from(c & 15)]));
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// Where in the Binary endpoint a path points.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `.../Binary`
    Type,
    /// `.../Binary/{id}`
    Instance(&'a str),
}

/// The path's place in the Binary endpoint, None when it is elsewhere (`_history`, another
/// resource type). One trailing slash is allowed.
fn binary_target(path: &str) -> Option<Target<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut segments = path.rsplit('/');
    let last = segments.next()?;
    if last == "Binary" {
        return Some(Target::Type);
    }
    (segments.next()? == "Binary").then_some(Target::Instance(last))
}

/// The kind of body a media type names.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    FhirJson,
    FhirXml,
    Document,
}

fn kind(media_type: &MediaType<'_>, options: &UploadOptions) -> Kind {
    if !media_type.ty.as_str().eq_ignore_ascii_case("application") {
        return Kind::Document;
    }
    let subtype = media_type.subty.as_str();
    let suffix = media_type.suffix.as_ref().map(|s| s.as_str());
    let is = |a: &str, b: Option<&str>| {
        subtype.eq_ignore_ascii_case(a)
            && match (suffix, b) {
                (Some(s), Some(b)) => s.eq_ignore_ascii_case(b),
                (None, None) => true,
                _ => false,
            }
    };
    let generic_is_fhir = !options.generic_types_as_documents;
    if is("fhir", Some("json")) || is("json", Some("fhir")) || (generic_is_fhir && is("json", None))
    {
        Kind::FhirJson
    } else if is("fhir", Some("xml"))
        || is("xml", Some("fhir"))
        || (generic_is_fhir && is("xml", None))
    {
        Kind::FhirXml
    } else {
        Kind::Document
    }
}

/// The header's only value as text; 400 when it is sent twice or is not visible ASCII.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, Outcome> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad_request(
            "invalid",
            format!("{name} is sent more than once"),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| bad_request("invalid", format!("{name} is not visible ASCII")))?
        .trim();
    Ok(Some(text))
}

/// A `Content-Length`: decimal digits only.
fn parse_length(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// FHIR's id: `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A FHIR `Reference.reference` a Binary's security context can hold: a relative reference
/// (`Type/id`, optionally `/_history/vid`), or an absolute URI (`https://..`, `urn:uuid:..`,
/// `urn:oid:..`) without whitespace or control characters. A Binary has no contained
/// resources, so a local `#id` is refused.
pub(crate) fn is_reference(text: &str) -> bool {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    is_relative_reference(text) || is_absolute_uri(text)
}

fn is_relative_reference(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(ty), Some(id)) = (parts.next(), parts.next()) else {
        return false;
    };
    let type_ok = ty.len() <= 64
        && ty.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && ty.bytes().all(|b| b.is_ascii_alphabetic());
    if !type_ok || !is_fhir_id(id) {
        return false;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => true,
        (Some("_history"), Some(vid), None) => is_fhir_id(vid),
        _ => false,
    }
}

fn is_absolute_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let rest_ok = match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => rest
            .strip_prefix("//")
            .is_some_and(|r| r.split('/').next().is_some_and(|host| !host.is_empty())),
        _ => !rest.is_empty(),
    };
    scheme_ok && rest_ok && !text.contains(['"', '\\', '<', '>', '{', '}', '|', '^', '`'])
}

fn bad_request(code: &'static str, diagnostics: String) -> Outcome {
    Outcome {
        status: StatusCode::BAD_REQUEST,
        code,
        diagnostics,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::Value;

    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        headers
    }

    fn plan_default(method: Method, path: &str, pairs: &[(&str, &str)]) -> Result<Upload, Outcome> {
        plan(
            &method,
            path,
            &head(pairs),
            FhirVersion::R4,
            &UploadOptions::default(),
        )
    }

    fn document(result: Result<Upload, Outcome>) -> Envelope {
        match result {
            Ok(Upload::Document(envelope)) => envelope,
            other => panic!("not a document: {other:?}"),
        }
    }

    fn status(result: Result<Upload, Outcome>) -> StatusCode {
        result.expect_err("should be refused").status
    }

    /// The whole Binary JSON for `bytes` as the envelope would frame it.
    fn binary_json(envelope: &Envelope, bytes: &[u8]) -> Vec<u8> {
        if bytes.is_empty() {
            return envelope.empty_document().to_vec();
        }
        let mut json = envelope.clone().into_prefix().to_vec();
        json.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .as_bytes(),
        );
        json.extend_from_slice(SUFFIX);
        json
    }

    #[test]
    fn fhir_json_passes_and_fhir_xml_is_converted() {
        for ct in [
            "application/fhir+json",
            "application/json+fhir",
            "application/json",
            "Application/FHIR+JSON; fhirVersion=4.0",
            "application/json;charset=utf-8",
        ] {
            assert_eq!(
                plan_default(Method::POST, "/fhir/Binary", &[("content-type", ct)]),
                Ok(Upload::FhirJson),
                "{ct}"
            );
        }
        for ct in [
            "application/fhir+xml",
            "application/xml+fhir",
            "application/xml",
            "application/fhir+xml; charset=utf-8",
        ] {
            for (method, path) in [
                (Method::PUT, "/Binary/a"),
                (Method::POST, "/Binary"),
                (Method::POST, "/Patient"),
                (Method::PUT, "/fhir/Patient/1"),
                (Method::POST, "/fhir"),
            ] {
                assert_eq!(
                    plan_default(method.clone(), path, &[("content-type", ct)]),
                    Ok(Upload::FhirXml {
                        json_media_type: "application/fhir+json"
                    }),
                    "{method} {path} {ct}"
                );
            }
            let dstu2 = plan(
                &Method::POST,
                "/Patient",
                &head(&[("content-type", ct)]),
                FhirVersion::Dstu2,
                &UploadOptions::default(),
            );
            assert_eq!(
                dstu2,
                Ok(Upload::FhirXml {
                    json_media_type: "application/json+fhir"
                })
            );
            let encoded = plan_default(
                Method::POST,
                "/Patient",
                &[("content-type", ct), ("content-encoding", "gzip")],
            );
            assert_eq!(status(encoded), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        }
        // Other resources in anything but FHIR XML go on untouched.
        for ct in [
            "application/fhir+json",
            "text/xml",
            "application/pdf",
            "not a type",
        ] {
            assert_eq!(
                plan_default(Method::POST, "/Patient", &[("content-type", ct)]),
                Ok(Upload::NotAWrite),
                "{ct}"
            );
        }
        assert_eq!(
            plan_default(Method::POST, "/Patient", &[]),
            Ok(Upload::NotAWrite)
        );
    }

    #[test]
    fn everything_else_is_a_document_text_xml_included() {
        for ct in [
            "application/pdf",
            "text/xml",
            "image/jpeg",
            "application/octet-stream",
            "text/plain; charset=\"utf-8\"",
            "application/hl7-v2+er7",
            "application/jsonx",
            "text/json",
        ] {
            let envelope = document(plan_default(
                Method::POST,
                "/Binary",
                &[("content-type", ct)],
            ));
            let json: Value = serde_json::from_slice(&binary_json(&envelope, b"x")).unwrap();
            assert_eq!(json["contentType"], ct, "the header as sent");
        }
    }

    #[test]
    fn the_switch_makes_generic_json_and_xml_documents() {
        let options = UploadOptions {
            generic_types_as_documents: true,
            ..UploadOptions::default()
        };
        for ct in ["application/json", "application/xml"] {
            let headers = head(&[("content-type", ct)]);
            let result = plan(
                &Method::POST,
                "/Binary",
                &headers,
                FhirVersion::R4,
                &options,
            );
            assert!(matches!(result, Ok(Upload::Document(_))), "{ct}");
        }
        let headers = head(&[("content-type", "application/fhir+json")]);
        let result = plan(
            &Method::POST,
            "/Binary",
            &headers,
            FhirVersion::R4,
            &options,
        );
        assert_eq!(result, Ok(Upload::FhirJson));
    }

    #[test]
    fn only_create_and_update_of_a_binary_are_writes() {
        let ct = [("content-type", "application/pdf")];
        for (method, path) in [
            (Method::GET, "/Binary"),
            (Method::POST, "/Binary/1"),
            (Method::PUT, "/Binary"),
            (Method::PUT, "/Binary/1/_history/2"),
            (Method::DELETE, "/Binary/1"),
            (Method::POST, "/Patient"),
            (Method::PUT, "/Patient/1"),
            (Method::POST, "/BinaryX"),
            (Method::DELETE, "/Patient/1"),
            (Method::PATCH, "/Binary/1"),
        ] {
            assert_eq!(
                plan_default(method.clone(), path, &ct),
                Ok(Upload::NotAWrite),
                "{method} {path}"
            );
        }
        for path in ["/Binary", "/fhir/r4/Binary", "Binary", "/Binary/"] {
            document(plan_default(Method::POST, path, &ct));
        }
        document(plan_default(Method::PUT, "/base/Binary/a-1.B", &ct));
    }

    #[test]
    fn bad_heads_are_refused_before_anything_is_sent() {
        let pdf = ("content-type", "application/pdf");
        assert_eq!(
            status(plan_default(Method::POST, "/Binary", &[])),
            StatusCode::BAD_REQUEST
        );
        for ct in ["pdf", "application/", "text/plain; charset", "a b/c", ""] {
            assert_eq!(
                status(plan_default(
                    Method::POST,
                    "/Binary",
                    &[("content-type", ct)]
                )),
                StatusCode::BAD_REQUEST,
                "{ct:?}"
            );
        }
        assert_eq!(
            status(plan_default(
                Method::POST,
                "/Binary",
                &[pdf, ("content-type", "image/png")]
            )),
            StatusCode::BAD_REQUEST
        );
        let long = "a".repeat(65);
        for id in ["a_b", "a%20b", long.as_str(), "a:b", "é"] {
            let path = format!("/Binary/{id}");
            assert_eq!(
                status(plan_default(Method::PUT, &path, &[pdf])),
                StatusCode::BAD_REQUEST,
                "{id}"
            );
        }
        document(plan_default(
            Method::PUT,
            &format!("/Binary/{}", "a".repeat(64)),
            &[pdf],
        ));
        for length in ["-1", "1e3", "12 ", "0x10", "99999999999999999999999"] {
            let headers = head(&[pdf, ("content-length", length)]);
            let result = plan(
                &Method::POST,
                "/Binary",
                &headers,
                FhirVersion::R4,
                &UploadOptions::default(),
            );
            if length == "12 " {
                // Surrounding whitespace is not part of a header value.
                assert!(result.is_ok());
            } else {
                assert_eq!(status(result), StatusCode::BAD_REQUEST, "{length}");
            }
        }
        assert_eq!(
            status(plan_default(
                Method::POST,
                "/Binary",
                &[pdf, ("content-encoding", "gzip")]
            )),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        document(plan_default(
            Method::POST,
            "/Binary",
            &[pdf, ("content-encoding", "identity")],
        ));
    }

    #[test]
    fn an_announced_upload_over_the_limit_is_413() {
        let options = UploadOptions {
            max_upload_size: 10,
            ..UploadOptions::default()
        };
        let run = |length: &str| {
            let headers = head(&[
                ("content-type", "application/pdf"),
                ("content-length", length),
            ]);
            plan(
                &Method::POST,
                "/Binary",
                &headers,
                FhirVersion::R4,
                &options,
            )
        };
        assert_eq!(document(run("10")).upload_length(), Some(10));
        let outcome = run("11").unwrap_err();
        assert_eq!(outcome.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(outcome.code, "too-costly");
        assert_eq!(UploadOptions::default().max_upload_size, 1024 * 1024 * 1024);
        let headers = head(&[
            ("content-type", "application/pdf"),
            ("content-length", "1073741825"),
        ]);
        let result = plan(
            &Method::POST,
            "/Binary",
            &headers,
            FhirVersion::R4,
            &UploadOptions::default(),
        );
        assert_eq!(status(result), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn security_context_must_be_a_reference_and_is_refused_on_dstu2() {
        let pdf = ("content-type", "application/pdf");
        for good in [
            "Patient/123",
            "Patient/123/_history/2",
            "https://example.org/fhir/Patient/1",
            "urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7",
            "urn:oid:1.2.3",
        ] {
            let envelope = document(plan_default(
                Method::POST,
                "/Binary",
                &[pdf, ("x-security-context", good)],
            ));
            let json: Value = serde_json::from_slice(&binary_json(&envelope, b"abc")).unwrap();
            assert_eq!(json["securityContext"]["reference"], good);
        }
        for bad in [
            "patient/1",
            "Patient",
            "Patient/",
            "Patient/a_b",
            "Patient/1/_history",
            "Patient/1/x/2",
            "#contained",
            "http:/x",
            "a b",
            "Patient/1\"",
            "https://",
            ":x",
        ] {
            assert_eq!(
                status(plan_default(
                    Method::POST,
                    "/Binary",
                    &[pdf, ("x-security-context", bad)]
                )),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let headers = head(&[pdf, ("x-security-context", "Patient/1")]);
        let result = plan(
            &Method::POST,
            "/Binary",
            &headers,
            FhirVersion::Dstu2,
            &UploadOptions::default(),
        );
        assert_eq!(status(result), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn the_binary_json_has_the_elements_of_the_release() {
        let headers = head(&[
            ("content-type", r#"text/plain; name="a\"b""#),
            ("x-security-context", "Patient/p"),
        ]);
        for (version, key, media_type) in [
            (FhirVersion::Stu3, "content", "application/fhir+json"),
            (FhirVersion::R4, "data", "application/fhir+json"),
            (FhirVersion::R4B, "data", "application/fhir+json"),
            (FhirVersion::R5, "data", "application/fhir+json"),
        ] {
            let envelope = document(plan(
                &Method::PUT,
                "/Binary/x.1",
                &headers,
                version,
                &UploadOptions::default(),
            ));
            assert_eq!(envelope.json_media_type(), media_type);
            let json = binary_json(&envelope, b"hello");
            let value: Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(
                value,
                serde_json::json!({
                    "resourceType": "Binary",
                    "id": "x.1",
                    "contentType": r#"text/plain; name="a\"b""#,
                    "securityContext": {"reference": "Patient/p"},
                    key: "aGVsbG8=",
                })
            );
            // In this order, as a reader that streams wants it.
            let text = String::from_utf8(json).unwrap();
            let at = |s: &str| text.find(s).unwrap();
            assert!(at("resourceType") < at("\"id\"") && at("\"id\"") < at("contentType"));
            assert!(
                at("contentType") < at("securityContext")
                    && at("securityContext") < at(&format!("\"{key}\":"))
            );
        }
        let headers = head(&[("content-type", "application/pdf")]);
        let envelope = document(plan(
            &Method::POST,
            "/Binary",
            &headers,
            FhirVersion::Dstu2,
            &UploadOptions::default(),
        ));
        assert_eq!(envelope.json_media_type(), "application/json+fhir");
        let value: Value = serde_json::from_slice(&binary_json(&envelope, b"\0")).unwrap();
        assert_eq!(value["content"], "AA==");
        assert!(value.get("id").is_none());
    }

    #[test]
    fn json_strings_are_escaped() {
        for text in [
            "plain",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}\u{1f}",
            "é€😀",
            "",
        ] {
            let mut json = String::new();
            push_json_string(&mut json, text);
            assert_eq!(
                serde_json::from_str::<String>(&json).unwrap(),
                text,
                "{json}"
            );
        }
    }

    #[test]
    fn an_empty_upload_is_a_binary_without_data() {
        let envelope = document(plan_default(
            Method::POST,
            "/Binary",
            &[("content-type", "text/plain")],
        ));
        let value: Value = serde_json::from_slice(&envelope.empty_document()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"resourceType": "Binary", "contentType": "text/plain"})
        );
    }

    #[test]
    fn the_length_is_exact_for_every_upload_length() {
        let envelope = document(plan_default(
            Method::PUT,
            "/Binary/abc",
            &[
                ("content-type", "image/png"),
                ("x-security-context", "Group/g"),
            ],
        ));
        for n in 0..300usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            assert_eq!(
                envelope.json_length(n as u64),
                binary_json(&envelope, &bytes).len() as u64,
                "{n}"
            );
        }
        assert_eq!(base64_length(1 << 30), 1_431_655_768);
        assert_eq!(base64_length(u64::MAX / 4), (u64::MAX / 4).div_ceil(3) * 4);
    }
}
