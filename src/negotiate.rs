//! Choosing the representation of a Binary read: the raw document, FHIR JSON or FHIR XML.
//!
//! The rules (`_format` over `Accept`, q-values, what counts as asking for FHIR, when the
//! answer is 406) are written once, in `docs/negotiation.md`, which the crate documentation
//! includes; `decision_table` below checks them. This module implements them.
//!
//! The Binary's content type is only known once the inner service's body shows it, so a
//! [`Preference`] is recorded at request time and [`Preference::resolve`]d later.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, ACCEPT};
use mediatype::{MediaType, MediaTypeList, ReadParams};

/// A qvalue in thousandths: `0` is "not acceptable", [`Q_ONE`] is `q=1`.
type Weight = u16;

/// The weight of `q=1`, also the weight of a range that has no `q` parameter.
const Q_ONE: Weight = 1000;

/// The name of the FHIR query parameter that overrides `Accept`.
const FORMAT_PARAM: &str = "_format";

/// The representation a negotiated response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Representation {
    /// The document itself: the decoded bytes of the Binary's `data` (R4 and later) or
    /// `content` (DSTU2, STU3), served with the Binary's own `contentType`. This is what a
    /// client gets when it asks for nothing in particular, or for the document's media type.
    Native,
    /// The Binary resource as FHIR JSON (`application/fhir+json`, or `application/json+fhir`
    /// in the DSTU2 spelling): the inner service's response body, untouched.
    FhirJson,
    /// The Binary resource as FHIR XML (`application/fhir+xml`, or `application/xml+fhir` in
    /// the DSTU2 spelling): a `<Binary xmlns="http://hl7.org/fhir">` document.
    FhirXml,
}

/// Which spelling of the FHIR media type the client used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spelling {
    /// `application/fhir+json` or `application/fhir+xml` (STU3 and later).
    Current,
    /// `application/json+fhir` or `application/xml+fhir` (DSTU2).
    Dstu2,
    /// The client named no FHIR media type: `_format=json`, `_format=application/xml`, or a
    /// raw-document response.
    Unspecified,
}

/// The outcome of negotiation for one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve this representation; for FHIR JSON and XML, `spelling` is how the client named
    /// the media type, so the response can use the same one.
    Serve {
        /// The representation to serve.
        representation: Representation,
        /// The spelling the client used; [`Spelling::Unspecified`] for [`Representation::Native`].
        spelling: Spelling,
    },
    /// No representation the server can produce is acceptable to the client (406).
    NotAcceptable,
}

impl Decision {
    /// The raw document, which has no FHIR spelling.
    const NATIVE: Decision = Decision::Serve {
        representation: Representation::Native,
        spelling: Spelling::Unspecified,
    };
}

/// What the client asked for, recorded at request time.
///
/// It owns everything it needs, so it can be kept in a response future until the Binary's
/// content type is known.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Preference {
    source: Source,
}

/// Where the preference came from.
#[derive(Clone, Debug, Default, PartialEq)]
enum Source {
    /// Neither `_format` nor a usable `Accept` entry.
    #[default]
    Unstated,
    /// `_format` decided everything.
    Format(Decision),
    /// At least one `Accept` entry parsed (shared: see [`LAST_ACCEPT`]).
    Accept(Arc<AcceptList>),
}

/// The parsed `Accept` lines.
#[derive(Clone, Debug, PartialEq)]
struct AcceptList {
    /// The best explicit FHIR JSON range, if any.
    json: Option<FhirRange>,
    /// The best explicit FHIR XML range, if any.
    xml: Option<FhirRange>,
    /// Every range, sorted by key with one entry per key (the highest weight); never empty.
    ranges: Vec<Range>,
}

/// An explicit FHIR media range and how it was spelled.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FhirRange {
    q: Weight,
    spelling: Spelling,
}

/// One media range with its weight.
#[derive(Clone, Debug, PartialEq)]
struct Range {
    key: RangeKey,
    q: Weight,
}

/// What a media range matches, lowercased so lookups can compare ASCII case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RangeKey {
    /// `*/*`.
    Any,
    /// `type/*`.
    Type(Box<str>),
    /// `type/subtype`, where the subtype includes any `+suffix`.
    Exact(Box<str>, Box<str>),
}

impl Preference {
    /// Reads `_format` from the raw query (`uri.query()`, not yet decoded) and every Accept
    /// header.
    ///
    /// A `_format` parameter, even an empty or unknown one, makes `Accept` irrelevant.
    /// `release` is the `fhirVersion` media type parameter value of the configured release
    /// (`4.0`): a FHIR media range that names another one is not acceptable (`q=0`).
    #[must_use]
    pub(crate) fn from_request(
        query: Option<&str>,
        headers: &HeaderMap,
        release: &'static str,
    ) -> Preference {
        let format = query.and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == FORMAT_PARAM)
                .map(|(_, value)| format_decision(&value))
        });
        let source = match format {
            Some(decision) => Source::Format(decision),
            None => match only_accept_line(headers) {
                Some(line) if accepts_anything(line) => Source::Unstated,
                only => {
                    accept_list(headers, only, release).map_or(Source::Unstated, Source::Accept)
                }
            },
        };
        Preference { source }
    }

    /// The decision when it does not depend on the Binary's content type, else `None`.
    ///
    /// `Some(d)` is only returned when [`Preference::resolve`] gives `d` for every content
    /// type, valid or not; `None` means some content types would be decided differently. That
    /// is the case for `_format`, for a missing or unusable `Accept`, when an explicit FHIR range
    /// weighs at least as much as every other range (`application/fhir+json`), when every
    /// range weighs 0 (`*/*;q=0`: not acceptable), and when no FHIR range is acceptable but
    /// `*/*` and every other listed range are (`*/*`: native).
    #[must_use]
    pub(crate) fn fixed(&self) -> Option<Decision> {
        match &self.source {
            Source::Unstated => Some(Decision::NATIVE),
            Source::Format(decision) => Some(*decision),
            Source::Accept(list) => list.fixed(),
        }
    }

    /// The decision for a Binary whose `contentType` is `content_type` (a media type, maybe
    /// with parameters, which are ignored).
    ///
    /// A content type that is not a valid media type is matched by `*/*` only.
    #[must_use]
    pub(crate) fn resolve(&self, content_type: &str) -> Decision {
        match &self.source {
            Source::Unstated => Decision::NATIVE,
            Source::Format(decision) => *decision,
            Source::Accept(list) => list.resolve(content_type),
        }
    }

    /// Whether `_format` decided (so `Accept` was not read).
    #[must_use]
    pub(crate) fn is_format(&self) -> bool {
        matches!(self.source, Source::Format(_))
    }

    /// Whether the client's choice of representation is FHIR XML whatever the content type,
    /// so that an error OperationOutcome should be rendered as XML.
    ///
    /// True when `_format` asks for XML, or when `Accept` gives `q_xml > 0` and
    /// `q_xml > q_json` (a tie goes to JSON, as in [`Preference::resolve`]). False otherwise,
    /// including for an unknown `_format` and for a browser's `application/xml`.
    #[must_use]
    pub(crate) fn prefers_xml(&self) -> bool {
        match &self.source {
            Source::Unstated => false,
            Source::Format(decision) => matches!(
                decision,
                Decision::Serve {
                    representation: Representation::FhirXml,
                    ..
                }
            ),
            Source::Accept(list) => {
                let xml = weight(list.xml);
                xml > 0 && xml > weight(list.json)
            }
        }
    }
}

impl AcceptList {
    /// Collects the usable entries of every Accept line; `None` when there are none.
    fn from_headers(headers: &HeaderMap, release: &str) -> Option<AcceptList> {
        let mut list = AcceptList {
            json: None,
            xml: None,
            ranges: Vec::new(),
        };
        // A value with obs-text or controls is not something a client meant as a list of
        // media ranges; skip the line rather than guess at its bytes.
        for line in headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for entry in MediaTypeList::new(line).filter_map(Result::ok) {
                list.add(&entry, release);
            }
        }
        if list.ranges.is_empty() {
            return None;
        }
        // One entry per range keeps lookups linear and `fixed` simple; the highest weight wins
        // among duplicates, so listing a range twice never makes it less acceptable.
        list.ranges.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        list.ranges.dedup_by(|later, kept| {
            if later.key == kept.key {
                kept.q = kept.q.max(later.q);
                true
            } else {
                false
            }
        });
        Some(list)
    }

    /// Records one parsed entry, unless its range or weight is malformed. A FHIR range whose
    /// `fhirVersion` parameter names another release than `release` weighs 0.
    fn add(&mut self, entry: &MediaType<'_>, release: &str) {
        let Some(mut q) = entry_weight(entry) else {
            return;
        };
        let ty = entry.ty.as_str().to_ascii_lowercase();
        let subtype = full_subtype(entry);
        let key = match (ty.as_str(), subtype.as_str()) {
            ("*", "*") => RangeKey::Any,
            // `*/subtype` is not a media range (RFC 9110 allows only `*/*` and `type/*`).
            ("*", _) => return,
            (_, "*") => RangeKey::Type(ty.into()),
            _ => {
                if ty == "application" && is_fhir_subtype(&subtype) {
                    if !names_release(entry, release) {
                        q = 0;
                    }
                    match subtype.as_str() {
                        "fhir+json" => keep_best(&mut self.json, q, Spelling::Current),
                        "json+fhir" => keep_best(&mut self.json, q, Spelling::Dstu2),
                        "fhir+xml" => keep_best(&mut self.xml, q, Spelling::Current),
                        "xml+fhir" => keep_best(&mut self.xml, q, Spelling::Dstu2),
                        _ => {}
                    }
                }
                RangeKey::Exact(ty.into(), subtype.into())
            }
        };
        self.ranges.push(Range { key, q });
    }

    /// The larger of `q_json` and `q_xml`.
    fn fhir_weight(&self) -> Weight {
        weight(self.json).max(weight(self.xml))
    }

    /// FHIR JSON when `q_json >= q_xml`, else FHIR XML, with the spelling of the winning range.
    fn fhir_decision(&self) -> Decision {
        let (representation, best) = if weight(self.json) >= weight(self.xml) {
            (Representation::FhirJson, self.json)
        } else {
            (Representation::FhirXml, self.xml)
        };
        Decision::Serve {
            representation,
            spelling: best.map_or(Spelling::Unspecified, |r| r.spelling),
        }
    }

    fn resolve(&self, content_type: &str) -> Decision {
        let fhir = self.fhir_weight();
        let native = self.native_weight(content_type);
        if fhir > 0 && fhir >= native {
            self.fhir_decision()
        } else if native > 0 {
            Decision::NATIVE
        } else {
            Decision::NotAcceptable
        }
    }

    fn fixed(&self) -> Option<Decision> {
        // q_native is always the weight of one listed range or 0, and each listed range's
        // weight is reached by some content type (the range itself, `type/<unlisted>`, or
        // `<unlisted>/<unlisted>`). So the decision is fixed exactly when it is the same at
        // every one of those weights.
        let fhir = self.fhir_weight();
        let highest = self.ranges.iter().map(|r| r.q).max().unwrap_or(0);
        if fhir > 0 {
            return (fhir >= highest).then(|| self.fhir_decision());
        }
        if highest == 0 {
            return Some(Decision::NotAcceptable);
        }
        // Every content type is matched by `*/*` at least, and whatever range matches it most
        // specifically weighs more than 0.
        let has_any = self.ranges.iter().any(|r| r.key == RangeKey::Any);
        (has_any && self.ranges.iter().all(|r| r.q > 0)).then_some(Decision::NATIVE)
    }

    /// `q_native`: the weight of the most specific range matching `content_type`, or 0.
    fn native_weight(&self, content_type: &str) -> Weight {
        // Parameters are ignored, so only the part before them has to be a valid media type;
        // sloppy parameters must not make a document unmatchable.
        let parsed = MediaType::parse(essence(content_type)).ok();
        let (ty, subtype) = match &parsed {
            Some(media_type) => (media_type.ty.as_str(), full_subtype(media_type)),
            None => ("", String::new()),
        };
        let (mut exact, mut by_type, mut any) = (None, None, None);
        for range in &self.ranges {
            match &range.key {
                RangeKey::Any => any = Some(range.q),
                RangeKey::Type(t) if parsed.is_some() && t.eq_ignore_ascii_case(ty) => {
                    by_type = Some(range.q);
                }
                RangeKey::Exact(t, s)
                    if parsed.is_some()
                        && t.eq_ignore_ascii_case(ty)
                        && s.eq_ignore_ascii_case(&subtype) =>
                {
                    exact = Some(range.q);
                }
                _ => {}
            }
        }
        exact.or(by_type).or(any).unwrap_or(0)
    }
}

/// Whether `subtype` (lowercased, with its suffix) is one of the FHIR media types'.
fn is_fhir_subtype(subtype: &str) -> bool {
    matches!(subtype, "fhir+json" | "json+fhir" | "fhir+xml" | "xml+fhir")
}

/// Whether a FHIR media range names `release` (`4.0`) in its `fhirVersion` parameter, or
/// names no release at all (any parameter before `q`; the name is case-insensitive).
fn names_release(entry: &MediaType<'_>, release: &str) -> bool {
    entry
        .params()
        .take_while(|(name, _)| !name.as_str().eq_ignore_ascii_case("q"))
        .filter(|(name, _)| name.as_str().eq_ignore_ascii_case("fhirVersion"))
        .all(|(_, value)| value.unquoted_str() == release)
}

/// The weight of an explicit FHIR range, 0 when there is none.
fn weight(range: Option<FhirRange>) -> Weight {
    range.map_or(0, |r| r.q)
}

/// Keeps the heavier of two FHIR ranges; on a tie the current spelling wins, as it is the one
/// every FHIR version since STU3 uses.
fn keep_best(best: &mut Option<FhirRange>, q: Weight, spelling: Spelling) {
    let better = match best {
        None => true,
        Some(old) => q > old.q || (q == old.q && spelling == Spelling::Current),
    };
    if better {
        *best = Some(FhirRange { q, spelling });
    }
}

/// The subtype with its `+suffix`, lowercased: `mediatype` splits the suffix off, but
/// `application/fhir+json` and `application/json+fhir` must stay distinct.
fn full_subtype(media_type: &MediaType<'_>) -> String {
    let mut subtype = media_type.subty.as_str().to_ascii_lowercase();
    if let Some(suffix) = media_type.suffix {
        subtype.push('+');
        subtype.push_str(&suffix.as_str().to_ascii_lowercase());
    }
    subtype
}

/// The entry's weight: its first `q` parameter (name case-insensitive), `q=1` when it has
/// none, `None` when the value is not a qvalue. Parameters after the weight are accept-ext
/// and are ignored, as are media-type parameters before it.
fn entry_weight(entry: &MediaType<'_>) -> Option<Weight> {
    match entry
        .params()
        .find(|(name, _)| name.as_str().eq_ignore_ascii_case("q"))
    {
        Some((_, value)) => parse_qvalue(value.as_str()),
        None => Some(Q_ONE),
    }
}

/// Parses `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` into thousandths.
fn parse_qvalue(text: &str) -> Option<Weight> {
    let (&first, rest) = text.as_bytes().split_first()?;
    let fraction = match rest {
        [] => &[][..],
        [b'.', fraction @ ..] if fraction.len() <= 3 => fraction,
        _ => return None,
    };
    match first {
        b'0' if fraction.iter().all(u8::is_ascii_digit) => {
            // Pad to three digits: "0.5" is 500 thousandths.
            let digits = fraction.iter().chain(b"000").take(3);
            Some(digits.fold(0, |acc, d| acc * 10 + Weight::from(d - b'0')))
        }
        b'1' if fraction.iter().all(|&d| d == b'0') => Some(Q_ONE),
        _ => None,
    }
}

/// The longest `Accept` line [`LAST_ACCEPT`] keeps; real ones are a few hundred bytes.
const CACHED_ACCEPT_MAX: usize = 1024;

/// An `Accept` line, the release it was read for, and the list it gave (`None`: no usable
/// entry).
type ParsedAccept = Option<(Box<[u8]>, &'static str, Option<Arc<AcceptList>>)>;

thread_local! {
    /// The last single `Accept` line parsed on this thread, and what it gave. Browsers send
    /// the same line with every navigation, and parsing its dozen media ranges costs more than
    /// the rest of a small document's response. The line is copied, so that no request buffer
    /// is kept alive by it.
    static LAST_ACCEPT: RefCell<ParsedAccept> = const { RefCell::new(None) };
}

/// The request's `Accept` line, when it has exactly one.
fn only_accept_line(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut lines = headers.get_all(ACCEPT).iter();
    match (lines.next(), lines.next()) {
        (Some(line), None) => Some(line),
        _ => None,
    }
}

/// [`AcceptList::from_headers`], taken from [`LAST_ACCEPT`] when the request's only `Accept`
/// line (`only`, see [`only_accept_line`]) is the one parsed last on this thread.
fn accept_list(
    headers: &HeaderMap,
    only: Option<&HeaderValue>,
    release: &'static str,
) -> Option<Arc<AcceptList>> {
    let parse = || AcceptList::from_headers(headers, release).map(Arc::new);
    let line = match only {
        Some(line) if line.len() <= CACHED_ACCEPT_MAX => line.as_bytes(),
        _ => return parse(),
    };
    let cached = |last: &RefCell<ParsedAccept>| {
        // Never re-entered; if it were, parsing without the cache would still be right.
        let mut last = last.try_borrow_mut().ok()?;
        match last.as_ref() {
            Some((text, read_for, list)) if **text == *line && *read_for == release => {
                Some(list.clone())
            }
            _ => {
                let list = parse();
                *last = Some((line.into(), release, list.clone()));
                Some(list)
            }
        }
    };
    // `try_with` fails only while the thread is being torn down.
    LAST_ACCEPT
        .try_with(cached)
        .ok()
        .flatten()
        .unwrap_or_else(parse)
}

/// Whether the only `Accept` line is `*/*`, as curl and many HTTP libraries send it: that asks
/// for nothing in particular, and every decision it gives is the one for no `Accept` at all,
/// so the line needs no parsing.
fn accepts_anything(only_line: &HeaderValue) -> bool {
    only_line.as_bytes().trim_ascii() == b"*/*"
}

/// A media type without its parameters (`type/subtype`, trimmed, case kept).
pub(crate) fn essence(media_type: &str) -> &str {
    // A plain byte loop: on strings this short, a searcher's set-up costs more than the search.
    let end = media_type
        .bytes()
        .position(|b| b == b';')
        .unwrap_or(media_type.len());
    media_type[..end].trim()
}

/// The decision a `_format` value (already form-decoded) asks for.
fn format_decision(value: &str) -> Decision {
    let essence = essence(value);
    // Form decoding turned an unescaped `+` into a space: put it back.
    let essence = essence.replace(' ', "+").to_ascii_lowercase();
    let (representation, spelling) = match essence.as_str() {
        "json" | "application/json" | "text/json" => {
            (Representation::FhirJson, Spelling::Unspecified)
        }
        "application/fhir+json" => (Representation::FhirJson, Spelling::Current),
        "application/json+fhir" => (Representation::FhirJson, Spelling::Dstu2),
        "xml" | "application/xml" | "text/xml" => (Representation::FhirXml, Spelling::Unspecified),
        "application/fhir+xml" => (Representation::FhirXml, Spelling::Current),
        "application/xml+fhir" => (Representation::FhirXml, Spelling::Dstu2),
        _ => return Decision::NotAcceptable,
    };
    Decision::Serve {
        representation,
        spelling,
    }
}

/// Removes every `_format` parameter from a raw query string, keeping every other parameter
/// byte for byte and in order (empty pairs included).
///
/// A parameter is `_format` when its name form-decodes to `_format`, the same test
/// [`Preference::from_request`] uses, so `%5Fformat=xml` goes too. Returns `None` when nothing
/// is left, so the URI gets no `?`; returns the query borrowed when it holds no `_format`.
#[must_use]
pub(crate) fn strip_format(query: &str) -> Option<Cow<'_, str>> {
    let is_format = |pair: &str| {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| name == FORMAT_PARAM)
    };
    let kept: Cow<'_, str> = if query.split('&').any(is_format) {
        let kept: Vec<&str> = query.split('&').filter(|pair| !is_format(pair)).collect();
        Cow::Owned(kept.join("&"))
    } else {
        Cow::Borrowed(query)
    };
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const JSON: Decision = Decision::Serve {
        representation: Representation::FhirJson,
        spelling: Spelling::Current,
    };
    const JSON_DSTU2: Decision = Decision::Serve {
        representation: Representation::FhirJson,
        spelling: Spelling::Dstu2,
    };
    const JSON_PLAIN: Decision = Decision::Serve {
        representation: Representation::FhirJson,
        spelling: Spelling::Unspecified,
    };
    const XML: Decision = Decision::Serve {
        representation: Representation::FhirXml,
        spelling: Spelling::Current,
    };
    const XML_DSTU2: Decision = Decision::Serve {
        representation: Representation::FhirXml,
        spelling: Spelling::Dstu2,
    };
    const XML_PLAIN: Decision = Decision::Serve {
        representation: Representation::FhirXml,
        spelling: Spelling::Unspecified,
    };
    const NATIVE: Decision = Decision::NATIVE;
    const NOT: Decision = Decision::NotAcceptable;

    const CHROMIUM: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                            image/webp,image/apng,*/*;q=0.8";
    const PDF: &str = "application/pdf";
    const JPEG: &str = "image/jpeg";

    fn headers(accept: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in accept {
            map.append(ACCEPT, HeaderValue::from_str(line).unwrap());
        }
        map
    }

    #[test]
    fn accept_anything_alone_decides_as_no_accept() {
        let parsed = Preference {
            source: Source::Accept(Arc::new(
                AcceptList::from_headers(&headers(&["*/*"]), "4.0").unwrap(),
            )),
        };
        let unstated = preference(None, &[]);
        for line in ["*/*", " */* "] {
            assert_eq!(preference(None, &[line]), unstated, "{line:?}");
        }
        for content_type in [
            PDF,
            JPEG,
            "text/html",
            "application/fhir+json",
            "nonsense",
            "",
        ] {
            assert_eq!(parsed.resolve(content_type), unstated.resolve(content_type));
        }
        assert_eq!(parsed.fixed(), unstated.fixed());
        assert_eq!(parsed.prefers_xml(), unstated.prefers_xml());
        assert_eq!(parsed.is_format(), unstated.is_format());
        // Anything more is parsed as it stands.
        for lines in [
            &["*/*;q=0"][..],
            &["*/*", "application/fhir+xml"],
            &["*/*, text/html"],
        ] {
            assert!(
                matches!(preference(None, lines).source, Source::Accept(_)),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn the_last_accept_line_is_parsed_once_a_thread() {
        let list = |accept: &[&str]| match preference(None, accept).source {
            Source::Accept(list) => list,
            other => panic!("{other:?}"),
        };
        let first = list(&[CHROMIUM]);
        let again = list(&[CHROMIUM]);
        assert!(Arc::ptr_eq(&first, &again));
        // Another line is parsed, and decides for itself.
        let xml = "application/fhir+xml";
        assert!(!Arc::ptr_eq(&list(&[xml]), &first));
        assert_eq!(
            decide(None, &[xml], PDF),
            decide(None, &["application/fhir+xml "], PDF)
        );
        assert_eq!(
            preference(None, &[xml]).fixed(),
            Some(Decision::Serve {
                representation: Representation::FhirXml,
                spelling: Spelling::Current
            })
        );
        assert_eq!(preference(None, &[CHROMIUM]).fixed(), Some(NATIVE));
        assert_eq!(*list(&[CHROMIUM]), *first);
        // Several lines are read together, never from the cache.
        assert_eq!(
            preference(None, &[CHROMIUM, xml]).fixed(),
            preference(None, &[&format!("{CHROMIUM}, {xml}")]).fixed()
        );
        // A line that parses to nothing is remembered as nothing.
        assert_eq!(preference(None, &["nonsense"]), preference(None, &[]));
        assert_eq!(preference(None, &["nonsense"]), preference(None, &[]));
        // On another thread, a parse of its own.
        let theirs = std::thread::spawn(|| match preference(None, &[CHROMIUM]).source {
            Source::Accept(list) => list,
            other => panic!("{other:?}"),
        })
        .join()
        .unwrap();
        assert!(!Arc::ptr_eq(&theirs, &list(&[CHROMIUM])));
        assert_eq!(theirs, list(&[CHROMIUM]));
    }

    fn preference(query: Option<&str>, accept: &[&str]) -> Preference {
        Preference::from_request(query, &headers(accept), "4.0")
    }

    /// Resolves and checks that `fixed`, when it answers, agrees.
    fn decide(query: Option<&str>, accept: &[&str], content_type: &str) -> Decision {
        let pref = preference(query, accept);
        let decision = pref.resolve(content_type);
        if let Some(fixed) = pref.fixed() {
            assert_eq!(
                fixed, decision,
                "fixed() disagrees for {query:?} {accept:?}"
            );
        }
        decision
    }

    #[test]
    fn decision_table() {
        #[rustfmt::skip]
        let cases: &[(Option<&str>, &[&str], &str, Decision)] = &[
            // Nothing asked.
            (None, &[], PDF, NATIVE),
            (Some(""), &[], PDF, NATIVE),
            (Some("a=1"), &[], JPEG, NATIVE),
            (None, &[""], PDF, NATIVE),
            (None, &["   "], PDF, NATIVE),
            (None, &["*/*"], PDF, NATIVE),
            // A browser navigating to the Binary gets the document.
            (None, &[CHROMIUM], PDF, NATIVE),
            (None, &[CHROMIUM], JPEG, NATIVE),
            (None, &[CHROMIUM], "application/xml", NATIVE),
            // Explicit FHIR.
            (None, &["application/fhir+json"], PDF, JSON),
            (None, &["application/json+fhir"], PDF, JSON_DSTU2),
            (None, &["application/fhir+xml"], PDF, XML),
            (None, &["application/xml+fhir"], PDF, XML_DSTU2),
            (None, &["application/fhir+xml;q=0.9, */*;q=0.1"], PDF, XML),
            (None, &["application/fhir+json, application/fhir+xml"], PDF, JSON),
            // Plain JSON and XML are not FHIR.
            (None, &["application/json"], PDF, NOT),
            (None, &["application/xml"], "application/xml", NATIVE),
            (None, &["application/json, */*"], PDF, NATIVE),
            // The Binary's own type.
            (None, &["application/pdf"], JPEG, NOT),
            (None, &["application/pdf"], PDF, NATIVE),
            (None, &["image/*"], JPEG, NATIVE),
            (None, &["image/*"], PDF, NOT),
            (None, &["image/*;q=0, */*"], JPEG, NOT),
            (None, &["image/*;q=0, */*"], PDF, NATIVE),
            (None, &["image/jpeg;q=0, image/*"], JPEG, NOT),
            (None, &["image/jpeg, image/*;q=0"], JPEG, NATIVE),
            (None, &["image/jpeg, image/*;q=0"], "image/png", NOT),
            // q=0 is never acceptable.
            (None, &["*/*;q=0"], PDF, NOT),
            (None, &["application/fhir+json;q=0"], PDF, NOT),
            (None, &["application/fhir+json;q=0, */*"], PDF, NATIVE),
            (None, &["application/fhir+json;q=0, */*"], "application/fhir+json", NOT),
            // A FHIR content type asked for as FHIR gives the resource.
            (None, &["application/fhir+json"], "application/fhir+json", JSON),
            (None, &["application/fhir+json"], "application/fhir+json; charset=utf-8", JSON),
            (None, &["application/fhir+json;q=0.5, application/*"], "application/fhir+json", JSON),
            // Two Accept lines are one list.
            (None, &["image/jpeg;q=0.5", "application/fhir+json"], JPEG, JSON),
            (None, &["application/fhir+json;q=0.5", "image/jpeg"], JPEG, NATIVE),
            (None, &["application/fhir+xml", "application/fhir+json;q=0.4"], JPEG, XML),
            (None, &["application/pdf", "image/*"], JPEG, NATIVE),
            // _format overrides Accept.
            (Some("_format=xml"), &["application/fhir+json"], PDF, XML_PLAIN),
            (Some("_format=json"), &["application/fhir+xml"], PDF, JSON_PLAIN),
            (Some("_format=json"), &["*/*"], PDF, JSON_PLAIN),
            (Some("_format=xml"), &[], "application/fhir+json", XML_PLAIN),
            (Some("_format=application/fhir+json"), &[], PDF, JSON),
            (Some("_format=application%2Ffhir%2Bjson"), &[], PDF, JSON),
            (Some("_format=application/fhir%20json"), &[], PDF, JSON),
            (Some("_format=application/json+fhir"), &[], PDF, JSON_DSTU2),
            (Some("_format=application/fhir+xml"), &[], PDF, XML),
            (Some("_format=application/xml+fhir"), &[], PDF, XML_DSTU2),
            (Some("_format=application/json"), &[], PDF, JSON_PLAIN),
            (Some("_format=application/xml"), &[], PDF, XML_PLAIN),
            (Some("_format=text/json"), &[], PDF, JSON_PLAIN),
            (Some("_format=text/xml"), &[], PDF, XML_PLAIN),
            (Some("_format=json;fhirVersion=4.0"), &[], PDF, JSON_PLAIN),
            (Some("_format=application/fhir+json;fhirVersion=4.0"), &[], PDF, JSON),
            (Some("_format=application/fhir%2Bxml%3Bcharset%3Dutf-8"), &[], PDF, XML),
            (Some("_format=xml%20;%20charset=utf-8"), &[], PDF, XML_PLAIN),
            (Some("_format=+json+"), &[], PDF, JSON_PLAIN),
            (Some("_format=JSON"), &[], PDF, JSON_PLAIN),
            (Some("_format=Application/FHIR+XML"), &[], PDF, XML),
            (Some("x=1&_format=xml&y=2"), &[], PDF, XML_PLAIN),
            (Some("%5Fformat=xml"), &[], PDF, XML_PLAIN),
            // The first _format counts.
            (Some("_format=xml&_format=json"), &[], PDF, XML_PLAIN),
            (Some("_format=ttl&_format=json"), &[], PDF, NOT),
            // Unknown _format is 406 even when Accept would do.
            (Some("_format=ttl"), &[], PDF, NOT),
            (Some("_format=ttl"), &["*/*"], PDF, NOT),
            (Some("_format=html"), &[], "text/html", NOT),
            (Some("_format=application/pdf"), &[], PDF, NOT),
            (Some("_format=%FF%00garbage"), &[], PDF, NOT),
            (Some("_format="), &[], PDF, NOT),
            (Some("_format"), &[], PDF, NOT),
            (Some("_format=jsonx"), &[], PDF, NOT),
            // Only the exact name counts.
            (Some("_FORMAT=xml"), &[], PDF, NATIVE),
            (Some("format=xml"), &[], PDF, NATIVE),
            (Some("x=_format"), &[], PDF, NATIVE),
            // Case.
            (None, &["APPLICATION/FHIR+JSON"], PDF, JSON),
            (None, &["Application/Json+FHIR"], PDF, JSON_DSTU2),
            (None, &["IMAGE/*"], "image/JPEG", NATIVE),
            (None, &["image/jpeg"], "IMAGE/JPEG", NATIVE),
            (None, &["application/pdf;Q=0"], PDF, NOT),
            // Parameters are ignored for matching.
            (None, &["application/fhir+json;fhirVersion=4.0"], PDF, JSON),
            (None, &["application/fhir+json; fhirVersion=4.0; q=0.5, */*;q=0.4"], PDF, JSON),
            (None, &["text/plain;charset=utf-8"], "text/plain; charset=iso-8859-1", NATIVE),
            (None, &["text/plain"], "text/plain;charset=utf-8", NATIVE),
            (None, &["text/plain"], "text/plain; name=a b.txt", NATIVE),
            (None, &["application/fhir+json;q=0.5;level=1, */*;q=0.6"], PDF, NATIVE),
            // Malformed entries are skipped.
            (None, &["garbage, image/jpeg"], JPEG, NATIVE),
            (None, &["garbage, image/jpeg"], PDF, NOT),
            (None, &["garbage"], PDF, NATIVE),
            (None, &[",,, ;;"], PDF, NATIVE),
            (None, &["application/fhir+json;q=1.5"], PDF, NATIVE),
            (None, &["application/fhir+json;q=1.5, image/jpeg"], PDF, NOT),
            (None, &["application/fhir+json;q=abc, image/jpeg"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=\"0.5\", image/jpeg"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=, image/jpeg"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=0.5000, image/jpeg;q=0.1"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=-1, */*;q=0.1"], PDF, NATIVE),
            (None, &["*/fhir+json, image/jpeg"], JPEG, NATIVE),
            (None, &["*/fhir+json"], PDF, NATIVE),
            (None, &["application/fhir+json;;q=0.1, image/jpeg"], PDF, NOT),
            (None, &["application/fhir+json q=0.1, image/jpeg"], JPEG, NATIVE),
            // Ties and three decimals.
            (None, &["application/fhir+json;q=0.8, image/jpeg;q=0.8"], JPEG, JSON),
            (None, &["application/fhir+json;q=0.7, image/*;q=0.8"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=0.5, application/fhir+xml;q=0.5"], PDF, JSON),
            (None, &["application/fhir+json;q=0.501, image/jpeg;q=0.5"], JPEG, JSON),
            (None, &["application/fhir+json;q=0.499, image/jpeg;q=0.5"], JPEG, NATIVE),
            (None, &["application/fhir+xml;q=0.001, application/fhir+json;q=0"], PDF, XML),
            (None, &["application/fhir+json;q=0.8, image/jpeg;q=0.2, image/jpeg;q=0.9"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=0.8, image/jpeg;q=0.9, image/jpeg;q=0.2"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=1.000, image/jpeg"], JPEG, JSON),
            (None, &["application/fhir+json;q=1., image/jpeg"], JPEG, JSON),
            (None, &["application/fhir+json;q=0., image/jpeg"], JPEG, NATIVE),
            (None, &["application/fhir+json;q=1.001, image/jpeg"], PDF, NOT),
            // Accept-ext after the weight is ignored; the first q is the weight.
            (None, &["application/fhir+json;q=0.3;q=0.9, */*;q=0.5"], PDF, NATIVE),
            (None, &["application/fhir+json;q=0.9;ext=1, */*;q=0.5"], PDF, JSON),
            // Spelling of the winning range.
            (None, &["application/json+fhir;q=0.9, application/fhir+json;q=0.5"], PDF, JSON_DSTU2),
            (None, &["application/json+fhir;q=0.5, application/fhir+json;q=0.9"], PDF, JSON),
            (None, &["application/json+fhir, application/fhir+json"], PDF, JSON),
            (None, &["application/fhir+json, application/json+fhir"], PDF, JSON),
            (None, &["application/xml+fhir;q=0.9, application/fhir+xml;q=0.5"], PDF, XML_DSTU2),
            (None, &["application/xml+fhir, application/fhir+json;q=0.5"], PDF, XML_DSTU2),
            (None, &["application/xml+fhir;q=0.5, application/fhir+json"], PDF, JSON),
        ];
        for (query, accept, content_type, expected) in cases {
            assert_eq!(
                decide(*query, accept, content_type),
                *expected,
                "query {query:?}, accept {accept:?}, content type {content_type:?}"
            );
        }
    }

    #[test]
    fn fixed_where_the_content_type_cannot_matter() {
        let fixed = |query: Option<&str>, accept: &[&str]| preference(query, accept).fixed();
        assert_eq!(fixed(None, &[]), Some(NATIVE));
        assert_eq!(fixed(None, &["*/*"]), Some(NATIVE));
        assert_eq!(fixed(None, &[CHROMIUM]), Some(NATIVE));
        assert_eq!(fixed(None, &["garbage"]), Some(NATIVE));
        assert_eq!(fixed(None, &["application/fhir+json"]), Some(JSON));
        assert_eq!(fixed(None, &["application/json+fhir"]), Some(JSON_DSTU2));
        assert_eq!(
            fixed(None, &["application/fhir+xml;q=0.9, */*;q=0.1"]),
            Some(XML)
        );
        assert_eq!(fixed(None, &["*/*;q=0"]), Some(NOT));
        assert_eq!(fixed(None, &["application/fhir+json;q=0"]), Some(NOT));
        assert_eq!(fixed(Some("_format=xml"), &["image/*"]), Some(XML_PLAIN));
        assert_eq!(fixed(Some("_format=ttl"), &[]), Some(NOT));
        // These depend on the document's type.
        assert_eq!(fixed(None, &["image/*"]), None);
        assert_eq!(fixed(None, &["application/pdf"]), None);
        assert_eq!(fixed(None, &["image/*;q=0, */*"]), None);
        assert_eq!(fixed(None, &["application/fhir+json;q=0.5, */*"]), None);
        assert_eq!(fixed(None, &["application/fhir+json;q=0, */*"]), None);
    }

    #[test]
    fn prefers_xml() {
        let prefers =
            |query: Option<&str>, accept: &[&str]| preference(query, accept).prefers_xml();
        assert!(prefers(Some("_format=xml"), &["application/fhir+json"]));
        assert!(prefers(Some("_format=application/xml+fhir"), &[]));
        assert!(prefers(Some("_format=text/xml"), &[]));
        assert!(!prefers(Some("_format=json"), &["application/fhir+xml"]));
        assert!(!prefers(Some("_format=ttl"), &["application/fhir+xml"]));
        assert!(prefers(None, &["application/fhir+xml"]));
        assert!(prefers(None, &["application/xml+fhir"]));
        assert!(prefers(None, &["application/fhir+xml;q=0.9, */*;q=0.1"]));
        assert!(prefers(None, &["image/jpeg, application/fhir+xml;q=0.1"]));
        assert!(prefers(
            None,
            &["application/fhir+json;q=0.4", "application/fhir+xml;q=0.5"]
        ));
        assert!(!prefers(None, &[]));
        assert!(!prefers(None, &[CHROMIUM]));
        assert!(!prefers(None, &["application/xml"]));
        assert!(!prefers(None, &["application/fhir+xml;q=0"]));
        assert!(!prefers(
            None,
            &["application/fhir+xml;q=0.5, application/fhir+json;q=0.5"]
        ));
        assert!(!prefers(None, &["application/fhir+json"]));
    }

    #[test]
    fn accept_line_that_is_not_visible_ascii_is_skipped() {
        let mut map = HeaderMap::new();
        map.append(
            ACCEPT,
            HeaderValue::from_bytes(b"application/fhir+json;x=\xe9").unwrap(),
        );
        let pref = Preference::from_request(None, &map, "4.0");
        assert_eq!(pref.fixed(), Some(NATIVE));
        assert_eq!(pref.resolve(PDF), NATIVE);

        map.append(ACCEPT, HeaderValue::from_static("image/jpeg"));
        let pref = Preference::from_request(None, &map, "4.0");
        assert_eq!(pref.resolve(JPEG), NATIVE);
        assert_eq!(pref.resolve(PDF), NOT);
    }

    #[test]
    fn a_fhir_version_parameter_must_name_the_configured_release() {
        let decide = |accept: &str, release: &'static str| {
            let pref = Preference::from_request(None, &headers(&[accept]), release);
            (pref.fixed(), pref.prefers_xml())
        };
        for accept in [
            "application/fhir+xml; fhirVersion=4.0",
            "application/fhir+xml;FHIRVERSION=\"4.0\"",
            "application/fhir+xml;fhirversion=4.0;q=0.9, application/fhir+json;q=0.5",
        ] {
            assert_eq!(decide(accept, "4.0"), (Some(XML), true), "{accept}");
        }
        // Another release: not acceptable, and not a preference for XML.
        for (accept, release) in [
            ("application/fhir+xml; fhirVersion=3.0", "4.0"),
            ("application/fhir+xml; fhirVersion=4.0", "5.0"),
            ("application/fhir+xml; fhirVersion=4", "4.0"),
            ("application/fhir+json; fhirVersion=4.3", "4.0"),
        ] {
            assert_eq!(decide(accept, release), (Some(NOT), false), "{accept}");
        }
        // The range of the right release wins over the other.
        let accept = "application/fhir+xml;fhirVersion=3.0, application/fhir+json;fhirVersion=4.0";
        assert_eq!(decide(accept, "4.0"), (Some(JSON), false));
        assert!(decide(accept, "3.0").1);
        // The same line read for another release is read again, not taken from the cache.
        let accept = "application/fhir+xml;fhirVersion=5.0";
        assert_eq!(decide(accept, "5.0"), (Some(XML), true));
        assert_eq!(decide(accept, "4.0"), (Some(NOT), false));
        // Only FHIR ranges carry it: elsewhere it is just a parameter.
        assert_eq!(
            decide("application/pdf;fhirVersion=3.0", "4.0").0,
            None,
            "the document's own type"
        );
    }

    #[test]
    fn other_headers_are_not_read() {
        let mut map = HeaderMap::new();
        map.append(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json"),
        );
        map.append(
            http::header::ACCEPT_CHARSET,
            HeaderValue::from_static("utf-8"),
        );
        assert_eq!(
            Preference::from_request(None, &map, "4.0").fixed(),
            Some(NATIVE)
        );
    }

    #[test]
    fn invalid_content_type_is_matched_by_any_only() {
        let pref = preference(None, &["*/*;q=0.5, image/*"]);
        assert_eq!(pref.resolve("not a media type"), NATIVE);
        assert_eq!(pref.resolve(""), NATIVE);
        let pref = preference(None, &["image/*"]);
        assert_eq!(pref.resolve("image"), NOT);
        assert_eq!(pref.resolve("image/"), NOT);
        assert_eq!(pref.resolve(""), NOT);
    }

    #[test]
    fn qvalue_grammar() {
        let ok = [
            ("0", 0),
            ("0.", 0),
            ("0.0", 0),
            ("0.000", 0),
            ("0.001", 1),
            ("0.5", 500),
            ("0.05", 50),
            ("0.123", 123),
            ("0.999", 999),
            ("1", 1000),
            ("1.", 1000),
            ("1.0", 1000),
            ("1.000", 1000),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_qvalue(text), Some(expected), "{text}");
        }
        let bad = [
            "", ".5", "1.5", "1.001", "2", "0.1234", "00.1", "0,5", "-0", "+1", "0.5 ", " 0.5",
            "1e0", "0.a", "\"1\"", "0..1",
        ];
        for text in bad {
            assert_eq!(parse_qvalue(text), None, "{text:?}");
        }
    }

    #[test]
    fn strip_format_keeps_everything_else() {
        let cases: &[(&str, Option<&str>)] = &[
            ("_format=xml&x=1", Some("x=1")),
            ("a=1&_format=xml&b=2", Some("a=1&b=2")),
            ("a=1&_format=xml", Some("a=1")),
            ("_format=xml", None),
            ("_format=xml&_format=json", None),
            ("_format", None),
            ("_format=xml&", None),
            ("", None),
            ("%5Fformat=xml", None),
            ("%5fformat=xml&a=%2B+b", Some("a=%2B+b")),
            ("a=1&b=2", Some("a=1&b=2")),
            ("a=1&&b=2", Some("a=1&&b=2")),
            ("a=1&&_format=xml&b=2", Some("a=1&&b=2")),
            ("&a=1&", Some("&a=1&")),
            ("a=%2F&_format=json&c=x+y&d", Some("a=%2F&c=x+y&d")),
            (
                "x=_format&_formatx=1&_FORMAT=2",
                Some("x=_format&_formatx=1&_FORMAT=2"),
            ),
            ("_format=a=b&c", Some("c")),
            ("a=%zz&_format=xml", Some("a=%zz")),
        ];
        for (query, expected) in cases {
            assert_eq!(strip_format(query).as_deref(), *expected, "{query:?}");
        }
    }

    #[test]
    fn strip_format_borrows_when_there_is_no_format() {
        assert!(matches!(
            strip_format("a=1&b=2"),
            Some(Cow::Borrowed("a=1&b=2"))
        ));
        assert!(matches!(
            strip_format("_format=xml&b=2"),
            Some(Cow::Owned(_))
        ));
    }

    #[test]
    fn preference_can_live_in_a_future() {
        fn assert_bounds<T: Send + Sync + Clone + 'static>() {}
        assert_bounds::<Preference>();
        assert_bounds::<Decision>();
        assert_bounds::<Representation>();
    }

    use crate::test_rng::Rng;

    const RANGES: &[&str] = &[
        "*/*",
        "image/*",
        "application/*",
        "text/*",
        "image/jpeg",
        "IMAGE/PNG",
        "application/pdf",
        "application/xml",
        "application/json",
        "text/html",
        "application/fhir+json",
        "application/json+fhir",
        "application/fhir+xml",
        "application/xml+fhir",
        "Application/FHIR+JSON;fhirVersion=4.0",
        "garbage",
        "*/json",
        "",
    ];
    const WEIGHTS: &[&str] = &[
        "", ";q=0", ";q=0.1", ";q=0.5", ";q=0.500", ";q=0.8", ";q=0.9", ";q=1", ";Q=0.5", ";q=1.5",
        ";q=x",
    ];
    /// Content types covering every range above, plus ones no exact range names.
    const CONTENT_TYPES: &[&str] = &[
        "image/jpeg",
        "image/png",
        "image/gif",
        "application/pdf",
        "application/xml",
        "application/json",
        "application/octet-stream",
        "text/html",
        "text/plain; charset=utf-8",
        "application/fhir+json",
        "application/json+fhir",
        "application/fhir+xml",
        "application/xml+fhir",
        "APPLICATION/FHIR+JSON; fhirVersion=4.0",
        "video/mp4",
        "model/x3d+xml",
        "garbage",
        "",
        "image/",
    ];

    fn random_accept(rng: &mut Rng) -> Vec<String> {
        let lines = rng.below(3);
        (0..lines)
            .map(|_| {
                let entries = rng.below(5);
                (0..entries)
                    .map(|_| format!("{}{}", rng.pick(RANGES), rng.pick(WEIGHTS)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect()
    }

    /// Whenever `fixed` answers, `resolve` gives the same answer for every content type; and
    /// whenever it does not, some content types are decided differently (so it is not merely
    /// conservative).
    #[test]
    fn fixed_agrees_with_resolve_for_every_content_type() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut seen_some = 0;
        let mut seen_none = 0;
        for _ in 0..20_000 {
            let accept = random_accept(&mut rng);
            let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
            let pref = preference(None, &accept);
            let decisions: Vec<Decision> =
                CONTENT_TYPES.iter().map(|ct| pref.resolve(ct)).collect();
            match pref.fixed() {
                Some(fixed) => {
                    seen_some += 1;
                    for (ct, decision) in CONTENT_TYPES.iter().zip(&decisions) {
                        assert_eq!(*decision, fixed, "accept {accept:?}, content type {ct:?}");
                    }
                }
                None => {
                    seen_none += 1;
                    assert!(
                        decisions.iter().any(|d| *d != decisions[0]),
                        "fixed() is None but every content type gives {:?} for {accept:?}",
                        decisions[0]
                    );
                }
            }
        }
        assert!(
            seen_some > 1000 && seen_none > 1000,
            "{seen_some} {seen_none}"
        );
    }

    /// `resolve` against a direct reading of the rules over the raw entries, without the
    /// deduplication and bookkeeping of the real implementation.
    #[test]
    fn resolve_matches_a_direct_reading_of_the_rules() {
        fn reference(accept: &[&str], content_type: &str) -> Decision {
            let entries: Vec<(String, String, Weight)> = accept
                .iter()
                .flat_map(|line| MediaTypeList::new(line))
                .filter_map(Result::ok)
                .filter_map(|m| {
                    let q = entry_weight(&m)?;
                    let ty = m.ty.as_str().to_ascii_lowercase();
                    let sub = full_subtype(&m);
                    (ty != "*" || sub == "*").then_some((ty, sub, q))
                })
                .collect();
            if entries.is_empty() {
                return NATIVE;
            }
            let best = |names: &[&str]| {
                entries
                    .iter()
                    .filter(|(t, s, _)| names.contains(&format!("{t}/{s}").as_str()))
                    .map(|e| e.2)
                    .max()
            };
            let (json, json_dstu2) = (
                best(&["application/fhir+json"]),
                best(&["application/json+fhir"]),
            );
            let (xml, xml_dstu2) = (
                best(&["application/fhir+xml"]),
                best(&["application/xml+fhir"]),
            );
            let q_json = json.max(json_dstu2).unwrap_or(0);
            let q_xml = xml.max(xml_dstu2).unwrap_or(0);
            let (ty, sub) = match MediaType::parse(essence(content_type)) {
                Ok(m) => (m.ty.as_str().to_ascii_lowercase(), full_subtype(&m)),
                Err(_) => ("\u{0}".to_owned(), "\u{0}".to_owned()),
            };
            let level = |t: &str, s: &str| {
                entries
                    .iter()
                    .filter(|e| e.0 == t && e.1 == s)
                    .map(|e| e.2)
                    .max()
            };
            let q_native = level(&ty, &sub)
                .or_else(|| level(&ty, "*"))
                .or_else(|| level("*", "*"))
                .unwrap_or(0);
            let fhir = q_json.max(q_xml);
            if fhir > 0 && fhir >= q_native {
                if q_json >= q_xml {
                    let spelling = if json >= json_dstu2 {
                        Spelling::Current
                    } else {
                        Spelling::Dstu2
                    };
                    Decision::Serve {
                        representation: Representation::FhirJson,
                        spelling,
                    }
                } else {
                    let spelling = if xml >= xml_dstu2 {
                        Spelling::Current
                    } else {
                        Spelling::Dstu2
                    };
                    Decision::Serve {
                        representation: Representation::FhirXml,
                        spelling,
                    }
                }
            } else if q_native > 0 {
                NATIVE
            } else {
                NOT
            }
        }

        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for _ in 0..20_000 {
            let accept = random_accept(&mut rng);
            let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
            let pref = preference(None, &accept);
            for ct in CONTENT_TYPES {
                assert_eq!(
                    pref.resolve(ct),
                    reference(&accept, ct),
                    "accept {accept:?}, content type {ct:?}"
                );
            }
        }
    }

    /// Arbitrary bytes in the query, the Accept lines and the content type never panic, and
    /// `fixed` stays consistent with `resolve`.
    #[test]
    fn arbitrary_input_never_panics() {
        const ALPHABET: &[u8] = b"abfijmnoqstxz*/+;=,.0123456789 \t\"\\%&_-\xc3\xa9";
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let text = |rng: &mut Rng| {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        for _ in 0..20_000 {
            let query = text(&mut rng);
            let query = if rng.below(2) == 0 {
                format!("_format={query}")
            } else {
                query
            };
            let mut map = HeaderMap::new();
            for _ in 0..rng.below(3) {
                if let Ok(value) = HeaderValue::from_str(&text(&mut rng)) {
                    map.append(ACCEPT, value);
                }
            }
            let pref = Preference::from_request(Some(&query), &map, "4.0");
            let _ = pref.prefers_xml();
            let _ = strip_format(&query);
            let fixed = pref.fixed();
            for ct in CONTENT_TYPES
                .iter()
                .copied()
                .map(str::to_owned)
                .chain([text(&mut rng)])
            {
                let decision = pref.resolve(&ct);
                if let Some(fixed) = fixed {
                    assert_eq!(decision, fixed, "{query:?} {map:?} {ct:?}");
                }
            }
        }
    }
}
