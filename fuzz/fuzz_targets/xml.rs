//! FHIR XML from any inner body. A client asks for `_format=xml`; whatever the layer then
//! writes as FHIR XML must be well-formed XML 1.0 (every character allowed, every reference
//! resolvable, no duplicate attribute), with its root in the FHIR namespace and a narrative
//! `div` in the XHTML one; a narrative it wrote must come back byte for byte when written
//! again. Whatever it does not write as XML must be the inner body, untouched.
//!
//! The first byte chooses the input: bit 0 set, the rest is the text of a narrative `div` in an
//! OperationOutcome the inner service sends with a 404; clear, the rest is the inner body
//! itself, sent with a 404 when bit 1 is set, else with a 200. The second byte seeds the frame
//! cuts.
#![no_main]

use http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::XmlVersion;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

use oracle::gen::{cuts, Rng};
use oracle::{respond, Frames, Got, Limits};

const FHIR_NS: &str = "http://hl7.org/fhir";
const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
const DIV_START: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\"";

fuzz_target!(|data: &[u8]| {
    let [how, cut_seed, rest @ ..] = data else {
        return;
    };
    let (status, body) = if how & 1 != 0 {
        let Ok(div) = std::str::from_utf8(rest) else {
            return;
        };
        (StatusCode::NOT_FOUND, outcome_with_div(div))
    } else if how & 2 != 0 {
        (StatusCode::NOT_FOUND, rest.to_vec())
    } else {
        (StatusCode::OK, rest.to_vec())
    };
    let ends = cuts(&mut Rng::new(u64::from(*cut_seed)), body.len());
    let got = ask_for_xml(status, &body, &ends);
    let content_type = got
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/fhir+xml") {
        if got.error.is_some() {
            // A broken transfer of a streamed document (a Binary, or any resource whose XML
            // outgrew the read-whole limit): the client sees the failure, not a document; what
            // came before it is cut off mid-element.
            return;
        }
        check_well_formed(&got.body);
        if let Some(div) = narrative(&got.body) {
            let outcome = outcome_with_div(div);
            let again = ask_for_xml(StatusCode::NOT_FOUND, &outcome, &[outcome.len()]);
            assert_eq!(
                narrative(&again.body),
                Some(div),
                "a narrative the layer wrote did not come back the same when written again: {}",
                String::from_utf8_lossy(&again.body)
            );
        }
    } else {
        assert_eq!(
            content_type,
            "application/fhir+json",
            "neither FHIR XML nor the inner FHIR JSON ({:?})",
            got.status
        );
        assert!(got.error.is_none(), "a pass-through broke off: {:?}", got.error);
        assert_eq!(got.status, status, "a pass-through changed the status");
        assert!(got.body == body, "a pass-through changed the body");
    }
});

fn ask_for_xml(status: StatusCode, body: &[u8], ends: &[usize]) -> Got {
    let request = Request::get("/Binary/1?_format=xml").body(()).unwrap();
    respond(&Limits::DEFAULT, status, Frames::new(body, ends, false), request)
}

fn outcome_with_div(div: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "resourceType": "OperationOutcome",
        "text": {"status": "generated", "div": div},
        "issue": [{"severity": "error", "code": "not-found"}],
    }))
    .unwrap()
}

/// The narrative `div` as written, up to the end of its `text` element: text is escaped and
/// XHTML has no `text` element, so the first `</text>` after the `div` closes it.
fn narrative(xml: &[u8]) -> Option<&str> {
    let xml = std::str::from_utf8(xml).expect("the XML is UTF-8");
    let start = xml.find(DIV_START)?;
    let end = start + xml[start..].find("</text>").expect("a div inside text");
    Some(&xml[start..end])
}

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

fn check_well_formed(xml: &[u8]) {
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
