//! The response future of the negotiated service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::NegotiatedBody;
use crate::error::BoxError;
use crate::extension::Negotiation;
use crate::outcome::Outcome;
use crate::request_body::UploadWatch;
use crate::respond::{self, BinaryReading, Negotiated, Next, ResourceReading};

pin_project! {
    /// The response future of [`BinaryNegotiation`](crate::BinaryNegotiation): `F` is the inner
    /// service's future, `B` the body of its responses.
    ///
    /// For a Binary it resolves once the inner body has shown enough to decide the
    /// representation (usually at the first byte of the payload); the rest streams through
    /// the [`NegotiatedBody`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        NotNegotiated {
            #[pin]
            future: F,
        },
        Negotiated {
            #[pin]
            future: F,
            negotiated: Option<Negotiated>,
        },
        // A raw upload or FHIR XML: answered with 413 if it grew past the limit while
        // streaming, with 400 if its XML was not FHIR.
        Upload {
            #[pin]
            future: F,
            negotiated: Option<Negotiated>,
            watch: UploadWatch,
        },
        Reading {
            reading: BinaryReading<B>,
        },
        ReadingResource {
            reading: ResourceReading<B>,
        },
        Ready {
            response: Option<Response<NegotiatedBody<B>>>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// A request the layer does not negotiate.
    pub(crate) fn not_negotiated(future: F) -> Self {
        ResponseFuture {
            state: State::NotNegotiated { future },
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

    /// A raw upload, sent on to the inner service as Binary JSON.
    pub(crate) fn upload(future: F, negotiated: Negotiated, watch: UploadWatch) -> Self {
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

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::NotNegotiated { .. } => "NotNegotiated",
            State::Negotiated { .. } => "Negotiated",
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

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<NegotiatedBody<B>>, E>;

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
