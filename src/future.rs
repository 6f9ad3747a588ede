//! The response future of the negotiated service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::{poll_inner, NegotiatedBody};
use crate::conditional::Conditions;
use crate::error::BoxError;
use crate::frames::FrameQueue;
use crate::head::{self, InnerHead};
use crate::layer::Config;
use crate::negotiate::{Decision, Preference, Representation, Spelling};
use crate::outcome::Outcome;
use crate::xml;

/// Names the body type of the response an inner future resolves to, so that
/// [`ResponseFuture`] needs only the future as type parameter.
pub(crate) mod sealed {
    use std::future::Future;

    /// A future that resolves to an HTTP response or an error.
    pub trait ResponseFutureOf:
        Future<Output = Result<http::Response<Self::Body>, Self::Error>>
    {
        /// The response body.
        type Body;
        /// The error.
        type Error;
    }

    impl<F, B, E> ResponseFutureOf for F
    where
        F: Future<Output = Result<http::Response<B>, E>>,
    {
        type Body = B;
        type Error = E;
    }
}

use sealed::ResponseFutureOf;

mod reading;

use reading::Reading;

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

pin_project! {
    /// The response future of [`BinaryNegotiation`](crate::BinaryNegotiation).
    ///
    /// For a Binary it resolves once the inner body has shown enough to decide the
    /// representation (usually at the first byte of the payload); the rest streams through
    /// the [`NegotiatedBody`].
    pub struct ResponseFuture<F>
    where
        F: ResponseFutureOf,
    {
        #[pin]
        state: State<F, F::Body>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        PassThrough {
            #[pin]
            future: F,
        },
        Negotiated {
            #[pin]
            future: F,
            negotiated: Option<Negotiated>,
        },
        Reading {
            reading: Reading<B>,
        },
        ReadingOutcome {
            reading: ReadingOutcome<B>,
        },
        Ready {
            response: Option<Response<NegotiatedBody<B>>>,
        },
    }
}

impl<F: ResponseFutureOf> ResponseFuture<F> {
    /// A request the layer does not negotiate.
    pub(crate) fn pass_through(future: F) -> Self {
        ResponseFuture {
            state: State::PassThrough { future },
        }
    }

    /// A negotiated request, sent on to the inner service.
    pub(crate) fn negotiated(future: F, negotiated: Negotiated) -> Self {
        ResponseFuture {
            state: State::Negotiated {
                future,
                negotiated: Some(negotiated),
            },
        }
    }

    /// A request that can only be answered with 406, whatever the inner service would say.
    pub(crate) fn not_acceptable(negotiated: Negotiated) -> Self {
        let outcome = Outcome::not_acceptable(
            "the requested _format or Accept names no representation this server can produce \
             (FHIR JSON, FHIR XML, or the Binary's own content type)"
                .into(),
        );
        ResponseFuture {
            state: State::Ready {
                response: Some(outcome_response(&outcome, &negotiated)),
            },
        }
    }
}

impl<F: ResponseFutureOf> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::PassThrough { .. } => "PassThrough",
            State::Negotiated { .. } => "Negotiated",
            State::Reading { .. } => "Reading",
            State::ReadingOutcome { .. } => "ReadingOutcome",
            State::Ready { .. } => "Ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: ResponseFutureOf<Body = B>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<NegotiatedBody<B>>, F::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::PassThrough { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(NegotiatedBody::inner)));
                }
                StateProj::Negotiated { future, negotiated } => {
                    let response = ready!(future.poll(cx))?;
                    let negotiated = negotiated
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match on_response(response, negotiated) {
                        Next::Done(response) => return Poll::Ready(Ok(response)),
                        Next::Binary(mut reading) => {
                            // Usually the body is at hand and the head decided at once: the
                            // reading state is then never stored.
                            if let Poll::Ready(response) = reading.poll(cx) {
                                return Poll::Ready(Ok(response));
                            }
                            State::Reading { reading }
                        }
                        Next::Outcome(reading) => State::ReadingOutcome { reading },
                    }
                }
                StateProj::Reading { reading } => {
                    let response = ready!(reading.poll(cx));
                    return Poll::Ready(Ok(response));
                }
                StateProj::ReadingOutcome { reading } => {
                    let response = ready!(reading.poll(cx));
                    return Poll::Ready(Ok(response));
                }
                StateProj::Ready { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// Whether the inner response is FHIR JSON the layer may transform.
fn is_transformable(status: StatusCode, inner: &InnerHead) -> bool {
    status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::RESET_CONTENT
        && status != StatusCode::PARTIAL_CONTENT
        && inner.plain_fhir_json
}

/// What to do after the inner response head.
enum Next<B> {
    Done(Response<NegotiatedBody<B>>),
    Binary(Reading<B>),
    Outcome(ReadingOutcome<B>),
}

/// Handles the inner response: done at once, a Binary to read, or an error outcome to render
/// as XML.
fn on_response<B>(response: Response<B>, negotiated: Negotiated) -> Next<B>
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
    if !json_chosen && is_transformable(parts.status, &inner) {
        return Next::Binary(Reading::new(parts, inner, body, negotiated));
    }
    if !parts.status.is_success() && negotiated.prefers_xml && inner.plain_fhir_json {
        return Next::Outcome(ReadingOutcome {
            parts: Some(parts),
            inner,
            body: Some(Box::pin(body)),
            collected: Vec::new(),
            negotiated,
        });
    }
    let body = if negotiated.is_head {
        NegotiatedBody::empty()
    } else {
        NegotiatedBody::inner(body)
    };
    Next::Done(Response::from_parts(parts, body))
}

/// Reading an error response of the inner service (an OperationOutcome, usually) to give it
/// in FHIR XML to a client that asked for XML.
struct ReadingOutcome<B> {
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
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<NegotiatedBody<B>>> {
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
        let body = match xml {
            Some(xml) => {
                let version = self.negotiated.config.fhir_version;
                let content_type = version.xml_content_type(self.negotiated.xml_spelling());
                head::replace_body_headers(
                    &mut parts.headers,
                    &self.inner,
                    content_type,
                    Some(xml.len() as u64),
                );
                NegotiatedBody::full(xml)
            }
            None => {
                // Too large (or not rendered): what was read, then the rest, untouched.
                NegotiatedBody::replay(FrameQueue::one(collected), self.body.take())
            }
        };
        let body = if self.negotiated.is_head {
            NegotiatedBody::empty()
        } else {
            body
        };
        Response::from_parts(parts, body)
    }
}

/// An OperationOutcome response made by the layer, in FHIR XML when the client leans to XML.
fn outcome_response<B>(outcome: &Outcome, negotiated: &Negotiated) -> Response<NegotiatedBody<B>> {
    let version = negotiated.config.fhir_version;
    let (content_type, body) = match render_outcome_xml(&outcome.resource(), negotiated) {
        Some(xml) => (version.xml_content_type(negotiated.xml_spelling()), xml),
        None => (version.json_content_type(), outcome.to_json()),
    };
    let mut response = Response::new(NegotiatedBody::empty());
    *response.status_mut() = outcome.status;
    let headers = response.headers_mut();
    // A new head: nothing of an inner one to replace.
    let nothing = InnerHead::default();
    head::replace_body_headers(headers, &nothing, content_type, Some(body.len() as u64));
    head::vary_accept(headers);
    if !negotiated.is_head {
        *response.body_mut() = NegotiatedBody::full(body);
    }
    response
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
