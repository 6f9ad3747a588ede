//! The response path of a negotiated request: from the inner response to the one the client
//! gets. Plain state machines driven by the response future; the Tower types only wire them.

mod binary;
mod resource;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;

use crate::body::NegotiatedBody;
use crate::conditional::Conditions;
use crate::config::Config;
use crate::error::BoxError;
use crate::extension::Negotiation;
use crate::frames::FrameQueue;
use crate::head::{self, InnerHead};
use crate::negotiate::{Decision, Preference, Representation, Spelling};
use crate::outcome::Outcome;
use crate::policy::nosniff;
use crate::xml;

pub(crate) use binary::BinaryReading;
pub(crate) use resource::ResourceReading;

/// What a negotiated request recorded for its response.
#[derive(Clone, Debug)]
pub(crate) struct Negotiated {
    /// Moved into the transcoder of a Binary, its only reader from then on.
    pub(crate) preference: Preference,
    pub(crate) fixed: Option<Decision>,
    /// [`Preference::prefers_xml`], noted at request time for the error outcomes.
    pub(crate) prefers_xml: bool,
    pub(crate) is_head: bool,
    /// The client's `Range`, `If-Range`, `If-None-Match` and `If-Modified-Since`.
    pub(crate) conditions: Conditions,
    pub(crate) config: Config,
}

impl Negotiated {
    /// How the client spelled FHIR XML, when it asked for it at request time.
    fn xml_spelling(&self) -> Spelling {
        match self.fixed {
            Some(Decision::Serve { spelling, .. }) => spelling,
            _ => Spelling::Unspecified,
        }
    }
}

/// Whether the inner response is FHIR JSON the layer may transform.
pub(crate) fn is_transformable(status: StatusCode, inner: &InnerHead) -> bool {
    carries_a_resource(status) && inner.plain_fhir_json
}

/// Whether a response of this status can be a Binary to transform: a success with a body that
/// is the whole resource.
fn carries_a_resource(status: StatusCode) -> bool {
    status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::RESET_CONTENT
        && status != StatusCode::PARTIAL_CONTENT
}

/// Whether a response of this status has a body that can carry a resource (not `1xx`, `204`,
/// `205` or `304`).
fn has_a_body(status: StatusCode) -> bool {
    !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::RESET_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// What to do after the inner response head.
pub(crate) enum Next<B> {
    /// The response is ready.
    Done(Response<NegotiatedBody<B>>),
    /// A Binary to read until its representation's head can be made.
    Binary(BinaryReading<B>),
    /// Another FHIR JSON response (any resource, any status) to render as FHIR XML.
    Resource(ResourceReading<B>),
}

/// Handles the inner response to a negotiated request: done at once, a Binary to read, or
/// another FHIR JSON response to render as XML for a client that asked for XML.
pub(crate) fn on_response<B>(response: Response<B>, negotiated: Negotiated) -> Next<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let inner = InnerHead::of(&parts.headers);
    if !inner.varies_with_accept {
        head::add_vary_accept(&mut parts.headers);
    }
    let json_chosen = matches!(
        negotiated.fixed,
        Some(Decision::Serve {
            representation: Representation::FhirJson,
            ..
        })
    );
    let transformable = is_transformable(parts.status, &inner);
    if !json_chosen && transformable {
        return Next::Binary(BinaryReading::new(parts, inner, body, negotiated));
    }
    let unreadable =
        carries_a_resource(parts.status) || (negotiated.prefers_xml && has_a_body(parts.status));
    if !json_chosen && unreadable && inner.encoded_fhir_json {
        // A compression layer between this layer and the inner service: the Binary cannot be
        // read, and passing it on would give FHIR JSON to a client that asked for the document
        // (or for XML, whatever the status).
        let outcome = Outcome::bad_gateway(
            "the inner service's response is compressed (Content-Encoding), so the Binary in \
             it cannot be read: place the decompression layer inside the Binary negotiation \
             layer, and compression outside it"
                .into(),
        );
        return Next::Done(outcome_response(&outcome, &negotiated));
    }
    if negotiated.prefers_xml && inner.plain_fhir_json && has_a_body(parts.status) {
        // Any other FHIR JSON (an OperationOutcome, a search Bundle) to a client that asked
        // for XML: never JSON.
        return Next::Resource(ResourceReading::new(
            parts,
            inner,
            FrameQueue::default(),
            Some(Box::pin(body)),
            negotiated,
        ));
    }
    nosniff(&mut parts.headers);
    let negotiation = if json_chosen && transformable {
        Negotiation::Served(Representation::FhirJson)
    } else {
        Negotiation::PassedThrough
    };
    parts.extensions.insert(negotiation);
    let body = if negotiated.is_head {
        head::head_length(&mut parts.headers, &inner, body.size_hint().exact());
        NegotiatedBody::head()
    } else {
        NegotiatedBody::inner(body)
    };
    Next::Done(Response::from_parts(parts, body))
}

/// An OperationOutcome response made by the layer, in FHIR XML when the client leans to XML.
pub(crate) fn outcome_response<B>(
    outcome: &Outcome,
    negotiated: &Negotiated,
) -> Response<NegotiatedBody<B>> {
    let version = negotiated.config.fhir_version;
    let (content_type, body) = match render_outcome_xml(&outcome.resource(), negotiated) {
        Some(xml) => (version.xml_content_type(negotiated.xml_spelling()), xml),
        None => (version.json_content_type(), outcome.to_json()),
    };
    let mut response = Response::new(NegotiatedBody::head());
    *response.status_mut() = outcome.status;
    let headers = response.headers_mut();
    // A new head: nothing of an inner one to replace.
    let nothing = InnerHead::default();
    head::replace_body_headers(headers, &nothing, content_type, Some(body.len() as u64));
    head::vary_accept(headers);
    nosniff(headers);
    if !negotiated.is_head {
        *response.body_mut() = NegotiatedBody::full(body);
    }
    let negotiation = match outcome.status {
        StatusCode::NOT_ACCEPTABLE => Negotiation::NotAcceptable,
        status if status.is_client_error() => Negotiation::Refused,
        _ => Negotiation::BadGateway,
    };
    response.extensions_mut().insert(negotiation);
    response
}

/// The response to a request that can only be answered with 406, whatever the inner service
/// would say.
pub(crate) fn not_acceptable<B>(negotiated: &Negotiated) -> Response<NegotiatedBody<B>> {
    let outcome = Outcome::not_acceptable(
        "the requested _format or Accept names no representation this server can produce \
         (FHIR JSON, FHIR XML, or the Binary's own content type)"
            .into(),
    );
    outcome_response(&outcome, negotiated)
}

/// An OperationOutcome as FHIR XML, when the client leans to XML and it renders.
fn render_outcome_xml(resource: &serde_json::Value, negotiated: &Negotiated) -> Option<Bytes> {
    if !negotiated.prefers_xml {
        return None;
    }
    let mut xml = Vec::new();
    xml::operation_outcome(resource, negotiated.config.fhir_version, &mut xml).ok()?;
    Some(Bytes::from(xml))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_ENCODING, CONTENT_TYPE};

    #[test]
    fn only_plain_successful_json_is_transformed() {
        let parts = |status: u16, ct: &str, encoding: Option<&str>| {
            let mut builder = Response::builder().status(status).header(CONTENT_TYPE, ct);
            if let Some(encoding) = encoding {
                builder = builder.header(CONTENT_ENCODING, encoding);
            }
            let parts = builder.body(()).unwrap().into_parts().0;
            (parts.status, InnerHead::of(&parts.headers))
        };
        let is_transformable =
            |(status, inner): (StatusCode, InnerHead)| is_transformable(status, &inner);
        assert!(is_transformable(parts(200, "application/fhir+json", None)));
        assert!(is_transformable(parts(
            200,
            "application/json",
            Some("identity")
        )));
        assert!(!is_transformable(parts(
            200,
            "application/fhir+json",
            Some("gzip")
        )));
        assert!(!is_transformable(parts(404, "application/fhir+json", None)));
        assert!(!is_transformable(parts(204, "application/fhir+json", None)));
        assert!(!is_transformable(parts(304, "application/fhir+json", None)));
        assert!(!is_transformable(parts(200, "application/pdf", None)));
    }
}
