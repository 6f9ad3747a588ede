//! Response heads of negotiated responses.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_ENCODING,
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, TRANSFER_ENCODING, VARY,
};

use crate::conditional::{etag_of, last_modified_of};
use crate::policy::SecurityPolicy;
use crate::transcode::Metadata;

/// `X-Security-Context`, as HAPI, Firely and DSF send it.
pub(crate) const X_SECURITY_CONTEXT: HeaderName = HeaderName::from_static("x-security-context");

/// Adds `Accept` to `Vary`, keeping what the inner service listed and not listing it twice.
///
/// Every negotiated response varies with `Accept`, whichever representation it carries, so
/// that a cache never hands the raw document to a client that asked for FHIR JSON.
pub(crate) fn vary_accept(headers: &mut HeaderMap) {
    if !headers.get_all(VARY).iter().any(lists_accept) {
        add_vary_accept(headers);
    }
}

/// [`vary_accept`] when the head is known not to list `Accept` yet.
pub(crate) fn add_vary_accept(headers: &mut HeaderMap) {
    headers.append(VARY, ACCEPT);
}

/// `Accept`, the `Vary` value, checked once at compile time.
const ACCEPT: HeaderValue = HeaderValue::from_static("Accept");

/// `Accept-Ranges: bytes`, checked once at compile time.
const BYTES: HeaderValue = HeaderValue::from_static("bytes");

/// Whether a `Vary` value lists `Accept`, or `*`.
fn lists_accept(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .map(str::trim)
            .any(|name| name == "*" || name.eq_ignore_ascii_case("accept"))
    })
}

/// `application/fhir+json`, `application/json+fhir` or `application/json`, any parameters.
pub(crate) fn is_fhir_json(content_type: &str) -> bool {
    let essence = crate::negotiate::essence(content_type);
    [
        "application/fhir+json",
        "application/json+fhir",
        "application/json",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

/// Sets the headers that describe a new body in place of the inner one: its type and, when
/// known, its length. The inner body's framing and encoding headers no longer apply. `inner`
/// describes `headers` as they came.
pub(crate) fn replace_body_headers(
    headers: &mut HeaderMap,
    inner: &InnerHead,
    content_type: HeaderValue,
    length: Option<u64>,
) {
    // Removing only what is there: a removal costs a hashed lookup even when it finds nothing.
    if inner.content_length {
        headers.remove(CONTENT_LENGTH);
    }
    if inner.transfer_encoding {
        headers.remove(TRANSFER_ENCODING);
    }
    if inner.content_encoding {
        headers.remove(CONTENT_ENCODING);
    }
    set_content_type(headers, content_type);
    if let Some(length) = length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// Heads up to this many values are scanned for `Content-Type`; a scan of a few entries costs
/// less than the hashed lookup of an insert.
const SCANNED_HEAD: usize = 12;

/// Sets `Content-Type` to `content_type`, dropping any other value. A head that has it once
/// (the usual inner head) gets it replaced in place.
fn set_content_type(headers: &mut HeaderMap, content_type: HeaderValue) {
    if headers.len() <= SCANNED_HEAD {
        let mut there = headers
            .iter_mut()
            .filter(|(name, _)| *name == CONTENT_TYPE)
            .map(|(_, value)| value);
        if let (Some(value), None) = (there.next(), there.next()) {
            *value = content_type;
            return;
        }
    }
    headers.insert(CONTENT_TYPE, content_type);
}

/// The head of the raw document: its type and length, the browser policy, the validators
/// and the security context from the Binary (unless the inner service set them) and
/// `Accept-Ranges`. `Vary` is already set on every negotiated head (see [`vary_accept`]);
/// `Content-Location` and the inner service's other headers stay. `inner` describes
/// `headers` as they came from the inner service.
pub(crate) fn native(
    headers: &mut HeaderMap,
    inner: &InnerHead,
    content_type: HeaderValue,
    length: Option<u64>,
    metadata: &Metadata,
    policy: SecurityPolicy,
) {
    // nosniff always: the document's type comes from the Binary, a browser must not guess.
    policy.apply(headers, &content_type, metadata.id.as_deref());
    replace_body_headers(headers, inner, content_type, length);
    if !inner.etag {
        if let Some(etag) = etag_of(metadata.version_id.as_deref()) {
            headers.insert(ETAG, etag);
        }
    }
    if !inner.last_modified {
        if let Some(date) = last_modified_of(metadata.last_updated.as_deref()) {
            headers.insert(LAST_MODIFIED, date);
        }
    }
    if !inner.security_context {
        let reference = metadata
            .security_context
            .as_deref()
            .filter(|reference| !reference.is_empty())
            .and_then(|reference| HeaderValue::from_str(reference).ok());
        if let Some(reference) = reference {
            headers.insert(X_SECURITY_CONTEXT, reference);
        }
    }
    headers.insert(ACCEPT_RANGES, BYTES);
}

/// What the layer needs to know of an inner response head: found in one pass over its few
/// entries, rather than one hashed lookup each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InnerHead {
    /// `Content-Type` (its first value) is FHIR JSON, and every `Content-Encoding` is
    /// `identity`.
    pub(crate) plain_fhir_json: bool,
    /// `Content-Type` is FHIR JSON, but a `Content-Encoding` other than `identity` applies.
    pub(crate) encoded_fhir_json: bool,
    /// `Vary` lists `Accept` or `*` already.
    pub(crate) varies_with_accept: bool,
    // The headers a new head replaces or keeps.
    content_length: bool,
    transfer_encoding: bool,
    content_encoding: bool,
    etag: bool,
    last_modified: bool,
    security_context: bool,
}

impl InnerHead {
    /// Reads `headers` as the inner service sent them.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut inner = InnerHead::default();
        let mut fhir_json = None;
        let mut identity = true;
        for (name, value) in headers {
            let flag = if name == CONTENT_TYPE {
                fhir_json.get_or_insert_with(|| value.to_str().is_ok_and(is_fhir_json));
                continue;
            } else if name == VARY {
                inner.varies_with_accept |= lists_accept(value);
                continue;
            } else if name == CONTENT_LENGTH {
                &mut inner.content_length
            } else if name == TRANSFER_ENCODING {
                &mut inner.transfer_encoding
            } else if name == CONTENT_ENCODING {
                identity &= value
                    .to_str()
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
                &mut inner.content_encoding
            } else if name == ETAG {
                &mut inner.etag
            } else if name == LAST_MODIFIED {
                &mut inner.last_modified
            } else if name == X_SECURITY_CONTEXT {
                &mut inner.security_context
            } else {
                continue;
            };
            *flag = true;
        }
        inner.plain_fhir_json = identity && fhir_json == Some(true);
        inner.encoded_fhir_json = !identity && fhir_json == Some(true);
        inner
    }
}

/// The head of a `HEAD` response made from the inner response to a `GET`: the length the `GET`
/// has when the inner head or body tells it.
pub(crate) fn head_length(headers: &mut HeaderMap, inner: &InnerHead, length: Option<u64>) {
    if let (false, Some(length)) = (inner.content_length, length) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// Turns a native head into that of 304 Not Modified: the validators, `Vary`,
/// `Content-Location` and caching headers stay; what describes a body goes.
pub(crate) fn not_modified(headers: &mut HeaderMap) {
    for name in [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        CONTENT_RANGE,
        CONTENT_DISPOSITION,
        CONTENT_ENCODING,
        TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
}

/// Turns a native head into that of 206 Partial Content for bytes `first..=last` of a document
/// of `length` bytes (`*` when the length is not known yet).
pub(crate) fn partial(headers: &mut HeaderMap, first: u64, last: u64, length: Option<u64>) {
    let length = length.map_or_else(|| "*".to_owned(), |n| n.to_string());
    let range = format!("bytes {first}-{last}/{length}");
    headers.insert(
        CONTENT_RANGE,
        HeaderValue::from_str(&range).expect("digits are a valid header value"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
}

/// Turns a native head into that of 416 Range Not Satisfiable for a document of `length`
/// bytes: no body, `Content-Range: bytes */length`.
pub(crate) fn unsatisfiable(headers: &mut HeaderMap, length: u64) {
    headers.remove(CONTENT_TYPE);
    headers.remove(CONTENT_DISPOSITION);
    headers.insert(
        CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{length}"))
            .expect("digits are a valid header value"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`native`] over a head as the inner service sent it.
    fn native_from(
        headers: &mut HeaderMap,
        content_type: HeaderValue,
        length: Option<u64>,
        metadata: &Metadata,
        policy: SecurityPolicy,
    ) {
        let inner = InnerHead::of(headers);
        native(headers, &inner, content_type, length, metadata, policy);
    }

    fn vary(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn vary_is_added_once_and_merged() {
        let mut headers = HeaderMap::new();
        vary_accept(&mut headers);
        vary_accept(&mut headers);
        assert_eq!(vary(&headers), ["Accept"]);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Origin, accept"));
        vary_accept(&mut headers);
        assert_eq!(vary(&headers), ["Origin, accept"]);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        vary_accept(&mut headers);
        assert_eq!(vary(&headers), ["Origin", "Accept"]);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("*"));
        vary_accept(&mut headers);
        assert_eq!(vary(&headers), ["*"]);
    }

    #[test]
    fn fhir_json_media_types() {
        assert!(is_fhir_json("application/fhir+json"));
        assert!(is_fhir_json(
            "application/fhir+json; charset=UTF-8; fhirVersion=4.0"
        ));
        assert!(is_fhir_json("Application/JSON+FHIR"));
        assert!(is_fhir_json("application/json"));
        assert!(!is_fhir_json("application/fhir+xml"));
        assert!(!is_fhir_json("application/grpc"));
        assert!(!is_fhir_json("text/json"));
    }

    #[test]
    fn inner_head_in_one_pass_agrees_with_lookups() {
        let head = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            InnerHead::of(&headers)
        };
        let json = ("content-type", "application/fhir+json");
        assert!(head(&[json]).plain_fhir_json);
        assert!(head(&[json, ("content-encoding", " Identity ")]).plain_fhir_json);
        assert!(
            !head(&[
                json,
                ("content-encoding", "identity"),
                ("content-encoding", "gzip")
            ])
            .plain_fhir_json
        );
        assert!(!head(&[("content-encoding", "identity")]).plain_fhir_json);
        // The first Content-Type is the one that counts, as for `HeaderMap::get`.
        assert!(head(&[json, ("content-type", "text/html")]).plain_fhir_json);
        assert!(!head(&[("content-type", "text/html"), json]).plain_fhir_json);
        assert!(!head(&[("content-type", "application/fhir+xml")]).plain_fhir_json);

        assert!(!head(&[json]).varies_with_accept);
        assert!(!head(&[("vary", "Origin")]).varies_with_accept);
        assert!(head(&[("vary", "Origin"), ("vary", "origin, ACCEPT")]).varies_with_accept);
        assert!(head(&[("vary", "*")]).varies_with_accept);

        let all = head(&[
            ("content-length", "1"),
            ("transfer-encoding", "chunked"),
            ("content-encoding", "identity"),
            ("etag", "\"a\""),
            ("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT"),
            ("x-security-context", "Patient/1"),
        ]);
        assert!(all.content_length && all.transfer_encoding && all.content_encoding);
        assert!(all.etag && all.last_modified && all.security_context);
        let none = head(&[json, ("content-location", "Binary/1/_history/1")]);
        assert!(!none.content_length && !none.transfer_encoding && !none.content_encoding);
        assert!(!none.etag && !none.last_modified && !none.security_context);
    }

    #[test]
    fn content_type_is_set_once_whatever_the_head_had() {
        let types = |headers: &HeaderMap| {
            headers
                .get_all(CONTENT_TYPE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let mut headers = HeaderMap::new();
        set_content_type(&mut headers, HeaderValue::from_static("application/pdf"));
        assert_eq!(types(&headers), ["application/pdf"]);

        headers.insert(VARY, HeaderValue::from_static("Accept"));
        set_content_type(&mut headers, HeaderValue::from_static("image/png"));
        assert_eq!(types(&headers), ["image/png"]);

        headers.append(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        set_content_type(&mut headers, HeaderValue::from_static("text/plain"));
        assert_eq!(types(&headers), ["text/plain"]);

        // Beyond the scanned size, and with two values again.
        for i in 0..SCANNED_HEAD {
            let name = HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap();
            headers.insert(name, HeaderValue::from_static("1"));
        }
        headers.append(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        set_content_type(&mut headers, HeaderValue::from_static("image/jpeg"));
        assert_eq!(types(&headers), ["image/jpeg"]);
        assert_eq!(headers.len(), SCANNED_HEAD + 2);
    }

    #[test]
    fn native_head_replaces_the_json_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("1234"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
        headers.insert(X_SECURITY_CONTEXT, HeaderValue::from_static("Group/1"));
        let metadata = Metadata {
            security_context: Some("Patient/1".into()),
            ..Metadata::default()
        };
        native_from(
            &mut headers,
            HeaderValue::from_static("application/pdf"),
            Some(7),
            &metadata,
            SecurityPolicy::Standard,
        );
        assert_eq!(headers[CONTENT_TYPE], "application/pdf");
        assert_eq!(headers[CONTENT_LENGTH], "7");
        assert!(headers.get(TRANSFER_ENCODING).is_none());
        assert!(headers.get(CONTENT_ENCODING).is_none());
        assert_eq!(headers[X_SECURITY_CONTEXT], "Group/1");
        assert_eq!(headers[http::header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[ACCEPT_RANGES], "bytes");
        assert!(headers.get(ETAG).is_none());

        native_from(
            &mut headers,
            HeaderValue::from_static("image/png"),
            None,
            &metadata,
            SecurityPolicy::Standard,
        );
        assert!(headers.get(CONTENT_LENGTH).is_none());
    }

    #[test]
    fn validators_and_security_context_from_the_binary_unless_the_inner_set_them() {
        let metadata = Metadata {
            id: Some("x".into()),
            version_id: Some("2".into()),
            last_updated: Some("2020-01-02T03:04:05.678Z".into()),
            security_context: Some("Patient/1".into()),
        };
        let mut headers = HeaderMap::new();
        let pdf = || HeaderValue::from_static("application/pdf");
        native_from(
            &mut headers,
            pdf(),
            None,
            &metadata,
            SecurityPolicy::Standard,
        );
        assert_eq!(headers[ETAG], "W/\"2\"");
        assert_eq!(headers[LAST_MODIFIED], "Thu, 02 Jan 2020 03:04:05 GMT");
        assert_eq!(headers[X_SECURITY_CONTEXT], "Patient/1");

        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"inner\""));
        headers.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 01 Jan 2001 00:00:00 GMT"),
        );
        native_from(
            &mut headers,
            pdf(),
            None,
            &metadata,
            SecurityPolicy::Standard,
        );
        assert_eq!(headers[ETAG], "\"inner\"");
        assert_eq!(headers[LAST_MODIFIED], "Mon, 01 Jan 2001 00:00:00 GMT");

        let injected = Metadata {
            security_context: Some("Patient/1\r\nSet-Cookie: a=b".into()),
            ..Metadata::default()
        };
        let mut headers = HeaderMap::new();
        native_from(
            &mut headers,
            pdf(),
            None,
            &injected,
            SecurityPolicy::Standard,
        );
        assert!(headers.get(X_SECURITY_CONTEXT).is_none());
        assert!(headers.get("set-cookie").is_none());
    }

    #[test]
    fn partial_unsatisfiable_and_not_modified_heads() {
        let mut headers = HeaderMap::new();
        partial(&mut headers, 10, 19, Some(100));
        assert_eq!(headers[CONTENT_RANGE], "bytes 10-19/100");
        assert_eq!(headers[CONTENT_LENGTH], "10");
        partial(&mut headers, 0, 0, None);
        assert_eq!(headers[CONTENT_RANGE], "bytes 0-0/*");

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/pdf"));
        unsatisfiable(&mut headers, 100);
        assert_eq!(headers[CONTENT_RANGE], "bytes */100");
        assert_eq!(headers[CONTENT_LENGTH], "0");
        assert!(headers.get(CONTENT_TYPE).is_none());

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/pdf"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("7"));
        headers.insert(ETAG, HeaderValue::from_static("W/\"1\""));
        not_modified(&mut headers);
        assert!(headers.get(CONTENT_TYPE).is_none());
        assert!(headers.get(CONTENT_LENGTH).is_none());
        assert_eq!(headers[ETAG], "W/\"1\"");
    }
}
