//! The request body the inner service receives: the client's body untouched, a raw upload
//! becoming Binary JSON as it arrives, or FHIR XML becoming FHIR JSON as it arrives.
//!
//! The Binary JSON is only ever complete when the upload is: if the client's body fails, ends
//! before its announced length, goes past it, or grows over the upload limit, the body ends
//! with an error instead of the closing `"}`, so a backend that parses what it receives
//! cannot store a truncated document as a valid Binary. The same holds for FHIR XML: XML that
//! is not FHIR, or that ends early, ends the body with an error, never with a complete JSON
//! document.
//!
//! A FHIR XML body is first read ahead ([`XmlReadAhead`]), up to a limit of JSON, before the
//! inner service is called: most documents are then known to be FHIR, or refused, before the
//! inner service sees anything.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::encode::Base64Encoder;
use crate::error::BoxError;
use crate::outcome::Outcome;
use crate::upload::{too_large, Envelope, SUFFIX};
use crate::xml_to_json::{XmlError, XmlLimits, XmlToJson};
use crate::FhirVersion;

pin_project! {
    /// The body of a request as the inner service receives it from
    /// [`BinaryNegotiation`](crate::BinaryNegotiation): the client's own body; for a raw
    /// document posted or put to the Binary endpoint, the equivalent Binary JSON, made as the
    /// upload arrives; for a resource posted or put in FHIR XML, its FHIR JSON, converted as
    /// the XML arrives.
    ///
    /// Its size is exact when the upload's length is known, and for FHIR XML read whole ahead
    /// of the call. A failed, short, overlong or oversized upload, or XML that is not FHIR,
    /// makes it end with an error, never with a complete resource.
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Untouched { #[pin] body: B },
        Upload { #[pin] body: B, state: UploadState },
        // Boxed: the body is polled by the read-ahead, then moved into the inner request; the
        // converter's state would make every request body several times larger.
        FhirXml { body: Pin<Box<B>>, state: Box<XmlState> },
    }
}

impl<B: fmt::Debug> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Untouched { body } => {
                f.debug_tuple("RequestBody::Untouched").field(body).finish()
            }
            Kind::Upload { body, state } => f
                .debug_struct("RequestBody::Upload")
                .field("body", body)
                .field("received", &state.received)
                .finish_non_exhaustive(),
            Kind::FhirXml { body, state } => f
                .debug_struct("RequestBody::FhirXml")
                .field("body", body)
                .field("received", &state.received)
                .finish_non_exhaustive(),
        }
    }
}

/// A FHIR XML body being converted.
struct XmlState {
    converter: XmlToJson,
    /// Received and not converted yet (each step converts at most `frame_size` bytes).
    pending: Bytes,
    frame_size: usize,
    received: u64,
    /// The body's announced length (`Content-Length`).
    expected: Option<u64>,
    max_upload_size: u64,
    watch: UploadWatch,
    /// The JSON converted by the read-ahead, until it has gone out.
    held: VecDeque<Bytes>,
    /// Bytes of JSON still to come, when the read-ahead converted the whole body.
    remaining: Option<u64>,
    done: bool,
}

/// What the upload has come to so far.
struct UploadState {
    /// The Binary JSON up to the base64, until it has gone out.
    prefix: Option<Bytes>,
    /// The length of the prefix without the payload member's name: an empty upload is that
    /// much of it and `}`.
    head_len: usize,
    encoder: Base64Encoder,
    /// Received and not encoded yet (output frames are bounded).
    pending: Bytes,
    received: u64,
    /// The upload's announced length.
    expected: Option<u64>,
    max_upload_size: u64,
    /// Most bytes of base64 in one frame.
    frame_size: usize,
    /// Bytes of Binary JSON still to come, when the upload's length is known.
    remaining: Option<u64>,
    done: bool,
    /// Only for an upload of unknown length: one that announced its length cannot grow past
    /// the limit without going past its length first.
    watch: Option<UploadWatch>,
}

/// Tells the layer, after the inner service has answered, whether the upload went over the
/// limit while streaming (then the answer is 413, whatever the inner service said), or, for
/// FHIR XML, turned out not to be FHIR (then it is 400).
#[derive(Clone, Debug, Default)]
pub(crate) struct UploadWatch(Arc<AtomicBool>, Arc<Mutex<Option<String>>>);

impl UploadWatch {
    /// Whether the upload grew over `max_upload_size`.
    pub(crate) fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The answer the client gets instead of the inner service's: 413 when the upload grew
    /// over `max_upload_size`, 400 naming the element when its XML is not FHIR.
    pub(crate) fn outcome(&self, max_upload_size: u64) -> Option<Outcome> {
        if self.too_large() {
            return Some(too_large(None, max_upload_size));
        }
        let invalid = self.1.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(Outcome {
            status: StatusCode::BAD_REQUEST,
            code: "structure",
            diagnostics: format!("the body is not FHIR XML: {invalid}"),
        })
    }
}

impl<B> RequestBody<B> {
    /// The client's body, as it is.
    pub(crate) fn untouched(body: B) -> Self {
        RequestBody {
            kind: Kind::Untouched { body },
        }
    }
}

impl<B> RequestBody<B> {
    /// The Binary JSON of `envelope` around the base64 of `body`, in frames of at most
    /// `frame_size` bytes of base64. The upload's length is the envelope's (`Content-Length`);
    /// the body itself is not asked, so that the layer puts no bound on request bodies.
    pub(crate) fn upload(
        body: B,
        envelope: Envelope,
        max_upload_size: u64,
        frame_size: usize,
    ) -> (Self, Option<UploadWatch>) {
        let expected = envelope.upload_length();
        let watch = expected.is_none().then(UploadWatch::default);
        let head_len = envelope.head_len();
        let remaining = expected.map(|n| envelope.json_length(n));
        let state = UploadState {
            // Moved, not cloned: a clone of the prefix would allocate its shared counter.
            prefix: Some(envelope.into_prefix()),
            head_len,
            encoder: Base64Encoder::default(),
            pending: Bytes::new(),
            received: 0,
            expected,
            max_upload_size,
            frame_size: frame_size.max(4),
            remaining,
            done: false,
            watch: watch.clone(),
        };
        let body = RequestBody {
            kind: Kind::Upload { body, state },
        };
        (body, watch)
    }
}

/// The smallest piece of JSON held by the read-ahead: a tiny `frame_size` must not make a piece
/// of every few bytes.
const MIN_HELD_PIECE: usize = 16 << 10;

/// A FHIR XML request body read ahead of the inner service's call: converted until it ends or
/// the JSON held reaches the limit. Then [`into_body`](Self::into_body) gives the body the
/// inner service reads, starting with what was held.
pub(crate) struct XmlReadAhead<B> {
    body: Pin<Box<B>>,
    state: Box<XmlState>,
    /// The JSON held, in pieces of about `frame_size` bytes (at least [`MIN_HELD_PIECE`]): a
    /// single buffer would double its capacity as it grows. The last one is being filled.
    held: VecDeque<Bytes>,
    filling: Vec<u8>,
    held_len: usize,
    limit: usize,
}

impl<B> fmt::Debug for XmlReadAhead<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XmlReadAhead")
            .field("received", &self.state.received)
            .field("held", &self.held_len)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// How a FHIR XML body is converted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct XmlBodyOptions {
    pub(crate) version: FhirVersion,
    pub(crate) limits: XmlLimits,
    pub(crate) max_upload_size: u64,
    /// The most bytes of XML converted into one frame of JSON.
    pub(crate) frame_size: usize,
    /// The most JSON held before the inner service is called.
    pub(crate) read_ahead: usize,
}

impl<B> XmlReadAhead<B> {
    /// Starts reading `body`, whose announced length is `expected`.
    pub(crate) fn new(body: B, expected: Option<u64>, options: &XmlBodyOptions) -> Self {
        XmlReadAhead {
            body: Box::pin(body),
            state: Box::new(XmlState {
                converter: XmlToJson::new(options.version, options.limits),
                pending: Bytes::new(),
                frame_size: options.frame_size.max(1),
                received: 0,
                expected,
                max_upload_size: options.max_upload_size,
                watch: UploadWatch::default(),
                held: VecDeque::new(),
                remaining: None,
                done: false,
            }),
            held: VecDeque::new(),
            filling: Vec::new(),
            held_len: 0,
            limit: options.read_ahead,
        }
    }

    /// Converts until the body has ended or the JSON held has reached the limit. An error is
    /// the answer the client gets instead of the inner service's: the body is not FHIR XML,
    /// grows over the upload limit, fails or ends short of its length.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Outcome>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        while !self.state.done && self.held_len < self.limit {
            let before = self.filling.len();
            let step = self
                .state
                .convert_next(self.body.as_mut(), cx, &mut self.filling);
            if let Err(error) = ready!(step) {
                return Poll::Ready(Err(self.state.refusal(&error)));
            }
            self.held_len += self.filling.len() - before;
            if self.filling.len() >= self.state.frame_size.max(MIN_HELD_PIECE) {
                let mut piece = std::mem::take(&mut self.filling);
                piece.shrink_to_fit();
                self.held.push_back(Bytes::from(piece));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The body the inner service reads, what was held first; for the later faults the layer
    /// answers for, its watch; and its length, when the whole body was read.
    pub(crate) fn into_body(self) -> (RequestBody<B>, UploadWatch, Option<u64>) {
        let XmlReadAhead {
            body,
            mut state,
            mut held,
            filling,
            held_len,
            ..
        } = self;
        if state.done {
            state.remaining = Some(held_len as u64);
        }
        let length = state.remaining;
        if !filling.is_empty() {
            held.push_back(Bytes::from(filling));
        }
        state.held = held;
        let watch = state.watch.clone();
        let body = RequestBody {
            kind: Kind::FhirXml { body, state },
        };
        (body, watch, length)
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Untouched { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Upload { body, state } => state.poll(body, cx),
            KindProj::FhirXml { body, state } => state.poll(body.as_mut(), cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Untouched { body } => body.is_end_stream(),
            Kind::Upload { state, .. } => state.done,
            Kind::FhirXml { state, .. } => state.done && state.held.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Untouched { body } => body.size_hint(),
            Kind::Upload { state, .. } => match state.remaining {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
            Kind::FhirXml { state, .. } => match state.remaining {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
        }
    }
}

impl UploadState {
    fn poll<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if !self.pending.is_empty() {
                let ended = body.is_end_stream();
                return Poll::Ready(Some(self.encode_pending(ended)));
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers of the upload have no place in a Binary.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = self.receive(data.len()) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    self.pending = data;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    let mut out = BytesMut::new();
                    return Poll::Ready(Some(self.finish(&mut out).map(|()| self.emit(out))));
                }
            }
        }
    }

    /// Counts `n` more bytes of upload; an error when they go past the announced length or
    /// the limit.
    fn receive(&mut self, n: usize) -> Result<(), BoxError> {
        self.received += n as u64;
        if self.received > self.max_upload_size {
            self.done = true;
            if let Some(watch) = &self.watch {
                watch.0.store(true, Ordering::Relaxed);
            }
            return Err(UploadError::TooLarge {
                max: self.max_upload_size,
            }
            .into());
        }
        if let Some(expected) = self.expected {
            if self.received > expected {
                self.done = true;
                return Err(UploadError::Long { expected }.into());
            }
        }
        Ok(())
    }

    /// One frame of base64 from `pending`, the prefix before it if it has not gone out, and
    /// the end of the document after it when the upload has ended.
    fn encode_pending(&mut self, ended: bool) -> Result<Frame<Bytes>, BoxError> {
        let prefix_len = self.prefix.as_ref().map_or(0, Bytes::len);
        let base64_len = (self.pending.len().div_ceil(3) * 4).min(self.frame_size);
        let mut out = BytesMut::with_capacity(prefix_len + base64_len + 4 + SUFFIX.len());
        if let Some(prefix) = self.prefix.take() {
            out.put_slice(&prefix);
        }
        self.encoder
            .encode(&mut self.pending, &mut out, self.frame_size);
        if self.pending.is_empty() && ended {
            self.finish(&mut out)?;
        }
        Ok(self.emit(out))
    }

    /// Ends the document onto `out`, when the upload is complete.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), BoxError> {
        self.done = true;
        if let Some(expected) = self.expected {
            if self.received < expected {
                return Err(UploadError::Short {
                    received: self.received,
                    expected,
                }
                .into());
            }
        }
        if self.received == 0 {
            if let Some(prefix) = self.prefix.take() {
                out.put_slice(&prefix[..self.head_len]);
                out.put_u8(b'}');
            }
            return Ok(());
        }
        if let Some(prefix) = self.prefix.take() {
            out.put_slice(&prefix);
        }
        self.encoder.finish(out);
        out.put_slice(SUFFIX);
        Ok(())
    }

    fn emit(&mut self, out: BytesMut) -> Frame<Bytes> {
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(out.len() as u64);
        }
        Frame::data(out.freeze())
    }
}

impl XmlState {
    /// Records why the XML is not FHIR for the answer, and makes it the body's error.
    fn invalid(&self, error: XmlError) -> BoxError {
        *self.watch.1.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        error.into()
    }

    /// The answer to a body that failed with `error` before the inner service was called.
    fn refusal(&self, error: &BoxError) -> Outcome {
        self.watch
            .outcome(self.max_upload_size)
            .unwrap_or_else(|| Outcome {
                status: StatusCode::BAD_REQUEST,
                code: "invalid",
                diagnostics: format!("the request body failed: {error}"),
            })
    }

    fn poll<B>(
        &mut self,
        body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        if let Some(held) = self.held.pop_front() {
            return Poll::Ready(Some(Ok(self.emit(held))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        if let Err(e) = ready!(self.convert_next(body, cx, &mut out)) {
            return Poll::Ready(Some(Err(e)));
        }
        if out.is_empty() {
            // Only at the end: a step writes something or ends the document.
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(self.emit(Bytes::from(out)))))
    }

    fn emit(&mut self, data: Bytes) -> Frame<Bytes> {
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(data.len() as u64);
        }
        Frame::data(data)
    }

    /// Converts the next piece of the body, at most `frame_size` bytes of XML, appending its
    /// JSON to `out`; at the body's end, checks its length and ends the document. Ready once
    /// it has written something, ended the document, or failed (then `done`, and nothing
    /// more is written).
    fn convert_next<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<(), BoxError>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let start = out.len();
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.pending.is_empty() {
                let piece = self
                    .pending
                    .split_to(self.pending.len().min(self.frame_size));
                // The JSON is about as long as the XML: room for it, not regrown.
                out.reserve(piece.len() + piece.len() / 8 + 64);
                if let Err(e) = self.converter.feed(&piece, out) {
                    self.done = true;
                    return Poll::Ready(Err(self.invalid(e)));
                }
                if out.len() > start {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = self.receive(data.len()) {
                        self.done = true;
                        return Poll::Ready(Err(e));
                    }
                    self.pending = data;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(e.into()));
                }
                None => {
                    self.done = true;
                    if let Some(expected) = self.expected {
                        if self.received < expected {
                            return Poll::Ready(Err(UploadError::Short {
                                received: self.received,
                                expected,
                            }
                            .into()));
                        }
                    }
                    let ended = self.converter.finish(out).map_err(|e| self.invalid(e));
                    return Poll::Ready(ended);
                }
            }
        }
    }

    /// Counts `n` more bytes of XML; an error when they go past the announced length or the
    /// limit.
    fn receive(&mut self, n: usize) -> Result<(), BoxError> {
        self.received += n as u64;
        if self.received > self.max_upload_size {
            self.watch.0.store(true, Ordering::Relaxed);
            return Err(UploadError::TooLarge {
                max: self.max_upload_size,
            }
            .into());
        }
        match self.expected {
            Some(expected) if self.received > expected => {
                Err(UploadError::Long { expected }.into())
            }
            _ => Ok(()),
        }
    }
}

/// Why an upload was broken off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UploadError {
    /// The client's body ended before its announced length.
    Short { received: u64, expected: u64 },
    /// The client's body went on past its announced length.
    Long { expected: u64 },
    /// The upload grew over the limit.
    TooLarge { max: u64 },
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::Short { received, expected } => write!(
                f,
                "the upload ended after {received} of its {expected} bytes"
            ),
            UploadError::Long { expected } => {
                write!(f, "the upload went on past its {expected} bytes")
            }
            UploadError::TooLarge { max } => {
                write!(f, "the upload is larger than the {max} bytes accepted")
            }
        }
    }
}

impl std::error::Error for UploadError {}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use http::{HeaderMap, HeaderValue, Method};
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;
    use crate::test_rng::Rng;
    use crate::upload::{plan, Upload, UploadOptions};
    use crate::FhirVersion;

    /// A client body: the given frames, then the given end.
    struct Frames {
        frames: VecDeque<Bytes>,
        fail_at_end: bool,
        exact: Option<u64>,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(match self.frames.pop_front() {
                Some(frame) => Some(Ok(Frame::data(frame))),
                None if self.fail_at_end => {
                    self.fail_at_end = false;
                    Some(Err("connection reset".into()))
                }
                None => None,
            })
        }

        fn size_hint(&self) -> SizeHint {
            self.exact
                .map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    fn frames(parts: &[&[u8]]) -> Frames {
        Frames {
            frames: parts.iter().map(|p| Bytes::copy_from_slice(p)).collect(),
            fail_at_end: false,
            exact: None,
        }
    }

    fn envelope(length: Option<u64>, version: FhirVersion) -> Envelope {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/pdf"));
        if version != FhirVersion::Dstu2 {
            headers.insert("x-security-context", HeaderValue::from_static("Patient/1"));
        }
        if let Some(length) = length {
            headers.insert("content-length", length.into());
        }
        match plan(
            &Method::PUT,
            "/Binary/b1",
            &headers,
            version,
            &UploadOptions::default(),
        ) {
            Ok(Upload::Document(envelope)) => envelope,
            other => panic!("{other:?}"),
        }
    }

    /// Reads the whole body, checking at every frame that the size hint is exact when the
    /// length is known and that frames stay within the bound.
    async fn read_all(
        mut body: RequestBody<Frames>,
        frame_size: usize,
    ) -> Result<Vec<u8>, (Vec<u8>, BoxError)> {
        let mut out = Vec::new();
        let known = body.size_hint().exact();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    let data = frame.into_data().unwrap();
                    assert!(data.len() <= frame_size + 256, "frame of {}", data.len());
                    out.extend_from_slice(&data);
                    if let Some(total) = known {
                        assert_eq!(body.size_hint().exact(), Some(total - out.len() as u64));
                    }
                }
                Err(e) => return Err((out, e)),
            }
        }
        assert!(body.is_end_stream());
        if let Some(total) = known {
            assert_eq!(out.len() as u64, total, "the announced size");
        }
        Ok(out)
    }

    /// What a strict backend makes of the Binary JSON: the payload, or why it refuses it.
    fn strict_payload(json: &[u8], key: &str) -> Result<Vec<u8>, String> {
        let value: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let object = value.as_object().ok_or("not an object")?;
        for name in object.keys() {
            if !["resourceType", "id", "contentType", "securityContext", key]
                .contains(&name.as_str())
            {
                return Err(format!("unknown element {name}"));
            }
        }
        if value["resourceType"] != "Binary"
            || value["contentType"] != "application/pdf"
            || value["id"] != "b1"
        {
            return Err(format!("wrong elements: {value}"));
        }
        match value.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(text)) if !text.is_empty() => {
                STANDARD.decode(text).map_err(|e| e.to_string())
            }
            Some(other) => Err(format!("bad {key}: {other}")),
        }
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 37 + i / 5) as u8).collect()
    }

    #[tokio::test]
    async fn every_split_of_small_uploads_gives_the_upload_back() {
        for n in 0..120usize {
            let bytes = sample(n);
            for at in 0..=n {
                for (announced, frame_size) in [(true, 64 * 1024), (false, 8), (true, 4)] {
                    let envelope = envelope(announced.then_some(n as u64), FhirVersion::R4);
                    let client = frames(&[&bytes[..at], &bytes[at..]]);
                    let (body, watch) =
                        RequestBody::upload(client, envelope.clone(), 1 << 30, frame_size);
                    assert_eq!(watch.is_some(), !announced);
                    let json = read_all(body, frame_size).await.unwrap();
                    assert_eq!(
                        strict_payload(&json, "data"),
                        Ok(bytes.clone()),
                        "n={n} at={at}"
                    );
                    assert!(!too_large(&watch));
                }
            }
        }
    }

    #[tokio::test]
    async fn random_splits_of_large_uploads_in_every_release() {
        let mut rng = Rng(0x00d0_c0de);
        for (round, version) in [
            FhirVersion::Dstu2,
            FhirVersion::Stu3,
            FhirVersion::R4,
            FhirVersion::R4B,
            FhirVersion::R5,
        ]
        .into_iter()
        .cycle()
        .take(15)
        .enumerate()
        {
            let n = rng.below(2 * 1024 * 1024);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let mut cuts: Vec<usize> = (0..rng.below(40)).map(|_| rng.below(n + 1)).collect();
            cuts.extend([0, n]);
            cuts.sort_unstable();
            let parts: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            let client = frames(&parts);
            let announced = round % 2 == 0;
            let envelope = envelope(announced.then_some(n as u64), version);
            let (body, _) = RequestBody::upload(client, envelope.clone(), 1 << 30, 64 * 1024);
            assert_eq!(body.size_hint().exact().is_some(), announced);
            let json = read_all(body, 64 * 1024).await.unwrap();
            let key = if matches!(version, FhirVersion::Dstu2 | FhirVersion::Stu3) {
                "content"
            } else {
                "data"
            };
            assert_eq!(strict_payload(&json, key).unwrap(), bytes, "round {round}");
        }
    }

    fn too_large(watch: &Option<UploadWatch>) -> bool {
        watch.as_ref().is_some_and(UploadWatch::too_large)
    }

    /// The error, and that what came before it is no valid Binary.
    async fn broken(body: RequestBody<Frames>) -> String {
        let (sent, error) = read_all(body, 1 << 20)
            .await
            .expect_err("the body must fail");
        assert!(!sent.ends_with(b"\"}"), "the document was closed");
        assert!(serde_json::from_slice::<Value>(&sent).is_err());
        error.to_string()
    }

    #[tokio::test]
    async fn a_short_long_failed_or_oversized_upload_never_completes_the_binary() {
        for n in [0usize, 1, 2, 3, 4, 1000] {
            let bytes = sample(n);
            // Fewer bytes than announced.
            let (body, _) = RequestBody::upload(
                frames(&[&bytes]),
                envelope(Some(n as u64 + 1), FhirVersion::R4),
                1 << 30,
                1024,
            );
            let error = broken(body).await;
            assert!(
                error.contains(&format!("after {n} of its {} bytes", n + 1)),
                "{error}"
            );
            // More.
            let (body, _) = RequestBody::upload(
                frames(&[&bytes, b"x"]),
                envelope(Some(n as u64), FhirVersion::R4),
                1 << 30,
                1024,
            );
            assert!(broken(body).await.contains("past its"));
            // The client's body fails.
            let mut client = frames(&[&bytes]);
            client.fail_at_end = true;
            let (body, watch) =
                RequestBody::upload(client, envelope(None, FhirVersion::R4), 1 << 30, 1024);
            assert_eq!(broken(body).await, "connection reset");
            assert!(!too_large(&watch));
        }
        // Over the limit while streaming, the length unknown.
        let bytes = sample(100);
        let (body, watch) = RequestBody::upload(
            frames(&[&bytes[..60], &bytes[60..]]),
            envelope(None, FhirVersion::R4),
            99,
            1024,
        );
        assert!(broken(body).await.contains("larger than the 99 bytes"));
        assert!(too_large(&watch));
        let (body, watch) = RequestBody::upload(
            frames(&[&bytes]),
            envelope(None, FhirVersion::R4),
            100,
            1024,
        );
        assert_eq!(
            strict_payload(&read_all(body, 1024).await.unwrap(), "data"),
            Ok(bytes)
        );
        assert!(!too_large(&watch));
    }

    const PATIENT: &str = r#"<Patient xmlns="http://hl7.org/fhir"><id value="p1"/><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">a &amp; <b>b</b></div></text><active value="true"/><name><given value="A"/><given id="g"><extension url="http://e"><valueCode value="X"/></extension></given></name><multipleBirthInteger value="2"/></Patient>"#;

    /// The JSON of `xml` converted in one piece.
    fn converted(xml: &[u8]) -> Vec<u8> {
        let mut converter = XmlToJson::new(FhirVersion::R4, XmlLimits::default());
        let mut out = Vec::new();
        converter.feed(xml, &mut out).unwrap();
        converter.finish(&mut out).unwrap();
        out
    }

    fn xml_options(frame_size: usize, read_ahead: usize) -> XmlBodyOptions {
        XmlBodyOptions {
            version: FhirVersion::R4,
            limits: XmlLimits::default(),
            max_upload_size: 1 << 30,
            frame_size,
            read_ahead,
        }
    }

    #[tokio::test]
    async fn an_xml_body_read_ahead_gives_the_same_json_whole_or_streamed() {
        let mut rng = Rng(0x0019_0604);
        let binary = |n: usize| {
            let base64: String = (0..n).map(|i| char::from(b'A' + (i % 26) as u8)).collect();
            format!(
                "<Binary xmlns=\"http://hl7.org/fhir\"><contentType value=\"a/b\"/><data value=\"{base64}\"/></Binary>"
            )
        };
        let (small, large) = (binary(3000), binary(80_000));
        for round in 0..400 {
            let (xml, frame_size) = match round % 3 {
                0 => (PATIENT, [1, 3, 64, 1000, 64 * 1024][rng.below(5)]),
                1 => (small.as_str(), [1, 3, 64, 1000, 64 * 1024][rng.below(5)]),
                // Held in several pieces.
                _ => (large.as_str(), [300, 1000, 20_000][rng.below(3)]),
            };
            let json = converted(xml.as_bytes());
            let limit = rng.below(json.len() + 200);
            let mut cuts: Vec<usize> = (0..rng.below(12))
                .map(|_| rng.below(xml.len() + 1))
                .collect();
            cuts.extend([0, xml.len()]);
            cuts.sort_unstable();
            let parts: Vec<&[u8]> = cuts
                .windows(2)
                .map(|w| &xml.as_bytes()[w[0]..w[1]])
                .collect();
            let announced = (round % 3 == 0).then_some(xml.len() as u64);
            let mut read_ahead =
                XmlReadAhead::new(frames(&parts), announced, &xml_options(frame_size, limit));
            std::future::poll_fn(|cx| read_ahead.poll(cx))
                .await
                .unwrap();
            let held = read_ahead.held_len;
            assert_eq!(
                held,
                read_ahead.held.iter().map(Bytes::len).sum::<usize>() + read_ahead.filling.len()
            );
            // What is held: up to the limit, and one step over it: the JSON of at most
            // `frame_size` bytes of XML and of a token held whole (a tag, here short).
            assert!(held < limit + frame_size + 1024, "round {round}: {held}");
            let (body, watch, length) = read_ahead.into_body();
            // Whole exactly when the JSON, short of its last step, was under the limit.
            if json.len() <= limit {
                assert_eq!(length, Some(json.len() as u64), "round {round}");
            }
            if length.is_none() {
                assert!(held >= limit, "round {round}");
            }
            assert_eq!(body.size_hint().exact(), length);
            let mut body = body;
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                // Held pieces of about a frame (at least 16 KiB), then a frame's worth a step.
                assert!(
                    data.len() < frame_size.max(MIN_HELD_PIECE) + frame_size + 1024,
                    "round {round}: frame of {}",
                    data.len()
                );
                out.extend_from_slice(&data);
            }
            assert!(body.is_end_stream());
            assert_eq!(out, json, "round {round}");
            assert!(watch.outcome(1 << 30).is_none());
        }
    }

    #[tokio::test]
    async fn an_xml_body_that_fails_within_the_read_ahead_is_refused() {
        let refused = |parts: &[&[u8]], announced: Option<u64>, fail: bool, max: u64| {
            let mut client = frames(parts);
            client.fail_at_end = fail;
            let options = XmlBodyOptions {
                max_upload_size: max,
                ..xml_options(7, 1 << 20)
            };
            let mut read_ahead = XmlReadAhead::new(client, announced, &options);
            async move {
                std::future::poll_fn(|cx| read_ahead.poll(cx))
                    .await
                    .unwrap_err()
            }
        };
        let xml = PATIENT.as_bytes();
        let (a, b) = xml.split_at(100);
        let bad = PATIENT.replace("<active", "<activ");
        for (outcome, status, text) in [
            (
                refused(&[bad.as_bytes()], None, false, 1 << 30).await,
                400,
                "the body is not FHIR XML: Patient: <activ> is not an element here",
            ),
            (
                refused(&[a], None, false, 1 << 30).await,
                400,
                "the body is not FHIR XML: ",
            ),
            (
                refused(&[a], None, true, 1 << 30).await,
                400,
                "the request body failed: connection reset",
            ),
            (
                refused(&[a, b], Some(xml.len() as u64 + 1), false, 1 << 30).await,
                400,
                "the upload ended after",
            ),
            (
                refused(&[a, b, b"  "], Some(xml.len() as u64), false, 1 << 30).await,
                400,
                "the upload went on past its",
            ),
            (
                refused(&[a, b], None, false, 200).await,
                413,
                "larger than the 200 bytes",
            ),
        ] {
            assert_eq!(outcome.status.as_u16(), status, "{outcome:?}");
            assert!(outcome.diagnostics.contains(text), "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn an_untouched_body_is_the_clients() {
        let mut client = frames(&[b"{\"a\"", b":1}"]);
        client.exact = Some(7);
        let body = RequestBody::untouched(client);
        assert_eq!(body.size_hint().exact(), Some(7));
        let frames: Vec<Bytes> = body.into_data_stream_frames().await;
        assert_eq!(frames, [Bytes::from("{\"a\""), Bytes::from(":1}")]);
    }

    trait CollectFrames {
        async fn into_data_stream_frames(self) -> Vec<Bytes>;
    }

    impl<B: Body<Data = Bytes> + Unpin> CollectFrames for B
    where
        B::Error: fmt::Debug,
    {
        async fn into_data_stream_frames(mut self) -> Vec<Bytes> {
            let mut out = Vec::new();
            while let Some(frame) = self.frame().await {
                out.push(frame.unwrap().into_data().unwrap());
            }
            out
        }
    }

    // -----------------------------------------------------------------------------------------
    // Through real HTTP: client -> front (this body) -> strict backend, on 127.0.0.1.

    mod over_http {
        use std::net::SocketAddr;
        use std::time::Duration;

        use http_body_util::Full;
        use hyper::body::Incoming;
        use hyper::service::service_fn;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::io::AsyncWriteExt;
        use tokio::net::{TcpListener, TcpStream};
        use tokio::sync::mpsc;

        use super::*;

        /// What the backend got: the payload of a valid Binary JSON, or why reading or
        /// parsing the body failed.
        type Received = Result<(Value, Vec<u8>), String>;

        async fn serve<F, Fut>(handler: F) -> SocketAddr
        where
            F: Fn(::http::Request<Incoming>) -> Fut + Clone + Send + 'static,
            Fut: std::future::Future<Output = ::http::Response<Full<Bytes>>> + Send,
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            let handler = handler.clone();
                            async move { Ok::<_, Infallible>(handler(request).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            addr
        }

        /// A backend that reads the body whole, parses it strictly and decodes the base64.
        async fn strict_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
            let (tx, rx) = mpsc::unbounded_channel();
            let addr = serve(move |request: ::http::Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let content_length = request.headers().get("content-length").cloned();
                    let content_type = request.headers()["content-type"].clone();
                    let received: Received = match request.into_body().collect().await {
                        Err(e) => Err(format!("body read failed: {e}")),
                        Ok(collected) => {
                            let json = collected.to_bytes();
                            if let Some(length) = content_length {
                                assert_eq!(length.to_str().unwrap(), json.len().to_string());
                            }
                            assert_eq!(content_type, "application/fhir+json");
                            serde_json::from_slice::<Value>(&json)
                                .map_err(|e| format!("invalid JSON: {e}"))
                                .and_then(|value| {
                                    let data = match value.get("data") {
                                        None => Vec::new(),
                                        Some(data) => STANDARD
                                            .decode(data.as_str().unwrap_or("!"))
                                            .map_err(|e| format!("bad base64: {e}"))?,
                                    };
                                    Ok((value, data))
                                })
                        }
                    };
                    let status = if received.is_ok() { 201 } else { 400 };
                    let _ = tx.send(received);
                    ::http::Response::builder()
                        .status(status)
                        .body(Full::default())
                        .unwrap()
                }
            })
            .await;
            (addr, rx)
        }

        /// A front that turns raw uploads into Binary JSON with [`RequestBody`] and sends them
        /// on to `backend` with hyper's client.
        async fn front(backend: SocketAddr, max_upload_size: u64) -> SocketAddr {
            let client =
                Client::builder(TokioExecutor::new()).build_http::<RequestBody<Incoming>>();
            serve(move |request: ::http::Request<Incoming>| {
                let client = client.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let options = UploadOptions {
                        max_upload_size,
                        ..UploadOptions::default()
                    };
                    let envelope = match plan(
                        &parts.method,
                        parts.uri.path(),
                        &parts.headers,
                        FhirVersion::R4,
                        &options,
                    ) {
                        Ok(Upload::Document(envelope)) => envelope,
                        other => panic!("{other:?}"),
                    };
                    let (body, _) =
                        RequestBody::upload(body, envelope.clone(), max_upload_size, 64 * 1024);
                    let mut builder =
                        ::http::Request::post(format!("http://{backend}/fhir/Binary"))
                            .header("content-type", envelope.json_media_type());
                    if let Some(length) = body.size_hint().exact() {
                        builder = builder.header("content-length", length);
                    }
                    let status = match client.request(builder.body(body).unwrap()).await {
                        Ok(response) => response.status(),
                        Err(_) => ::http::StatusCode::BAD_GATEWAY,
                    };
                    ::http::Response::builder()
                        .status(status)
                        .body(Full::default())
                        .unwrap()
                }
            })
            .await
        }

        async fn bounded<F: std::future::Future>(f: F) -> F::Output {
            tokio::time::timeout(Duration::from_secs(120), f)
                .await
                .expect("test timed out")
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_strict_backend_gets_the_upload_byte_for_byte() {
            bounded(async {
                let (backend, mut received) = strict_backend().await;
                let front = front(backend, 1 << 30).await;
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let mut sizes: Vec<usize> = (0..300).collect();
                sizes.push(1024 * 1024 + 1);
                for n in sizes {
                    let bytes = sample(n);
                    // Full sends Content-Length; a chunked upload is sent below by hand.
                    let request = ::http::Request::post(format!("http://{front}/fhir/Binary"))
                        .header("content-type", "application/pdf")
                        .body(Full::new(Bytes::from(bytes.clone())))
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    assert_eq!(response.status(), 201, "n={n}");
                    let (value, data) = received.recv().await.unwrap().unwrap();
                    assert_eq!(value["contentType"], "application/pdf");
                    assert_eq!(data, bytes, "n={n}");
                }
                // Chunked, in uneven chunks.
                let bytes = sample(100_001);
                let mut stream = TcpStream::connect(front).await.unwrap();
                let mut request = format!("POST /fhir/Binary HTTP/1.1\r\nHost: {front}\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
                for chunk in bytes.chunks(7777) {
                    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    request.extend_from_slice(chunk);
                    request.extend_from_slice(b"\r\n");
                }
                request.extend_from_slice(b"0\r\n\r\n");
                stream.write_all(&request).await.unwrap();
                let (value, data) = received.recv().await.unwrap().unwrap();
                assert_eq!(value["contentType"], "image/png");
                assert_eq!(data, bytes);
            })
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_client_that_drops_mid_upload_fails_the_backends_read() {
            bounded(async {
                let (backend, mut received) = strict_backend().await;
                let front = front(backend, 1 << 30).await;
                for chunked in [false, true] {
                    let mut stream = TcpStream::connect(front).await.unwrap();
                    let framing = if chunked { "Transfer-Encoding: chunked".to_owned() } else { "Content-Length: 300000".to_owned() };
                    let head = format!("POST /fhir/Binary HTTP/1.1\r\nHost: {front}\r\nContent-Type: application/pdf\r\n{framing}\r\n\r\n");
                    stream.write_all(head.as_bytes()).await.unwrap();
                    let part = sample(150_000);
                    if chunked {
                        stream.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await.unwrap();
                    }
                    stream.write_all(&part).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(stream);
                    let got = received.recv().await.unwrap();
                    let error = got.expect_err("a truncated upload was received as a valid Binary");
                    assert!(error.starts_with("body read failed"), "{error}");
                }
            })
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_unannounced_upload_over_the_limit_fails_the_backends_read() {
            bounded(async {
                let (backend, mut received) = strict_backend().await;
                let front = front(backend, 100_000).await;
                let mut stream = TcpStream::connect(front).await.unwrap();
                let mut request = format!("POST /fhir/Binary HTTP/1.1\r\nHost: {front}\r\nContent-Type: application/pdf\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
                for chunk in sample(200_000).chunks(50_000) {
                    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    request.extend_from_slice(chunk);
                    request.extend_from_slice(b"\r\n");
                }
                request.extend_from_slice(b"0\r\n\r\n");
                // The front may answer and close before the client has written everything.
                let _ = stream.write_all(&request).await;
                // The body fails at byte 100 001: either the backend's read fails, or (when it
                // fails before hyper's client has connected) the request never reaches it.
                if let Ok(got) = tokio::time::timeout(Duration::from_secs(2), received.recv()).await {
                    let error = got.unwrap().expect_err("an oversized upload was stored");
                    assert!(error.starts_with("body read failed"), "{error}");
                }
            })
            .await
        }
    }
}
