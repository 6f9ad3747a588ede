//! The Binary's captured members, kept as their JSON text and read only when asked for.
//!
//! Most responses need a few strings out of them (`resourceType`, `contentType`, `id`,
//! `meta.versionId`): reading those straight from the text, borrowed where no escape stands in
//! the way, spares parsing every member into a `serde_json::Value` and dropping it again. The
//! scanner has checked the text to be what `serde_json` accepts, so any member still parses
//! into a `Value` when one is needed (FHIR XML).

use std::borrow::Cow;
use std::fmt;

use serde_core::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess};
use serde_json::{Map, Value};

use super::plain::quote_or_backslash;
use super::{is_ws, ws_len};

/// Top-level members the scanner captures: the elements of Binary in every FHIR release, and
/// their primitive extensions. Anything else is validated and dropped.
pub(super) const CAPTURED: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "contentType",
    "securityContext",
    "_id",
    "_implicitRules",
    "_language",
    "_contentType",
    "_data",
    "_content",
];

/// The captured members the layer reads, by their place in [`CAPTURED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Member {
    ResourceType = 0,
    Id = 1,
    Meta = 2,
    ContentType = 5,
    SecurityContext = 6,
}

/// The string fields of captured objects that the layer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// `meta.versionId`.
    VersionId = 0,
    /// `meta.lastUpdated`.
    LastUpdated = 1,
    /// `securityContext.reference`.
    Reference = 2,
}

impl Field {
    const ALL: [Field; 3] = [Field::VersionId, Field::LastUpdated, Field::Reference];

    /// Its name in the object.
    fn name(self) -> &'static str {
        match self {
            Field::VersionId => "versionId",
            Field::LastUpdated => "lastUpdated",
            Field::Reference => "reference",
        }
    }

    /// The member it is a field of.
    fn member(self) -> Member {
        match self {
            Field::VersionId | Field::LastUpdated => Member::Meta,
            Field::Reference => Member::SecurityContext,
        }
    }

    /// The field named `name` of the member in `slot` of [`CAPTURED`], if it is one.
    pub(super) fn of(slot: usize, name: &[u8]) -> Option<Field> {
        Self::ALL
            .into_iter()
            .find(|f| f.member() as usize == slot && f.name().as_bytes() == name)
    }
}

/// What the scanner saw of a [`Field`] while it read the member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Found {
    /// Nothing it can vouch for (the member was not read by the scanner, or the field's last
    /// occurrence may be one it did not read on the way): the text is read when asked.
    #[default]
    Unknown,
    /// Not in the member (so far).
    Absent,
    /// A string whose content, plain ASCII, lies at this span of the text.
    Plain(usize, usize),
}

/// The members captured so far, as their JSON text.
#[derive(Clone, Debug, Default)]
pub(crate) struct Members {
    /// The text of every captured member, one after another.
    text: Text,
    /// Where the member in each place of [`CAPTURED`] lies in `text`; empty for none (a JSON
    /// value is never empty).
    spans: [(usize, usize); CAPTURED.len()],
    /// What the scanner saw of each [`Field`], so that reading one takes no second pass over
    /// the text.
    found: [Found; Field::ALL.len()],
}

/// Equal when the text of every member is: what the scanner saw of the fields on the way
/// depends on how the input was split, and only spares reading the text again.
impl PartialEq for Members {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.spans == other.spans
    }
}

impl Members {
    /// The JSON text of `member`, when it was captured.
    pub(crate) fn raw(&self, member: Member) -> Option<&[u8]> {
        self.raw_at(member as usize)
    }

    fn raw_at(&self, slot: usize) -> Option<&[u8]> {
        let (start, end) = self.spans[slot];
        (end > start).then(|| &self.text.as_slice()[start..end])
    }

    /// Whether the member named `key` was captured.
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        CAPTURED
            .iter()
            .position(|k| *k == key)
            .is_some_and(|slot| self.raw_at(slot).is_some())
    }

    /// `member` when it is a JSON string; None when it is missing or of another type.
    pub(crate) fn str(&self, member: Member) -> Option<Cow<'_, str>> {
        json_str(self.raw(member)?)
    }

    /// The member named `key`, parsed.
    #[cfg(test)]
    pub(crate) fn value(&self, key: &str) -> Option<Value> {
        let slot = CAPTURED.iter().position(|k| *k == key)?;
        serde_json::from_slice(self.raw_at(slot)?).ok()
    }

    /// The string fields `fields` of the object `member` (the last of each, as `serde_json`
    /// keeps it); None for a field that is missing or not a string, and for every field when
    /// the member is missing or not an object.
    pub(crate) fn fields<const N: usize>(
        &self,
        member: Member,
        fields: [Field; N],
    ) -> [Option<Cow<'_, str>>; N] {
        debug_assert!(fields.iter().all(|f| f.member() == member));
        let Some(json) = self.raw(member) else {
            return std::array::from_fn(|_| None);
        };
        if fields
            .iter()
            .any(|&f| self.found[f as usize] == Found::Unknown)
        {
            return string_fields(json, fields.map(Field::name))
                .unwrap_or_else(|| std::array::from_fn(|_| None));
        }
        fields.map(|f| match self.found[f as usize] {
            Found::Plain(start, end) => std::str::from_utf8(&self.text.as_slice()[start..end])
                .ok()
                .map(Cow::Borrowed),
            Found::Absent | Found::Unknown => None,
        })
    }

    /// The scanner starts reading the member in `slot`: none of its fields is there yet.
    pub(super) fn track_fields(&mut self, slot: usize) {
        self.set_fields(slot, Found::Absent);
    }

    /// The scanner met a name in the member in `slot` that it did not read: any of its fields
    /// may be that one, and is read from the text when asked for.
    pub(super) fn untrack_fields(&mut self, slot: usize) {
        self.set_fields(slot, Found::Unknown);
    }

    fn set_fields(&mut self, slot: usize, found: Found) {
        for field in Field::ALL {
            if field.member() as usize == slot {
                self.found[field as usize] = found;
            }
        }
    }

    /// The scanner met `field` with a plain ASCII string, whose content lies at `start..end`
    /// of the text (once the text is captured that far).
    pub(super) fn plain_field(&mut self, field: Field, start: usize, end: usize) {
        self.found[field as usize] = Found::Plain(start, end);
    }

    /// The scanner met `field` with something else than a plain ASCII string: it is read from
    /// the text when asked for.
    pub(super) fn unknown_field(&mut self, field: Field) {
        self.found[field as usize] = Found::Unknown;
    }

    /// The names of the captured members, in the order of [`CAPTURED`].
    pub(crate) fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        (0..CAPTURED.len())
            .filter(|&slot| self.raw_at(slot).is_some())
            .map(|slot| CAPTURED[slot])
    }

    /// The captured members as a JSON object, for the XML writer.
    pub(crate) fn to_map(&self) -> Map<String, Value> {
        (0..CAPTURED.len())
            .filter_map(|slot| {
                let value = serde_json::from_slice(self.raw_at(slot)?).ok()?;
                Some((CAPTURED[slot].to_owned(), value))
            })
            .collect()
    }

    /// Bytes of text held.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.text.len()
    }

    /// The text from `start` on: the member being captured.
    pub(super) fn text_from(&self, start: usize) -> &[u8] {
        &self.text.as_slice()[start..]
    }

    /// Appends text to the member being captured. Inlined where the scanner captures: a call
    /// costs more than copying the usual short member.
    #[inline(always)]
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.text.extend(bytes);
    }

    /// Records the text from `start` on as the member in `slot` of [`CAPTURED`].
    pub(super) fn close(&mut self, slot: usize, start: usize) {
        self.spans[slot] = (start, self.text.len());
    }
}

/// Room for the usual members (`resourceType`, `id`, a short `meta`, `contentType`) without
/// an allocation.
const INLINE: usize = 128;

/// Bytes kept inline up to [`INLINE`], and all on the heap from the first one that does not
/// fit: a response whose members fit allocates nothing for them.
#[derive(Clone)]
struct Text {
    inline: [u8; INLINE],
    /// Bytes held: inline up to [`INLINE`], on the heap beyond.
    len: usize,
    /// Every byte, once they do not all fit inline; empty until then.
    heap: Vec<u8>,
}

impl Text {
    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self.inline.get(..self.len) {
            Some(inline) => inline,
            None => &self.heap,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn extend(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(room) = self.inline.get_mut(self.len..end) {
            room.copy_from_slice(bytes);
            self.len = end;
            return;
        }
        if self.len <= INLINE {
            // Once, with room to grow, rather than in steps.
            self.heap.reserve(end.max(2 * INLINE));
            self.heap.extend_from_slice(&self.inline[..self.len]);
        }
        self.heap.extend_from_slice(bytes);
        self.len = end;
    }
}

impl Default for Text {
    fn default() -> Self {
        Text {
            inline: [0; INLINE],
            len: 0,
            heap: Vec::new(),
        }
    }
}

/// Equal when the bytes held are, wherever they are kept.
impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_slice()), f)
    }
}

/// The string a JSON string text stands for; None for any other JSON text.
fn json_str(json: &[u8]) -> Option<Cow<'_, str>> {
    if let Some(text) = plain_string(json) {
        return Some(Cow::Borrowed(text));
    }
    if json.first() != Some(&b'"') {
        return None;
    }
    serde_json::from_slice::<String>(json).ok().map(Cow::Owned)
}

/// The text of a JSON string value without escapes (`"text"`, nothing around it), which needs
/// no parser; None for anything else. The scanner has already checked it is UTF-8 without
/// control characters.
fn plain_string(json: &[u8]) -> Option<&str> {
    let inner = json.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if quote_or_backslash(inner).is_some() {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// See [`Members::fields`]; None when `json` is not an object.
fn string_fields<'a, const N: usize>(
    json: &'a [u8],
    names: [&str; N],
) -> Option<[Option<Cow<'a, str>>; N]> {
    if let Some(found) = plain_object_fields(json, names) {
        return Some(found);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    deserializer.deserialize_any(Fields { names }).ok()?
}

/// [`string_fields`] of an object whose member names have no escapes, read straight from the
/// text (which the scanner has checked to be valid JSON); None for anything else, which is
/// left to `serde_json`.
fn plain_object_fields<'a, const N: usize>(
    json: &'a [u8],
    names: [&str; N],
) -> Option<[Option<Cow<'a, str>>; N]> {
    let mut found: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        match json.get(i)? {
            b'}' => return Some(found),
            b',' => {
                i = skip_ws(json, i + 1);
            }
            _ => {}
        }
        let name_start = i + 1;
        let name_end = name_start + quote_or_backslash(json.get(name_start..)?)?;
        if json[name_end] != b'"' {
            return None;
        }
        // Past the closing quote, the colon and the spaces around it.
        let colon = skip_ws(json, name_end + 1);
        let value_start = skip_ws(json, colon + 1);
        i = value_end(json, value_start)?;
        let name = &json[name_start..name_end];
        if let Some(place) = names.iter().position(|n| n.as_bytes() == name) {
            found[place] = json_str(&json[value_start..i]);
        }
    }
}

/// Where the whitespace from `i` on ends.
fn skip_ws(json: &[u8], i: usize) -> usize {
    i + json.get(i..).map_or(0, ws_len)
}

/// Where the valid JSON value starting at `start` ends.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        match json.get(i)? {
            b'"' => i = string_end(json, i)?,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ => {
                // A number or a literal runs to the next separator.
                i += json[i..]
                    .iter()
                    .position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b))
                    .unwrap_or(json.len() - i);
            }
        }
        if depth == 0 {
            return Some(i);
        }
        // Inside a container: separators and spaces between values.
        while json
            .get(i)
            .is_some_and(|&b| matches!(b, b',' | b':') || is_ws(b))
        {
            i += 1;
        }
    }
}

/// Where the string starting with the quote at `start` ends (past its closing quote).
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += quote_or_backslash(json.get(i..)?)?;
        if json[i] == b'"' {
            return Some(i + 1);
        }
        // An escape: the backslash and the character it escapes.
        i += 2;
    }
}

/// Reads the named string fields of an object; anything but an object gives None.
struct Fields<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> de::Visitor<'de> for Fields<'_, N> {
    type Value = Option<[Option<Cow<'de, str>>; N]>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: [Option<Cow<'de, str>>; N] = std::array::from_fn(|_| None);
        while let Some(place) = map.next_key_seed(Place { names: &self.names })? {
            match place {
                Some(i) => found[i] = map.next_value::<MaybeStr<'de>>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(found))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A member name, as its place among the names looked for.
struct Place<'a, 'n> {
    names: &'a [&'n str],
}

impl<'de> DeserializeSeed<'de> for Place<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> de::Visitor<'de> for Place<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|n| *n == name))
    }
}

/// A JSON value that is kept only when it is a string (borrowed when it has no escapes).
struct MaybeStr<'de>(Option<Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MaybeStrVisitor)
    }
}

struct MaybeStrVisitor;

impl<'de> de::Visitor<'de> for MaybeStrVisitor {
    type Value = MaybeStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(MaybeStr(Some(Cow::Borrowed(text))))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(MaybeStr(Some(Cow::Owned(text.to_owned()))))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MaybeStr(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeStr(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeStr(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeStr(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeStr(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeStr(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(MaybeStr(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(items: &[(usize, &str)]) -> Members {
        let mut members = Members::default();
        for &(slot, json) in items {
            let start = members.len();
            members.extend(json.as_bytes());
            members.close(slot, start);
        }
        members
    }

    #[test]
    fn members_are_named_by_their_place() {
        for (member, name) in [
            (Member::ResourceType, "resourceType"),
            (Member::Id, "id"),
            (Member::Meta, "meta"),
            (Member::ContentType, "contentType"),
            (Member::SecurityContext, "securityContext"),
        ] {
            assert_eq!(CAPTURED[member as usize], name);
        }
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let m = members(&[(0, r#""Binary""#), (1, r#""a\u00e9\"""#), (5, "5")]);
        assert!(matches!(
            m.str(Member::ResourceType),
            Some(Cow::Borrowed("Binary"))
        ));
        assert_eq!(m.str(Member::Id).as_deref(), Some("a\u{e9}\""));
        assert_eq!(m.str(Member::ContentType), None);
        assert!(m.contains_key("contentType"));
        assert_eq!(m.str(Member::Meta), None);
        assert!(!m.contains_key("meta"));
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["resourceType", "id", "contentType"]
        );
        assert_eq!(m.value("contentType"), Some(Value::from(5)));
    }

    #[test]
    fn fields_are_the_last_string_of_each_name() {
        let m = members(&[(
            2,
            r#"{"versionId":"1","tag":[{"versionId":"x"}],"lastUpdated":3,"v\u0065rsionId":"2\n"}"#,
        )]);
        let [version, updated] = m.fields(Member::Meta, [Field::VersionId, Field::LastUpdated]);
        assert_eq!(version.as_deref(), Some("2\n"));
        assert_eq!(updated, None);
        let m = members(&[(2, r#"{"versionId":"1"}"#)]);
        let [version, missing] = m.fields(Member::Meta, [Field::VersionId, Field::LastUpdated]);
        assert_eq!(version.as_deref(), Some("1"));
        assert_eq!(missing, None);
        for other in [r#""text""#, "[1]", "null", "true", "1.5", "-1"] {
            let m = members(&[(2, other)]);
            assert_eq!(
                m.fields(Member::Meta, [Field::VersionId]),
                [None],
                "{other}"
            );
        }
        assert_eq!(
            Members::default().fields(Member::Meta, [Field::VersionId]),
            [None]
        );
    }

    #[test]
    fn fields_read_from_the_text_agree_with_serde_json() {
        let mut rng = crate::test_rng::Rng(0x6669_656c_6473);
        let names = ["versionId", "lastUpdated", "reference"];
        let values = [
            r#""1""#,
            r#""a\"b""#,
            r#""\\""#,
            r#""x\u0041""#,
            r#""""#,
            "12",
            "-1.5e3",
            "true",
            "null",
            "[]",
            r#"[1,"]",{"a":"}"}]"#,
            r#"{"versionId":"inner","k":[{}]}"#,
            "{}",
        ];
        let keys = [
            "versionId",
            "lastUpdated",
            "reference",
            "tag",
            r"v\u0065rsionId",
            "",
        ];
        let spaces = ["", " ", "\n\t", "  "];
        for _ in 0..5_000 {
            let mut json = String::from(rng.pick(&spaces));
            json.push('{');
            for n in 0..rng.below(5) {
                if n > 0 {
                    json.push_str(rng.pick(&spaces));
                    json.push(',');
                }
                json.push_str(rng.pick(&spaces));
                json.push_str(&format!("\"{}\"", rng.pick(&keys)));
                json.push_str(rng.pick(&spaces));
                json.push(':');
                json.push_str(rng.pick(&spaces));
                json.push_str(rng.pick(&values));
                json.push_str(rng.pick(&spaces));
            }
            json.push('}');
            json.push_str(rng.pick(&spaces));
            let mut deserializer = serde_json::Deserializer::from_slice(json.as_bytes());
            let expected = deserializer
                .deserialize_any(Fields { names })
                .unwrap_or_else(|e| panic!("{json}: {e}"));
            let read = plain_object_fields(json.as_bytes(), names);
            // Names with escapes are left to serde_json; everything else is read here.
            assert_eq!(read.is_none(), json.contains(r#""v\u0065"#), "{json}");
            if read.is_some() {
                assert_eq!(read, expected, "{json}");
            }
            assert_eq!(string_fields(json.as_bytes(), names), expected, "{json}");
        }
    }

    #[test]
    fn text_moves_to_the_heap_when_it_outgrows_the_inline_room() {
        let mut text = Text::default();
        let mut expect = Vec::new();
        for n in 0..40 {
            let piece = vec![b'a' + n as u8 % 26; n % 13];
            text.extend(&piece);
            expect.extend_from_slice(&piece);
            assert_eq!(text.as_slice(), expect);
            assert_eq!(text.len(), expect.len());
            assert_eq!(text.heap.is_empty(), expect.len() <= INLINE);
        }
        let mut inline = Text::default();
        inline.extend(b"abc");
        let mut spilled = Text::default();
        spilled.extend(&[b'x'; INLINE + 1]);
        assert_ne!(inline, spilled);
        assert_eq!(inline, inline.clone());
        assert_eq!(spilled, spilled.clone());
    }

    #[test]
    fn the_map_holds_every_member_parsed() {
        let m = members(&[(5, r#""a/b""#), (0, r#""Binary""#), (2, r#"{"k":[1,{}]}"#)]);
        let map = m.to_map();
        assert_eq!(
            Value::Object(map),
            serde_json::json!({"resourceType": "Binary", "meta": {"k": [1, {}]}, "contentType": "a/b"})
        );
    }
}
