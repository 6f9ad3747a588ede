//! The response future of the negotiated service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::NegotiatedBody;
use crate::error::BoxError;
use crate::extension::Negotiation;
use crate::outcome::Outcome;
use crate::request_body::{RequestBody, UploadWatch, XmlReadAhead};
use crate::respond::{self, BinaryReading, Negotiated, Next, ResourceReading};
use crate::write::xml_request;

pin_project! {
    /// The response future of [`BinaryNegotiation`](crate::BinaryNegotiation): `S` is the
    /// inner service, `ReqBody` the body of the requests and `ResBody` that of the inner
    /// service's responses.
    ///
    /// For a Binary it resolves once the inner body has shown enough to decide the
    /// representation (usually at the first byte of the payload); the rest streams through
    /// the [`NegotiatedBody`]. For a request body in FHIR XML it first reads the body ahead,
    /// then calls the inner service it holds (see
    /// [`xml_request_read_ahead`](crate::BinaryNegotiationLayer::xml_request_read_ahead)).
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

/// A call waiting for its FHIR XML body to be read ahead: the inner service, made ready,
/// and the request. Boxed in the future, so that the other requests' futures stay small.
struct PendingCall<S, B> {
    service: S,
    head: Parts,
    body: XmlReadAhead<B>,
    negotiated: Negotiated,
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        NotNegotiated {
            #[pin]
            future: S::Future,
        },
        Negotiated {
            #[pin]
            future: S::Future,
            negotiated: Option<Negotiated>,
        },
        // A FHIR XML body read before the inner service is called.
        ReadingAhead {
            call: Option<Box<PendingCall<S, ReqBody>>>,
        },
        // A raw upload or FHIR XML: answered with 413 if it grew past the limit while
        // streaming, with 400 if its XML was not FHIR.
        Upload {
            #[pin]
            future: S::Future,
            negotiated: Option<Negotiated>,
            watch: UploadWatch,
        },
        Reading {
            reading: BinaryReading<ResBody>,
        },
        ReadingResource {
            reading: ResourceReading<ResBody>,
        },
        Ready {
            response: Option<Response<NegotiatedBody<ResBody>>>,
        },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>>,
{
    /// A request the layer does not negotiate.
    pub(crate) fn not_negotiated(future: S::Future) -> Self {
        ResponseFuture {
            state: State::NotNegotiated { future },
        }
    }

    /// A negotiated request, sent on to the inner service.
    pub(crate) fn negotiated(future: S::Future, negotiated: Negotiated) -> Self {
        ResponseFuture {
            state: State::Negotiated {
                future,
                negotiated: Some(negotiated),
            },
        }
    }

    /// A write whose body is FHIR XML: `service`, made ready, is called once the body has
    /// been read ahead.
    pub(crate) fn read_ahead(
        service: S,
        head: Parts,
        body: XmlReadAhead<ReqBody>,
        negotiated: Negotiated,
    ) -> Self {
        let call = PendingCall {
            service,
            head,
            body,
            negotiated,
        };
        ResponseFuture {
            state: State::ReadingAhead {
                call: Some(Box::new(call)),
            },
        }
    }

    /// A raw upload, sent on to the inner service as Binary JSON.
    pub(crate) fn upload(future: S::Future, negotiated: Negotiated, watch: UploadWatch) -> Self {
        ResponseFuture {
            state: State::Upload {
                future,
                negotiated: Some(negotiated),
                watch,
            },
        }
    }

    /// A write the layer refuses itself; the inner service is not called.
    pub(crate) fn refused(outcome: &Outcome, negotiated: &Negotiated) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(respond::outcome_response(outcome, negotiated)),
            },
        }
    }

    /// A request that can only be answered with 406, whatever the inner service would say.
    pub(crate) fn not_acceptable(negotiated: &Negotiated) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(respond::not_acceptable(negotiated)),
            },
        }
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::NotNegotiated { .. } => "NotNegotiated",
            State::Negotiated { .. } => "Negotiated",
            State::ReadingAhead { .. } => "ReadingAhead",
            State::Upload { .. } => "Upload",
            State::Reading { .. } => "Reading",
            State::ReadingResource { .. } => "ReadingResource",
            State::Ready { .. } => "Ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<NegotiatedBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::NotNegotiated { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    response.extensions_mut().insert(Negotiation::NotNegotiated);
                    return Poll::Ready(Ok(response.map(NegotiatedBody::inner)));
                }
                StateProj::Negotiated { future, negotiated } => {
                    let response = ready!(future.poll(cx))?;
                    let negotiated = negotiated
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match respond::on_response(response, negotiated) {
                        Next::Done(response) => return Poll::Ready(Ok(response)),
                        Next::Binary(mut reading) => {
                            // Usually the body is at hand and the head decided at once: the
                            // reading state is then never stored.
                            if let Poll::Ready(response) = reading.poll(cx) {
                                return Poll::Ready(Ok(response));
                            }
                            State::Reading { reading }
                        }
                        Next::Resource(reading) => State::ReadingResource { reading },
                    }
                }
                StateProj::ReadingAhead { call } => {
                    let pending = call
                        .as_mut()
                        .expect("ResponseFuture polled after completion");
                    let read = ready!(pending.body.poll(cx));
                    let PendingCall {
                        mut service,
                        head,
                        body,
                        negotiated,
                    } = *call.take().expect("ResponseFuture polled after completion");
                    if let Err(outcome) = read {
                        // The inner service is not called: its readiness is given up.
                        return Poll::Ready(Ok(respond::outcome_response(&outcome, &negotiated)));
                    }
                    let (request, watch) = xml_request(head, body);
                    State::Upload {
                        future: service.call(request),
                        negotiated: Some(negotiated),
                        watch,
                    }
                }
                StateProj::Upload {
                    future,
                    negotiated,
                    watch,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let negotiated = negotiated
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let max = negotiated.config.uploads.max_upload_size;
                    if let Some(outcome) = watch.outcome(max) {
                        // Whatever the inner service made of the broken body.
                        return Poll::Ready(Ok(respond::outcome_response(&outcome, &negotiated)));
                    }
                    match respond::on_response(response, negotiated) {
                        Next::Done(response) => return Poll::Ready(Ok(response)),
                        Next::Binary(reading) => State::Reading { reading },
                        Next::Resource(reading) => State::ReadingResource { reading },
                    }
                }
                StateProj::Reading { reading } => {
                    let response = ready!(reading.poll(cx));
                    return Poll::Ready(Ok(response));
                }
                StateProj::ReadingResource { reading } => {
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
