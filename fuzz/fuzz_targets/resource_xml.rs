//! FHIR XML of any resource: a client asks for `_format=xml` on any route (`select_all`), the
//! inner service answers FHIR JSON of a release, cut into frames anywhere.
//!
//! - Never a panic, and never more memory than the limits allow: with small limits the most
//!   the layer holds at once is bounded by a constant and the largest frame, whatever the size
//!   of the input (the counting allocator of `common/alloc.rs`).
//! - The answer is always FHIR XML (never the JSON), and when it is complete it is well-formed
//!   XML 1.0 with the FHIR and XHTML namespaces where they belong (`common/well_formed.rs`).
//! - When the layer converted the JSON (the inner status, not a 502), the JSON was one
//!   object without duplicate keys, and the XML converts back through the layer's FHIR XML
//!   request path to the same JSON value: numbers compared by their text (DSTU2 and STU3,
//!   whose XML decimals have no exponent, by their digits and scale), `fhir_comments`
//!   (dropped in XML) left out, each narrative `div` compared as the XML converted again:
//!   JSON -> XML -> JSON -> XML gives the first XML byte for byte.
//!
//! The first byte chooses the release, the limits (small or the defaults), whether the size is
//! announced and the status; the second the largest frame; the next eight where the frames
//! are cut; the rest is the JSON.
#![no_main]

use std::collections::BTreeMap;

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tower_fhir_binary::{AllRequests, BinaryNegotiationLayer, FhirVersion};

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/json_tree.rs"]
mod json_tree;
#[path = "common/layer.rs"]
mod layer;
#[path = "common/well_formed.rs"]
mod well_formed;

use json_tree::{decimal_digits, Json};
use layer::{cuts, get, put, Frames, VERSIONS};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const MAX_FRAMES: [usize; 6] = [1, 2, 7, 64, 512, 4096];
const STATUSES: [StatusCode; 3] = [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::CREATED];
const URI: &str = "/fhir/Resource/1?_format=xml";

fn small_limits(version: FhirVersion) -> BinaryNegotiationLayer<AllRequests> {
    BinaryNegotiationLayer::new()
        .select_all()
        .fhir_version(version)
        .reorder_buffer_limit(1024)
        .read_whole_limit(512)
        .frame_size(97)
        .max_depth(24)
}

fn default_limits(version: FhirVersion) -> BinaryNegotiationLayer<AllRequests> {
    BinaryNegotiationLayer::new()
        .select_all()
        .fhir_version(version)
}

/// The most the layer may hold at once with `small_limits`, beyond the input: the limits, a
/// frame's worth of converted output, and the fixed cost of a request (measured: at most
/// 45 KiB over the corpus, 20 KiB for a searchset of 100 or 400 entries in 2-byte frames).
fn bound(max_frame: usize) -> usize {
    (96 << 10) + 16 * max_frame
}

fuzz_target!(|data: &[u8]| {
    let [how, frame, seed @ ..] = data else {
        return;
    };
    if seed.len() < 8 {
        return;
    }
    let (seed, json) = seed.split_at(8);
    let version = VERSIONS[usize::from(*how) % 5];
    let small = (how / 5) % 2 == 1;
    let exact = (how / 10) % 2 == 1;
    let status = STATUSES[usize::from(how / 20) % 3];
    let max_frame = MAX_FRAMES[usize::from(*frame) % MAX_FRAMES.len()];
    let ends = cuts(seed, json.len(), max_frame);
    let layer = if small {
        small_limits(version)
    } else {
        default_limits(version)
    };

    if small {
        let frames = Frames::new(json, &ends, exact);
        let (_, held) = alloc::peak_during(|| get(&layer, URI, status, frames, false));
        assert!(
            held <= bound(max_frame),
            "{held} bytes held at once for {} bytes of JSON in frames of at most {max_frame}",
            json.len()
        );
    }

    let got = get(&layer, URI, status, Frames::new(json, &ends, exact), true);
    let xml_type = match version {
        FhirVersion::Dstu2 => "application/xml+fhir;charset=utf-8",
        _ => "application/fhir+xml;charset=utf-8",
    };
    assert_eq!(
        got.content_type, xml_type,
        "an XML request answered {got:?}"
    );
    if got.error.is_some() {
        // A broken transfer: the head had gone out with the inner status.
        assert_eq!(got.status, status);
        return;
    }
    well_formed::check_well_formed(&got.body);
    if got.status == StatusCode::BAD_GATEWAY {
        return;
    }
    assert_eq!(got.status, status);
    let original = json_tree::parse(json).unwrap_or_else(|e| {
        panic!(
            "converted JSON that is not one JSON object with unique keys: {e}: {}",
            String::from_utf8_lossy(&got.body)
        )
    });
    let xml = got.body;

    // Back through the layer's request path: the inner service reads FHIR JSON.
    let put_layer = default_limits(version);
    let (read, answer) = put(
        &put_layer,
        "/fhir/Resource/1",
        "application/fhir+xml",
        Frames::new(&xml, &cuts(seed, xml.len(), 4096), false),
        true,
    );
    let shown = || String::from_utf8_lossy(&xml).into_owned();
    let read = read.unwrap_or_else(|| panic!("the XML was refused: {answer:?}: {}", shown()));
    let back = read
        .body
        .unwrap_or_else(|e| panic!("the XML did not convert back: {e}: {}", shown()));
    let back_tree = json_tree::parse(&back).unwrap_or_else(|e| {
        panic!(
            "the XML converted back to bad JSON: {e}: {}",
            String::from_utf8_lossy(&back)
        )
    });
    let (expected, got_back) = (normalise(original, version), normalise(back_tree, version));
    assert!(
        expected == got_back,
        "JSON -> XML -> JSON changed the value\n  JSON {}\n  back {}\n  XML {}",
        expected.map_or("-".into(), |j| j.to_string()),
        got_back.map_or("-".into(), |j| j.to_string()),
        shown()
    );
    let again = get(
        &default_limits(version),
        URI,
        StatusCode::OK,
        Frames::new(&back, &[], true),
        true,
    );
    assert!(
        again.status == StatusCode::OK && again.body == xml,
        "JSON -> XML -> JSON -> XML is not the first XML\n  first {}\n  again {} {}",
        shown(),
        again.status,
        String::from_utf8_lossy(&again.body)
    );
});

/// The value as it must come back: `fhir_comments` left out (DSTU2, STU3), `_name` arrays of
/// nothing but `null` left out, `div` as a placeholder (checked by the second conversion),
/// numbers by digits and scale where XML has no exponent. `None`: nothing left.
fn normalise(json: Json, version: FhirVersion) -> Option<Json> {
    let old = matches!(version, FhirVersion::Dstu2 | FhirVersion::Stu3);
    Some(match json {
        Json::Object(map) => {
            let mut out = BTreeMap::new();
            for (key, value) in map {
                if old && key == "fhir_comments" {
                    continue;
                }
                let value = match (key.as_str(), value) {
                    ("div", Json::String(_)) => Some(Json::String("<div/>".into())),
                    (_, value) => normalise(value, version),
                };
                if let Some(value) = value {
                    out.insert(key, value);
                }
            }
            if out.is_empty() {
                return None;
            }
            Json::Object(out)
        }
        Json::Array(items) => {
            let items: Vec<Json> = items
                .into_iter()
                .map(|i| normalise(i, version).unwrap_or(Json::Null))
                .collect();
            if items.iter().all(|i| *i == Json::Null) {
                return None;
            }
            Json::Array(items)
        }
        Json::Number(text) if old => {
            let (negative, digits, scale) = decimal_digits(&text);
            Json::Number(format!("{negative}:{digits}:{scale}"))
        }
        other => other,
    })
}
