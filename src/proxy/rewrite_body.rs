//! An upstream JSON body with the upstream's URLs rewritten as it streams ([`UrlRewriter`]).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::rewrite::UrlRewriter;

pin_project! {
    /// `body` through a [`UrlRewriter`]: one output frame for each input frame (none when all
    /// of it is held back), what is held at the end, then the trailers. Its length is unknown.
    pub(crate) struct RewrittenBody<B> {
        #[pin]
        body: B,
        rewriter: UrlRewriter,
        trailers: Option<HeaderMap>,
        ended: bool,
    }
}

impl<B> RewrittenBody<B> {
    pub(crate) fn new(body: B, rewriter: UrlRewriter) -> Self {
        RewrittenBody {
            body,
            rewriter,
            trailers: None,
            ended: false,
        }
    }
}

impl<B> Body for RewrittenBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.ended {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.rewriter.push(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: what is held goes first.
                        *this.ended = true;
                        *this.trailers = frame.into_trailers().ok();
                        let rest = this.rewriter.finish();
                        if !rest.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    *this.ended = true;
                    let rest = this.rewriter.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            self.trailers.is_none()
        } else {
            !self.rewriter.holds_bytes() && self.body.is_end_stream()
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;
    use crate::proxy::rewrite::json_escaped;
    use crate::test_rng::Rng;

    /// Frames given in advance, each ready at once.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn rewritten(frames: Vec<Frame<Bytes>>) -> RewrittenBody<Frames> {
        let rewriter = UrlRewriter::new(
            Bytes::from_static(b"http://up/fhir"),
            json_escaped("http://proxy"),
        );
        RewrittenBody::new(Frames(frames.into()), rewriter)
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    const JSON: &str = r#"{"link":[{"url":"http://up/fhir/Binary?x=1"}],"entry":[{"fullUrl":"http:\/\/up\/fhir\/Binary\/1"},{"fullUrl":"http://up/fhirx"}],"ref":"http://up/fhir"#;
    const EXPECTED: &str = r#"{"link":[{"url":"http://proxy/Binary?x=1"}],"entry":[{"fullUrl":"http://proxy\/Binary\/1"},{"fullUrl":"http://up/fhirx"}],"ref":"http://proxy"#;

    #[test]
    fn frames_at_random_cuts_then_the_held_end_then_the_trailers() {
        let mut rng = Rng(7);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        for round in 0..500 {
            let input = JSON.as_bytes();
            let mut cuts: Vec<usize> = (0..rng.below(8)).map(|_| rng.below(input.len())).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut frames = Vec::new();
            let mut from = 0;
            for cut in cuts {
                frames.push(Frame::data(Bytes::copy_from_slice(&input[from..cut])));
                from = cut;
            }
            let with_trailers = round % 2 == 0;
            if with_trailers {
                frames.push(Frame::trailers(trailers.clone()));
            }
            let collected = block_on(rewritten(frames).collect()).unwrap();
            assert_eq!(collected.trailers().is_some(), with_trailers);
            // The JSON ends inside a string that is the whole base: held to the end, then
            // rewritten only when its end is known; here it never is, so it stays.
            let out = collected.to_bytes();
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                EXPECTED.replace(r#""ref":"http://proxy"#, r#""ref":"http://up/fhir"#)
            );
        }
        let closed = format!("{JSON}\"}}");
        let out = block_on(rewritten(vec![Frame::data(Bytes::from(closed))]).collect())
            .unwrap()
            .to_bytes();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("{EXPECTED}\"}}")
        );
    }

    #[test]
    fn no_empty_frames_and_the_end_is_known() {
        let mut body = rewritten(vec![
            Frame::data(Bytes::from_static(br#"{"a":"http://u"#)),
            Frame::data(Bytes::from_static(br#"p/fhir/1"}"#)),
        ]);
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), None);
        let first = block_on(body.frame())
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&first[..], br#"{"a":""#);
        assert!(!body.is_end_stream(), "bytes held");
        let second = block_on(body.frame())
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&second[..], br#"http://proxy/1"}"#);
        assert!(body.is_end_stream());
        assert!(block_on(body.frame()).is_none());
    }
}
