//! The request the inner service receives for a negotiated read.

use http::header::{HeaderValue, ACCEPT, IF_RANGE, RANGE};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request};

use crate::config::Config;
use crate::negotiate::strip_format;

/// Asks the inner service plainly for FHIR JSON: it may not know `_format`, misread `Accept`
/// or not implement `HEAD`.
pub(crate) fn rewrite_request<B>(request: &mut Request<B>, config: &Config, names_a_range: bool) {
    if request.method() == Method::HEAD {
        *request.method_mut() = Method::GET;
    }
    let headers = request.headers_mut();
    headers.insert(
        ACCEPT,
        HeaderValue::from_static(config.fhir_version.json_media_type()),
    );
    // A range of the JSON is no range of the document: ranges are the layer's to serve.
    // (Removed only when named: a removal costs a hashed lookup even when it finds nothing.)
    if names_a_range {
        headers.remove(RANGE);
        headers.remove(IF_RANGE);
    }
    if let Some(uri) = uri_without_format(request.uri()) {
        *request.uri_mut() = uri;
    }
}

/// The URI without its `_format` parameters, or None when it has none.
fn uri_without_format(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    let stripped = strip_format(query);
    if stripped.as_deref() == Some(query) {
        return None;
    }
    let path_and_query = match stripped {
        Some(rest) => format!("{}?{rest}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditional::Conditions;

    fn rewritten(method: Method, uri: &str, accept: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(accept) = accept {
            builder = builder.header(ACCEPT, accept);
        }
        let mut request = builder
            .header("authorization", "Bearer t")
            .header(RANGE, "bytes=0-1")
            .header(RANGE, "bytes=2-3")
            .header(IF_RANGE, "\"a\"")
            .body(())
            .unwrap();
        let names_a_range = Conditions::from_request(request.headers(), false).names_a_range();
        rewrite_request(&mut request, &Config::default(), names_a_range);
        request
    }

    #[test]
    fn inner_is_asked_for_fhir_json_without_format() {
        let request = rewritten(
            Method::GET,
            "http://h/fhir/Binary/1?a=1&_format=xml&b=%20x",
            Some("application/fhir+xml"),
        );
        assert_eq!(request.uri(), "http://h/fhir/Binary/1?a=1&b=%20x");
        assert_eq!(request.headers()[ACCEPT], "application/fhir+json");
        assert_eq!(request.headers().get_all(ACCEPT).iter().count(), 1);
        assert_eq!(request.headers()["authorization"], "Bearer t");
        // Two Range lines are no usable range, but neither may reach the inner service.
        assert!(request.headers().get(RANGE).is_none());
        assert!(request.headers().get(IF_RANGE).is_none());
        assert_eq!(request.method(), Method::GET);
    }

    #[test]
    fn head_goes_on_as_get_and_a_lone_format_leaves_no_question_mark() {
        let request = rewritten(Method::HEAD, "/Binary/1?_format=json", None);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/Binary/1");
    }

    #[test]
    fn query_without_format_is_kept_as_is() {
        let request = rewritten(Method::GET, "/Binary/1?x=%2B&y", None);
        assert_eq!(request.uri(), "/Binary/1?x=%2B&y");
    }

    #[test]
    fn dstu2_asks_with_the_dstu2_spelling() {
        let mut request = Request::get("/Binary/1").body(()).unwrap();
        let config = Config {
            fhir_version: crate::FhirVersion::Dstu2,
            ..Config::default()
        };
        rewrite_request(&mut request, &config, false);
        assert_eq!(request.headers()[ACCEPT], "application/json+fhir");
    }
}
