//! BinaryReading a Binary: the state machine between the inner response head and the response
//! head of the chosen representation (read whole, streamed, or kept until a range or a
//! condition can be answered).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ETAG, LAST_MODIFIED, VARY};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;

use super::{outcome_response, Negotiated, ResourceReading};
use crate::body::{poll_inner, NegotiatedBody, Window};
use crate::conditional::{ByteRange, Ranges, Validators};
use crate::error::BoxError;
use crate::extension::Negotiation;
use crate::head::{self, InnerHead};
use crate::negotiate::Representation;
use crate::outcome::Outcome;
use crate::policy::nosniff;
use crate::transcode::{Head, Transcoder};

/// BinaryReading a Binary until the response head can be made.
///
/// The inner body is pinned on the heap once, here, because it is polled before the response
/// exists and must then move into it.
pub(crate) struct BinaryReading<B> {
    parts: Option<Parts>,
    /// What `parts` said as the inner service sent them.
    inner: InnerHead,
    body: Option<Pin<Box<B>>>,
    transcoder: Option<Box<Transcoder>>,
    negotiated: Negotiated,
    /// Set when the whole representation is made before the head goes out.
    whole: Option<Box<Whole>>,
    /// The representation being made, once decided.
    made: Option<Made>,
    /// Set when the response is another resource to render as FHIR XML.
    resource: Option<Box<ResourceReading<B>>>,
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
    /// Set once only the requested range is kept (see [`BinaryReading::overflow`]).
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

/// Why [`BinaryReading::step`] stopped.
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

impl<B> BinaryReading<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Starts reading the Binary in `body`, the inner response of a negotiated request.
    pub(crate) fn new(parts: Parts, inner: InnerHead, body: B, mut negotiated: Negotiated) -> Self {
        // Moved rather than copied: a browser's Accept list is a dozen small allocations.
        let preference = std::mem::take(&mut negotiated.preference);
        // On the heap once: it is large, and moves with the future and then the body.
        // Allocated first and then written, so that it is built where it stays rather than
        // built and copied in.
        let mut transcoder = Box::write(
            Box::new_uninit(),
            Transcoder::new(
                preference,
                negotiated.fixed,
                &negotiated.config,
                negotiated.is_head,
            ),
        );
        // A body known to be small is read whole before the head (see `serve`): FHIR XML may
        // hold all of it to put the elements in order.
        if let Some(length) = body.size_hint().exact() {
            if length <= negotiated.config.read_whole_limit as u64 {
                transcoder.read_whole(length);
            }
        }
        BinaryReading {
            parts: Some(parts),
            inner,
            body: Some(Box::pin(body)),
            transcoder: Some(transcoder),
            negotiated,
            whole: None,
            made: None,
            resource: None,
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<NegotiatedBody<B>>> {
        loop {
            if let Some(resource) = self.resource.as_mut() {
                return resource.poll(cx);
            }
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
                    return Poll::Ready(self.tagged(response));
                }
                continue;
            }
            if let Some(data) = frame {
                transcoder.push(data);
            }
            if let Some(response) = self.read_whole() {
                return Poll::Ready(self.tagged(response));
            }
        }
    }

    /// `response` with what the layer did in its extensions: the layer's own outcomes carry
    /// it already; the others carry the representation chosen, if any.
    fn tagged(&self, mut response: Response<NegotiatedBody<B>>) -> Response<NegotiatedBody<B>> {
        let negotiation = match self.made {
            Some(Made::Native) => Negotiation::Served(Representation::Native),
            Some(Made::Xml) => Negotiation::Served(Representation::FhirXml),
            None => Negotiation::PassedThrough,
        };
        response.extensions_mut().get_or_insert(negotiation);
        response
    }

    /// Makes the response for a decided head, or returns None to read the representation
    /// whole first.
    fn on_head(&mut self, head: Head) -> Option<Response<NegotiatedBody<B>>> {
        let parts = self.parts.take().expect("head decided once");
        match head {
            Head::PassThrough(held) if self.negotiated.prefers_xml => {
                // Not a Binary (or not FHIR at all), to a client that asked for XML.
                self.resource = Some(Box::new(ResourceReading::new(
                    parts,
                    self.inner,
                    held,
                    self.body.take(),
                    self.negotiated.clone(),
                )));
                None
            }
            Head::PassThrough(held) => {
                let mut parts = parts;
                nosniff(&mut parts.headers);
                let body = match (self.negotiated.is_head, self.body.take()) {
                    (true, rest) => {
                        let rest = rest.map_or(Some(0), |rest| rest.size_hint().exact());
                        let length = rest.map(|rest| rest + held.byte_len());
                        head::head_length(&mut parts.headers, &self.inner, length);
                        NegotiatedBody::head()
                    }
                    (false, body) => NegotiatedBody::replay(held, body),
                };
                Some(Response::from_parts(parts, body))
            }
            Head::NotAcceptable { content_type } => Some(self.outcome_after(parts, Outcome::not_acceptable(
                format!(
                    "the client accepts neither FHIR JSON, FHIR XML nor this Binary's content type {content_type}"
                ),
            ))),
            Head::NotAcceptableResource => Some(self.outcome_after(parts, Outcome::not_acceptable(
                "the client accepts neither FHIR JSON nor FHIR XML, the only representations of \
                 this resource"
                    .into(),
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
        self.made = Some(made);
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
                head::replace_body_headers(&mut parts.headers, &self.inner, content_type, None);
                nosniff(&mut parts.headers);
            }
            Made::Native => {
                set_native_headers(
                    &mut parts.headers,
                    &self.inner,
                    &transcoder,
                    content_type,
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
        if transcoder.holder(crate::scan::Member::Meta).is_some() {
            return false;
        }
        let headers = native_headers(
            &parts.headers,
            &self.inner,
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
            head::replace_body_headers(
                &mut parts.headers,
                &self.inner,
                whole.content_type,
                Some(whole.length),
            );
            nosniff(&mut parts.headers);
            let body = if is_head {
                NegotiatedBody::head()
            } else {
                NegotiatedBody::full(concat(whole.frames))
            };
            return Some(Response::from_parts(parts, body));
        }
        // A native `HEAD` only counts the decoded bytes; it makes none.
        let total = transcoder.decoded_len();
        set_native_headers(
            &mut parts.headers,
            &self.inner,
            &transcoder,
            whole.content_type,
            Some(total),
            &self.negotiated,
        );
        let body = |bytes| {
            if is_head {
                NegotiatedBody::head()
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
            &self.inner,
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
            &self.inner,
            &transcoder,
            whole.content_type,
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
    headers: &http::HeaderMap,
    inner: &InnerHead,
    transcoder: &Transcoder,
    content_type: &HeaderValue,
    length: Option<u64>,
    negotiated: &Negotiated,
) -> http::HeaderMap {
    let mut headers = headers.clone();
    set_native_headers(
        &mut headers,
        inner,
        transcoder,
        content_type.clone(),
        length,
        negotiated,
    );
    headers
}

/// Turns the inner head into that of the raw document, in place (see [`native_headers`]).
fn set_native_headers(
    headers: &mut http::HeaderMap,
    inner: &InnerHead,
    transcoder: &Transcoder,
    content_type: HeaderValue,
    length: Option<u64>,
    negotiated: &Negotiated,
) {
    head::native(
        headers,
        inner,
        content_type,
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
