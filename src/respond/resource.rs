//! Rendering any FHIR JSON response as FHIR XML for a client that asked for XML: a search
//! Bundle, an OperationOutcome, the answer to a write, any resource of the configured release.
//!
//! A body of known size within the `read_whole_limit` (and every body for `HEAD`) is converted
//! whole before the head goes out, so that the head carries its length and JSON that is not
//! FHIR is answered with 502; so is an error response (`4xx`, `5xx`: an OperationOutcome,
//! usually small) of unknown size, as long as its XML stays within that limit. Other bodies
//! stream: the head goes out with the first XML made, and a fault after it breaks the
//! transfer.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::response::Parts;
use http::Response;
use http_body::Body;

use super::{outcome_response, Negotiated};
use crate::body::{poll_inner, NegotiatedBody};
use crate::error::BoxError;
use crate::extension::Negotiation;
use crate::frames::FrameQueue;
use crate::head::{self, InnerHead};
use crate::negotiate::Representation;
use crate::outcome::Outcome;
use crate::policy::nosniff;
use crate::transcode::{ResourceError, ResourceTranscoder};

/// Reading an inner response of FHIR JSON until the head of its FHIR XML can be made.
pub(crate) struct ResourceReading<B> {
    parts: Option<Parts>,
    /// What `parts` said as the inner service sent them.
    inner: InnerHead,
    body: Option<Pin<Box<B>>>,
    transcoder: Option<Box<ResourceTranscoder>>,
    negotiated: Negotiated,
    /// Whether the whole XML is made before the head goes out; with a cap, only while the
    /// XML made stays within it.
    whole: bool,
    cap: Option<u64>,
    /// The XML made so far (none kept for `HEAD`), and its length.
    made: FrameQueue,
    length: u64,
}

impl<B> ResourceReading<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Starts converting the inner response: `held` are frames of it already read, `body` the
    /// rest (None when it has ended).
    pub(crate) fn new(
        parts: Parts,
        inner: InnerHead,
        held: FrameQueue,
        body: Option<Pin<Box<B>>>,
        negotiated: Negotiated,
    ) -> Self {
        let limit = negotiated.config.read_whole_limit as u64;
        let rest = body.as_ref().map_or(Some(0), |b| b.size_hint().exact());
        let known_small = rest.is_some_and(|rest| rest.saturating_add(held.byte_len()) <= limit);
        let whole = negotiated.is_head || known_small || !parts.status.is_success();
        let cap = (!negotiated.is_head && !known_small).then_some(limit);
        // A body read whole before the head may be held whole to put the elements in order.
        let reorder_limit = match rest {
            Some(rest) if known_small => negotiated
                .config
                .xml_reorder_limit()
                .max(usize::try_from(rest.saturating_add(held.byte_len())).unwrap_or(usize::MAX)),
            _ => negotiated.config.xml_reorder_limit(),
        };
        let mut transcoder = Box::new(ResourceTranscoder::new(&negotiated.config, reorder_limit));
        let mut held = held;
        while let Some(frame) = held.pop_front() {
            transcoder.push(frame);
        }
        ResourceReading {
            parts: Some(parts),
            inner,
            body,
            transcoder: Some(transcoder),
            negotiated,
            whole,
            cap,
            made: FrameQueue::default(),
            length: 0,
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<NegotiatedBody<B>>> {
        loop {
            let transcoder = self
                .transcoder
                .as_mut()
                .expect("ResponseFuture polled after completion");
            let step = match self.body {
                Some(_) => transcoder.pull(),
                None => transcoder.finish(),
            };
            match step {
                Err(e) => return Poll::Ready(self.not_fhir(e)),
                Ok(Some(frame)) => {
                    self.length += frame.len() as u64;
                    if !self.negotiated.is_head {
                        self.made.push_back(frame);
                    }
                    let over_cap = self.cap.is_some_and(|cap| self.length > cap);
                    if !self.whole || (over_cap && self.body.is_some()) {
                        return Poll::Ready(self.respond(None));
                    }
                    continue;
                }
                Ok(None) if self.body.is_none() => {
                    return Poll::Ready(self.respond(Some(self.length)));
                }
                Ok(None) => {}
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match ready!(poll_inner(body.as_mut(), cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        transcoder.push(data);
                    }
                }
                Some(Err(e)) => {
                    let outcome = Outcome::bad_gateway(format!(
                        "the inner service's response body failed: {e}"
                    ));
                    return Poll::Ready(outcome_response(&outcome, &self.negotiated));
                }
                None => self.body = None,
            }
        }
    }

    /// The response: complete (its `length` known), or the XML made so far and then the rest
    /// as it is made.
    fn respond(&mut self, length: Option<u64>) -> Response<NegotiatedBody<B>> {
        let mut parts = self
            .parts
            .take()
            .expect("ResponseFuture polled after completion");
        let version = self.negotiated.config.fhir_version;
        let content_type = version.xml_content_type(self.negotiated.xml_spelling());
        head::replace_body_headers(&mut parts.headers, &self.inner, content_type, length);
        nosniff(&mut parts.headers);
        let made = std::mem::take(&mut self.made);
        let body = match (self.negotiated.is_head, length) {
            (true, _) => NegotiatedBody::head(),
            (false, Some(_)) => NegotiatedBody::full(concat(made)),
            (false, None) => NegotiatedBody::resource(
                made,
                self.body.take(),
                self.transcoder.take().expect("head made once"),
            ),
        };
        parts
            .extensions
            .insert(Negotiation::Served(Representation::FhirXml));
        Response::from_parts(parts, body)
    }

    /// 502: the inner response is not FHIR JSON of the release.
    fn not_fhir(&mut self, e: ResourceError) -> Response<NegotiatedBody<B>> {
        let outcome = Outcome::bad_gateway(format!(
            "the inner service's response is not FHIR JSON of {:?}, so it cannot be given as \
             FHIR XML: {}",
            self.negotiated.config.fhir_version, e.error
        ));
        outcome_response(&outcome, &self.negotiated)
    }
}

/// One buffer from the frames; no copy for one.
fn concat(mut frames: FrameQueue) -> Bytes {
    let Some(first) = frames.pop_front() else {
        return Bytes::new();
    };
    if frames.is_empty() {
        return first;
    }
    let mut all = Vec::with_capacity(first.len() + frames.byte_len() as usize);
    all.extend_from_slice(&first);
    for frame in frames.iter() {
        all.extend_from_slice(frame);
    }
    Bytes::from(all)
}
