//! Conditional and range requests on the raw document (RFC 9110 sections 13 and 14): the
//! client's `Range`, `If-Range`, `If-None-Match` and `If-Modified-Since`, the validators the
//! layer derives from the Binary's `meta`, and HTTP-dates.
//!
//! Everything here is pure: the response future decides *when* it can apply them.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};

/// What the client made its request depend on, recorded at request time (the layer removes
/// `Range` and `If-Range` before the inner service sees the request).
///
/// Most requests have none of these headers: they then cost one word in the request's state,
/// which moves with the response future.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Conditions(Option<Box<Recorded>>);

/// The conditions of a request that has any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Recorded {
    /// The `Range` value, when there is exactly one and the method is `GET` (range handling is
    /// defined for `GET` only).
    range: Option<String>,
    if_range: Option<String>,
    /// Every `If-None-Match` line, joined with commas.
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    /// Whether `Range` or `If-Range` came at all (see [`Conditions::names_a_range`]).
    named_range: bool,
}

/// What a request without conditions records.
static NONE: Recorded = Recorded {
    range: None,
    if_range: None,
    if_none_match: None,
    if_modified_since: None,
    named_range: false,
};

impl Conditions {
    /// Records the conditions of a `GET` (or, when `is_head`, a `HEAD`) request, in one pass
    /// over its headers rather than a hashed lookup for each name.
    pub(crate) fn from_request(headers: &HeaderMap, is_head: bool) -> Self {
        let recorded = Recorded::from_request(headers, is_head);
        Conditions((recorded != NONE).then(|| Box::new(recorded)))
    }

    fn recorded(&self) -> &Recorded {
        self.0.as_deref().unwrap_or(&NONE)
    }

    /// Whether the request has none of these headers: nothing depends on the validators.
    pub(crate) fn is_empty(&self) -> bool {
        self.recorded().is_empty()
    }

    /// Whether the request names `Range` or `If-Range` at all, usable or not: they must not
    /// reach the inner service.
    pub(crate) fn names_a_range(&self) -> bool {
        self.recorded().named_range
    }

    /// Whether the request asks for a range.
    pub(crate) fn has_range(&self) -> bool {
        self.recorded().range.is_some()
    }

    /// Whether answering needs the entity tag (with `*` too: a 304 carries it).
    pub(crate) fn wants_etag(&self) -> bool {
        self.recorded().wants_etag()
    }

    /// Whether answering needs the modification date.
    pub(crate) fn wants_date(&self) -> bool {
        self.recorded().wants_date()
    }

    /// Whether the response is 304 Not Modified (RFC 9110 section 13.2.2, steps 3 and 4):
    /// `If-None-Match` by weak comparison (a list, or `*`), else `If-Modified-Since`.
    pub(crate) fn not_modified(&self, validators: &Validators) -> bool {
        self.recorded().not_modified(validators)
    }

    /// The range to serve, when the request has one that applies (RFC 9110 section 13.1.5:
    /// `If-Range` must hold). None: serve the whole document.
    pub(crate) fn range(&self, validators: &Validators) -> Option<Ranges> {
        self.recorded().range(validators)
    }
}

impl Recorded {
    fn from_request(headers: &HeaderMap, is_head: bool) -> Self {
        /// The value of a header that must come exactly once.
        #[derive(Clone, Copy)]
        enum Single<'a> {
            Absent,
            Once(&'a HeaderValue),
            Repeated,
        }
        impl<'a> Single<'a> {
            fn see(&mut self, value: &'a HeaderValue) {
                *self = match self {
                    Single::Absent => Single::Once(value),
                    _ => Single::Repeated,
                };
            }
            fn text(self) -> Option<String> {
                match self {
                    Single::Once(value) => value.to_str().ok().map(str::to_owned),
                    _ => None,
                }
            }
        }
        let (mut range, mut if_range, mut if_modified_since) =
            (Single::Absent, Single::Absent, Single::Absent);
        let mut if_none_match: Option<String> = None;
        let mut named_range = false;
        for (name, value) in headers {
            if name == RANGE {
                range.see(value);
                named_range = true;
            } else if name == IF_RANGE {
                if_range.see(value);
                named_range = true;
            } else if name == IF_MODIFIED_SINCE {
                if_modified_since.see(value);
            } else if name == IF_NONE_MATCH {
                if let Ok(text) = value.to_str() {
                    match &mut if_none_match {
                        Some(joined) => {
                            joined.push(',');
                            joined.push_str(text);
                        }
                        None => if_none_match = Some(text.to_owned()),
                    }
                }
            }
        }
        Recorded {
            range: if is_head { None } else { range.text() },
            if_range: if_range.text(),
            if_none_match,
            if_modified_since: if_modified_since.text(),
            named_range,
        }
    }

    fn is_empty(&self) -> bool {
        self.range.is_none()
            && self.if_range.is_none()
            && self.if_none_match.is_none()
            && self.if_modified_since.is_none()
    }

    fn wants_etag(&self) -> bool {
        self.if_none_match.is_some()
            || (self.range.is_some() && self.if_range.as_deref().is_some_and(is_entity_tag_like))
    }

    fn wants_date(&self) -> bool {
        (self.if_none_match.is_none() && self.if_modified_since.is_some())
            || (self.range.is_some()
                && self
                    .if_range
                    .as_deref()
                    .is_some_and(|v| !is_entity_tag_like(v)))
    }

    fn not_modified(&self, validators: &Validators) -> bool {
        if let Some(list) = &self.if_none_match {
            if list.trim() == "*" {
                return true;
            }
            let Some(etag) = &validators.etag else {
                return false;
            };
            return entity_tags(list).is_some_and(|tags| tags.iter().any(|t| t.weak_eq(etag)));
        }
        match (&self.if_modified_since, validators.last_modified) {
            (Some(since), Some(modified)) => {
                httpdate::parse_http_date(since).is_ok_and(|since| modified <= since)
            }
            _ => false,
        }
    }

    fn range(&self, validators: &Validators) -> Option<Ranges> {
        let ranges = parse_range(self.range.as_deref()?)?;
        match &self.if_range {
            None => Some(ranges),
            Some(if_range) if if_range_holds(if_range, validators) => Some(ranges),
            Some(_) => None,
        }
    }
}

/// Whether an `If-Range` value is an entity tag rather than a date.
fn is_entity_tag_like(value: &str) -> bool {
    let value = value.trim_start();
    value.starts_with('"') || value.starts_with("W/")
}

/// `If-Range`: an entity tag holds only when both tags are strong and equal (a weak tag never
/// does); a date holds only when it is exactly the `Last-Modified` date.
fn if_range_holds(value: &str, validators: &Validators) -> bool {
    if is_entity_tag_like(value) {
        let (Some(given), Some(current)) = (EntityTag::parse_one(value), &validators.etag) else {
            return false;
        };
        return !given.weak && !current.weak && given.opaque == current.opaque;
    }
    match (
        httpdate::parse_http_date(value.trim()),
        validators.last_modified,
    ) {
        (Ok(given), Some(modified)) => given == modified,
        _ => false,
    }
}

/// The validators of the document: the inner service's `ETag` and `Last-Modified` if it set
/// them, else those the layer derived from `meta`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Validators {
    etag: Option<EntityTag>,
    last_modified: Option<SystemTime>,
}

impl Validators {
    /// The validators a response head carries.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        Validators {
            etag: headers
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .and_then(EntityTag::parse_one),
            last_modified: headers
                .get(LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v.trim()).ok()),
        }
    }
}

/// `W/"<meta.versionId>"`, when the Binary has a version id that can stand in an entity tag.
pub(crate) fn etag_of(version: Option<&str>) -> Option<HeaderValue> {
    let version = version?;
    let fits = !version.is_empty()
        && version.len() <= 256
        && version
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"');
    if !fits {
        return None;
    }
    // One buffer of the exact length: `Bytes` takes it over without another allocation.
    let mut text = Vec::with_capacity(version.len() + 4);
    text.extend_from_slice(b"W/\"");
    text.extend_from_slice(version.as_bytes());
    text.push(b'"');
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// `meta.lastUpdated` as an HTTP-date, when it is a valid FHIR instant between 1970 and 9999.
pub(crate) fn last_modified_of(instant: Option<&str>) -> Option<HeaderValue> {
    let instant = instant?;
    let time = instant_to_system_time(instant)?;
    // An HTTP-date is 29 characters long.
    let mut text = String::with_capacity(29);
    write!(text, "{}", httpdate::HttpDate::from(time)).ok()?;
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// Seconds from 1970 to the start of year 10000: HTTP-dates have four-digit years.
const YEAR_10000: i64 = 253_402_300_800;

/// A FHIR `instant` (RFC 3339 with an offset and optional fractional seconds) as a time,
/// truncated to whole seconds as HTTP-dates are. None before 1970 or from year 10000 on, which
/// HTTP-dates (and `httpdate`) cannot express.
pub(crate) fn instant_to_system_time(instant: &str) -> Option<SystemTime> {
    let parsed = time::OffsetDateTime::parse(
        instant.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    let seconds = parsed.unix_timestamp();
    if !(0..YEAR_10000).contains(&seconds) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(seconds as u64))
}

/// An entity tag: its opaque part (with the quotes) and whether it is weak.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EntityTag {
    weak: bool,
    opaque: String,
}

impl EntityTag {
    /// Exactly one entity tag, surrounding whitespace allowed.
    fn parse_one(text: &str) -> Option<EntityTag> {
        let (tag, rest) = EntityTag::parse_prefix(text.trim())?;
        rest.trim().is_empty().then_some(tag)
    }

    /// An entity tag at the start of `text`, and what follows it.
    fn parse_prefix(text: &str) -> Option<(EntityTag, &str)> {
        let (weak, text) = match text.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let body = text.strip_prefix('"')?;
        let end = body.find('"')?;
        let opaque = &body[..end];
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        Some((
            EntityTag {
                weak,
                opaque: opaque.to_owned(),
            },
            &body[end + 1..],
        ))
    }

    /// Weak comparison: the opaque parts match, weak or not.
    fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

/// A comma-separated list of entity tags (commas may stand inside a tag); None when malformed.
fn entity_tags(list: &str) -> Option<Vec<EntityTag>> {
    let mut tags = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        let (tag, after) = EntityTag::parse_prefix(rest)?;
        tags.push(tag);
        rest = after.trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return None;
        }
    }
}

/// One byte range as the client wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// `a-b`
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The first and last byte positions in a document of `length` bytes, or None when the
    /// range is not satisfiable (RFC 9110 section 14.1.2).
    pub(crate) fn resolve(self, length: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo(first, last) if first < length => Some((first, last.min(length - 1))),
            ByteRange::From(first) if first < length => Some((first, length - 1)),
            ByteRange::Suffix(n) if n > 0 && length > 0 => {
                Some((length.saturating_sub(n), length - 1))
            }
            _ => None,
        }
    }
}

/// A `Range` that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// A single range.
    One(ByteRange),
    /// Several ranges: the layer answers with the whole document, as RFC 9110 allows, rather
    /// than with `multipart/byteranges`.
    Many,
}

/// `bytes=` followed by a list of ranges; None when the header is not a valid byte-range set
/// (another unit, a last position before the first, junk), which is then ignored.
pub(crate) fn parse_range(value: &str) -> Option<Ranges> {
    let value = value.trim();
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let mut ranges = Vec::new();
    for spec in set.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let (first, last) = spec.split_once('-')?;
        let range = match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, true) => return None,
            (true, false) => ByteRange::Suffix(number(last)?),
            (false, true) => ByteRange::From(number(first)?),
            (false, false) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return None;
                }
                ByteRange::FromTo(first, last)
            }
        };
        ranges.push(range);
    }
    match ranges.as_slice() {
        [] => None,
        [one] => Some(Ranges::One(*one)),
        _ => Some(Ranges::Many),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(pairs: &[(&str, &str)]) -> Conditions {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Conditions::from_request(&headers, false)
    }

    fn validators(etag: Option<&str>, last_modified: Option<&str>) -> Validators {
        let mut headers = HeaderMap::new();
        if let Some(etag) = etag {
            headers.insert(ETAG, HeaderValue::from_str(etag).unwrap());
        }
        if let Some(date) = last_modified {
            headers.insert(LAST_MODIFIED, HeaderValue::from_str(date).unwrap());
        }
        Validators::from_headers(&headers)
    }

    #[test]
    fn range_parsing() {
        use ByteRange::*;
        assert_eq!(
            parse_range("bytes=0-499"),
            Some(Ranges::One(FromTo(0, 499)))
        );
        assert_eq!(parse_range("bytes=500-"), Some(Ranges::One(From(500))));
        assert_eq!(parse_range("bytes=-500"), Some(Ranges::One(Suffix(500))));
        assert_eq!(parse_range("Bytes = 5-5 "), Some(Ranges::One(FromTo(5, 5))));
        assert_eq!(parse_range("bytes=0-1,,"), Some(Ranges::One(FromTo(0, 1))));
        assert_eq!(parse_range("bytes=0-1, 5-"), Some(Ranges::Many));
        for invalid in [
            "bytes=5-4",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-2-3",
            "items=0-1",
            "bytes 0-1",
            "bytes=99999999999999999999-",
            "",
        ] {
            assert_eq!(parse_range(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn range_resolution() {
        use ByteRange::*;
        assert_eq!(FromTo(0, 9).resolve(100), Some((0, 9)));
        assert_eq!(FromTo(90, 200).resolve(100), Some((90, 99)));
        assert_eq!(FromTo(100, 200).resolve(100), None);
        assert_eq!(From(99).resolve(100), Some((99, 99)));
        assert_eq!(From(100).resolve(100), None);
        assert_eq!(Suffix(10).resolve(100), Some((90, 99)));
        assert_eq!(Suffix(1000).resolve(100), Some((0, 99)));
        assert_eq!(Suffix(0).resolve(100), None);
        assert_eq!(From(0).resolve(0), None);
        assert_eq!(Suffix(5).resolve(0), None);
    }

    #[test]
    fn entity_tag_lists() {
        let tags = entity_tags(r#"W/"1", "a,b" ,"c""#).unwrap();
        assert_eq!(tags.len(), 3);
        assert!(tags[0].weak);
        assert_eq!(tags[1].opaque, "a,b");
        assert!(entity_tags(r#""1" junk"#).is_none());
        assert!(entity_tags(r#"1"#).is_none());
        assert!(entity_tags(r#""unterminated"#).is_none());
        assert_eq!(entity_tags(" , ").unwrap().len(), 0);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let ours = validators(Some(r#"W/"3""#), None);
        assert!(conditions(&[("if-none-match", r#"W/"3""#)]).not_modified(&ours));
        assert!(conditions(&[("if-none-match", r#""3""#)]).not_modified(&ours));
        assert!(conditions(&[("if-none-match", r#""1", W/"3""#)]).not_modified(&ours));
        assert!(
            conditions(&[("if-none-match", r#""1""#), ("if-none-match", r#"W/"3""#)])
                .not_modified(&ours)
        );
        assert!(conditions(&[("if-none-match", "*")]).not_modified(&ours));
        assert!(conditions(&[("if-none-match", "*")]).not_modified(&Validators::default()));
        assert!(!conditions(&[("if-none-match", r#"W/"4""#)]).not_modified(&ours));
        assert!(!conditions(&[("if-none-match", "garbage")]).not_modified(&ours));
        assert!(!conditions(&[("if-none-match", r#""3""#)]).not_modified(&Validators::default()));
    }

    #[test]
    fn if_modified_since() {
        let ours = validators(None, Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        let since = |date| conditions(&[("if-modified-since", date)]).not_modified(&ours);
        assert!(since("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(since("Sun, 06 Nov 1994 08:49:38 GMT"));
        assert!(since("Sunday, 06-Nov-94 08:49:37 GMT"));
        assert!(!since("Sun, 06 Nov 1994 08:49:36 GMT"));
        assert!(!since("yesterday"));
        // If-None-Match, when present, decides alone.
        let both = conditions(&[
            ("if-none-match", r#""other""#),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!both.not_modified(&ours));
        assert!(
            !conditions(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")])
                .not_modified(&Validators::default())
        );
    }

    #[test]
    fn if_range_needs_a_strong_tag_or_the_exact_date() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let weak = validators(Some(r#"W/"3""#), Some(date));
        let strong = validators(Some(r#""3""#), Some(date));
        let range = |if_range: &str, v: &Validators| {
            conditions(&[("range", "bytes=0-1"), ("if-range", if_range)]).range(v)
        };
        let one = Some(Ranges::One(ByteRange::FromTo(0, 1)));
        assert_eq!(range(date, &weak), one);
        assert_eq!(range("Sun, 06 Nov 1994 08:49:38 GMT", &weak), None);
        assert_eq!(range(r#"W/"3""#, &weak), None);
        assert_eq!(range(r#""3""#, &weak), None);
        assert_eq!(range(r#""3""#, &strong), one);
        assert_eq!(range(r#""4""#, &strong), None);
        assert_eq!(range("junk", &strong), None);
        assert_eq!(conditions(&[("range", "bytes=0-1")]).range(&weak), one);
        assert_eq!(conditions(&[("range", "bytes=1-0")]).range(&weak), None);
    }

    #[test]
    fn what_a_request_needs_to_know() {
        assert!(conditions(&[("if-none-match", "*")]).wants_etag());
        assert!(!conditions(&[("if-none-match", "*")]).wants_date());
        assert!(conditions(&[("if-modified-since", "x")]).wants_date());
        let if_range_tag = conditions(&[("range", "bytes=0-1"), ("if-range", "\"a\"")]);
        assert!(if_range_tag.wants_etag() && !if_range_tag.wants_date());
        let if_range_date = conditions(&[
            ("range", "bytes=0-1"),
            ("if-range", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!if_range_date.wants_etag() && if_range_date.wants_date());
        // If-Range without Range means nothing.
        assert!(!conditions(&[("if-range", "\"a\"")]).wants_etag());
        // HEAD never serves ranges; two Range lines are ignored.
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        assert!(!Conditions::from_request(&headers, true).has_range());
        headers.append(RANGE, HeaderValue::from_static("bytes=2-3"));
        let twice = Conditions::from_request(&headers, false);
        assert!(!twice.has_range() && twice.is_empty() && twice.names_a_range());
        assert!(twice.0.is_some(), "a named range is recorded");
        // Headers that make nothing conditional record nothing.
        let mut plain = HeaderMap::new();
        plain.insert("accept", HeaderValue::from_static("*/*"));
        plain.insert("if-match", HeaderValue::from_static("\"a\""));
        let none = Conditions::from_request(&plain, false);
        assert!(none.0.is_none() && none.is_empty() && !none.names_a_range());
        // If-None-Match lines are joined; repeated If-Modified-Since is ignored.
        let joined = conditions(&[
            ("if-none-match", "\"a\""),
            ("if-none-match", "\"b\", \"c\""),
        ]);
        assert_eq!(
            joined.recorded().if_none_match.as_deref(),
            Some("\"a\",\"b\", \"c\"")
        );
        assert!(!joined.names_a_range());
        let since = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(
            !conditions(&[("if-modified-since", since), ("if-modified-since", since)]).wants_date()
        );
        assert!(conditions(&[("if-range", "\"a\"")]).names_a_range());
        assert!(conditions(&[]).is_empty() && !conditions(&[]).names_a_range());
    }

    #[test]
    fn validators_from_meta() {
        assert_eq!(etag_of(Some("3")).unwrap(), "W/\"3\"");
        assert_eq!(etag_of(Some("12")).unwrap(), "W/\"12\"");
        assert_eq!(
            last_modified_of(Some("2015-02-07T13:28:17.239+02:00")).unwrap(),
            "Sat, 07 Feb 2015 11:28:17 GMT"
        );
        assert_eq!(
            last_modified_of(Some("2024-01-31T23:59:59Z")).unwrap(),
            "Wed, 31 Jan 2024 23:59:59 GMT"
        );
        for bad in ["a\"b", "a b", "", "é"] {
            assert_eq!(etag_of(Some(bad)), None, "{bad}");
        }
        for bad in [
            "1969-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "2015-02-07",
            "2015-02-07T13:28:17",
            "2015-02-30T13:28:17Z",
            "not a date",
            "+10000-01-01T00:00:00Z",
        ] {
            assert_eq!(last_modified_of(Some(bad)), None, "{bad}");
        }
        assert_eq!(last_modified_of(None), None);
        assert_eq!(etag_of(None), None);
        assert_eq!(
            instant_to_system_time("9999-12-31T23:59:59.999999999-00:00"),
            Some(UNIX_EPOCH + Duration::from_secs(YEAR_10000 as u64 - 1))
        );
        assert_eq!(
            instant_to_system_time("1970-01-01T01:00:00+01:00"),
            Some(UNIX_EPOCH)
        );
    }
}
