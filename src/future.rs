//! The response future of the negotiated service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, ETAG, LAST_MODIFIED, VARY};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::{poll_inner, NegotiatedBody, Window};
use crate::conditional::{ByteRange, Conditions, Ranges, Validators};
use crate::error::BoxError;
use crate::head;
use crate::layer::Config;
use crate::negotiate::{Decision, Preference, Representation, Spelling};
use crate::outcome::Outcome;
use crate::transcode::{Head, Transcoder};
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

/// What a negotiated request recorded for its response.
#[derive(Clone, Debug)]
pub(crate) struct Negotiated {
    pub(crate) preference: Preference,
    pub(crate) fixed: Option<Decision>,
    pub(crate) is_head: bool,
    /// The client's `Range`, `If-Range`, `If-None-Match` and `If-Modified-Since`.
    pub(crate) conditions: Conditions,
    pub(crate) config: Arc<Config>,
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
                        Next::Binary(reading) => State::Reading { reading },
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
fn is_transformable(parts: &Parts) -> bool {
    let status = parts.status;
    status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::RESET_CONTENT
        && status != StatusCode::PARTIAL_CONTENT
        && is_plain_fhir_json(parts)
}

/// `application/fhir+json`, `application/json+fhir` or `application/json`, any parameters.
fn is_fhir_json(content_type: &str) -> bool {
    let essence = crate::negotiate::essence(content_type);
    [
        "application/fhir+json",
        "application/json+fhir",
        "application/json",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

/// What to do after the inner response head.
enum Next<B> {
    Done(Response<NegotiatedBody<B>>),
    Binary(Reading<B>),
    Outcome(ReadingOutcome<B>),
}

/// Whether the response is FHIR JSON that is not encoded.
fn is_plain_fhir_json(parts: &Parts) -> bool {
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

/// Handles the inner response: done at once, a Binary to read, or an error outcome to render
/// as XML.
fn on_response<B>(response: Response<B>, negotiated: Negotiated) -> Next<B>
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
    if !json_chosen && is_transformable(&parts) {
        // On the heap once: it is large, and moves with the future and then the body.
        let transcoder = Box::new(Transcoder::new(
            negotiated.preference.clone(),
            negotiated.fixed,
            &negotiated.config,
            negotiated.is_head,
        ));
        return Next::Binary(Reading {
            parts: Some(parts),
            body: Some(Box::pin(body)),
            transcoder: Some(transcoder),
            negotiated,
            whole: None,
        });
    }
    if !parts.status.is_success()
        && negotiated.preference.prefers_xml()
        && is_plain_fhir_json(&parts)
    {
        return Next::Outcome(ReadingOutcome {
            parts: Some(parts),
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
                    content_type,
                    Some(xml.len() as u64),
                );
                NegotiatedBody::full(xml)
            }
            None => {
                // Too large (or not rendered): what was read, then the rest, untouched.
                NegotiatedBody::replay(std::iter::once(collected).collect(), self.body.take())
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
    head::replace_body_headers(headers, content_type, Some(body.len() as u64));
    head::vary_accept(headers);
    if !negotiated.is_head {
        *response.body_mut() = NegotiatedBody::full(body);
    }
    response
}

/// An OperationOutcome as FHIR XML, when the client leans to XML and it renders.
fn render_outcome_xml(resource: &serde_json::Value, negotiated: &Negotiated) -> Option<Bytes> {
    if !negotiated.preference.prefers_xml() {
        return None;
    }
    let mut xml = Vec::new();
    xml::operation_outcome(resource, negotiated.config.fhir_version, &mut xml).ok()?;
    Some(Bytes::from(xml))
}

/// Reading a Binary until the response head can be made.
///
/// The inner body is pinned on the heap once, here, because it is polled before the response
/// exists and must then move into it.
struct Reading<B> {
    parts: Option<Parts>,
    body: Option<Pin<Box<B>>>,
    transcoder: Option<Box<Transcoder>>,
    negotiated: Negotiated,
    /// Set when the whole representation is made before the head goes out.
    whole: Option<Box<Whole>>,
}

/// A representation made before the head goes out: whole, or, for a conditional or range
/// request on a streamed document, until enough of it is known.
struct Whole {
    content_type: HeaderValue,
    made: Made,
    /// The output kept so far (none for `HEAD`), starting at byte `offset` of the output.
    frames: Vec<Bytes>,
    offset: u64,
    /// Bytes in `frames`.
    kept: u64,
    /// Output made so far, kept or not.
    length: u64,
    /// When set, the head goes out, with what is known by then, as soon as more than this
    /// many bytes are kept; else the whole inner body is read first.
    cap: Option<u64>,
    /// Set once only the requested range is kept (see [`Reading::overflow`]).
    window: Option<Window>,
    /// The range being served in a window.
    range: Option<(u64, u64)>,
}

/// Which representation the layer makes from the Binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    Native,
    Xml,
}

/// Why [`Reading::step`] stopped.
enum Stop {
    /// The output at hand is made: more input is needed.
    More,
    /// The inner body has ended and the output is complete.
    End,
    /// The Binary is invalid.
    Failed(crate::scan::ScanError),
    /// More than the cap is kept.
    Overflow,
    /// The window has every byte of the range.
    WindowComplete,
}

impl<B> Reading<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<NegotiatedBody<B>>> {
        loop {
            let frame = match self.body.as_mut() {
                Some(body) => ready!(poll_inner(body.as_mut(), cx)),
                None => None,
            };
            let transcoder = self
                .transcoder
                .as_mut()
                .expect("ResponseFuture polled after completion");
            let frame = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Some(data),
                    Err(_) => continue,
                },
                Some(Err(e)) => {
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

    /// Makes the response for a decided head, or returns None to read the representation
    /// whole first.
    fn on_head(&mut self, head: Head) -> Option<Response<NegotiatedBody<B>>> {
        let parts = self.parts.take().expect("head decided once");
        match head {
            Head::PassThrough(held) => {
                let body = match (self.negotiated.is_head, self.body.take()) {
                    (true, _) => NegotiatedBody::empty(),
                    (false, body) => NegotiatedBody::replay(held, body),
                };
                Some(Response::from_parts(parts, body))
            }
            Head::NotAcceptable { content_type } => Some(self.outcome_after(parts, Outcome::not_acceptable(
                format!(
                    "the client accepts neither FHIR JSON, FHIR XML nor this Binary's content type {content_type}"
                ),
            ))),
            Head::Invalid(e) => Some(self.outcome_after(parts, Outcome::bad_gateway(format!(
                "the inner service did not answer with a valid FHIR Binary: {e}"
            )))),
            Head::Native { content_type } => self.serve(parts, content_type, Made::Native),
            Head::Xml { spelling } => {
                let content_type = self.negotiated.config.fhir_version.xml_content_type(spelling);
                self.serve(parts, content_type, Made::Xml)
            }
        }
    }

    /// Streams the representation, or makes it whole first when the inner body is known to be
    /// small, or for `HEAD`, so that the head carries its length; or, for a conditional or
    /// range request whose answer needs more than is known yet, reads on within the
    /// `read_whole_limit` (see the crate docs, "Conditional and range requests").
    fn serve(
        &mut self,
        parts: Parts,
        content_type: HeaderValue,
        made: Made,
    ) -> Option<Response<NegotiatedBody<B>>> {
        let limit = self.negotiated.config.read_whole_limit as u64;
        let known_small = self
            .body
            .as_ref()
            .is_none_or(|body| body.size_hint().exact().is_some_and(|len| len <= limit));
        let conditional = made == Made::Native && parts.status == StatusCode::OK;
        self.parts = Some(parts);
        let cap = if self.negotiated.is_head || known_small {
            Some(None)
        } else if conditional
            && (self.negotiated.conditions.has_range() || self.validators_pending(&content_type))
        {
            Some(Some(limit))
        } else {
            None
        };
        if let Some(cap) = cap {
            self.whole = Some(Box::new(Whole {
                content_type,
                made,
                frames: Vec::new(),
                offset: 0,
                kept: 0,
                length: 0,
                cap,
                window: None,
                range: None,
            }));
            return self.read_whole();
        }
        let body = self.body.take().expect("streaming needs the inner body");
        let transcoder = self.transcoder.take().expect("head decided once");
        let mut parts = self.parts.take().expect("head decided once");
        match made {
            Made::Xml => {
                head::replace_body_headers(&mut parts.headers, content_type, None);
                head::vary_accept(&mut parts.headers);
            }
            Made::Native => {
                set_native_headers(
                    &mut parts.headers,
                    &transcoder,
                    &content_type,
                    None,
                    &self.negotiated,
                );
                let conditions = &self.negotiated.conditions;
                if conditional
                    && !conditions.is_empty()
                    && conditions.not_modified(&Validators::from_headers(&parts.headers))
                {
                    return Some(not_modified(parts));
                }
            }
        }
        Some(Response::from_parts(
            parts,
            NegotiatedBody::transcode(Vec::new(), body, transcoder, None),
        ))
    }

    /// Whether the request's conditions need a validator that is not known yet: neither the
    /// inner service set it nor has `meta` been read.
    fn validators_pending(&self, content_type: &HeaderValue) -> bool {
        let conditions = &self.negotiated.conditions;
        if !conditions.wants_etag() && !conditions.wants_date() {
            return false;
        }
        let (Some(parts), Some(transcoder)) = (self.parts.as_ref(), self.transcoder.as_ref())
        else {
            return false;
        };
        if transcoder.member("meta").is_some() {
            return false;
        }
        let headers = native_headers(
            &parts.headers,
            transcoder,
            content_type,
            None,
            &self.negotiated,
        );
        (conditions.wants_etag() && !headers.contains_key(ETAG))
            || (conditions.wants_date() && !headers.contains_key(LAST_MODIFIED))
    }

    /// Turns the input at hand into output; makes the response once the inner body has ended,
    /// or once enough is known.
    fn read_whole(&mut self) -> Option<Response<NegotiatedBody<B>>> {
        loop {
            match self.step() {
                Stop::More => return None,
                Stop::Failed(e) => {
                    return Some(self.outcome(Outcome::bad_gateway(format!(
                        "the inner service did not answer with a valid FHIR Binary: {e}"
                    ))))
                }
                Stop::End => return self.finish_whole(),
                Stop::WindowComplete => return self.window_complete(),
                Stop::Overflow => {
                    if let Some(response) = self.overflow() {
                        return Some(response);
                    }
                }
            }
        }
    }

    /// Makes output from the input at hand and keeps it, until one of the reasons to stop.
    fn step(&mut self) -> Stop {
        let (Some(transcoder), Some(whole)) = (self.transcoder.as_mut(), self.whole.as_mut())
        else {
            return Stop::More;
        };
        let keep = !self.negotiated.is_head;
        loop {
            let step = if self.body.is_some() {
                transcoder.pull()
            } else {
                transcoder.finish()
            };
            match step {
                Ok(Some(frame)) => {
                    whole.length += frame.len() as u64;
                    let kept = match (keep, whole.window.as_mut()) {
                        (false, _) => None,
                        (true, Some(window)) => window.clip(frame),
                        (true, None) => Some(frame),
                    };
                    if let Some(frame) = kept {
                        whole.kept += frame.len() as u64;
                        whole.frames.push(frame);
                    }
                    if whole.window.as_ref().is_some_and(Window::is_complete) {
                        return Stop::WindowComplete;
                    }
                    // Past the cap while the inner body is still open: stop keeping. Once it
                    // has ended, what is left is already in memory.
                    if self.body.is_some() && whole.cap.is_some_and(|cap| whole.kept > cap) {
                        return Stop::Overflow;
                    }
                }
                Ok(None) if self.body.is_some() => return Stop::More,
                Ok(None) => return Stop::End,
                Err(e) => return Stop::Failed(e),
            }
        }
    }

    /// The inner body has ended: everything is known.
    fn finish_whole(&mut self) -> Option<Response<NegotiatedBody<B>>> {
        let whole = self.whole.take()?;
        let transcoder = self.transcoder.take()?;
        let mut parts = self.parts.take()?;
        let is_head = self.negotiated.is_head;
        if whole.made == Made::Xml {
            head::replace_body_headers(&mut parts.headers, whole.content_type, Some(whole.length));
            head::vary_accept(&mut parts.headers);
            let body = if is_head {
                NegotiatedBody::empty()
            } else {
                NegotiatedBody::full(concat(whole.frames))
            };
            return Some(Response::from_parts(parts, body));
        }
        // A native `HEAD` only counts the decoded bytes; it makes none.
        let total = transcoder.decoded_len();
        set_native_headers(
            &mut parts.headers,
            &transcoder,
            &whole.content_type,
            Some(total),
            &self.negotiated,
        );
        let body = |bytes| {
            if is_head {
                NegotiatedBody::empty()
            } else {
                NegotiatedBody::full(bytes)
            }
        };
        if parts.status != StatusCode::OK {
            return Some(Response::from_parts(parts, body(concat(whole.frames))));
        }
        let conditions = &self.negotiated.conditions;
        let validators = if conditions.is_empty() {
            Validators::default()
        } else {
            Validators::from_headers(&parts.headers)
        };
        if conditions.not_modified(&validators) {
            return Some(not_modified(parts));
        }
        let range = match whole.range {
            Some((first, last)) => Some(Ranges::One(ByteRange::FromTo(first, last))),
            None => conditions.range(&validators),
        };
        let Some(Ranges::One(range)) = range else {
            return Some(Response::from_parts(parts, body(concat(whole.frames))));
        };
        match range.resolve(total) {
            Some((first, last)) => {
                head::partial(&mut parts.headers, first, last, Some(total));
                parts.status = StatusCode::PARTIAL_CONTENT;
                let bytes = slice(whole.frames, first - whole.offset, last - whole.offset);
                Some(Response::from_parts(parts, body(bytes)))
            }
            None => {
                head::unsatisfiable(&mut parts.headers, total);
                parts.status = StatusCode::RANGE_NOT_SATISFIABLE;
                Some(Response::from_parts(parts, NegotiatedBody::empty()))
            }
        }
    }

    /// More than the cap is kept and the inner body goes on: the head goes out with what is
    /// known now. A `bytes=a-b` range whose end lies beyond what was made so far is first
    /// narrowed to a window (returns None: read on); others are answered with the whole
    /// document, as RFC 9110 allows, since their position or `Content-Range` needs the length.
    fn overflow(&mut self) -> Option<Response<NegotiatedBody<B>>> {
        let (whole, transcoder, parts) = (
            self.whole.as_mut()?,
            self.transcoder.as_ref()?,
            self.parts.as_ref()?,
        );
        let headers = native_headers(
            &parts.headers,
            transcoder,
            &whole.content_type,
            None,
            &self.negotiated,
        );
        let validators = Validators::from_headers(&headers);
        let conditions = &self.negotiated.conditions;
        let not = conditions.not_modified(&validators);
        let window = whole.window.is_some();
        let range = if not || window {
            None
        } else {
            conditions.range(&validators)
        };
        if let Some(Ranges::One(ByteRange::FromTo(first, last))) = range {
            if last >= whole.length {
                // Keep only the range, and read on until it is complete.
                let mut window = Window::new(0, first, last);
                whole.frames = std::mem::take(&mut whole.frames)
                    .into_iter()
                    .filter_map(|frame| window.clip(frame))
                    .collect();
                whole.kept = whole.frames.iter().map(|f| f.len() as u64).sum();
                whole.offset = first;
                whole.window = Some(window);
                whole.range = Some((first, last));
                return None;
            }
        }
        let whole = self.whole.take()?;
        let transcoder = self.transcoder.take()?;
        let mut parts = self.parts.take()?;
        parts.headers = headers;
        if not {
            return Some(not_modified(parts));
        }
        let body = self
            .body
            .take()
            .expect("an overflow is only reported while the inner body is open");
        if let (Some(window), Some((first, last))) = (whole.window, whole.range) {
            // The range is larger than the cap: stream the rest of it.
            head::partial(&mut parts.headers, first, last, None);
            parts.status = StatusCode::PARTIAL_CONTENT;
            let body = NegotiatedBody::transcode(whole.frames, body, transcoder, Some(window));
            return Some(Response::from_parts(parts, body));
        }
        if let Some(Ranges::One(ByteRange::FromTo(first, last))) = range {
            // Made already: answer from what is kept and drop the inner body.
            head::partial(&mut parts.headers, first, last, None);
            parts.status = StatusCode::PARTIAL_CONTENT;
            let bytes = slice(whole.frames, first, last);
            return Some(Response::from_parts(parts, NegotiatedBody::full(bytes)));
        }
        let body = NegotiatedBody::transcode(whole.frames, body, transcoder, None);
        Some(Response::from_parts(parts, body))
    }

    /// The window has every byte of the range: answer with it and drop the rest of the inner
    /// body, whose length stays unknown (`Content-Range: bytes a-b/*`).
    fn window_complete(&mut self) -> Option<Response<NegotiatedBody<B>>> {
        let whole = self.whole.take()?;
        let transcoder = self.transcoder.take()?;
        let mut parts = self.parts.take()?;
        self.body = None;
        set_native_headers(
            &mut parts.headers,
            &transcoder,
            &whole.content_type,
            None,
            &self.negotiated,
        );
        if self
            .negotiated
            .conditions
            .not_modified(&Validators::from_headers(&parts.headers))
        {
            return Some(not_modified(parts));
        }
        let (first, last) = whole.range?;
        head::partial(&mut parts.headers, first, last, None);
        parts.status = StatusCode::PARTIAL_CONTENT;
        Some(Response::from_parts(
            parts,
            NegotiatedBody::full(concat(whole.frames)),
        ))
    }

    /// [`Self::outcome`] once the head has been taken out.
    fn outcome_after(&mut self, parts: Parts, outcome: Outcome) -> Response<NegotiatedBody<B>> {
        self.parts = Some(parts);
        self.outcome(outcome)
    }

    /// An OperationOutcome in place of the Binary; it varies with what the inner response
    /// varied with, and with `Accept`.
    fn outcome(&mut self, outcome: Outcome) -> Response<NegotiatedBody<B>> {
        self.body = None;
        self.transcoder = None;
        let mut response = outcome_response(&outcome, &self.negotiated);
        if let Some(parts) = self.parts.take() {
            let headers = response.headers_mut();
            headers.remove(VARY);
            for value in parts.headers.get_all(VARY) {
                headers.append(VARY, value.clone());
            }
            head::vary_accept(headers);
        }
        response
    }
}

/// The head of the raw document, made from the inner head and what the Binary has shown.
fn native_headers(
    inner: &http::HeaderMap,
    transcoder: &Transcoder,
    content_type: &HeaderValue,
    length: Option<u64>,
    negotiated: &Negotiated,
) -> http::HeaderMap {
    let mut headers = inner.clone();
    set_native_headers(&mut headers, transcoder, content_type, length, negotiated);
    headers
}

/// Turns the inner head into that of the raw document, in place (see [`native_headers`]).
fn set_native_headers(
    headers: &mut http::HeaderMap,
    transcoder: &Transcoder,
    content_type: &HeaderValue,
    length: Option<u64>,
    negotiated: &Negotiated,
) {
    head::native(
        headers,
        content_type.clone(),
        length,
        &transcoder.metadata(),
        negotiated.config.security_policy,
    );
}

/// 304 Not Modified with the head of the document it stands for.
fn not_modified<B>(mut parts: Parts) -> Response<NegotiatedBody<B>> {
    head::not_modified(&mut parts.headers);
    parts.status = StatusCode::NOT_MODIFIED;
    Response::from_parts(parts, NegotiatedBody::empty())
}

/// Bytes `first..=last` of the frames (clamped to what they hold).
fn slice(frames: Vec<Bytes>, first: u64, last: u64) -> Bytes {
    let bytes = concat(frames);
    let len = bytes.len() as u64;
    let end = last.saturating_add(1).min(len);
    bytes.slice(first.min(end) as usize..end as usize)
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
