//! FHIR XML request bodies: a client `PUT`s any bytes labelled FHIR XML, on any route
//! (`select_all`), cut into frames anywhere; the inner service reads the FHIR JSON the layer
//! makes of them.
//!
//! - Never a panic, and never more memory than the limits allow: with a small upload limit the
//!   most the layer holds at once is bounded by a constant, the limit and the largest frame,
//!   whatever the size of the input (the counting allocator of `common/alloc.rs`).
//! - When the inner service's read ends without an error, what it read is one JSON object
//!   (serde_json) without duplicate keys, labelled FHIR JSON, with a `resourceType`, and the
//!   client gets the inner service's 201; when the read fails, the client gets a 4xx.
//! - That JSON is FHIR JSON the layer's response path accepts (its narrative too: the request
//!   path checks it by the same rules): converted to XML and back, it is the same JSON byte
//!   for byte.
//!
//! The first byte chooses the release, the upload limit (small or the default) and the media
//! type; the second the largest frame; the next eight where the frames are cut; the rest is
//! the XML.
#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tower_fhir_binary::{AllRequests, BinaryNegotiationLayer, FhirVersion};

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/json_tree.rs"]
mod json_tree;
#[path = "common/layer.rs"]
mod layer;

use json_tree::Json;
use layer::{cuts, get, put, Frames, VERSIONS};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const MAX_FRAMES: [usize; 6] = [1, 2, 7, 64, 512, 4096];
const MEDIA_TYPES: [&str; 3] = [
    "application/fhir+xml",
    "application/xml+fhir",
    "application/fhir+xml; charset=utf-8",
];
const SMALL_UPLOAD: u64 = 2048;
const URI: &str = "/fhir/Resource/1";

fn layer(version: FhirVersion, small: bool) -> BinaryNegotiationLayer<AllRequests> {
    let layer = BinaryNegotiationLayer::new()
        .select_all()
        .fhir_version(version);
    if small {
        layer.max_upload_size(SMALL_UPLOAD)
    } else {
        layer
    }
}

/// The converter's element cache, made whole on a document's first element lookup: 2048
/// entries of 56 bytes (`xml_to_json::ElementCache`), a fixed cost whatever the document.
const ELEMENT_CACHE: usize = 2048 * 56;

/// The most the layer may hold at once with the small upload limit, beyond the input: the
/// limit (which also bounds the narrative held to be checked), a frame's worth of converted
/// output, and the fixed cost of a request (measured: at most 6.5 KiB over the corpus, 1.4
/// KiB for a 52 KB Bundle in 2-byte frames, besides the element cache).
fn bound(max_frame: usize) -> usize {
    (16 << 10) + ELEMENT_CACHE + 2 * max_frame + 2 * SMALL_UPLOAD as usize
}

fuzz_target!(|data: &[u8]| {
    let [how, frame, seed @ ..] = data else {
        return;
    };
    if seed.len() < 8 {
        return;
    }
    let (seed, xml) = seed.split_at(8);
    let version = VERSIONS[usize::from(*how) % 5];
    let small = (how / 5) % 2 == 1;
    let media_type = MEDIA_TYPES[usize::from(how / 10) % 3];
    let max_frame = MAX_FRAMES[usize::from(*frame) % MAX_FRAMES.len()];
    let ends = cuts(seed, xml.len(), max_frame);
    let layer = layer(version, small);

    if small {
        let frames = Frames::new(xml, &ends, false);
        let (_, held) = alloc::peak_during(|| put(&layer, URI, media_type, frames, false));
        assert!(
            held <= bound(max_frame),
            "{held} bytes held at once for {} bytes of XML in frames of at most {max_frame}",
            xml.len()
        );
    }

    let (read, answer) = put(
        &layer,
        URI,
        media_type,
        Frames::new(xml, &ends, false),
        true,
    );
    let Some(read) = read else {
        assert!(answer.status.is_client_error(), "{answer:?}");
        return;
    };
    let json = match read.body {
        Err(_) => {
            assert!(
                answer.status.is_client_error(),
                "a failed read, then {answer:?}"
            );
            return;
        }
        Ok(json) => json,
    };
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    let json_type = match version {
        FhirVersion::Dstu2 => "application/json+fhir",
        _ => "application/fhir+json",
    };
    assert_eq!(read.content_type, json_type);
    let shown = || {
        format!(
            "XML {}\nJSON {}",
            String::from_utf8_lossy(xml),
            String::from_utf8_lossy(&json)
        )
    };
    let tree = json_tree::parse(&json)
        .unwrap_or_else(|e| panic!("the XML became JSON that is not valid: {e}\n{}", shown()));
    let Json::Object(members) = &tree else {
        panic!("not a JSON object\n{}", shown());
    };
    assert!(
        matches!(members.get("resourceType"), Some(Json::String(_))),
        "no resourceType\n{}",
        shown()
    );

    // The JSON is FHIR JSON to the response path, and comes back the same, but for the
    // narrative, which the response path rewrites (`</p >` as `</p>`, `&quot;` as `"`); what
    // comes back then is the same byte for byte when converted again.
    let mut previous = json.clone();
    for round in 0..2 {
        let again = json_again(version, media_type, &previous, &shown);
        if round == 0 {
            let back = json_tree::parse(&again).expect("JSON the layer made before");
            assert!(
                json_tree::without_divs(back) == json_tree::without_divs(tree.clone()),
                "XML -> JSON -> XML -> JSON changed the value: {}\n{}",
                String::from_utf8_lossy(&again),
                shown()
            );
        } else {
            assert!(
                again == previous,
                "the narrative converted again changed: {}\n{}",
                String::from_utf8_lossy(&again),
                shown()
            );
        }
        previous = again;
    }
});

/// `json` through the response path to FHIR XML, then through the request path.
fn json_again(
    version: FhirVersion,
    media_type: &str,
    json: &[u8],
    shown: &dyn Fn() -> String,
) -> Vec<u8> {
    let rendered = get(
        &BinaryNegotiationLayer::new()
            .select_all()
            .fhir_version(version),
        "/fhir/Resource/1?_format=xml",
        StatusCode::OK,
        Frames::new(json, &[], true),
        true,
    );
    assert!(
        rendered.status == StatusCode::OK && rendered.error.is_none(),
        "the JSON the layer made is not FHIR JSON to its response path: {} {}\n{}",
        rendered.status,
        String::from_utf8_lossy(&rendered.body),
        shown()
    );
    let (again, _) = put(
        &layer(version, false),
        URI,
        media_type,
        Frames::new(&rendered.body, &[], false),
        true,
    );
    let again = again.and_then(|r| r.body.ok());
    again.unwrap_or_else(|| {
        panic!(
            "the XML of the JSON the layer made was refused: {}\n{}",
            String::from_utf8_lossy(&rendered.body),
            shown()
        )
    })
}
