//! The searchset Bundle of the `resource_xml` benchmark and the bodies that carry it, shared
//! with the profiling drivers in `examples/` so that they measure the same input.
#![allow(dead_code)]

use bytes::Bytes;

#[path = "frames.rs"]
mod frames;
// Each program that includes this uses some of them.
#[allow(unused_imports)]
pub use frames::{frames, inner, Frames};

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
