//! Rewriting the upstream's URLs inside JSON bodies: every JSON string that begins with the
//! upstream base URL (followed by `/`, `?`, `#` or the end of the string) begins with the
//! proxy's public base instead, as the body streams through.
//!
//! Only the start of each string is compared, so the cost is a search for the next `"`
//! (memchr), inside strings as between them: the base64 of a Binary is crossed at that speed,
//! escaped or not, and never changed. A `/` of the base may be escaped as `\/` (as PHP writes
//! JSON). At most the escaped base (and the character after it) is held across frames. Member
//! names are strings too; FHIR's never begin with a URL.

use bytes::{Bytes, BytesMut};

/// Where the scan stands between two frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between strings.
    Outside,
    /// At the start of a string's value: `matched` bytes of the base seen (the bytes are in
    /// `held` when they came in earlier frames); `escape` after a `\` that must be followed by
    /// `/`.
    Start { matched: usize, escape: bool },
    /// Inside a string that does not begin with the base (not after a `\`).
    Inside,
    /// Inside a string, after a `\`.
    Escaped,
}

impl State {
    /// Where the scan stands after the base and the byte that follows it: the string's
    /// closing quote, or the rest of the string.
    fn after_base(boundary: &[u8]) -> State {
        if boundary == b"\"" {
            State::Outside
        } else {
            State::Inside
        }
    }
}

/// Streams JSON, replacing the upstream base at the start of strings by the public base.
#[derive(Debug)]
pub(crate) struct UrlRewriter {
    /// The upstream base (`scheme://authority/path`, no trailing slash), unescaped.
    base: Bytes,
    /// The public base, JSON-escaped, without a trailing slash.
    replacement: Bytes,
    state: State,
    /// The start of a string, from earlier frames, that still matches the base.
    held: Vec<u8>,
}

/// What a string start that may be the base turned out to be.
enum Decision {
    /// Still undecided at the end of the input.
    Open,
    /// Not the base; the scan resumes in `state` at `at`.
    Differs { at: usize, state: State },
    /// The base, followed by the boundary `boundary`; the scan resumes after it, at `at`.
    Base { at: usize, boundary: &'static [u8] },
}

impl UrlRewriter {
    /// Rewrites `base` (an absolute URL without a trailing slash) to `public` (the same, already
    /// JSON-escaped: see [`json_escaped`]).
    pub(crate) fn new(base: Bytes, replacement: Bytes) -> Self {
        UrlRewriter {
            base,
            replacement,
            state: State::Outside,
            held: Vec::new(),
        }
    }

    /// The output for the next bytes of the body: `input` itself (or a slice of it) when
    /// nothing in it is rewritten or held back.
    pub(crate) fn push(&mut self, input: Bytes) -> Bytes {
        let bytes = &input[..];
        let mut out = Out::default();
        let mut at = 0;
        // A string start carried over from earlier frames.
        if let State::Start { .. } = self.state {
            match self.decide(bytes, 0) {
                Decision::Open => {
                    self.held.extend_from_slice(bytes);
                    return Bytes::new();
                }
                Decision::Differs { at: resume, state } => {
                    out.insert(bytes, 0, &self.held);
                    self.held.clear();
                    self.state = state;
                    at = resume;
                }
                Decision::Base {
                    at: resume,
                    boundary,
                } => {
                    self.held.clear();
                    out.replace(bytes, 0, resume, &self.replacement, boundary);
                    self.state = State::after_base(boundary);
                    at = resume;
                }
            }
        }
        while at < bytes.len() {
            match self.state {
                State::Outside => match memchr::memchr(b'"', &bytes[at..]) {
                    Some(i) => {
                        at += i + 1;
                        self.state = State::Start {
                            matched: 0,
                            escape: false,
                        };
                        let start = at;
                        match self.decide(bytes, start) {
                            Decision::Open => {
                                self.held.extend_from_slice(&bytes[start..]);
                                return out.finish(input, start);
                            }
                            Decision::Differs { at: resume, state } => {
                                self.state = state;
                                at = resume;
                            }
                            Decision::Base {
                                at: resume,
                                boundary,
                            } => {
                                out.replace(bytes, start, resume, &self.replacement, boundary);
                                self.state = State::after_base(boundary);
                                at = resume;
                            }
                        }
                    }
                    None => at = bytes.len(),
                },
                State::Inside => {
                    let (end, state) = string_end(bytes, at);
                    at = end;
                    self.state = state;
                }
                State::Escaped => {
                    at += 1;
                    self.state = State::Inside;
                }
                State::Start { .. } => unreachable!("decided as soon as it starts"),
            }
        }
        let end = bytes.len();
        out.finish(input, end)
    }

    /// What is left at the end of the body: a string start held back (the JSON was cut short).
    pub(crate) fn finish(&mut self) -> Bytes {
        self.state = State::Outside;
        Bytes::from(std::mem::take(&mut self.held))
    }

    /// Whether bytes are held back.
    pub(crate) fn holds_bytes(&self) -> bool {
        !self.held.is_empty()
    }

    /// Compares the string start at `bytes[at..]` (continuing `self.state`) with the base and
    /// the boundary after it.
    fn decide(&mut self, bytes: &[u8], mut at: usize) -> Decision {
        let State::Start {
            mut matched,
            mut escape,
        } = self.state
        else {
            unreachable!("only at a string start")
        };
        let base = &self.base[..];
        while at < bytes.len() {
            let byte = bytes[at];
            if escape {
                // After `\`: only `\/` for a `/` of the base, or after the whole base.
                if byte != b'/' || (matched < base.len() && base[matched] != b'/') {
                    return Decision::Differs {
                        at: at + 1,
                        state: State::Inside,
                    };
                }
                if matched == base.len() {
                    return Decision::Base {
                        at: at + 1,
                        boundary: b"\\/",
                    };
                }
                matched += 1;
                escape = false;
            } else if matched == base.len() {
                let boundary: &'static [u8] = match byte {
                    b'/' => b"/",
                    b'?' => b"?",
                    b'#' => b"#",
                    b'"' => b"\"",
                    b'\\' => {
                        escape = true;
                        at += 1;
                        continue;
                    }
                    _ => {
                        return Decision::Differs {
                            at,
                            state: State::Inside,
                        }
                    }
                };
                return Decision::Base {
                    at: at + 1,
                    boundary,
                };
            } else if byte == base[matched] {
                matched += 1;
            } else if byte == b'\\' {
                escape = true;
            } else {
                return Decision::Differs {
                    at,
                    state: State::Inside,
                };
            }
            at += 1;
        }
        self.state = State::Start { matched, escape };
        Decision::Open
    }
}

/// Where the string that `bytes[at..]` is inside of ends: after its closing quote (then
/// `Outside`), or at the end of `bytes` (`Inside`, or `Escaped` after a trailing `\`).
/// `bytes[at]` is not escaped.
///
/// Only quotes are searched for (memchr): a quote is the string's end when an even number of
/// backslashes comes before it. So a string full of `\/` (PHP's base64 escapes a `/` about
/// every 64 characters) is crossed in one search, as plain base64 is.
fn string_end(bytes: &[u8], at: usize) -> (usize, State) {
    let backslashes_before = |end: usize| {
        bytes[at..end]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count()
    };
    let mut from = at;
    while let Some(i) = memchr::memchr(b'"', &bytes[from..]) {
        let quote = from + i;
        if backslashes_before(quote) % 2 == 0 {
            return (quote + 1, State::Outside);
        }
        from = quote + 1;
    }
    let state = if backslashes_before(bytes.len()) % 2 == 1 {
        State::Escaped
    } else {
        State::Inside
    };
    (bytes.len(), state)
}

/// The output of one [`UrlRewriter::push`]: the input as it is until something changes, then
/// a copy.
#[derive(Default)]
struct Out {
    copy: Option<BytesMut>,
    /// `input[from..]` is not in `copy` yet.
    from: usize,
}

impl Out {
    /// Puts `extra` before `input[at..]`.
    fn insert(&mut self, input: &[u8], at: usize, extra: &[u8]) {
        if extra.is_empty() {
            return;
        }
        let copy = self
            .copy
            .get_or_insert_with(|| BytesMut::with_capacity(input.len() + extra.len()));
        copy.extend_from_slice(&input[self.from..at]);
        copy.extend_from_slice(extra);
        self.from = at;
    }

    /// Replaces `input[start..end]` by `replacement` and `boundary`.
    fn replace(
        &mut self,
        input: &[u8],
        start: usize,
        end: usize,
        replacement: &[u8],
        boundary: &[u8],
    ) {
        let copy = self.copy.get_or_insert_with(|| {
            BytesMut::with_capacity(input.len() + replacement.len() + boundary.len())
        });
        copy.extend_from_slice(&input[self.from..start]);
        copy.extend_from_slice(replacement);
        copy.extend_from_slice(boundary);
        self.from = end;
    }

    /// The output, up to `input[..end]`.
    fn finish(self, input: Bytes, end: usize) -> Bytes {
        match self.copy {
            None => input.slice(..end),
            Some(mut copy) => {
                copy.extend_from_slice(&input[self.from..end]);
                copy.freeze()
            }
        }
    }
}

/// `text` as the inside of a JSON string.
pub(crate) fn json_escaped(text: &str) -> Bytes {
    let mut out = String::with_capacity(text.len());
    crate::upload::push_json_escaped(&mut out, text);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    const BASE: &str = "http://up:9090/fhir";
    const PUBLIC: &str = "https://proxy.example/p";

    fn rewriter() -> UrlRewriter {
        UrlRewriter::new(Bytes::from_static(BASE.as_bytes()), json_escaped(PUBLIC))
    }

    /// The output for `input` given in pieces cut at `cuts`.
    fn run(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut rewriter = rewriter();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            out.extend_from_slice(&rewriter.push(Bytes::copy_from_slice(&input[from..cut])));
            from = cut;
            assert!(rewriter.held.len() <= 2 * BASE.len() + 2);
        }
        out.extend_from_slice(&rewriter.finish());
        out
    }

    /// `input` rewritten whole, at every single cut and at every pair of cuts (short inputs)
    /// must all give `expected`.
    fn check(input: &str, expected: &str) {
        let input = input.as_bytes();
        assert_eq!(
            String::from_utf8(run(input, &[])).unwrap(),
            expected,
            "whole"
        );
        for cut in 0..=input.len() {
            assert_eq!(
                String::from_utf8_lossy(&run(input, &[cut])),
                expected,
                "cut at {cut}"
            );
        }
        if input.len() <= 80 {
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    assert_eq!(
                        String::from_utf8_lossy(&run(input, &[a, b])),
                        expected,
                        "cuts at {a} and {b}"
                    );
                }
            }
        }
        // One byte at a time.
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(String::from_utf8_lossy(&run(input, &every)), expected);
    }

    #[test]
    fn the_base_and_what_follows_it() {
        check(
            r#"{"fullUrl":"http://up:9090/fhir/Patient/1"}"#,
            r#"{"fullUrl":"https://proxy.example/p/Patient/1"}"#,
        );
        check(
            r#"["http://up:9090/fhir","http://up:9090/fhir?x=1","http://up:9090/fhir#a"]"#,
            r#"["https://proxy.example/p","https://proxy.example/p?x=1","https://proxy.example/p#a"]"#,
        );
    }

    #[test]
    fn only_at_the_start_of_a_string_and_at_a_boundary() {
        for untouched in [
            r#"{"url":"http://up:9090/fhirx/Patient/1"}"#,
            r#"{"url":"http://up:9090/fhi"}"#,
            r#"{"url":"see http://up:9090/fhir/Patient/1"}"#,
            r#"{"url":"http://other:9090/fhir/Patient/1"}"#,
            r#"{"url":"HTTP://up:9090/fhir/Patient/1"}"#,
            r#"{"url":"http://up:9090/fhir\"x"}"#,
            r#"{"url":"http://up:9090/fhir\u002fx"}"#,
            r#"{"url":"http:\\/\/up:9090/fhir/x"}"#,
            r#"{"a":"\"http://up:9090/fhir/x"}"#,
            r#"{"a":"x\\","b":"y"} http://up:9090/fhir/1"#,
            r#"{"a":"","b":"h","c":"http","d":"\\"}"#,
            "",
            "\"",
            "\"http://up:90",
        ] {
            check(untouched, untouched);
        }
    }

    #[test]
    fn escaped_slashes_in_the_base_and_after_it() {
        check(
            r#"{"reference":"http:\/\/up:9090\/fhir\/Binary\/1"}"#,
            r#"{"reference":"https://proxy.example/p\/Binary\/1"}"#,
        );
        check(
            r#"{"reference":"http:/\/up:9090/fhir\/Binary"}"#,
            r#"{"reference":"https://proxy.example/p\/Binary"}"#,
        );
        check(
            r#"{"a":"http:\/\/up:9090\/fhir"}"#,
            r#"{"a":"https://proxy.example/p"}"#,
        );
        check(
            r#"{"a":"http:\/\/up:9090\/fhirx"}"#,
            r#"{"a":"http:\/\/up:9090\/fhirx"}"#,
        );
        check(
            r#"{"a":"http:\/\/up:9090\/fhi\n"}"#,
            r#"{"a":"http:\/\/up:9090\/fhi\n"}"#,
        );
    }

    #[test]
    fn a_bundle() {
        let input = r#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"http://up:9090/fhir/Binary?_count=2"},{"relation":"next","url":"http:\/\/up:9090\/fhir?_getpages=x&_offset=2"}],"entry":[{"fullUrl":"http://up:9090/fhir/Binary/1","resource":{"resourceType":"Binary","id":"1","contentType":"text/plain","securityContext":{"reference":"http://up:9090/fhir/Patient/1"},"data":"aHR0cDovL3VwOjkwOTAvZmhpcg=="}},{"fullUrl":"http://elsewhere/fhir/Binary/2"}]}"#;
        let expected = r#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"https://proxy.example/p/Binary?_count=2"},{"relation":"next","url":"https://proxy.example/p?_getpages=x&_offset=2"}],"entry":[{"fullUrl":"https://proxy.example/p/Binary/1","resource":{"resourceType":"Binary","id":"1","contentType":"text/plain","securityContext":{"reference":"https://proxy.example/p/Patient/1"},"data":"aHR0cDovL3VwOjkwOTAvZmhpcg=="}},{"fullUrl":"http://elsewhere/fhir/Binary/2"}]}"#;
        check(input, expected);
        // Random cuts, many at a time.
        let mut rng = Rng(0x5eed_0fba);
        for _ in 0..2000 {
            let mut cuts: Vec<usize> = (0..rng.below(12))
                .map(|_| rng.below(input.len() + 1))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                String::from_utf8(run(input.as_bytes(), &cuts)).unwrap(),
                expected,
                "cuts {cuts:?}"
            );
        }
    }

    #[test]
    fn nothing_to_rewrite_gives_the_frames_back_uncopied() {
        let mut rewriter = rewriter();
        let frame = Bytes::from_static(br#"{"resourceType":"Binary","data":"AAAA\/BBB"#);
        let out = rewriter.push(frame.clone());
        assert_eq!(out, frame);
        assert_eq!(out.as_ptr(), frame.as_ptr());
        let frame = Bytes::from_static(br#"B"}"#);
        assert_eq!(rewriter.push(frame.clone()).as_ptr(), frame.as_ptr());
        // A string start that may be the base is held back, and only that.
        let frame = Bytes::from_static(br#"{"a":"http:"#);
        assert_eq!(&rewriter.push(frame)[..], br#"{"a":""#);
        assert!(rewriter.holds_bytes());
        assert_eq!(
            &rewriter.push(Bytes::from_static(b"x\"}"))[..],
            b"http:x\"}"
        );
        assert!(!rewriter.holds_bytes());
    }

    #[test]
    fn random_json_at_random_cuts() {
        // Strings built from pieces that are near the base, to find the cases between them.
        let pieces = [
            "http://up:9090/fhir",
            "http:\\/\\/up:9090\\/fhir",
            "http://up:9090/fhi",
            "/",
            "\\/",
            "?",
            "#",
            "x",
            "\\\"",
            "\\\\",
            "\\n",
            "h",
            "é",
        ];
        let mut rng = Rng(42);
        let mut rewritten = 0;
        for _ in 0..3000 {
            let mut json = String::from("[");
            let mut expected = String::from("[");
            for n in 0..rng.below(5) {
                if n > 0 {
                    json.push(',');
                    expected.push(',');
                }
                let mut value = String::new();
                for _ in 0..rng.below(4) {
                    value.push_str(rng.pick(&pieces));
                }
                json.push('"');
                json.push_str(&value);
                json.push('"');
                expected.push('"');
                expected.push_str(&expect_rewritten(&value));
                expected.push('"');
            }
            json.push(']');
            expected.push(']');
            rewritten += usize::from(json != expected);
            let input = json.as_bytes();
            for _ in 0..20 {
                let mut cuts: Vec<usize> = (0..rng.below(6))
                    .map(|_| rng.below(input.len() + 1))
                    .collect();
                cuts.sort_unstable();
                assert_eq!(
                    String::from_utf8(run(input, &cuts)).unwrap(),
                    expected,
                    "{json} cut at {cuts:?}"
                );
            }
        }
        assert!(rewritten > 300, "only {rewritten} cases rewrite anything");
    }

    /// The expected rewrite of a string's inside, worked out on its decoded value.
    fn expect_rewritten(raw: &str) -> String {
        let decoded: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
        let Some(rest) = decoded.strip_prefix(BASE) else {
            return raw.to_owned();
        };
        if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
            return raw.to_owned();
        }
        // Only a `\/` may stand for a `/` of the base; anything else escaped is not matched.
        let mut at = 0;
        let raw_bytes = raw.as_bytes();
        for &b in BASE.as_bytes() {
            if raw_bytes[at] == b {
                at += 1;
            } else if b == b'/' && raw_bytes[at..].starts_with(b"\\/") {
                at += 2;
            } else {
                return raw.to_owned();
            }
        }
        let after = &raw[at..];
        if !(after.is_empty() || after.starts_with(['/', '?', '#']) || after.starts_with("\\/")) {
            return raw.to_owned();
        }
        format!("{PUBLIC}{after}")
    }

    #[test]
    fn string_ends_found_in_blocks_are_those_a_byte_loop_finds() {
        fn naive(bytes: &[u8], at: usize) -> (usize, State) {
            let mut escaped = false;
            for (j, &b) in bytes.iter().enumerate().skip(at) {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    return (j + 1, State::Outside);
                }
            }
            let state = if escaped {
                State::Escaped
            } else {
                State::Inside
            };
            (bytes.len(), state)
        }
        let pieces = ["QUJD", "a", "\\/", "\\\\", "\\\"", "\\u00e9", "\"", "\\"];
        let mut rng = Rng(11);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.below(60) {
                text.push_str(rng.pick(&pieces));
            }
            let bytes = text.as_bytes();
            let at = rng.below(bytes.len() + 1);
            assert_eq!(string_end(bytes, at), naive(bytes, at), "{text} from {at}");
        }
    }

    #[test]
    fn the_public_base_is_escaped() {
        assert_eq!(&json_escaped("http://a/\"b\\")[..], br#"http://a/\"b\\"#);
        assert_eq!(&json_escaped("x\u{1}")[..], br"x\u0001");
    }
}
