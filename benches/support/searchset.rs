//! The searchset Bundle of the `resource_xml` benchmark and the bodies that carry it, shared
//! with the profiling drivers in `examples/` so that they measure the same input.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

/// A body of frames given in advance, each ready at once, as a fast peer delivers them; its
/// size is not announced.
pub struct Frames(pub VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// `bytes` cut into frames of `frame` bytes (the last one shorter).
pub fn frames(bytes: &Bytes, frame: usize) -> Vec<Bytes> {
    (0..bytes.len())
        .step_by(frame)
        .map(|at| bytes.slice(at..(at + frame).min(bytes.len())))
        .collect()
}

/// A searchset Bundle of at least `size` bytes: the official R4 examples
/// (`tests/fixtures/examples/r4`), as written, over and over.
pub fn searchset(size: usize) -> Bytes {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples/r4");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("the R4 examples")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let examples: Vec<String> = names
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .expect("an example")
                .trim()
                .to_owned()
        })
        .collect();
    let mut json =
        String::from(r#"{"resourceType":"Bundle","id":"bench","type":"searchset","entry":["#);
    let mut n = 0;
    while json.len() < size {
        let example = &examples[n % examples.len()];
        if n > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"fullUrl":"urn:uuid:{n}","resource":{example},"search":{{"mode":"match"}}}}"#
        ));
        n += 1;
    }
    json.push_str("]}");
    Bytes::from(json)
}
