//! The OperationOutcomes the layer answers with when it cannot serve the Binary.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

/// An error response the layer makes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The FHIR issue type (`http://hl7.org/fhir/issue-type`).
    pub(crate) code: &'static str,
    /// What went wrong, for a person.
    pub(crate) diagnostics: String,
}

impl Outcome {
    /// 406: no representation the client accepts.
    pub(crate) fn not_acceptable(diagnostics: String) -> Self {
        Outcome {
            status: StatusCode::NOT_ACCEPTABLE,
            code: "not-supported",
            diagnostics,
        }
    }

    /// 502: the inner service did not answer with a valid Binary.
    pub(crate) fn bad_gateway(diagnostics: String) -> Self {
        Outcome {
            status: StatusCode::BAD_GATEWAY,
            code: "exception",
            diagnostics,
        }
    }

    /// The OperationOutcome resource.
    pub(crate) fn resource(&self) -> Value {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": self.code,
                "diagnostics": self.diagnostics,
            }]
        })
    }

    /// The resource as FHIR JSON text.
    pub(crate) fn to_json(&self) -> Bytes {
        Bytes::from(self.resource().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_an_operation_outcome_with_the_text() {
        let outcome = Outcome::bad_gateway("bad \"base64\"".into());
        let value: Value = serde_json::from_slice(&outcome.to_json()).unwrap();
        assert_eq!(value["resourceType"], "OperationOutcome");
        assert_eq!(value["issue"][0]["severity"], "error");
        assert_eq!(value["issue"][0]["code"], "exception");
        assert_eq!(value["issue"][0]["diagnostics"], "bad \"base64\"");
        assert_eq!(outcome.status, StatusCode::BAD_GATEWAY);
    }
}
