//! Whether what the layer wrote as FHIR XML is well-formed XML 1.0: every character allowed,
//! every reference defined, no duplicate attribute, one root, the FHIR namespace outside the
//! narrative and the XHTML one inside. Each check panics with the document.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::XmlVersion;

const FHIR_NS: &str = "http://hl7.org/fhir";
const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// XML 1.0's `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn check_text(text: &str, xml: &[u8]) {
    if let Some(c) = text.chars().find(|&c| !is_xml_char(c)) {
        panic!(
            "U+{:04X} is not an XML character: {}",
            u32::from(c),
            String::from_utf8_lossy(xml)
        );
    }
}

pub fn check_well_formed(xml: &[u8]) {
    let shown = || String::from_utf8_lossy(xml).into_owned();
    let text = std::str::from_utf8(xml).unwrap_or_else(|e| panic!("not UTF-8: {e}"));
    check_text(text, xml);
    let mut reader = NsReader::from_reader(xml);
    let mut depth = 0usize;
    let mut roots = 0;
    // Depth at which the narrative `div` opened, while inside it.
    let mut in_div: Option<usize> = None;
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .unwrap_or_else(|e| panic!("not well-formed: {e}: {}", shown()));
        let ns = match ns {
            ResolveResult::Bound(ns) => Some(ns.into_inner().to_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => panic!("unbound prefix {prefix:?}: {}", shown()),
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if depth == 0 {
                    roots += 1;
                }
                let local = e.local_name().into_inner().to_owned();
                if in_div.is_none() && local == "div" {
                    in_div = Some(depth);
                }
                let expected = if in_div.is_some() { XHTML_NS } else { FHIR_NS };
                assert_eq!(
                    ns.as_deref(),
                    Some(expected),
                    "<{local}> in the wrong namespace: {}",
                    shown()
                );
                for attribute in e.attributes().with_checks(true) {
                    let attribute =
                        attribute.unwrap_or_else(|err| panic!("bad attribute: {err}: {}", shown()));
                    assert!(
                        !attribute.value.contains('<'),
                        "a raw < in an attribute value: {}",
                        shown()
                    );
                    let value = attribute
                        .normalized_value(XmlVersion::Implicit1_0)
                        .unwrap_or_else(|err| panic!("bad attribute value: {err}: {}", shown()));
                    check_text(&value, xml);
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                } else if in_div == Some(depth) {
                    in_div = None;
                }
            }
            Event::End(_) => {
                depth -= 1;
                if in_div == Some(depth) {
                    in_div = None;
                }
            }
            Event::Text(ref e) => {
                assert!(
                    !e.clone().into_inner().contains("]]>"),
                    "]]> in text: {}",
                    shown()
                );
                let value = e.xml10_content();
                check_text(&value, xml);
                assert!(
                    depth > 0 || value.trim().is_empty(),
                    "text outside the root: {}",
                    shown()
                );
            }
            Event::GeneralRef(ref r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten()
                } else {
                    match &**r {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        _ => None,
                    }
                };
                match resolved {
                    Some(c) => check_text(c.encode_utf8(&mut [0; 4]), xml),
                    None => panic!("a reference XML does not define: {r:?}: {}", shown()),
                }
            }
            Event::Decl(_) => {}
            Event::Eof => break,
            other => panic!("the layer wrote {other:?}: {}", shown()),
        }
    }
    assert_eq!(roots, 1, "one root element: {}", shown());
}
