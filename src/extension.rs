//! What the layer did with a request, recorded in the extensions of the response.

use crate::negotiate::Representation;

/// What [`BinaryNegotiation`](crate::BinaryNegotiation) did with a request. Every response it
/// returns carries one in its [extensions](http::Response::extensions), so that access logs,
/// metrics and tracing read the decision instead of guessing it from headers:
///
/// ```
/// # use tower_fhir_binary::{Negotiation, Representation};
/// # let response = http::Response::new(());
/// match response.extensions().get::<Negotiation>() {
///     Some(Negotiation::Served(Representation::Native)) => { /* the document itself */ }
///     Some(Negotiation::NotNegotiated) | None => { /* not the layer's business */ }
///     Some(other) => println!("{other:?}"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Negotiation {
    /// The request was not negotiated: it was not selected (see
    /// [`Selector`](crate::Selector)) or its method is not one the layer handles. Request and
    /// response passed untouched.
    NotNegotiated,
    /// The request was negotiated, and the inner response passed on as it came, with
    /// `Vary: Accept`: it was not a FHIR JSON Binary the layer could transform (an
    /// OperationOutcome or a search Bundle to a client that did not ask for XML, a `304`, a
    /// body that is not FHIR JSON), or a Binary without a payload.
    PassedThrough,
    /// The response carries this representation of the inner resource (any resource the
    /// layer rendered as FHIR XML is `Served(FhirXml)`).
    Served(Representation),
    /// The layer answered `406 Not Acceptable` itself: the client accepts no representation
    /// it can produce.
    NotAcceptable,
    /// The layer refused a write itself with a `4xx` and an OperationOutcome (an upload whose
    /// `Content-Type`, id, `X-Security-Context` or size it cannot accept): the inner service
    /// was not called, or its answer was replaced (`413` for an upload that grew past the
    /// limit while streaming).
    Refused,
    /// The layer answered `502 Bad Gateway` itself: the inner response could not be served
    /// as asked (not a valid Binary, a failed or compressed body).
    BadGateway,
}
