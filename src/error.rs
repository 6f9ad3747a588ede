//! Errors of the response body.

use std::fmt;

use crate::scan::ScanError;

/// The error type of [`NegotiatedBody`](crate::NegotiatedBody): the inner body's own error, or
/// an [`InvalidBinary`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The inner service's body turned out not to be a valid FHIR Binary after the response head
/// had gone out, so the transfer is broken off.
///
/// Before the head goes out the same faults are answered with 502 Bad Gateway and an
/// OperationOutcome instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidBinary {
    message: String,
    offset: u64,
}

impl InvalidBinary {
    /// What was wrong with the body.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The offset, in bytes of the inner body, where the fault was found.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl From<ScanError> for InvalidBinary {
    fn from(e: ScanError) -> Self {
        InvalidBinary {
            message: e.message().to_owned(),
            offset: e.offset(),
        }
    }
}

impl fmt::Display for InvalidBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid FHIR Binary from the inner service: {} (at byte {})",
            self.message, self.offset
        )
    }
}

impl std::error::Error for InvalidBinary {}
