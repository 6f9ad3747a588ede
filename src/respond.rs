//! The response path of a negotiated request: from the inner response to the one the client
//! gets. Plain state machines driven by the response future; the Tower types only wire them.

mod binary;

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;

use crate::body::{poll_inner, NegotiatedBody};
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

/// What to do after the inner response head.
pub(crate) enum Next<B> {
    /// The response is ready.
    Done(Response<NegotiatedBody<B>>),
    /// A Binary to read until its representation's head can be made.
    Binary(BinaryReading<B>),
    /// An error response to read and render as FHIR XML.
    Outcome(ReadingOutcome<B>),
}

/// Handles the inner response to a negotiated request: done at once, a Binary to read, or an
/// error outcome to render as XML.
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
    if !json_chosen && carries_a_resource(parts.status) && inner.encoded_fhir_json {
        // A compression layer between this layer and the inner service: the Binary cannot be
        // read, and passing it on would give FHIR JSON to a client that asked for the document.
        let outcome = Outcome::bad_gateway(
            "the inner service's response is compressed (Content-Encoding), so the Binary in \
             it cannot be read: place the decompression layer inside the Binary negotiation \
             layer, and compression outside it"
                .into(),
        );
        return Next::Done(outcome_response(&outcome, &negotiated));
    }
    nosniff(&mut parts.headers);
    if !parts.status.is_success() && negotiated.prefers_xml && inner.plain_fhir_json {
        return Next::Outcome(ReadingOutcome {
            parts: Some(parts),
            inner,
            body: Some(Box::pin(body)),
            collected: Vec::new(),
            negotiated,
        });
    }
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

/// Reading an error response of the inner service (an OperationOutcome, usually) to give it
/// in FHIR XML to a client that asked for XML.
pub(crate) struct ReadingOutcome<B> {
    parts: Option<Parts>,
    /// What `parts` said as the inner service sent them.
    inner: InnerHead,
    body: Option<Pin<Box<B>>>,
    collected: Vec<u8>,
    negotiated: Negotiated,
}

impl<B> ReadingOutcome<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<NegotiatedBody<B>>> {
        let limit = self.negotiated.config.reorder_buffer_limit;
        loop {
            let frame = match self.body.as_mut() {
                Some(body) => ready!(poll_inner(body.as_mut(), cx)),
                None => None,
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.collected.extend_from_slice(&data);
                        if self.collected.len() > limit {
                            return Poll::Ready(self.respond(None));
                        }
                    }
                }
                Some(Err(e)) => {
                    let outcome = Outcome::bad_gateway(format!(
                        "the inner service's response body failed: {e}"
                    ));
                    return Poll::Ready(outcome_response(&outcome, &self.negotiated));
                }
                None => {
                    self.body = None;
                    let xml = serde_json::from_slice::<serde_json::Value>(&self.collected)
                        .ok()
                        .filter(|v| v["resourceType"] == "OperationOutcome")
                        .and_then(|v| render_outcome_xml(&v, &self.negotiated));
                    return Poll::Ready(self.respond(xml));
                }
            }
        }
    }

    /// The outcome in XML, or, when it is none (too large, not an OperationOutcome, does not
    /// render), the inner response as it came.
    fn respond(&mut self, xml: Option<Bytes>) -> Response<NegotiatedBody<B>> {
        let mut parts = self
            .parts
            .take()
            .expect("ResponseFuture polled after completion");
        let collected = Bytes::from(std::mem::take(&mut self.collected));
        let (negotiation, body) = match xml {
            Some(xml) => {
                let version = self.negotiated.config.fhir_version;
                let content_type = version.xml_content_type(self.negotiated.xml_spelling());
                head::replace_body_headers(
                    &mut parts.headers,
                    &self.inner,
                    content_type,
                    Some(xml.len() as u64),
                );
                let body = match self.negotiated.is_head {
                    true => NegotiatedBody::head(),
                    false => NegotiatedBody::full(xml),
                };
                (Negotiation::Served(Representation::FhirXml), body)
            }
            // Too large (or not rendered): what was read, then the rest, untouched.
            None if self.negotiated.is_head => {
                let rest = self
                    .body
                    .as_ref()
                    .map_or(Some(0), |b| b.size_hint().exact());
                let length = rest.map(|rest| rest + collected.len() as u64);
                head::head_length(&mut parts.headers, &self.inner, length);
                (Negotiation::PassedThrough, NegotiatedBody::head())
            }
            None => (
                Negotiation::PassedThrough,
                NegotiatedBody::replay(FrameQueue::one(collected), self.body.take()),
            ),
        };
        parts.extensions.insert(negotiation);
        Response::from_parts(parts, body)
    }
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
