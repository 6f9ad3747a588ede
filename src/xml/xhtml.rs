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

use super::{escape_str, XHTML_NS};

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

/// The most elements whose names start with one letter (`t`: `table`, `tbody`, ...).
const SAME_LETTER: usize = 8;

/// [`ELEMENTS`] by the first letter of their names: their indices, then `u8::MAX`.
static BY_LETTER: [[u8; SAME_LETTER]; 26] = {
    let mut table = [[u8::MAX; SAME_LETTER]; 26];
    let mut i = 0;
    while i < ELEMENTS.len() {
        let letter = (ELEMENTS[i].name.as_bytes()[0] - b'a') as usize;
        let mut j = 0;
        while table[letter][j] != u8::MAX {
            j += 1;
        }
        table[letter][j] = i as u8;
        i += 1;
    }
    table
};

/// The element of [`ELEMENTS`] named `local`.
fn element(local: &[u8]) -> Option<&'static Elem> {
    let letter = usize::from(local.first()?.wrapping_sub(b'a'));
    BY_LETTER
        .get(letter)?
        .iter()
        .take_while(|&&i| i != u8::MAX)
        .map(|&i| &ELEMENTS[usize::from(i)])
        .find(|el| el.name.as_bytes() == local)
}

impl Model {
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

/// Checks `src` by the rules of [`write_div`], writing nothing, for a narrative that is kept
/// as written: a link that is not passive is kept, but one that is active content (a
/// script URL, or a `data:` URL other than an image's) is refused.
pub(crate) fn check_div(src: &str) -> Result<(), Reject> {
    if write_plain_div(src, &mut Discard, Links::RefuseActive).is_some() {
        return Ok(());
    }
    write_any_div(src, &mut Discard, Links::RefuseActive)
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
    /// `s` escaped as text, or as an attribute value.
    fn escaped(&mut self, s: &str, attribute: bool);
}

impl Sink for Vec<u8> {
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }

    fn escaped(&mut self, s: &str, attribute: bool) {
        escape_str(s, self, attribute);
    }
}

/// A [`Sink`] that keeps nothing.
struct Discard;

impl Sink for Discard {
    fn push(&mut self, _: u8) {}

    fn extend_from_slice(&mut self, _: &[u8]) {}

    fn escaped(&mut self, _: &str, _: bool) {}
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
            Event::Text(t) => text(&t.xml10_content(), &stack, out)?,
            Event::CData(t) => text(&t.xml10_content(), &stack, out)?,
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
                text(c.encode_utf8(&mut [0; 4]), &stack, out)?;
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
    let b = src.as_bytes();
    let mut stack: Vec<Open> = Vec::new();
    let mut ids: HashSet<String> = HashSet::new();
    let mut seen_root = false;
    let mut i = 0;
    loop {
        let tag = memchr::memchr(b'<', &b[i..]).map_or(b.len(), |n| i + n);
        plain_text(&src[i..tag], &stack, out)?;
        if tag == b.len() {
            break;
        }
        i = tag + 1;
        if b.get(i) == Some(&b'/') {
            i += 1;
            let end = i + name_len(&b[i..]);
            if b.get(end) != Some(&b'>') {
                return None;
            }
            let open = stack.pop()?;
            if open.elem.name.as_bytes() != &b[i..end]
                || (open.elem.model.needs_child()
                    && (open.children == 0 || (open.elem.model == Model::Table && open.rank < 5)))
            {
                return None;
            }
            out.extend_from_slice(b"</");
            out.extend_from_slice(open.elem.name.as_bytes());
            out.push(b'>');
            i = end + 1;
            continue;
        }
        if stack.is_empty() && seen_root {
            return None;
        }
        let end = i + name_len(&b[i..]);
        if end == i {
            return None;
        }
        let root = stack.is_empty();
        let elem = enter(&b[i..end], &mut stack, out).ok()?;
        i = end;
        let mut required = 0;
        let mut namespace = false;
        // Attribute names seen, to refuse a repeated one as XML does.
        let mut names: [&str; 16] = [""; 16];
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
            let name = &src[i..end];
            let quote = *b.get(end + 1)?;
            if quote != b'"' && quote != b'\'' {
                return None;
            }
            let start = end + 2;
            let close = start + memchr::memchr(quote, &b[start..])?;
            let value = &src[start..close];
            if value
                .bytes()
                .any(|c| c < 0x20 || matches!(c, b'&' | b'<' | b'>' | 0xEF))
                || count == names.len()
                || names[..count].contains(&name)
            {
                return None;
            }
            names[count] = name;
            count += 1;
            i = close + 1;
            if name == "xmlns" {
                if !root || value != XHTML_NS {
                    return None;
                }
                namespace = true;
                continue;
            }
            if !elem.attrs.contains(&name) && !elem.extra.contains(&name) {
                return None;
            }
            attribute(
                elem,
                name,
                Cow::Borrowed(value),
                &mut ids,
                &mut required,
                out,
                links,
            )
            .ok()?;
        };
        if (root && !namespace) || required != elem.required.len() {
            return None;
        }
        seen_root = true;
        if empty {
            if elem.model.needs_child() {
                return None;
            }
            out.extend_from_slice(b"/>");
        } else {
            out.push(b'>');
            stack.push(Open {
                elem,
                children: 0,
                rank: 0,
                last: "",
            });
        }
    }
    if !seen_root || !stack.is_empty() {
        return None;
    }
    Some(())
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

/// Text between tags for [`write_plain_div`]: pieces split at the predefined entities and
/// `&nbsp;`, each as the general reader hands it to [`text`]. `None` for a line break other
/// than LF, another control character, `>`, a possible U+FFFE or U+FFFF, or another
/// reference.
fn plain_text(content: &str, stack: &[Open], out: &mut impl Sink) -> Option<()> {
    // One pass without an early exit, on whole vectors.
    let odd = content.bytes().fold(false, |odd, c| {
        odd | ((c < 0x20) & (c != b'\t') & (c != b'\n')) | (c == b'>') | (c == 0xEF)
    });
    if odd {
        return None;
    }
    let mut rest = content;
    while let Some(amp) = memchr::memchr(b'&', rest.as_bytes()) {
        text(&rest[..amp], stack, out).ok()?;
        let semicolon = memchr::memchr(b';', &rest.as_bytes()[amp..])? + amp;
        let c = match &rest[amp + 1..semicolon] {
            "lt" => "<",
            "gt" => ">",
            "amp" => "&",
            "apos" => "'",
            "quot" => "\"",
            "nbsp" => "\u{A0}",
            _ => return None,
        };
        text(c, stack, out).ok()?;
        rest = &rest[semicolon + 1..];
    }
    text(rest, stack, out).ok()
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
fn enter(local: &[u8], stack: &mut [Open], out: &mut impl Sink) -> Result<&'static Elem, Reject> {
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
    out.push(b'<');
    out.extend_from_slice(elem.name.as_bytes());
    if stack.is_empty() {
        out.extend_from_slice(b" xmlns=\"");
        out.extend_from_slice(XHTML_NS.as_bytes());
        out.push(b'"');
    }
    Ok(elem)
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
    out.escaped(&value, true);
    out.push(b'"');
    Ok(())
}

fn text(content: &str, stack: &[Open], out: &mut impl Sink) -> Result<(), Reject> {
    match stack.last() {
        Some(open) if open.elem.model.allows_text() => {}
        top => {
            // Only whitespace, which is written inside the root and dropped outside it.
            if !content
                .bytes()
                .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                return Err(match top {
                    None => "text outside the root element",
                    Some(_) => "text not allowed here",
                });
            }
            if top.is_none() {
                return Ok(());
            }
        }
    }
    out.escaped(content, false);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn written(div: &str) -> Result<String, Reject> {
        let mut out = Vec::new();
        write_div(div, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    const OPEN: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\">";

    /// Every `div` of the official examples in the fixtures.
    fn example_divs() -> Vec<String> {
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
        // Variations of them: any change the plain reading must notice or carry over.
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
        let mut rng = Rng(0x5EED);
        for div in divs.iter().filter(|d| d.len() < 20_000) {
            for _ in 0..8 {
                let mut mutated = div.clone();
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
                assert_same(&mutated);
            }
        }
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
}
