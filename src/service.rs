//! The middleware service.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::NegotiatedBody;
use crate::conditional::Conditions;
use crate::config::{option_methods, Config};
use crate::error::BoxError;
use crate::future::ResponseFuture;
use crate::negotiate::{Decision, Preference, Representation, Spelling};
use crate::request::rewrite_request;
use crate::request_body::RequestBody;
use crate::respond::Negotiated;
use crate::select::{AllRequests, BinaryEndpoint, Selector};
use crate::write::{prepare, Prepared};

/// Middleware that serves FHIR Binary resources natively, as FHIR JSON or as FHIR XML, in front
/// of a service that answers with Binary JSON. Made by
/// [`BinaryNegotiationLayer`](crate::BinaryNegotiationLayer), or with [`new`](Self::new) and
/// the same option methods.
///
/// As a [`Service`] it needs an inner service that is `Clone`: a request whose body is FHIR
/// XML is read ahead before the inner service is called (see
/// [`xml_request_read_ahead`](Self::xml_request_read_ahead)), so the response future calls
/// it later. As tower's middleware do for this, `call` moves the service `poll_ready` made
/// ready into the future and keeps a clone for the next request (which `poll_ready` then
/// makes ready in its turn); other requests call the inner service at once, without a clone.
/// For the same reason the request body must be an [`http_body::Body`] of [`Bytes`], as
/// hyper's, axum's and `http-body-util`'s are (`Empty<Bytes>` where a test would use `()`).
#[derive(Clone, Debug)]
pub struct BinaryNegotiation<S, P = BinaryEndpoint> {
    inner: S,
    config: Config,
    selector: P,
}

impl<S> BinaryNegotiation<S> {
    /// Wraps `inner` with the default options: the requests to the Binary endpoint are
    /// negotiated ([`BinaryEndpoint`]).
    pub fn new(inner: S) -> Self {
        Self::from_parts(inner, Config::default(), BinaryEndpoint)
    }
}

impl<S, P> BinaryNegotiation<S, P> {
    pub(crate) fn from_parts(inner: S, config: Config, selector: P) -> Self {
        BinaryNegotiation {
            inner,
            config,
            selector,
        }
    }

    /// Negotiates the requests `selector` selects (see
    /// [`BinaryNegotiationLayer::select`](crate::BinaryNegotiationLayer::select)).
    pub fn select<Q: Selector>(self, selector: Q) -> BinaryNegotiation<S, Q> {
        BinaryNegotiation::from_parts(self.inner, self.config, selector)
    }

    /// Negotiates every `GET` and `HEAD` request, whatever its path ([`AllRequests`]).
    pub fn select_all(self) -> BinaryNegotiation<S, AllRequests> {
        self.select(AllRequests)
    }

    option_methods!();

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, taking it out of the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for BinaryNegotiation<S, P>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    P: Selector,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<NegotiatedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let is_head = request.method() == Method::HEAD;
        let is_read = is_head || request.method() == Method::GET;
        let is_write = request.method() == Method::POST || request.method() == Method::PUT;
        if !(is_read || is_write) || !self.selector.select(&request) {
            return ResponseFuture::not_negotiated(
                self.inner.call(request.map(RequestBody::untouched)),
            );
        }
        if is_write {
            return self.write(request);
        }
        let preference = Preference::from_request(
            request.uri().query(),
            request.headers(),
            self.config.fhir_version.media_type_parameter(),
        );
        let negotiated = Negotiated {
            fixed: preference.fixed(),
            prefers_xml: preference.prefers_xml(),
            preference,
            is_head,
            // Kept for the raw document: `Range` and `If-Range` do not go on to the inner
            // service, the others go on as well.
            conditions: Conditions::from_request(request.headers(), is_head),
            config: self.config,
        };
        if negotiated.fixed == Some(Decision::NotAcceptable)
            && (!negotiated.config.native_when_not_acceptable || negotiated.preference.is_format())
        {
            return ResponseFuture::not_acceptable(&negotiated);
        }
        rewrite_request(
            &mut request,
            &self.config,
            negotiated.conditions.names_a_range(),
        );
        ResponseFuture::negotiated(
            self.inner.call(request.map(RequestBody::untouched)),
            negotiated,
        )
    }
}

impl<S, P> BinaryNegotiation<S, P> {
    /// A `POST` or `PUT` to the Binary endpoint: a raw document goes on as Binary JSON, FHIR
    /// XML as FHIR JSON once read ahead (see [`prepare`]), and the answer comes back as FHIR,
    /// never as a document: FHIR XML when the client asked for XML, else the inner service's
    /// FHIR JSON untouched.
    fn write<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    {
        let preference = Preference::from_request(
            request.uri().query(),
            request.headers(),
            self.config.fhir_version.media_type_parameter(),
        );
        let prefers_xml = preference.prefers_xml();
        let (representation, spelling) = match prefers_xml {
            false => (Representation::FhirJson, Spelling::Unspecified),
            // The spelling the client used for FHIR XML, if it named one.
            true => match preference.resolve("") {
                Decision::Serve { spelling, .. } => (Representation::FhirXml, spelling),
                Decision::NotAcceptable => (Representation::FhirXml, Spelling::Unspecified),
            },
        };
        let unknown_format =
            preference.is_format() && preference.fixed() == Some(Decision::NotAcceptable);
        let negotiated = Negotiated {
            fixed: Some(Decision::Serve {
                representation,
                spelling,
            }),
            prefers_xml,
            preference,
            is_head: false,
            // The conditions of a write (`If-Match`, `If-None-Match`) are the inner service's.
            conditions: Conditions::default(),
            config: self.config,
        };
        if unknown_format {
            return ResponseFuture::not_acceptable(&negotiated);
        }
        match prepare(request, &self.config) {
            Err(outcome) => ResponseFuture::refused(&outcome, &negotiated),
            Ok(Prepared::Ready {
                request,
                watch: Some(watch),
            }) => ResponseFuture::upload(self.inner.call(request), negotiated, watch),
            Ok(Prepared::Ready {
                request,
                watch: None,
            }) => ResponseFuture::negotiated(self.inner.call(request), negotiated),
            Ok(Prepared::ReadAhead { head, body }) => {
                // The service made ready goes into the future; its clone stays for the next.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::read_ahead(ready, head, body, negotiated)
            }
        }
    }
}
