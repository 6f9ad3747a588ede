//! The response future of the negotiated service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::NegotiatedBody;
use crate::error::BoxError;
use crate::head;
use crate::layer::Config;
use crate::negotiate::{Decision, Preference, Representation};
use crate::outcome::Outcome;
use crate::transcode::{Head, TranscodeOptions, Transcoder};

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

/// What a negotiated request recorded for its response.
#[derive(Clone, Debug)]
pub(crate) struct Negotiated {
    pub(crate) preference: Preference,
    pub(crate) fixed: Option<Decision>,
    pub(crate) is_head: bool,
    pub(crate) config: Arc<Config>,
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
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(reading) => State::Reading { reading },
                    }
                }
                StateProj::Reading { reading } => {
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
fn is_transformable(parts: &Parts) -> bool {
    let status = parts.status;
    if !status.is_success()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::RESET_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
    {
        return false;
    }
    let identity = parts.headers.get_all(CONTENT_ENCODING).iter().all(|v| {
        v.to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"))
    });
    identity
        && parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_fhir_json)
}

/// `application/fhir+json`, `application/json+fhir` or `application/json`, any parameters.
fn is_fhir_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    [
        "application/fhir+json",
        "application/json+fhir",
        "application/json",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

/// Handles the inner response: done at once, or a Binary to read.
fn on_response<B>(
    response: Response<B>,
    negotiated: Negotiated,
) -> Result<Response<NegotiatedBody<B>>, Reading<B>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    head::vary_accept(&mut parts.headers);
    let json_chosen = matches!(
        negotiated.fixed,
        Some(Decision::Serve {
            representation: Representation::FhirJson,
            ..
        })
    );
    if json_chosen || !is_transformable(&parts) {
        let body = if negotiated.is_head {
            NegotiatedBody::empty()
        } else {
            NegotiatedBody::inner(body)
        };
        return Ok(Response::from_parts(parts, body));
    }
    let config = &negotiated.config;
    let transcoder = Transcoder::new(
        negotiated.preference.clone(),
        TranscodeOptions {
            limits: config.limits,
            reorder_limit: config.reorder_buffer_limit,
            frame_size: config.frame_size,
            native_when_not_acceptable: config.native_when_not_acceptable,
            count_only: negotiated.is_head,
        },
    );
    Err(Reading {
        parts: Some(parts),
        body: Some(Box::pin(body)),
        transcoder: Some(transcoder),
        negotiated,
        whole: None,
    })
}

/// An OperationOutcome response made by the layer.
fn outcome_response<B>(outcome: &Outcome, negotiated: &Negotiated) -> Response<NegotiatedBody<B>> {
    let json = outcome.to_json();
    let mut response = Response::new(if negotiated.is_head {
        NegotiatedBody::empty()
    } else {
        NegotiatedBody::full(json.clone())
    });
    *response.status_mut() = outcome.status;
    let content_type = HeaderValue::from_static(negotiated.config.fhir_version.json_media_type());
    let headers = response.headers_mut();
    head::replace_body_headers(headers, content_type, Some(json.len() as u64));
    head::vary_accept(headers);
    response
}

/// Reading a Binary until the response head can be made.
///
/// The inner body is pinned on the heap once, here, because it is polled before the response
/// exists and must then move into it.
struct Reading<B> {
    parts: Option<Parts>,
    body: Option<Pin<Box<B>>>,
    transcoder: Option<Transcoder>,
    negotiated: Negotiated,
    /// Set when the whole document is read before the head goes out: its content type and
    /// the output so far.
    whole: Option<(HeaderValue, Vec<Bytes>)>,
}

impl<B> Reading<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<NegotiatedBody<B>>> {
        loop {
            let frame = match self.body.as_mut() {
                Some(body) => ready!(body.as_mut().poll_frame(cx)),
                None => None,
            };
            let transcoder = self
                .transcoder
                .as_mut()
                .expect("ResponseFuture polled after completion");
            let frame = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => Some(data.copy_to_bytes(data.remaining())),
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    return Poll::Ready(self.outcome(Outcome::bad_gateway(format!(
                        "the inner service's response body failed: {e}"
                    ))));
                }
                None => {
                    self.body = None;
                    None
                }
            };
            if self.whole.is_none() {
                let head = match frame {
                    Some(data) => match transcoder.push_head(data) {
                        Some(head) => head,
                        None => continue,
                    },
                    None => transcoder.end_head(),
                };
                if let Some(response) = self.on_head(head) {
                    return Poll::Ready(response);
                }
                continue;
            }
            if let Some(data) = frame {
                transcoder.push(data);
            }
            if let Some(response) = self.read_whole() {
                return Poll::Ready(response);
            }
        }
    }

    /// Makes the response for a decided head, or returns None to read the document whole
    /// first.
    fn on_head(&mut self, head: Head) -> Option<Response<NegotiatedBody<B>>> {
        let mut parts = self.parts.take().expect("head decided once");
        let is_head = self.negotiated.is_head;
        match head {
            Head::PassThrough(held) => {
                let body = match (is_head, self.body.take()) {
                    (true, _) => NegotiatedBody::empty(),
                    (false, body) => NegotiatedBody::replay(held, body),
                };
                Some(Response::from_parts(parts, body))
            }
            Head::NotAcceptable { content_type } => Some(self.outcome(Outcome::not_acceptable(
                format!(
                    "the client accepts neither FHIR JSON, FHIR XML nor this Binary's content type {content_type}"
                ),
            ))),
            Head::Invalid(e) => Some(self.outcome(Outcome::bad_gateway(format!(
                "the inner service did not answer with a valid FHIR Binary: {e}"
            )))),
            Head::Xml { .. } => Some(self.outcome(Outcome::bad_gateway(
                "FHIR XML rendering is not available".into(),
            ))),
            Head::Native { content_type } => {
                let known_small = self.body.as_ref().is_none_or(|body| {
                    body.size_hint()
                        .exact()
                        .is_some_and(|len| len <= self.negotiated.config.read_whole_limit as u64)
                });
                if is_head || known_small {
                    self.parts = Some(parts);
                    self.whole = Some((content_type, Vec::new()));
                    return self.read_whole();
                }
                head::native(&mut parts.headers, content_type, None);
                let body = self.body.take().expect("streaming needs the inner body");
                let transcoder = self.transcoder.take().expect("head decided once");
                Some(Response::from_parts(
                    parts,
                    NegotiatedBody::transcode(body, transcoder),
                ))
            }
        }
    }

    /// Turns the input at hand into output; once the inner body has ended, makes the response.
    fn read_whole(&mut self) -> Option<Response<NegotiatedBody<B>>> {
        let transcoder = self.transcoder.as_mut()?;
        let (_, frames) = self.whole.as_mut()?;
        let result = loop {
            let step = if self.body.is_some() {
                transcoder.pull()
            } else {
                transcoder.finish()
            };
            match step {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) if self.body.is_some() => return None,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            return Some(self.outcome(Outcome::bad_gateway(format!(
                "the inner service did not answer with a valid FHIR Binary: {e}"
            ))));
        }
        let length = transcoder.decoded_len();
        let (content_type, frames) = self.whole.take()?;
        let mut parts = self.parts.take()?;
        head::native(&mut parts.headers, content_type, Some(length));
        let body = if self.negotiated.is_head {
            NegotiatedBody::empty()
        } else {
            NegotiatedBody::full(concat(frames))
        };
        Some(Response::from_parts(parts, body))
    }

    fn outcome(&mut self, outcome: Outcome) -> Response<NegotiatedBody<B>> {
        self.body = None;
        self.transcoder = None;
        outcome_response(&outcome, &self.negotiated)
    }
}

/// One buffer from several; no copy for one.
fn concat(mut frames: Vec<Bytes>) -> Bytes {
    match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => Bytes::from(frames.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_json_media_types() {
        assert!(is_fhir_json("application/fhir+json"));
        assert!(is_fhir_json(
            "application/fhir+json; charset=UTF-8; fhirVersion=4.0"
        ));
        assert!(is_fhir_json("Application/JSON+FHIR"));
        assert!(is_fhir_json("application/json"));
        assert!(!is_fhir_json("application/fhir+xml"));
        assert!(!is_fhir_json("application/grpc"));
        assert!(!is_fhir_json("text/json"));
    }

    #[test]
    fn only_plain_successful_json_is_transformed() {
        let parts = |status: u16, ct: &str, encoding: Option<&str>| {
            let mut builder = Response::builder().status(status).header(CONTENT_TYPE, ct);
            if let Some(encoding) = encoding {
                builder = builder.header(CONTENT_ENCODING, encoding);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(is_transformable(&parts(200, "application/fhir+json", None)));
        assert!(is_transformable(&parts(
            200,
            "application/json",
            Some("identity")
        )));
        assert!(!is_transformable(&parts(
            200,
            "application/fhir+json",
            Some("gzip")
        )));
        assert!(!is_transformable(&parts(
            404,
            "application/fhir+json",
            None
        )));
        assert!(!is_transformable(&parts(
            204,
            "application/fhir+json",
            None
        )));
        assert!(!is_transformable(&parts(
            304,
            "application/fhir+json",
            None
        )));
        assert!(!is_transformable(&parts(200, "application/pdf", None)));
    }
}
