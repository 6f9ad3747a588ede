//! The response body of the negotiated service.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::{BoxError, InvalidBinary};
use crate::frames::FrameQueue;
use crate::scan::ScanError;
use crate::transcode::{ResourceTranscoder, Transcoder};

pin_project! {
    /// The response body of [`BinaryNegotiation`](crate::BinaryNegotiation).
    ///
    /// Depending on the response it is the inner body untouched, the raw document decoded as
    /// the inner body streams in, FHIR XML converted as the inner body streams in, or a
    /// complete body the layer made (an OperationOutcome, a small document read whole, nothing
    /// for `HEAD`).
    ///
    /// Errors are boxed: the inner body's own errors as they are, and
    /// [`InvalidBinary`] when the inner body turns out not to be a valid Binary (or, for FHIR
    /// XML of another resource, not FHIR JSON of the release) after the response head has gone
    /// out. The client then sees a broken transfer, never a document silently cut short.
    pub struct NegotiatedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Full {
            data: Option<Bytes>,
        },
        Head,
        Replay {
            held: FrameQueue,
            body: Option<Pin<Box<B>>>,
        },
        Transcode {
            held: FrameQueue,
            body: Option<Pin<Box<B>>>,
            transcoder: Box<Transcoder>,
            window: Option<Window>,
        },
        Resource {
            held: FrameQueue,
            body: Option<Pin<Box<B>>>,
            transcoder: Box<ResourceTranscoder>,
        },
    }
}

impl<B> NegotiatedBody<B> {
    /// The inner body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        NegotiatedBody {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body.
    pub(crate) fn full(data: Bytes) -> Self {
        NegotiatedBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// No body (`304`, `416`).
    pub(crate) fn empty() -> Self {
        NegotiatedBody {
            kind: Kind::Full { data: None },
        }
    }

    /// No body, in answer to `HEAD`: ended, and of no known length, so that a server takes
    /// the length from the `Content-Length` header the `GET` would have, or sends none, rather
    /// than counting this empty body as the representation.
    pub(crate) fn head() -> Self {
        NegotiatedBody { kind: Kind::Head }
    }

    /// Frames already read from the inner body, then the rest of it, untouched.
    pub(crate) fn replay(held: FrameQueue, body: Option<Pin<Box<B>>>) -> Self {
        NegotiatedBody {
            kind: Kind::Replay { held, body },
        }
    }

    /// Output already made (`held`), then the rest of the inner body turned into output by
    /// `transcoder`; only the bytes inside `window` when there is one, ending as soon as the
    /// window is complete (the inner body is then dropped).
    pub(crate) fn transcode(
        held: Vec<Bytes>,
        body: Pin<Box<B>>,
        transcoder: Box<Transcoder>,
        window: Option<Window>,
    ) -> Self {
        NegotiatedBody {
            kind: Kind::Transcode {
                held: held.into(),
                body: Some(body),
                transcoder,
                window,
            },
        }
    }

    /// Output already made (`held`), then the rest of the inner body turned into FHIR XML by
    /// `transcoder` (any resource).
    pub(crate) fn resource(
        held: FrameQueue,
        body: Option<Pin<Box<B>>>,
        transcoder: Box<ResourceTranscoder>,
    ) -> Self {
        NegotiatedBody {
            kind: Kind::Resource {
                held,
                body,
                transcoder,
            },
        }
    }
}

impl<B> fmt::Debug for NegotiatedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Full { .. } => "Full",
            Kind::Head => "Head",
            Kind::Replay { .. } => "Replay",
            Kind::Transcode { .. } => "Transcode",
            Kind::Resource { .. } => "Resource",
        };
        f.debug_struct("NegotiatedBody")
            .field("kind", &kind)
            .finish()
    }
}

impl<B> Body for NegotiatedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => poll_inner(body, cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Head => Poll::Ready(None),
            KindProj::Replay { held, body } => match held.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                None => match body {
                    Some(body) => poll_inner(body.as_mut(), cx),
                    None => Poll::Ready(None),
                },
            },
            KindProj::Transcode {
                held,
                body,
                transcoder,
                window,
            } => match held.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                None => poll_window(body, transcoder, window, cx),
            },
            KindProj::Resource {
                held,
                body,
                transcoder,
            } => match held.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                None => poll_resource(body, transcoder, cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Head => true,
            Kind::Replay { held, body } => {
                held.is_empty() && body.as_ref().is_none_or(|b| b.is_end_stream())
            }
            Kind::Transcode {
                held,
                transcoder,
                window,
                ..
            } => {
                held.is_empty()
                    && (transcoder.is_done() || window.as_ref().is_some_and(Window::is_complete))
            }
            Kind::Resource {
                held, transcoder, ..
            } => held.is_empty() && transcoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Head => SizeHint::new(),
            Kind::Replay { held, body } => {
                let held = held.byte_len();
                let rest = body
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + held);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
            Kind::Resource { held, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(held.byte_len());
                hint
            }
            Kind::Transcode { held, window, .. } => {
                let held = held.byte_len();
                match window {
                    Some(window) => SizeHint::with_exact(held + window.remaining()),
                    None => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(held);
                        hint
                    }
                }
            }
        }
    }
}

/// A byte range of the output: the bytes `first..=last` of the document, of which the bytes
/// before `pos` have gone by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pos: u64,
    first: u64,
    last: u64,
}

impl Window {
    /// The bytes `first..=last`, the next output byte being byte `pos` of the document.
    pub(crate) fn new(pos: u64, first: u64, last: u64) -> Self {
        Window { pos, first, last }
    }

    /// The part of `frame`, the next output bytes, that lies inside the window.
    pub(crate) fn clip(&mut self, mut frame: Bytes) -> Option<Bytes> {
        let start = self.pos;
        let end = start + frame.len() as u64;
        self.pos = end;
        if end <= self.first || start > self.last {
            return None;
        }
        let from = self.first.saturating_sub(start) as usize;
        let to = (self.last + 1).min(end) - start;
        frame.truncate(to as usize);
        frame.advance(from);
        Some(frame)
    }

    /// Whether every byte of the window has gone by.
    pub(crate) fn is_complete(&self) -> bool {
        self.pos > self.last
    }

    /// How many bytes of the window are still to come.
    pub(crate) fn remaining(&self) -> u64 {
        (self.last + 1).saturating_sub(self.pos.max(self.first))
    }
}

/// The output clipped to the window, when there is one; the body ends as soon as the window
/// is complete, without reading the rest of the inner body.
fn poll_window<B>(
    body: &mut Option<Pin<Box<B>>>,
    transcoder: &mut Transcoder,
    window: &mut Option<Window>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let Some(range) = window else {
        return poll_transcode(body, transcoder, cx);
    };
    loop {
        if range.is_complete() {
            *body = None;
            transcoder.abort();
            return Poll::Ready(None);
        }
        match std::task::ready!(poll_transcode(body, transcoder, cx)) {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if let Some(part) = range.clip(data) {
                        return Poll::Ready(Some(Ok(Frame::data(part))));
                    }
                }
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {
                // The document is shorter than the range the head announced.
                let short = ScanError::new(
                    format!(
                        "the document ends at byte {}, before the end of the range {}-{} that was announced",
                        range.pos, range.first, range.last
                    ),
                    transcoder.input_position(),
                );
                *window = None;
                return Poll::Ready(Some(Err(InvalidBinary::from(short).into())));
            }
        }
    }
}

fn poll_transcode<B>(
    body: &mut Option<Pin<Box<B>>>,
    transcoder: &mut Transcoder,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    loop {
        let Some(inner) = body.as_mut() else {
            // The inner body has ended: drain what is left, then check the document is whole.
            return Poll::Ready(match transcoder.finish() {
                Ok(frame) => frame.map(|f| Ok(Frame::data(f))),
                Err(e) => Some(Err(InvalidBinary::from(e).into())),
            });
        };
        match transcoder.pull() {
            Ok(Some(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
            Ok(None) => {}
            Err(e) => {
                *body = None;
                return Poll::Ready(Some(Err(InvalidBinary::from(e).into())));
            }
        }
        match std::task::ready!(poll_inner(inner.as_mut(), cx)) {
            Some(Ok(frame)) => {
                // Trailers of a JSON body carry nothing the document needs.
                if let Ok(data) = frame.into_data() {
                    transcoder.push(data);
                }
            }
            Some(Err(e)) => {
                *body = None;
                transcoder.abort();
                return Poll::Ready(Some(Err(e)));
            }
            None => *body = None,
        }
    }
}

/// The next frame of FHIR XML made from the inner body; a body that turns out not to be FHIR
/// JSON of the release fails ([`InvalidBinary`]), as the head has gone out.
fn poll_resource<B>(
    body: &mut Option<Pin<Box<B>>>,
    transcoder: &mut ResourceTranscoder,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    loop {
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(match transcoder.finish() {
                Ok(frame) => frame.map(|f| Ok(Frame::data(f))),
                Err(e) => Some(Err(InvalidBinary::from(ScanError::from(e)).into())),
            });
        };
        match transcoder.pull() {
            Ok(Some(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
            Ok(None) => {}
            Err(e) => {
                *body = None;
                return Poll::Ready(Some(Err(InvalidBinary::from(ScanError::from(e)).into())));
            }
        }
        match std::task::ready!(poll_inner(inner.as_mut(), cx)) {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    transcoder.push(data);
                }
            }
            Some(Err(e)) => {
                *body = None;
                transcoder.abort();
                return Poll::Ready(Some(Err(e)));
            }
            None => *body = None,
        }
    }
}

/// A frame of the inner body, as `Bytes` (without a copy when it already is `Bytes`), its error
/// boxed.
pub(crate) fn poll_inner<B>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    body.poll_frame(cx).map(|frame| {
        frame.map(|frame| {
            frame
                .map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                .map_err(Into::into)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_clips_frames_at_any_boundary() {
        let document: Vec<u8> = (0..100u8).collect();
        for (first, last) in [(0, 0), (0, 99), (10, 19), (95, 120), (42, 42)] {
            for size in [1, 3, 10, 64, 100] {
                let mut window = Window::new(0, first, last);
                let mut got = Vec::new();
                for chunk in document.chunks(size) {
                    if let Some(part) = window.clip(Bytes::copy_from_slice(chunk)) {
                        got.extend_from_slice(&part);
                    }
                }
                let end = (last as usize + 1).min(document.len());
                assert_eq!(
                    got,
                    document[first as usize..end],
                    "{first}-{last} by {size}"
                );
                assert_eq!(window.is_complete(), last < 100);
            }
        }
        let mut window = Window::new(5, 10, 19);
        assert_eq!(window.remaining(), 10);
        assert_eq!(
            window.clip(Bytes::from_static(b"abcdefg")),
            Some(Bytes::from_static(b"fg"))
        );
        assert_eq!(window.remaining(), 8);
    }
}
