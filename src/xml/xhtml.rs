//! Checks a narrative `div` against the FHIR XHTML rules that `fhir-xhtml.xsd` enforces, and
//! writes it back as markup in the XHTML namespace.
//!
//! Rewriting rather than copying the source normalizes namespace prefixes, drops comments,
//! resolves character references and re-escapes text, so nothing of the source's own syntax
//! reaches the output unchecked. Content models are checked for which children an element may
//! have, whether it may hold text, the table's child order and the elements that need at least
//! one child; attributes by name per element, by value type, and ids for uniqueness. `&nbsp;`,
//! common in HTML-minded narratives, is read as U+00A0; other named entities are rejected.
//!
//! Links may not be active content (FHIR narrative rules): a URL attribute (`href`, `src`,
//! `cite`, `longdesc`) keeps only `http`, `https`, relative and `#` URLs. Any other scheme
//! (`javascript:`, `data:`, `vbscript:`, `file:`, ...) is dropped with its attribute, except an
//! `img`'s required `src`, which is emptied (an image with no source shows its `alt`).

use std::borrow::Cow;
use std::collections::HashSet;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;
use quick_xml::XmlVersion;
use wide::u8x16;

use super::{escape_bytes, XHTML_NS};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Why a narrative was rejected (kept short: it is only for tests and debugging).
pub(crate) type Reject = &'static str;

/// Where an element may appear: in the schema's block or inline groups, or only inside
/// one particular parent (list items, table parts).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cat {
    Block,
    Inline,
    Other,
}

/// What an element may contain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Model {
    Flow,
    Inline,
    InlineNoA,
    Pre,
    Blocks,
    Empty,
    Table,
    Rows,
    Cells,
    Items,
    Terms,
    Cols,
}

struct Elem {
    name: &'static str,
    cat: Cat,
    model: Model,
    /// Common attribute set, then element-specific ones.
    attrs: &'static [&'static str],
    extra: &'static [&'static str],
    required: &'static [&'static str],
}

const ATTRS: &[&str] = &["class", "dir", "id", "lang", "style", "title", "xml:lang"];
const CORE: &[&str] = &["class", "id", "style", "title"];
const CELL: &[&str] = &[
    "abbr", "align", "char", "charoff", "colspan", "rowspan", "scope", "valign",
];
const ROWS: &[&str] = &["align", "char", "charoff", "valign"];
const COLS: &[&str] = &["align", "char", "charoff", "span", "valign", "width"];

const fn el(name: &'static str, cat: Cat, model: Model) -> Elem {
    Elem {
        name,
        cat,
        model,
        attrs: ATTRS,
        extra: &[],
        required: &[],
    }
}

const fn with(mut e: Elem, extra: &'static [&'static str]) -> Elem {
    e.extra = extra;
    e
}

/// The elements `fhir-xhtml.xsd` lets a narrative contain, except `map` and `area`, whose
/// id and IDREF rules are not worth checking for image maps in narratives.
const ELEMENTS: &[Elem] = &[
    el("div", Cat::Block, Model::Flow),
    el("p", Cat::Block, Model::Inline),
    el("h1", Cat::Block, Model::Inline),
    el("h2", Cat::Block, Model::Inline),
    el("h3", Cat::Block, Model::Inline),
    el("h4", Cat::Block, Model::Inline),
    el("h5", Cat::Block, Model::Inline),
    el("h6", Cat::Block, Model::Inline),
    el("ul", Cat::Block, Model::Items),
    el("ol", Cat::Block, Model::Items),
    el("dl", Cat::Block, Model::Terms),
    with(el("pre", Cat::Block, Model::Pre), &["xml:space"]),
    el("hr", Cat::Block, Model::Empty),
    with(el("blockquote", Cat::Block, Model::Blocks), &["cite"]),
    el("address", Cat::Block, Model::Inline),
    with(
        el("table", Cat::Block, Model::Table),
        &[
            "border",
            "cellpadding",
            "cellspacing",
            "frame",
            "rules",
            "summary",
            "width",
        ],
    ),
    with(
        el("a", Cat::Inline, Model::InlineNoA),
        &[
            "accesskey",
            "charset",
            "href",
            "hreflang",
            "name",
            "rel",
            "rev",
            "tabindex",
            "type",
        ],
    ),
    Elem {
        attrs: CORE,
        ..el("br", Cat::Inline, Model::Empty)
    },
    el("span", Cat::Inline, Model::Inline),
    Elem {
        required: &["dir"],
        ..el("bdo", Cat::Inline, Model::Inline)
    },
    Elem {
        extra: &["alt", "height", "longdesc", "src", "width"],
        required: &["src", "alt"],
        ..el("img", Cat::Inline, Model::Empty)
    },
    el("tt", Cat::Inline, Model::Inline),
    el("i", Cat::Inline, Model::Inline),
    el("b", Cat::Inline, Model::Inline),
    el("big", Cat::Inline, Model::Inline),
    el("small", Cat::Inline, Model::Inline),
    el("em", Cat::Inline, Model::Inline),
    el("strong", Cat::Inline, Model::Inline),
    el("dfn", Cat::Inline, Model::Inline),
    el("code", Cat::Inline, Model::Inline),
    with(el("q", Cat::Inline, Model::Inline), &["cite"]),
    el("samp", Cat::Inline, Model::Inline),
    el("kbd", Cat::Inline, Model::Inline),
    el("var", Cat::Inline, Model::Inline),
    el("cite", Cat::Inline, Model::Inline),
    el("abbr", Cat::Inline, Model::Inline),
    el("acronym", Cat::Inline, Model::Inline),
    el("sub", Cat::Inline, Model::Inline),
    el("sup", Cat::Inline, Model::Inline),
    el("li", Cat::Other, Model::Flow),
    el("dt", Cat::Other, Model::Inline),
    el("dd", Cat::Other, Model::Flow),
    el("caption", Cat::Other, Model::Inline),
    with(el("thead", Cat::Other, Model::Rows), ROWS),
    with(el("tfoot", Cat::Other, Model::Rows), ROWS),
    with(el("tbody", Cat::Other, Model::Rows), ROWS),
    with(el("tr", Cat::Other, Model::Cells), ROWS),
    with(el("th", Cat::Other, Model::Flow), CELL),
    with(el("td", Cat::Other, Model::Flow), CELL),
    with(el("colgroup", Cat::Other, Model::Cols), COLS),
    with(el("col", Cat::Other, Model::Empty), COLS),
];

/// Slots of [`BY_NAME`]: a power of two, more than twice the number of elements.
const SLOTS: usize = 128;

/// A name's first, second and last bytes and its length, which tell the names of
/// [`ELEMENTS`] apart. `name` is not empty.
const fn name_key(name: &[u8]) -> u32 {
    let n = name.len();
    let second = if n > 1 { name[1] } else { 0 };
    name[0] as u32 | (second as u32) << 8 | (name[n - 1] as u32) << 16 | (n as u32) << 24
}

/// The slot of [`BY_NAME`] where the search for a name's key starts. The multiplier puts
/// each of [`ELEMENTS`] in a slot of its own, so a lookup takes one probe; another table
/// would only take more.
const fn first_slot(key: u32) -> usize {
    (key.wrapping_mul(0xF20B_A52F) >> (32 - SLOTS.trailing_zeros())) as usize
}

/// [`ELEMENTS`] by the key of their names, by linear probing: their indices, `u8::MAX` in
/// the free slots.
static BY_NAME: [u8; SLOTS] = {
    assert!(ELEMENTS.len() * 2 < SLOTS);
    let mut table = [u8::MAX; SLOTS];
    let mut i = 0;
    while i < ELEMENTS.len() {
        let mut slot = first_slot(name_key(ELEMENTS[i].name.as_bytes()));
        while table[slot] != u8::MAX {
            slot = (slot + 1) % SLOTS;
        }
        table[slot] = i as u8;
        i += 1;
    }
    table
};

/// The keys of [`ELEMENTS`]' names, in their order.
static KEYS: [u32; ELEMENTS.len()] = {
    let mut keys = [0; ELEMENTS.len()];
    let mut i = 0;
    while i < ELEMENTS.len() {
        keys[i] = name_key(ELEMENTS[i].name.as_bytes());
        i += 1;
    }
    keys
};

/// The element of [`ELEMENTS`] named `local`.
#[inline(always)]
fn element(local: &[u8]) -> Option<&'static Elem> {
    if local.is_empty() {
        return None;
    }
    let key = name_key(local);
    let mut slot = first_slot(key);
    loop {
        let i = usize::from(BY_NAME[slot]);
        let elem = ELEMENTS.get(i)?;
        // Same key: same length, same first, second and last bytes.
        if KEYS[i] == key && same_bytes(elem.name.as_bytes(), local) {
            return Some(elem);
        }
        slot = (slot + 1) % SLOTS;
    }
}

/// Whether two names are the same, compared a byte at a time: they are a few bytes long,
/// where a call to compare them costs more than comparing them.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl Model {
    #[inline(always)]
    fn accepts(self, child: &Elem) -> bool {
        match self {
            Model::Flow => child.cat != Cat::Other,
            Model::Inline => child.cat == Cat::Inline,
            Model::InlineNoA => child.cat == Cat::Inline && child.name != "a",
            Model::Pre => child.cat == Cat::Inline && child.name != "img",
            Model::Blocks => child.cat == Cat::Block,
            Model::Empty => false,
            Model::Table => table_rank(child.name).is_some(),
            Model::Rows => child.name == "tr",
            Model::Cells => matches!(child.name, "th" | "td"),
            Model::Items => child.name == "li",
            Model::Terms => matches!(child.name, "dt" | "dd"),
            Model::Cols => child.name == "col",
        }
    }

    fn allows_text(self) -> bool {
        matches!(
            self,
            Model::Flow | Model::Inline | Model::InlineNoA | Model::Pre
        )
    }

    fn needs_child(self) -> bool {
        matches!(
            self,
            Model::Table | Model::Rows | Model::Cells | Model::Items | Model::Terms
        )
    }
}

/// A table's children come in this order: caption?, (col* | colgroup*), thead?, tfoot?,
/// (tbody+ | tr+). Returns the position and whether the element may appear only once.
fn table_rank(name: &str) -> Option<(u8, bool)> {
    Some(match name {
        "caption" => (1, true),
        "col" | "colgroup" => (2, false),
        "thead" => (3, true),
        "tfoot" => (4, true),
        "tbody" | "tr" => (5, false),
        _ => return None,
    })
}

struct Open {
    elem: &'static Elem,
    children: usize,
    rank: u8,
    last: &'static str,
}

/// Checks `src` and appends it to `out` as `<div xmlns="http://www.w3.org/1999/xhtml">...`,
/// with the links that are not passive dropped. On rejection `out` may hold part of the
/// markup; the caller discards it.
pub(crate) fn write_div(src: &str, out: &mut Vec<u8>) -> Result<(), Reject> {
    let start = out.len();
    if write_plain_div(src, out, Links::DropUnlessPassive).is_some() {
        return Ok(());
    }
    out.truncate(start);
    write_any_div(src, out, Links::DropUnlessPassive)
}

/// [`write_div`] for one narrative after another, keeping the plain reading's buffers from
/// one to the next.
pub(crate) struct DivWriter {
    reading: PlainReading,
}

impl DivWriter {
    pub(crate) fn new() -> DivWriter {
        DivWriter {
            reading: PlainReading::new(),
        }
    }

    /// [`write_div`].
    pub(crate) fn write(&mut self, src: &str, out: &mut Vec<u8>) -> Result<(), Reject> {
        let start = out.len();
        self.reading.clear();
        if read_plain_div(&mut self.reading, src, out, Links::DropUnlessPassive).is_some() {
            return Ok(());
        }
        out.truncate(start);
        write_any_div(src, out, Links::DropUnlessPassive)
    }
}

/// Checks `src` by the rules of [`write_div`], writing nothing, for a narrative that is kept
/// as written: a link that is not passive is kept, but one that is active content (a
/// script URL, or a `data:` URL other than an image's) is refused. [`DivCheck`] gives the
/// same verdict from the tokens of a `div` being read.
pub(crate) fn check_div(src: &str) -> Result<(), Reject> {
    if write_plain_div(src, &mut Discard, Links::RefuseActive).is_some() {
        return Ok(());
    }
    write_any_div(src, &mut Discard, Links::RefuseActive)
}

/// [`check_div`] for a reader that has already found the tokens of the `div` (its tags,
/// text, comments): they are checked as they come by the plain reading, and only when that
/// does not take them is the whole `div`, held as written, read again by the general
/// reader when it ends, for the verdict and its reason.
pub(crate) struct DivCheck {
    reading: PlainReading,
    /// Whether the plain reading has taken every token so far.
    plain: bool,
}

impl DivCheck {
    pub(crate) fn new() -> DivCheck {
        DivCheck {
            reading: PlainReading::new(),
            plain: true,
        }
    }

    /// A start tag, from its `<` to its `>`.
    pub(crate) fn start_tag(&mut self, tag: &[u8]) {
        self.plain = self.plain
            && self
                .reading
                .start_tag_or_copy(tag, &[], &mut Discard, Links::RefuseActive)
                .is_some_and(|(n, _)| n == tag.len());
    }

    /// An end tag, from its `<` to its `>`.
    pub(crate) fn end_tag(&mut self, tag: &[u8]) {
        self.plain = self.plain
            && self
                .reading
                .end_tag_checked(tag)
                .is_some_and(|n| n == tag.len());
    }

    /// A piece of the text between two tags; the text may come in pieces cut anywhere.
    pub(crate) fn text(&mut self, piece: &[u8]) {
        self.plain = self.plain && self.reading.text(piece, &mut Discard).is_some();
    }

    /// A comment, CDATA section or processing instruction, which the plain reading leaves
    /// to the general reader.
    pub(crate) fn markup(&mut self) {
        self.plain = false;
    }

    /// The verdict on the `div` whose tokens came, `div` being all of them as written (UTF-8,
    /// which the plain reading does not check); the check is then ready for the next `div`.
    pub(crate) fn finish(&mut self, div: &[u8]) -> Result<(), Reject> {
        let plain = self.plain && self.reading.complete();
        self.reading.clear();
        self.plain = true;
        let verdict = if plain {
            Ok(())
        } else {
            match std::str::from_utf8(div) {
                Ok(div) => write_any_div(div, &mut Discard, Links::RefuseActive),
                Err(_) => Err("not UTF-8"),
            }
        };
        // Tests and fuzzing (debug builds) compare every verdict with the whole `div`'s.
        if cfg!(debug_assertions) {
            if let Ok(div) = std::str::from_utf8(div) {
                assert_eq!(verdict, check_div(div), "{div:?}");
            }
        }
        verdict
    }
}

/// What becomes of a URL attribute that is not `http`, `https`, relative or a fragment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Links {
    /// Dropped with its attribute (an `img`'s required `src` emptied): markup served to a
    /// browser.
    DropUnlessPassive,
    /// Kept, unless it is active content, which is refused: markup kept as written.
    RefuseActive,
}

/// Where checked markup goes: a buffer, or nowhere when it is only checked.
trait Sink {
    fn push(&mut self, byte: u8);
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// `s` (UTF-8) escaped as text, or as an attribute value.
    fn escaped(&mut self, s: &[u8], attribute: bool);
}

impl Sink for Vec<u8> {
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }

    fn escaped(&mut self, s: &[u8], attribute: bool) {
        escape_bytes(s, self, attribute, false);
    }
}

/// A [`Sink`] that keeps nothing.
struct Discard;

impl Sink for Discard {
    fn push(&mut self, _: u8) {}

    fn extend_from_slice(&mut self, _: &[u8]) {}

    fn escaped(&mut self, _: &[u8], _: bool) {}
}

/// [`write_div`] with a general XML reader: any well-formed markup, with its exact reason
/// for a rejection.
fn write_any_div(src: &str, out: &mut impl Sink, links: Links) -> Result<(), Reject> {
    let mut reader = NsReader::from_str(src);
    let mut stack: Vec<Open> = Vec::new();
    let mut ids: HashSet<String> = HashSet::new();
    let mut seen_root = false;
    loop {
        let event = reader.read_event().map_err(|_| "not well-formed XML")?;
        match event {
            Event::Start(_) | Event::Empty(_) if stack.is_empty() && seen_root => {
                return Err("more than one root element");
            }
            Event::Start(e) => {
                let elem = open(&reader, &e, &mut stack, &mut ids, out, links)?;
                out.push(b'>');
                stack.push(Open {
                    elem,
                    children: 0,
                    rank: 0,
                    last: "",
                });
                seen_root = true;
            }
            Event::Empty(e) => {
                let elem = open(&reader, &e, &mut stack, &mut ids, out, links)?;
                if elem.model.needs_child() {
                    return Err("element needs children");
                }
                out.extend_from_slice(b"/>");
                seen_root = true;
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err("unmatched end tag");
                };
                if open.elem.model.needs_child()
                    && (open.children == 0 || (open.elem.model == Model::Table && open.rank < 5))
                {
                    return Err("element needs children");
                }
                out.extend_from_slice(b"</");
                out.extend_from_slice(open.elem.name.as_bytes());
                out.push(b'>');
            }
            Event::Text(t) => text(t.xml10_content().as_bytes(), &stack, out)?,
            Event::CData(t) => text(t.xml10_content().as_bytes(), &stack, out)?,
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => return Err("bad character reference"),
                    }
                } else {
                    match &*r {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        "nbsp" => '\u{A0}',
                        _ => return Err("undefined entity"),
                    }
                };
                text(c.encode_utf8(&mut [0; 4]).as_bytes(), &stack, out)?;
            }
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                return Err("declaration, processing instruction or DOCTYPE");
            }
            Event::Eof => break,
        }
    }
    if !seen_root || !stack.is_empty() {
        return Err("no complete root element");
    }
    Ok(())
}

/// [`write_div`] for the markup narratives are usually written in, read without a general
/// XML reader: unprefixed elements and attributes, the XHTML namespace declared on the root
/// only, double- or single-quoted attribute values without references, line breaks or `<>`,
/// text with the predefined entities and `&nbsp;`. `None` for anything else, and for any
/// rejection: [`write_any_div`] then reads the whole `div` again and gives the reason. What
/// it accepts it checks and writes through the same functions as [`write_any_div`].
fn write_plain_div(src: &str, out: &mut impl Sink, links: Links) -> Option<()> {
    read_plain_div(&mut PlainReading::new(), src, out, links)
}

/// [`write_plain_div`] with a plain reading ready for a `div`.
fn read_plain_div(
    reading: &mut PlainReading,
    src: &str,
    out: &mut impl Sink,
    links: Links,
) -> Option<()> {
    let b = src.as_bytes();
    // Text without references and tags without attributes (but the root's) are written as
    // they stand: `b[copied..]` up to where the reading is has not been written yet and is
    // written as it is, in one copy, when something written otherwise comes.
    let mut copied = 0;
    let mut i = 0;
    loop {
        let (len, has_reference) = text_run(&b[i..]);
        let tag = i + len;
        let has_reference = has_reference?;
        if !has_reference && reading.cut.is_empty() {
            // As it stands, or dropped (whitespace outside the root).
            if !text_allowed(&b[i..tag], &reading.stack).ok()? {
                out.extend_from_slice(&b[copied..i]);
                copied = tag;
            }
        } else {
            out.extend_from_slice(&b[copied..i]);
            reading.checked_text(&b[i..tag], has_reference, out)?;
            copied = tag;
        }
        if tag == b.len() {
            break;
        }
        i = tag
            + match b.get(tag + 1) {
                Some(b'/') => reading.end_tag_checked(&b[tag..])?,
                _ => {
                    let pending = &b[copied..tag];
                    let (n, as_it_stands) =
                        reading.start_tag_or_copy(&b[tag..], pending, out, links)?;
                    if !as_it_stands {
                        copied = tag + n;
                    }
                    n
                }
            };
    }
    out.extend_from_slice(&b[copied..]);
    reading.complete().then_some(())
}

/// The longest reference the plain reading takes, without its `;` (`&nbsp`, `&quot`).
const LONGEST_REFERENCE: usize = 5;

/// The plain reading of [`write_plain_div`] between two tokens (a tag, a piece of text).
struct PlainReading {
    stack: Vec<Open>,
    ids: HashSet<String>,
    seen_root: bool,
    /// A reference that a piece of text ended in, from its `&`.
    cut: Vec<u8>,
}

impl PlainReading {
    fn new() -> PlainReading {
        PlainReading {
            stack: Vec::new(),
            ids: HashSet::new(),
            seen_root: false,
            cut: Vec::new(),
        }
    }

    /// Ready for another `div`, without holding on to much of a large one's memory.
    fn clear(&mut self) {
        self.stack.clear();
        if self.ids.capacity() > 64 {
            self.ids = HashSet::new();
        } else {
            self.ids.clear();
        }
        self.seen_root = false;
        self.cut.clear();
    }

    /// Whether the tokens so far make one whole root element.
    fn complete(&self) -> bool {
        self.seen_root && self.stack.is_empty() && self.cut.is_empty()
    }

    /// Checks the end tag (`</name>`) that starts `b`, which closes the open element and so
    /// is written as it stands by the caller: its length.
    #[inline(always)]
    fn end_tag_checked(&mut self, b: &[u8]) -> Option<usize> {
        let open = self.stack.pop()?;
        let name = open.elem.name.as_bytes();
        let end = 2 + name.len();
        if !self.cut.is_empty()
            || b.get(end) != Some(&b'>')
            || !same_bytes(&b[2..end], name)
            || (open.elem.model.needs_child()
                && (open.children == 0 || (open.elem.model == Model::Table && open.rank < 5)))
        {
            return None;
        }
        Some(end + 1)
    }

    /// Checks the start tag that starts `b` (at its `<`): its length, and whether it is
    /// written as it stands (a tag without attributes, but the root's), which is then left
    /// to the caller. Otherwise `pending` is written, then the tag.
    #[inline(always)]
    fn start_tag_or_copy(
        &mut self,
        b: &[u8],
        pending: &[u8],
        out: &mut impl Sink,
        links: Links,
    ) -> Option<(usize, bool)> {
        if (self.stack.is_empty() && self.seen_root) || !self.cut.is_empty() {
            return None;
        }
        let end = 1 + name_len(b.get(1..)?);
        if end == 1 {
            return None;
        }
        let root = self.stack.is_empty();
        let elem = enter_checked(&b[1..end], &mut self.stack).ok()?;
        // Most tags have no attributes.
        let (end, empty, as_it_stands) = match b.get(end) {
            Some(b'>') if !root && elem.required.is_empty() => (end + 1, false, true),
            Some(b'/') if !root && elem.required.is_empty() && b.get(end + 1) == Some(&b'>') => {
                (end + 2, true, true)
            }
            _ => {
                out.extend_from_slice(pending);
                write_open(elem, root, out);
                let (end, empty) = self.attributes(b, end, elem, root, out, links)?;
                (end, empty, false)
            }
        };
        self.seen_root = true;
        if empty {
            if elem.model.needs_child() {
                return None;
            }
            if !as_it_stands {
                out.extend_from_slice(b"/>");
            }
        } else {
            if !as_it_stands {
                out.push(b'>');
            }
            self.stack.push(Open {
                elem,
                children: 0,
                rank: 0,
                last: "",
            });
        }
        Some((end, as_it_stands))
    }

    /// Checks and writes the attributes of a start tag from `i` on, and checks that it
    /// has those its element requires (and the root, the namespace): where the tag ends,
    /// and whether it is an empty-element tag.
    #[inline(never)]
    fn attributes(
        &mut self,
        b: &[u8],
        mut i: usize,
        elem: &'static Elem,
        root: bool,
        out: &mut impl Sink,
        links: Links,
    ) -> Option<(usize, bool)> {
        let mut required = 0;
        let mut namespace = false;
        // Attribute names seen, to refuse a repeated one as XML does.
        let mut names: [&[u8]; 16] = [&[]; 16];
        let mut count = 0;
        let empty = loop {
            let space = b[i..]
                .iter()
                .take_while(|&&c| matches!(c, b' ' | b'\t' | b'\n'))
                .count();
            i += space;
            match b.get(i)? {
                b'>' => {
                    i += 1;
                    break false;
                }
                b'/' if b.get(i + 1) == Some(&b'>') => {
                    i += 2;
                    break true;
                }
                _ if space == 0 => return None,
                _ => {}
            }
            let end = i + name_len(&b[i..]);
            if end == i || b.get(end) != Some(&b'=') {
                return None;
            }
            let name = &b[i..end];
            let quote = *b.get(end + 1)?;
            if quote != b'"' && quote != b'\'' {
                return None;
            }
            let start = end + 2;
            let close = start + memchr::memchr(quote, &b[start..])?;
            let value = &b[start..close];
            if count == names.len() || names[..count].contains(&name) {
                return None;
            }
            names[count] = name;
            count += 1;
            i = close + 1;
            if name == b"xmlns" {
                if !root || value != XHTML_NS.as_bytes() {
                    return None;
                }
                namespace = true;
                continue;
            }
            if value
                .iter()
                .any(|&c| c < 0x20 || matches!(c, b'&' | b'<' | b'>' | 0xEF))
            {
                return None;
            }
            // A name is ASCII; a value that is not UTF-8 is left to the general reader.
            let name = std::str::from_utf8(name).ok()?;
            if !elem.attrs.contains(&name) && !elem.extra.contains(&name) {
                return None;
            }
            let value = std::str::from_utf8(value).ok()?;
            attribute(
                elem,
                name,
                Cow::Borrowed(value),
                &mut self.ids,
                &mut required,
                out,
                links,
            )
            .ok()?;
        };
        if (root && !namespace) || required != elem.required.len() {
            return None;
        }
        Some((i, empty))
    }

    /// Checks and writes a piece of the text between two tags: split at the predefined
    /// entities and `&nbsp;`, each part as the general reader hands it to [`text`]. `None`
    /// for a line break other than LF, another control character, `>`, a possible U+FFFE or
    /// U+FFFF, or another reference. A reference cut by the end of the piece is completed
    /// by the next piece.
    fn text(&mut self, piece: &[u8], out: &mut impl Sink) -> Option<()> {
        self.checked_text(piece, plain_text_has_reference(piece)?, out)
    }

    /// [`PlainReading::text`] for a piece already looked at by [`plain_text_has_reference`]
    /// (or [`text_run`]): whether it has a `&`.
    fn checked_text(
        &mut self,
        piece: &[u8],
        has_reference: bool,
        out: &mut impl Sink,
    ) -> Option<()> {
        let mut rest = piece;
        if !self.cut.is_empty() {
            let Some(semicolon) = memchr::memchr(b';', rest) else {
                if self.cut.len() + rest.len() > LONGEST_REFERENCE {
                    return None;
                }
                self.cut.extend_from_slice(rest);
                return Some(());
            };
            if self.cut.len() + semicolon > LONGEST_REFERENCE {
                return None;
            }
            self.cut.extend_from_slice(&rest[..semicolon]);
            let c = predefined(&self.cut[1..])?;
            self.cut.clear();
            text(c, &self.stack, out).ok()?;
            rest = &rest[semicolon + 1..];
        }
        if !has_reference {
            return plain_text(rest, &self.stack, out).ok();
        }
        while let Some(amp) = memchr::memchr(b'&', rest) {
            plain_text(&rest[..amp], &self.stack, out).ok()?;
            let Some(semicolon) = memchr::memchr(b';', &rest[amp..]) else {
                if rest.len() - amp > LONGEST_REFERENCE {
                    return None;
                }
                self.cut.extend_from_slice(&rest[amp..]);
                return Some(());
            };
            text(
                predefined(&rest[amp + 1..amp + semicolon])?,
                &self.stack,
                out,
            )
            .ok()?;
            rest = &rest[amp + semicolon + 1..];
        }
        plain_text(rest, &self.stack, out).ok()
    }
}

/// The length of the plain name (ASCII letters, then letters and digits) at the start of
/// `b`.
fn name_len(b: &[u8]) -> usize {
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() => {
            1 + b[1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count()
        }
        _ => 0,
    }
}

/// What the plain reading takes a reference for, by its name: the predefined entities and
/// `&nbsp;`.
fn predefined(name: &[u8]) -> Option<&'static [u8]> {
    Some(match name {
        b"lt" => b"<",
        b"gt" => b">",
        b"amp" => b"&",
        b"apos" => b"'",
        b"quot" => b"\"",
        b"nbsp" => "\u{A0}".as_bytes(),
        _ => return None,
    })
}

/// [`plain_text_has_reference`]'s flags of a byte: one the plain reading does not take in
/// text, a `&`.
const ODD: u8 = 1;
const AMPERSAND: u8 = 2;

static TEXT_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 0x20 {
        if b != b'\t' as usize && b != b'\n' as usize {
            table[b] = ODD;
        }
        b += 1;
    }
    table[b'>' as usize] = ODD;
    table[0xEF] = ODD;
    table[b'&' as usize] = AMPERSAND;
    table
};

/// `None` when `text` has a byte the plain reading leaves to the general reader: a control
/// character other than tab and LF, `>`, or the 0xEF that may start U+FFFE or U+FFFF; else
/// whether it has a `&`. Sixteen bytes at a time, without an early exit.
fn plain_text_has_reference(text: &[u8]) -> Option<bool> {
    let mut odd = 0;
    let mut ampersands = 0;
    let mut blocks = text.chunks_exact(16);
    for block in &mut blocks {
        let (o, a) = text_block(block);
        odd |= o;
        ampersands |= a;
    }
    match text.len().checked_sub(16) {
        None => {
            let mut flags = 0;
            for &b in blocks.remainder() {
                flags |= TEXT_BYTES[usize::from(b)];
            }
            odd |= u32::from(flags & ODD);
            ampersands |= u32::from(flags & AMPERSAND);
        }
        // The last sixteen bytes, some of them again.
        Some(last) if !blocks.remainder().is_empty() => {
            let (o, a) = text_block(&text[last..]);
            odd |= o;
            ampersands |= a;
        }
        Some(_) => {}
    }
    (odd == 0).then_some(ampersands != 0)
}

/// The length of the text that starts `b` (up to a `<` or the end), and what
/// [`plain_text_has_reference`] says of it: one pass, sixteen bytes at a time, that may look
/// past the text but not past `b`.
fn text_run(b: &[u8]) -> (usize, Option<bool>) {
    let mut odd = 0;
    let mut ampersands = 0;
    let mut at = 0;
    while let Some(block) = b.get(at..at + 16) {
        let x = u8x16::new(block.try_into().unwrap_or([0; 16]));
        let (o, a) = text_flags(x);
        let tags = x.simd_eq(u8x16::splat(b'<')).to_bitmask();
        if tags != 0 {
            let before = (1 << tags.trailing_zeros()) - 1;
            odd |= o & before;
            ampersands |= a & before;
            at += tags.trailing_zeros() as usize;
            return (at, (odd == 0).then_some(ampersands != 0));
        }
        odd |= o;
        ampersands |= a;
        at += 16;
    }
    let mut flags = 0;
    while let Some(&c) = b.get(at) {
        if c == b'<' {
            break;
        }
        flags |= TEXT_BYTES[usize::from(c)];
        at += 1;
    }
    odd |= u32::from(flags & ODD);
    ampersands |= u32::from(flags & AMPERSAND);
    (at, (odd == 0).then_some(ampersands != 0))
}

/// The bits of the bytes of a block of sixteen that the plain reading does not take in
/// text, and those of its `&`s.
#[inline(always)]
fn text_block(block: &[u8]) -> (u32, u32) {
    text_flags(u8x16::new(block.try_into().unwrap_or([0; 16])))
}

#[inline(always)]
fn text_flags(x: u8x16) -> (u32, u32) {
    let control = x.min(u8x16::splat(0x1f)).simd_eq(x);
    let tab_or_lf = x.simd_eq(u8x16::splat(b'\t')) | x.simd_eq(u8x16::splat(b'\n'));
    let odd = (control ^ tab_or_lf) | x.simd_eq(u8x16::splat(b'>')) | x.simd_eq(u8x16::splat(0xEF));
    (odd.to_bitmask(), x.simd_eq(u8x16::splat(b'&')).to_bitmask())
}

/// Checks and writes a start tag, without its closing `>`.
fn open(
    reader: &NsReader<&[u8]>,
    e: &BytesStart<'_>,
    stack: &mut [Open],
    ids: &mut HashSet<String>,
    out: &mut impl Sink,
    links: Links,
) -> Result<&'static Elem, Reject> {
    let (ns, local) = reader.resolver().resolve_element(e.name());
    if !matches!(ns, ResolveResult::Bound(Namespace(n)) if n == XHTML_NS) {
        return Err("element not in the XHTML namespace");
    }
    let elem = enter(local.as_ref().as_bytes(), stack, out)?;
    let mut required = 0;
    for attr in e.attributes() {
        let attr = attr.map_err(|_| "malformed attribute")?;
        if attr.key.as_namespace_binding().is_some() {
            continue;
        }
        let (ns, local) = reader.resolver().resolve_attribute(attr.key);
        let name = match (ns, local.as_ref()) {
            (ResolveResult::Unbound, name) => name,
            (ResolveResult::Bound(Namespace(n)), "lang") if n == XML_NS => "xml:lang",
            (ResolveResult::Bound(Namespace(n)), "space") if n == XML_NS => "xml:space",
            _ => return Err("attribute not allowed"),
        };
        if !elem.attrs.contains(&name) && !elem.extra.contains(&name) {
            return Err("attribute not allowed");
        }
        if attr.value.contains('<') {
            return Err("not well-formed XML");
        }
        let value = attr
            .normalized_value_with(XmlVersion::Implicit1_0, 1, |entity| {
                if entity == "nbsp" {
                    Some("\u{A0}")
                } else {
                    quick_xml::escape::resolve_predefined_entity(entity)
                }
            })
            .map_err(|_| "bad attribute value")?;
        attribute(elem, name, value, ids, &mut required, out, links)?;
    }
    if required != elem.required.len() {
        return Err("required attribute missing");
    }
    Ok(elem)
}

/// Checks an element of the XHTML namespace where it stands, and writes its start tag up to
/// its attributes.
#[inline(always)]
fn enter(local: &[u8], stack: &mut [Open], out: &mut impl Sink) -> Result<&'static Elem, Reject> {
    let elem = enter_checked(local, stack)?;
    write_open(elem, stack.is_empty(), out);
    Ok(elem)
}

/// [`enter`] without writing anything.
#[inline(always)]
fn enter_checked(local: &[u8], stack: &mut [Open]) -> Result<&'static Elem, Reject> {
    let elem = element(local).ok_or("element not allowed")?;
    match stack.last_mut() {
        None if elem.name != "div" => return Err("root is not a div"),
        None => {}
        Some(parent) => {
            if !parent.elem.model.accepts(elem) {
                return Err("element not allowed here");
            }
            if parent.elem.model == Model::Table {
                let (rank, once) = table_rank(elem.name).ok_or("element not allowed here")?;
                if rank < parent.rank || (rank == parent.rank && (once || parent.last != elem.name))
                {
                    return Err("table children out of order");
                }
                parent.rank = rank;
                parent.last = elem.name;
            }
            parent.children += 1;
        }
    }
    Ok(elem)
}

/// Writes an element's start tag up to its attributes, the root's with the namespace.
#[inline(always)]
fn write_open(elem: &Elem, root: bool, out: &mut impl Sink) {
    out.push(b'<');
    out.extend_from_slice(elem.name.as_bytes());
    if root {
        out.extend_from_slice(b" xmlns=\"");
        out.extend_from_slice(XHTML_NS.as_bytes());
        out.push(b'"');
    }
}

/// Checks an allowed attribute's value (normalized, references resolved) and writes it,
/// counting the element's required attributes.
fn attribute(
    elem: &Elem,
    name: &str,
    value: Cow<'_, str>,
    ids: &mut HashSet<String>,
    required: &mut usize,
    out: &mut impl Sink,
    links: Links,
) -> Result<(), Reject> {
    if matches!(name, "class" | "rel" | "rev") && value.trim_ascii().is_empty() {
        // A token list without tokens means nothing, and strict validators refuse it.
        return Ok(());
    }
    if !value_ok(elem.name, name, &value) {
        return Err("bad attribute value");
    }
    if name == "id" && !ids.insert(value.to_string()) {
        return Err("duplicate id");
    }
    if elem.required.contains(&name) {
        *required += 1;
    }
    let value = if is_url_attribute(name) && !is_passive_url(&value) {
        match links {
            Links::RefuseActive if is_active_url(elem.name, name, &value) => {
                return Err("active content in a link");
            }
            Links::RefuseActive => value,
            Links::DropUnlessPassive if elem.required.contains(&name) => Cow::Borrowed(""),
            Links::DropUnlessPassive => return Ok(()),
        }
    } else {
        value
    };
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    out.escaped(value.as_bytes(), true);
    out.push(b'"');
    Ok(())
}

fn text(content: &[u8], stack: &[Open], out: &mut impl Sink) -> Result<(), Reject> {
    if text_allowed(content, stack)? {
        out.escaped(content, false);
    }
    Ok(())
}

/// [`text`] for text the plain reading has checked (no markup, references, controls other
/// than tab and LF, `>` or 0xEF): as text it needs no escaping, so it is copied as it is.
fn plain_text(content: &[u8], stack: &[Open], out: &mut impl Sink) -> Result<(), Reject> {
    if text_allowed(content, stack)? {
        out.extend_from_slice(content);
    }
    Ok(())
}

/// Whether text may stand where it is: `false` for whitespace outside the root, which is
/// dropped.
fn text_allowed(content: &[u8], stack: &[Open]) -> Result<bool, Reject> {
    match stack.last() {
        Some(open) if open.elem.model.allows_text() => Ok(true),
        top => {
            // Only whitespace, which is written inside the root and dropped outside it.
            if !content
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                return Err(match top {
                    None => "text outside the root element",
                    Some(_) => "text not allowed here",
                });
            }
            Ok(top.is_some())
        }
    }
}

/// Checks an attribute value against its type in `fhir-xhtml.xsd`; free-text and URI types
/// accept anything.
fn value_ok(element: &str, name: &str, v: &str) -> bool {
    match name {
        "id" => is_ncname(v),
        "dir" => matches!(v, "ltr" | "rtl"),
        "lang" | "hreflang" => is_language(v),
        "xml:lang" => v.is_empty() || is_language(v),
        "xml:space" => v == "preserve",
        "class" | "rel" | "rev" => v.split_ascii_whitespace().all(is_nmtoken),
        "name" => is_nmtoken(v),
        "accesskey" | "char" => v.chars().count() == 1,
        "tabindex" => is_digits(v) && v.parse::<u32>().is_ok_and(|n| n <= 32767),
        "span" | "colspan" | "rowspan" | "border" => is_digits(v),
        "height" | "cellpadding" | "cellspacing" | "charoff" => is_length(v),
        "width" => is_length(v) || (matches!(element, "col" | "colgroup") && is_multi_length(v)),
        "frame" => matches!(
            v,
            "void" | "above" | "below" | "hsides" | "lhs" | "rhs" | "vsides" | "box" | "border"
        ),
        "rules" => matches!(v, "none" | "groups" | "rows" | "cols" | "all"),
        "align" => matches!(v, "left" | "center" | "right" | "justify" | "char"),
        "valign" => matches!(v, "top" | "middle" | "bottom" | "baseline"),
        "scope" => matches!(v, "row" | "col" | "rowgroup" | "colgroup"),
        _ => true,
    }
}

fn is_url_attribute(name: &str) -> bool {
    matches!(name, "href" | "src" | "cite" | "longdesc")
}

/// Whether a URL is `http`, `https`, relative or a fragment.
fn is_passive_url(url: &str) -> bool {
    scheme(url).is_none_or(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
}

/// Whether a URL runs in the page that shows it: `javascript:` and `vbscript:`, and a `data:`
/// URL anywhere but an image's `src` (where a browser shows it as an image only).
fn is_active_url(element: &str, attribute: &str, url: &str) -> bool {
    scheme(url).is_some_and(|s| {
        s.eq_ignore_ascii_case("javascript")
            || s.eq_ignore_ascii_case("vbscript")
            || (s.eq_ignore_ascii_case("data") && (element, attribute) != ("img", "src"))
    })
}

/// A URL's scheme, read as browsers read it: they ignore leading spaces and control
/// characters and tabs and line breaks anywhere, so `" java\tscript:"` is `javascript`.
/// `None` for a relative URL or a fragment.
fn scheme(url: &str) -> Option<String> {
    let mut scheme = String::new();
    for c in url
        .trim_start_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
    {
        match c {
            ':' => return Some(scheme),
            // A path, query or fragment before any colon: relative.
            '/' | '?' | '#' => return None,
            c if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.') => scheme.push(c),
            // Not a scheme character before any colon: no scheme, a relative URL (as the URL
            // standard's parser reads it).
            _ => return None,
        }
    }
    None
}

fn is_digits(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
}

/// `[-+]?(\d+|\d+(\.\d+)?%)`
fn is_length(v: &str) -> bool {
    let v = v.strip_prefix(['-', '+']).unwrap_or(v);
    match v.strip_suffix('%') {
        None => is_digits(v),
        Some(p) => match p.split_once('.') {
            None => is_digits(p),
            Some((int, frac)) => is_digits(int) && is_digits(frac),
        },
    }
}

/// `[1-9]?(\d+)?\*`, i.e. optional digits then `*`.
fn is_multi_length(v: &str) -> bool {
    v.strip_suffix('*')
        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*`
fn is_language(v: &str) -> bool {
    let mut parts = v.split('-');
    let first = parts.next().unwrap_or("");
    (1..=8).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '\u{B7}')
}

fn is_nmtoken(v: &str) -> bool {
    !v.is_empty() && v.chars().all(is_name_char)
}

fn is_ncname(v: &str) -> bool {
    let mut chars = v.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c != ':' && is_name_char(c))
}

/// The official narratives and variations of them, for the request path's tests too.
#[cfg(test)]
pub(crate) use tests::{example_divs, mutated};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// One pass finds what a search for `<` and a look at the text before it find, whatever
    /// the bytes.
    #[test]
    fn text_run_is_a_search_and_a_look() {
        let mut rng = Rng(11);
        let pool = [
            b'a', b' ', b'<', b'&', b'>', b'\t', b'\n', b'\r', 0x01, 0xEF, 0xC3,
        ];
        for _ in 0..20_000 {
            let len = rng.below(70);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => rng.below(256) as u8,
                    _ => pool[rng.below(pool.len())],
                })
                .collect();
            let end = memchr::memchr(b'<', &bytes).unwrap_or(bytes.len());
            let expected = (end, plain_text_has_reference(&bytes[..end]));
            assert_eq!(text_run(&bytes), expected, "{bytes:?}");
        }
    }

    fn written(div: &str) -> Result<String, Reject> {
        let mut out = Vec::new();
        write_div(div, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    const OPEN: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\">";

    /// Every `div` of the official examples in the fixtures.
    pub(crate) fn example_divs() -> Vec<String> {
        fn walk(value: &serde_json::Value, divs: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(members) => {
                    for (key, value) in members {
                        match value {
                            serde_json::Value::String(div) if key == "div" => {
                                divs.push(div.clone())
                            }
                            _ => walk(value, divs),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, divs)),
                _ => {}
            }
        }
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/examples");
        let mut divs = Vec::new();
        for release in std::fs::read_dir(root).unwrap() {
            let release = release.unwrap().path();
            if !release.is_dir() {
                continue;
            }
            let mut files: Vec<_> = std::fs::read_dir(&release)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            for file in files {
                let json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
                walk(&json, &mut divs);
            }
        }
        divs
    }

    /// The plain reading and the general reader agree: same markup, or the same reason; and
    /// so do they when they only check.
    fn assert_same(div: &str) {
        let mut any = Vec::new();
        let expected = write_any_div(div, &mut any, Links::DropUnlessPassive).map(|()| any);
        let mut out = b"kept".to_vec();
        let got = write_div(div, &mut out).map(|()| out.split_off(4));
        assert_eq!(got, expected, "{div:?}");
        let checked = write_any_div(div, &mut Vec::new(), Links::RefuseActive);
        assert_eq!(check_div(div), checked, "{div:?}");
        // Only active content is refused by one and not the other.
        if checked != Err("active content in a link") {
            assert_eq!(checked, expected.map(|_| ()), "{div:?}");
        }
    }

    #[test]
    fn the_plain_reading_agrees_with_the_general_reader() {
        let divs = example_divs();
        assert!(divs.len() > 500, "{}", divs.len());
        let mut plain = 0;
        for div in &divs {
            assert_same(div);
            plain += usize::from(
                write_plain_div(div, &mut Vec::new(), Links::DropUnlessPassive).is_some(),
            );
        }
        // Most official narratives take the plain reading.
        assert!(plain * 10 > divs.len() * 9, "{plain} of {}", divs.len());
        let mut rng = Rng(0x5EED);
        for div in divs.iter().filter(|d| d.len() < 20_000) {
            for _ in 0..8 {
                assert_same(&mutated(div, &mut rng));
            }
        }
    }

    /// `div` with one to three changes the plain reading must notice or carry over: a piece
    /// of markup inserted, a few bytes removed, the end cut off.
    pub(crate) fn mutated(div: &str, rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "&",
            "&amp;",
            "&nbsp;",
            "&#65;",
            "&bogus;",
            "&lt",
            "<",
            ">",
            "\"",
            "'",
            "\r",
            "\r\n",
            "\t",
            "\n",
            " ",
            "\u{1}",
            "\u{FFFE}",
            "\u{FFFF}",
            "\u{EFFF}",
            "\u{A0}",
            "é",
            "/",
            "=",
            ":",
            "x:",
            "xmlns",
            " xmlns=\"http://www.w3.org/1999/xhtml\"",
            "<!-- c -->",
            "<![CDATA[x]]>",
            "]]>",
            "<?pi?>",
            "<br/>",
            "<br />",
            "</p>",
            "<p>",
            "<b>",
            "</b>",
            "<table>",
            "<tr>",
            "<td>",
            "</td>",
            " id=\"a\"",
            " id=\"1\"",
            " class=\"\"",
            " class='a b'",
            " href=\"javascript:x\"",
            " href='x'",
            " style=\"a\" style=\"b\"",
            " lang=\"en\"",
            " xml:lang=\"en\"",
            " src=\"x\" alt=\"y\"",
            "<img src=\"a\"/>",
            "<img src=\"a\" alt=\"b\"/>",
            "a",
            "P",
            "<P>",
            "</div>",
            "<div>",
            "<span>",
        ];
        let mut mutated = div.to_owned();
        for _ in 0..1 + rng.below(3) {
            let mut at = rng.below(mutated.len() + 1);
            while !mutated.is_char_boundary(at) {
                at -= 1;
            }
            match rng.below(3) {
                0 => mutated.insert_str(at, rng.pick(PIECES)),
                1 => {
                    let mut end = (at + 1 + rng.below(8)).min(mutated.len());
                    while !mutated.is_char_boundary(end) {
                        end += 1;
                    }
                    mutated.replace_range(at..end, "");
                }
                _ => mutated.truncate(at),
            }
        }
        mutated
    }

    #[test]
    fn passive_urls_are_kept() {
        for url in [
            "http://example.org/a",
            "HTTPS://example.org/a?b#c",
            "Binary/1",
            "../x",
            "/fhir/Patient/1",
            "#section",
            "?q=1",
            "//example.org/x",
            "",
            "a b",
            "jav\u{A0}ascript:x",
        ] {
            assert!(is_passive_url(url), "{url}");
            let div = format!("{OPEN}<a href=\"{url}\">x</a></div>");
            let out = written(&div).unwrap();
            assert!(out.contains(&format!("href=\"{url}\"")), "{out}");
        }
    }

    #[test]
    fn active_urls_are_dropped() {
        for url in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            " javascript:alert(1)",
            "java&#9;script:alert(1)",
            "java&#10;script:alert(1)",
            "&#x6A;avascript:alert(1)",
            "&#1;javascript:alert(1)",
            "data:text/html,<b>",
            "vbscript:msgbox",
            "file:///etc/passwd",
            "mailto:a@example.org",
        ] {
            let div = format!("{OPEN}<a href=\"{}\">x</a></div>", url.replace('<', "&lt;"));
            let out = written(&div).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(out, format!("{OPEN}<a>x</a></div>"), "{url}");
        }
    }

    #[test]
    fn every_url_attribute_is_checked() {
        let out = written(&format!(
            "{OPEN}<blockquote cite=\"javascript:x\"><p><q cite=\"data:,x\">q</q>\
             <img src=\"javascript:alert(1)\" alt=\"chart\" longdesc=\"vbscript:x\"/>\
             <img src=\"chart.png\" alt=\"chart\" longdesc=\"https://example.org/d\"/></p>\
             </blockquote></div>"
        ))
        .unwrap();
        assert_eq!(
            out,
            format!(
                "{OPEN}<blockquote><p><q>q</q><img src=\"\" alt=\"chart\"/>\
                 <img src=\"chart.png\" alt=\"chart\" longdesc=\"https://example.org/d\"/>\
                 </p></blockquote></div>"
            )
        );
    }

    #[test]
    fn a_check_keeps_links_that_are_not_active_and_refuses_active_ones() {
        for url in [
            "http://example.org/a",
            "#section",
            "mailto:a@example.org",
            "tel:+1-555-0100",
            "urn:oid:1.2.3",
            "ftp://example.org/f",
        ] {
            let div = format!("{OPEN}<a href=\"{url}\">x</a></div>");
            assert_eq!(check_div(&div), Ok(()), "{url}");
        }
        let image =
            format!("{OPEN}<img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"a\"/></div>");
        assert_eq!(check_div(&image), Ok(()));
        for link in [
            "<a href=\"javascript:alert(1)\">x</a>",
            "<a href=\" JavaScript:alert(1)\">x</a>",
            "<a href=\"java&#9;script:alert(1)\">x</a>",
            "<a href=\"&#x6A;avascript:alert(1)\">x</a>",
            "<a href=\"vbscript:msgbox\">x</a>",
            "<a href=\"data:text/html,x\">x</a>",
            "<img src=\"javascript:alert(1)\" alt=\"a\"/>",
            "<img src=\"a.png\" alt=\"a\" longdesc=\"data:text/html,x\"/>",
            "<q cite=\"javascript:x\">q</q>",
        ] {
            let div = format!("{OPEN}<p>{link}</p></div>");
            assert_eq!(check_div(&div), Err("active content in a link"), "{link}");
        }
    }

    #[test]
    fn a_check_refuses_what_writing_refuses() {
        for (div, reason) in [
            (format!("{OPEN}<p>a</b></div>"), "not well-formed XML"),
            (
                format!("{OPEN}<script>x</script></div>"),
                "element not allowed",
            ),
            (
                format!("{OPEN}<p onclick=\"x\">a</p></div>"),
                "attribute not allowed",
            ),
            (format!("{OPEN}a &bogus; b</div>"), "undefined entity"),
            (
                format!("{OPEN}<li>a</li></div>"),
                "element not allowed here",
            ),
            (
                "<div>a</div>".to_owned(),
                "element not in the XHTML namespace",
            ),
            (
                format!("{OPEN}<table></table></div>"),
                "element needs children",
            ),
        ] {
            assert_eq!(check_div(&div), Err(reason), "{div}");
            assert_eq!(written(&div), Err(reason), "{div}");
        }
        assert_eq!(check_div(&format!("{OPEN}a&nbsp;<b>b</b></div>")), Ok(()));
    }

    /// The verdict of [`DivCheck`] on `div`'s tokens, each text cut in two at `cut` bytes
    /// from its start (when it is longer), and whether the plain reading took them all.
    fn checked_in_pieces(div: &str, cut: usize) -> (Result<(), Reject>, bool) {
        let mut check = DivCheck::new();
        let mut rest = div.as_bytes();
        while !rest.is_empty() {
            let end = if rest[0] == b'<' {
                memchr::memchr(b'>', rest).map_or(rest.len(), |n| n + 1)
            } else {
                memchr::memchr(b'<', rest).unwrap_or(rest.len())
            };
            let token = &rest[..end];
            match token {
                [b'<', b'/', ..] => check.end_tag(token),
                [b'<', b'!' | b'?', ..] => check.markup(),
                [b'<', ..] => check.start_tag(token),
                _ => {
                    let (a, b) = token.split_at(cut.min(token.len()));
                    check.text(a);
                    check.text(b);
                }
            }
            rest = &rest[end..];
        }
        let plain = check.plain && check.reading.complete();
        (check.finish(div.as_bytes()), plain)
    }

    #[test]
    fn a_check_of_tokens_gives_the_whole_divs_verdict_wherever_text_is_cut() {
        for text in [
            "a &amp; b&nbsp;c &lt;d&gt; &quot;e&apos;",
            "&nbsp;&nbsp;",
            "x &bogus; y",
            "x &nbspx; y",
            "x &amp y",
            "x &",
            "&lt;&;",
            "a\tb\nc",
            "a\rb",
            "a > b",
            "\u{e9}t\u{e9} &#233;",
            "\u{FFFE}",
        ] {
            for div in [
                format!("{OPEN}{text}</div>"),
                format!("{OPEN}<p>{text}</p><ul><li>{text}</li></ul></div>"),
                format!("{OPEN}<ul>{text}<li/></ul></div>"),
                format!("{OPEN}<p>{text}<!-- c --></p></div>"),
            ] {
                let whole = check_div(&div);
                let plain = write_plain_div(&div, &mut Discard, Links::RefuseActive).is_some();
                for cut in 0..=text.len() {
                    assert_eq!(
                        checked_in_pieces(&div, cut),
                        (whole, plain),
                        "{div:?} cut at {cut}"
                    );
                }
            }
        }
        // The tags as well as the text decide, those the plain reading leaves to the general
        // reader too (a space in an end tag).
        for (div, verdict) in [
            (format!("{OPEN}<p>a</b></div>"), Err("not well-formed XML")),
            (format!("{OPEN}<p/><p></p ></div>"), Ok(())),
            (
                format!("{OPEN}<table><tr><td>1</td></tr></table><img src=\"a\"/></div>"),
                Err("required attribute missing"),
            ),
        ] {
            assert_eq!(checked_in_pieces(&div, 0).0, verdict, "{div:?}");
            assert_eq!(check_div(&div), verdict, "{div:?}");
        }
        // A check is ready for the next `div` once it has given its verdict.
        let mut check = DivCheck::new();
        check.start_tag(b"<p>");
        assert_eq!(check.finish(b"<p>"), check_div("<p>"));
        let div = format!("{OPEN}a</div>");
        check.start_tag(OPEN.as_bytes());
        check.text(b"a");
        check.end_tag(b"</div>");
        assert_eq!(check.finish(div.as_bytes()), Ok(()));
    }
}
