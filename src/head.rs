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
    let listed = headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .map(str::trim)
                .any(|name| name == "*" || name.eq_ignore_ascii_case("accept"))
        })
    });
    if !listed {
        headers.append(VARY, HeaderValue::from_static("Accept"));
    }
}

/// Sets the headers that describe a new body in place of the inner one: its type and, when
/// known, its length. The inner body's framing and encoding headers no longer apply.
pub(crate) fn replace_body_headers(
    headers: &mut HeaderMap,
    content_type: HeaderValue,
    length: Option<u64>,
) {
    let present = Present::of(headers);
    replace_present_body_headers(headers, &present, content_type, length);
}

/// [`replace_body_headers`], with what the head held already found.
fn replace_present_body_headers(
    headers: &mut HeaderMap,
    present: &Present,
    content_type: HeaderValue,
    length: Option<u64>,
) {
    // Removing only what is there: a removal costs a hashed lookup even when it finds nothing.
    for (name, there) in [
        (CONTENT_LENGTH, present.content_length),
        (TRANSFER_ENCODING, present.transfer_encoding),
        (CONTENT_ENCODING, present.content_encoding),
    ] {
        if there {
            headers.remove(name);
        }
    }
    headers.insert(CONTENT_TYPE, content_type);
    if let Some(length) = length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// The head of the raw document: its type and length, the browser policy, the validators
/// and the security context from the Binary (unless the inner service set them) and
/// `Accept-Ranges`. `Vary` is already set on every negotiated head (see [`vary_accept`]);
/// `Content-Location` and the inner service's other headers stay.
pub(crate) fn native(
    headers: &mut HeaderMap,
    content_type: HeaderValue,
    length: Option<u64>,
    metadata: &Metadata,
    policy: SecurityPolicy,
) {
    let present = Present::of(headers);
    // nosniff always: the document's type comes from the Binary, a browser must not guess.
    policy.apply(
        headers,
        content_type.to_str().unwrap_or_default(),
        metadata.id.as_deref(),
    );
    replace_present_body_headers(headers, &present, content_type, length);
    if !present.etag {
        if let Some(etag) = etag_of(metadata.version_id.as_deref()) {
            headers.insert(ETAG, etag);
        }
    }
    if !present.last_modified {
        if let Some(date) = last_modified_of(metadata.last_updated.as_deref()) {
            headers.insert(LAST_MODIFIED, date);
        }
    }
    if !present.security_context {
        let reference = metadata
            .security_context
            .as_deref()
            .filter(|reference| !reference.is_empty())
            .and_then(|reference| HeaderValue::from_str(reference).ok());
        if let Some(reference) = reference {
            headers.insert(X_SECURITY_CONTEXT, reference);
        }
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

/// Which of the headers a new head replaces or keeps the inner head has: found in one pass
/// over its few names, rather than one hashed lookup each.
#[derive(Default)]
struct Present {
    content_length: bool,
    transfer_encoding: bool,
    content_encoding: bool,
    etag: bool,
    last_modified: bool,
    security_context: bool,
}

impl Present {
    fn of(headers: &HeaderMap) -> Self {
        let mut present = Present::default();
        for name in headers.keys() {
            let flag = if name == CONTENT_LENGTH {
                &mut present.content_length
            } else if name == TRANSFER_ENCODING {
                &mut present.transfer_encoding
            } else if name == CONTENT_ENCODING {
                &mut present.content_encoding
            } else if name == ETAG {
                &mut present.etag
            } else if name == LAST_MODIFIED {
                &mut present.last_modified
            } else if name == X_SECURITY_CONTEXT {
                &mut present.security_context
            } else {
                continue;
            };
            *flag = true;
        }
        present
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
        native(
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

        native(
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
        native(
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
        native(
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
        native(
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
