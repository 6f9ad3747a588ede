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

#[path = "../../tests/oracle/mod.rs"]
mod oracle;
#[path = "common/well_formed.rs"]
mod well_formed;

use oracle::gen::{cuts, Rng};
use oracle::{respond, Frames, Got, Limits};
use well_formed::check_well_formed;

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
            content_type, "application/fhir+json",
            "neither FHIR XML nor the inner FHIR JSON ({:?})",
            got.status
        );
        assert!(
            got.error.is_none(),
            "a pass-through broke off: {:?}",
            got.error
        );
        assert_eq!(got.status, status, "a pass-through changed the status");
        assert!(got.body == body, "a pass-through changed the body");
    }
});

fn ask_for_xml(status: StatusCode, body: &[u8], ends: &[usize]) -> Got {
    let request = Request::get("/Binary/1?_format=xml")
        .body(http_body_util::Empty::new())
        .unwrap();
    respond(
        &Limits::DEFAULT,
        status,
        Frames::new(body, ends, false),
        request,
    )
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
