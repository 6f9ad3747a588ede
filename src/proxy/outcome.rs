//! OperationOutcome responses made by the proxy and the demo backend.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde_json::json;

use crate::FhirVersion;

/// The FHIR JSON media type of `version`.
pub(crate) fn json_media_type(version: FhirVersion) -> &'static str {
    match version {
        FhirVersion::Dstu2 => "application/json+fhir",
        _ => "application/fhir+json",
    }
}

/// An OperationOutcome with one error issue, as FHIR JSON text.
pub(crate) fn outcome_json(code: &str, diagnostics: &str) -> Bytes {
    let resource = json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": code,
            "diagnostics": diagnostics,
        }]
    });
    Bytes::from(resource.to_string())
}

/// A response carrying an OperationOutcome, with the body type made by `body`.
pub(crate) fn outcome_response<B>(
    status: StatusCode,
    code: &str,
    diagnostics: &str,
    version: FhirVersion,
    body: impl FnOnce(Bytes) -> B,
) -> Response<B> {
    let json = outcome_json(code, diagnostics);
    let mut response = Response::new(body(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(json_media_type(version)),
    );
    response
}
