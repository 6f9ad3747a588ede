//! OperationOutcome responses made by the proxy and the demo backend.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};

use crate::outcome::Outcome;
use crate::FhirVersion;

/// A response carrying an OperationOutcome with one error issue, as FHIR JSON, with the body
/// type made by `body`.
pub(crate) fn outcome_response<B>(
    status: StatusCode,
    code: &'static str,
    diagnostics: &str,
    version: FhirVersion,
    body: impl FnOnce(Bytes) -> B,
) -> Response<B> {
    let outcome = Outcome {
        status,
        code,
        diagnostics: diagnostics.to_owned(),
    };
    let mut response = Response::new(body(outcome.to_json()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, version.json_content_type());
    response
}
