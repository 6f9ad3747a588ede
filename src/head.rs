//! Response heads of negotiated responses.

use http::header::{
    HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
    VARY, X_CONTENT_TYPE_OPTIONS,
};

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
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(CONTENT_ENCODING);
    headers.insert(CONTENT_TYPE, content_type);
    if let Some(length) = length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// The head of the raw document.
pub(crate) fn native(headers: &mut HeaderMap, content_type: HeaderValue, length: Option<u64>) {
    replace_body_headers(headers, content_type, length);
    // The document's type comes from the Binary; a browser must not guess another one.
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    vary_accept(headers);
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
        native(
            &mut headers,
            HeaderValue::from_static("application/pdf"),
            Some(7),
        );
        assert_eq!(headers[CONTENT_TYPE], "application/pdf");
        assert_eq!(headers[CONTENT_LENGTH], "7");
        assert!(headers.get(TRANSFER_ENCODING).is_none());
        assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(vary(&headers), ["Accept"]);

        native(&mut headers, HeaderValue::from_static("image/png"), None);
        assert!(headers.get(CONTENT_LENGTH).is_none());
    }
}
