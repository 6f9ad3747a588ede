//! Generated Binary JSON documents, valid and broken, for the differential test and the fuzz
//! corpus. Every choice comes from a seeded generator, so a case is reproduced by its seed.

use base64::Engine as _;

use super::{Limits, Mode};

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Content types a Binary may carry.
pub const VALID_CONTENT_TYPES: &[&str] = &[
    "application/pdf",
    "image/jpeg",
    "image/png",
    "text/plain",
    "text/plain; charset=utf-8",
    "text/html",
    "application/dicom",
    "image/svg+xml",
    "application/hl7-v3+xml; charset=\"UTF-8\"",
    "application/octet-stream",
    "image/x-tiff;name=a",
    "image/png;",
    "text/plain ;charset=utf-8",
];

/// Content types that must be refused (the JSON text of the value).
pub const INVALID_CONTENT_TYPES: &[&str] = &[
    r#""""#,
    r#""  ""#,
    r#""text/plain\r\nX-Injected: yes""#,
    r#""text/plain\n""#,
    r#""image/png\u0000""#,
    r#""not a media type""#,
    r#""text/""#,
    r#""/plain""#,
    r#""text""#,
    r#""text/pl ain""#,
    r#""text/plain; charset""#,
    r#""text/plain; charset=""#,
    r#""image/pngé""#,
    r#""text/plain\u007f""#,
    r#""te(x)t/plain""#,
    "42",
    "null",
    r#"["image/png"]"#,
    r#"{"value":"image/png"}"#,
];

/// Strings for skipped members and ids: valid JSON string texts, some with escapes.
const STRINGS: &[&str] = &[
    r#""a""#,
    r#""example""#,
    r#""caf\u00e9""#,
    r#""emoji \ud83d\ude00 ok""#,
    r#""tab\tnew\nline\r\"quote\" back\\slash \/""#,
    r#""é — ü""#,
    r#""""#,
    r#""data""#,
    r#""contentType""#,
    r#""SGVsbG8=""#,
];

/// Scalars for skipped members (valid JSON).
const SCALARS: &[&str] = &[
    "0",
    "-0",
    "12",
    "-3.25e-7",
    "1E+2",
    "1e400",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[1,2,[3]]",
];

/// Faults that make a string invalid, as raw bytes to put inside its quotes.
const BAD_STRING_BYTES: &[&[u8]] = &[
    b"\xff",
    b"\xc3\x28",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\x01",
    b"\x1f",
    b"\n",
    br"\ud800",
    br"\udc00x",
    br"\ud800\u0041",
    br"\x",
    br"\u12G4",
    br"\U0041",
];

fn ws(rng: &mut Rng) -> &'static str {
    if rng.chance(60) {
        ""
    } else {
        rng.pick::<&str>(&[" ", "\n  ", "\t", "\r\n", "  \n\t "])
    }
}

/// A JSON object or array nested `levels` deep (1 = `{}`-like), with a little content.
fn nested(rng: &mut Rng, levels: usize) -> String {
    let mut open = String::new();
    let mut close = String::new();
    for level in 0..levels {
        if rng.chance(50) {
            open.push_str(&format!("{{\"url\":\"http://x/{level}\",\"extension\":"));
            close.insert(0, '}');
        } else {
            open.push('[');
            close.insert(0, ']');
        }
    }
    // The innermost value: fill the last level's slot.
    let innermost = if open.ends_with(':') { "null" } else { "" };
    format!("{open}{innermost}{close}")
}

fn meta(rng: &mut Rng, limits: &Limits) -> String {
    let mut fields = vec![
        format!("\"versionId\":\"{}\"", rng.below(1000)),
        "\"lastUpdated\":\"2024-05-06T07:08:09.123+02:00\"".to_owned(),
    ];
    if rng.chance(40) {
        fields.push(
            r#""tag":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"HTEST"}]"#
                .to_owned(),
        );
    }
    if rng.chance(30) {
        // Deep extensions: around the depth cap (meta is level 2).
        let cap = limits.max_depth;
        let levels = match rng.below(4) {
            0 => rng.below(4) + 1,
            1 => cap.saturating_sub(3),
            2 => cap.saturating_sub(2),
            _ => cap.saturating_sub(1) + rng.below(3),
        };
        fields.push(format!("\"extension\":{}", nested(rng, levels.max(1))));
    }
    if rng.chance(10) {
        fields.push("\"data\":\"not the payload\"".to_owned());
    }
    let sep = format!(",{}", ws(rng));
    format!("{{{}}}", fields.join(&sep))
}

/// The payload's JSON string text (with quotes) for `bytes`, in one of the ways servers write
/// it, or broken when `broken`.
fn payload_text(rng: &mut Rng, bytes: &[u8], broken: bool) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut chars: Vec<Vec<u8>> = b64.bytes().map(|b| vec![b]).collect();
    if broken {
        let faults: &[&[u8]] = &[
            b"-",
            b"_",
            b"!",
            b".",
            b"=",
            b"==",
            b"A",
            br"\u0021",
            br"\u0000",
            br"\ud800",
            br"\f",
            br"\b",
            b"\xc3\xa9",
            b"\xff",
            b"\x01",
            br"\u00e9",
            b"\t",
        ];
        match rng.below(6) {
            // Insert a fault somewhere.
            0 | 1 => {
                let at = rng.below(chars.len() + 1);
                chars.insert(at, rng.pick(faults).to_vec());
            }
            // Drop a character: a length that is not a multiple of 4.
            2 if !chars.is_empty() => {
                let at = rng.below(chars.len());
                chars.remove(at);
            }
            // Junk after the padding.
            3 => {
                chars.push(b"=".to_vec());
                chars.push(rng.pick(&[&b"A"[..], b"AAAA", b"=", br"\u0041"]).to_vec());
            }
            // Non-canonical: stray bits in the last symbol before the padding.
            4 if b64.ends_with('=') => {
                let pads = b64.bytes().rev().take_while(|&b| b == b'=').count();
                let last = chars.len() - pads - 1;
                let symbol = chars[last][0];
                let next = match symbol {
                    b'Z' => b'a',
                    b'z' => b'0',
                    b'9' => b'+',
                    b'+' => b'/',
                    b'/' => b'A',
                    other => other + 1,
                };
                chars[last] = vec![next];
            }
            // URL-safe alphabet.
            _ => {
                chars.push(b"-_-_".to_vec());
            }
        }
    }
    let mut out = vec![b'"'];
    let style = rng.below(6);
    let every = *rng.pick(&[4usize, 19, 64, 76]);
    for (i, ch) in chars.iter().enumerate() {
        if i > 0 && i % every == 0 {
            match style {
                1 => out.push(b' '),
                2 => out.extend_from_slice(br"\n"),
                3 => out.extend_from_slice(br"\r\n"),
                _ => {}
            }
        }
        if style == 4 && rng.chance(3) {
            out.extend_from_slice(rng.pick::<&[u8]>(&[&b" "[..], br"\t", br"\u0020", br"\n"]));
        }
        let escaped = style == 5 || rng.chance(2);
        match (escaped, ch.as_slice()) {
            (true, b"/") => out.extend_from_slice(br"\/"),
            (true, [c]) if rng.chance(50) => {
                let hex = if rng.chance(50) {
                    format!("\\u{:04X}", c)
                } else {
                    format!("\\u{:04x}", c)
                };
                out.extend_from_slice(hex.as_bytes());
            }
            _ => out.extend_from_slice(ch),
        }
    }
    if style == 4 && rng.chance(30) {
        out.extend_from_slice(b"  ");
    }
    out.push(b'"');
    out
}

fn payload_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 1 + rng.below(3),
        2..=6 => rng.below(64),
        7 | 8 => rng.below(700),
        _ => rng.below(3000),
    };
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A key as JSON text, sometimes with an escape in it.
fn key(rng: &mut Rng, name: &str) -> Vec<u8> {
    if rng.chance(5) && !name.is_empty() {
        let at = rng.below(name.len());
        let (head, tail) = name.split_at(at);
        let mut tail = tail.chars();
        let c = tail.next().unwrap();
        format!("\"{head}\\u{:04x}{}\"", c as u32, tail.as_str()).into_bytes()
    } else {
        format!("\"{name}\"").into_bytes()
    }
}

/// One generated case: the body, how to cut it, how to ask, and with which caps.
#[derive(Clone, Debug)]
pub struct Case {
    pub body: Vec<u8>,
    pub ends: Vec<usize>,
    pub exact: bool,
    pub mode: Mode,
    pub limits: Limits,
}

/// A document: valid most of the time, broken in one or two ways otherwise.
pub fn document(rng: &mut Rng, limits: &Limits) -> Vec<u8> {
    if rng.chance(1) {
        return rng
            .pick(&[
                &b""[..],
                b"   ",
                b"[]",
                b"\"Binary\"",
                b"null",
                b"[{\"resourceType\":\"Binary\"}]",
            ])
            .to_vec();
    }
    let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // resourceType.
    if !rng.chance(3) {
        let value: &str = if rng.chance(92) {
            if rng.chance(5) {
                r#""Bin\u0061ry""#
            } else {
                r#""Binary""#
            }
        } else {
            rng.pick::<&str>(&[r#""Patient""#, r#""binary""#, "42", "null", r#""Binary ""#])
        };
        members.push((key(rng, "resourceType"), value.as_bytes().to_vec()));
    }
    if rng.chance(95) {
        let value = if rng.chance(90) {
            serde_json::to_string(rng.pick(VALID_CONTENT_TYPES)).unwrap()
        } else {
            rng.pick(INVALID_CONTENT_TYPES).to_string()
        };
        members.push((key(rng, "contentType"), value.into_bytes()));
    }
    if rng.chance(50) {
        let id = if rng.chance(85) {
            format!("\"{}\"", rng.below(1_000_000))
        } else {
            rng.pick(STRINGS).to_string()
        };
        members.push((key(rng, "id"), id.into_bytes()));
    }
    if rng.chance(40) {
        members.push((key(rng, "meta"), meta(rng, limits).into_bytes()));
    }
    if rng.chance(15) {
        members.push((
            key(rng, "securityContext"),
            br#"{"reference":"Patient/example","display":"P"}"#.to_vec(),
        ));
    }
    if rng.chance(10) {
        members.push((key(rng, "language"), br#""en-US""#.to_vec()));
    }
    if rng.chance(8) {
        members.push((key(rng, "implicitRules"), br#""http://x/rules""#.to_vec()));
    }
    if rng.chance(8) {
        let name = *rng.pick(&["_id", "_contentType", "_data", "_content", "_language"]);
        members.push((
            key(rng, name),
            br#"{"extension":[{"url":"http://x","valueString":"v"}]}"#.to_vec(),
        ));
    }
    // Decoys: members the layer must skip, some named like the ones it looks for.
    let decoys = if rng.chance(35) { 1 + rng.below(3) } else { 0 };
    for _ in 0..decoys {
        let name = *rng.pick(&[
            "Data",
            "dataa",
            "DATA",
            "contentType2",
            "contenttype",
            "text",
            "extension",
            "_resourceType",
            "a_very_long_member_name_that_is_longer_than_any_binary_element",
            "dat",
            "",
        ]);
        let value = match rng.below(4) {
            0 => rng.pick(STRINGS).to_string(),
            1 => rng.pick(SCALARS).to_string(),
            2 => {
                let levels = match rng.below(3) {
                    0 => 1 + rng.below(5),
                    1 => limits.max_depth - 1,
                    _ => limits.max_depth + rng.below(2),
                };
                nested(rng, levels)
            }
            _ => format!(
                "{{\"data\":{},\"contentType\":\"x/y\",\"resourceType\":\"Patient\"}}",
                rng.pick(STRINGS)
            ),
        };
        members.push((key(rng, name), value.into_bytes()));
    }
    // The payload.
    let payload_key = if rng.chance(85) { "data" } else { "content" };
    if rng.chance(92) {
        let bytes = payload_bytes(rng);
        let broken = rng.chance(12);
        members.push((key(rng, payload_key), payload_text(rng, &bytes, broken)));
    }
    // Shuffle; the common orders (contentType before data, data first) stay common.
    match rng.below(3) {
        0 => {}
        1 => {
            let n = members.len();
            for i in (1..n).rev() {
                let j = rng.below(i + 1);
                members.swap(i, j);
            }
        }
        _ => members.sort_by(|a, b| a.0.cmp(&b.0)),
    }
    // Faults in the members.
    if rng.chance(12) {
        match rng.below(7) {
            0 if !members.is_empty() => {
                let i = rng.below(members.len());
                let copy = members[i].clone();
                let at = rng.below(members.len() + 1);
                members.insert(at, copy);
            }
            1 => {
                let other = if payload_key == "data" {
                    "content"
                } else {
                    "data"
                };
                let at = rng.below(members.len() + 1);
                members.insert(at, (key(rng, other), b"\"SGVsbG8=\"".to_vec()));
            }
            2 | 3 if !members.is_empty() => {
                // A bad string inside some member's value, or as a decoy.
                let mut value = b"\"x".to_vec();
                value.extend_from_slice(rng.pick::<&[u8]>(BAD_STRING_BYTES));
                value.extend_from_slice(b"y\"");
                let name = *rng.pick(&["id", "note", "language", "zzz"]);
                let at = rng.below(members.len() + 1);
                members.insert(at, (key(rng, name), value));
            }
            4 => {
                let at = rng.below(members.len() + 1);
                members.insert(at, (key(rng, "meta"), br#"{"versionId":1e400}"#.to_vec()));
            }
            5 => {
                // Metadata over the cap.
                // Over the cap (rarely under the default cap: 64 KiB a case is slow to scan).
                let len = if limits.max_metadata < 1000 || rng.chance(20) {
                    limits.max_metadata + 1
                } else {
                    1000
                };
                let id = format!("\"{}\"", "x".repeat(len));
                let at = rng.below(members.len() + 1);
                members.insert(at, (key(rng, "id"), id.into_bytes()));
            }
            _ => {
                let at = rng.below(members.len() + 1);
                members.insert(at, (key(rng, "resourceType"), br#""Binary""#.to_vec()));
            }
        }
    }
    let mut body = Vec::new();
    body.extend_from_slice(ws(rng).as_bytes());
    body.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(ws(rng).as_bytes());
        body.extend_from_slice(k);
        body.extend_from_slice(ws(rng).as_bytes());
        body.push(b':');
        body.extend_from_slice(ws(rng).as_bytes());
        body.extend_from_slice(v);
        body.extend_from_slice(ws(rng).as_bytes());
    }
    body.push(b'}');
    body.extend_from_slice(ws(rng).as_bytes());
    // Faults in the bytes.
    if rng.chance(15) && !body.is_empty() {
        for _ in 0..1 + rng.below(2) {
            if body.is_empty() {
                break;
            }
            let at = rng.below(body.len());
            match rng.below(6) {
                0 => body.truncate(at),
                1 => body[at] ^= 1 << rng.below(8),
                2 => body.insert(
                    at,
                    *rng.pick(&[
                        b'"', b'\\', b'{', b'}', b',', b':', 0, 0xff, 0xc3, b' ', b'A', b'=',
                    ]),
                ),
                3 => {
                    body.remove(at);
                }
                4 => body.extend_from_slice(rng.pick::<&[u8]>(&[
                    &b"x"[..],
                    b"{}",
                    b",",
                    b"\0",
                    b" \n",
                ])),
                _ => {
                    // Cut at a nice place: inside the payload, mostly.
                    let quote = body.iter().rposition(|&b| b == b'"').unwrap_or(0);
                    body.truncate(quote.saturating_sub(rng.below(8)));
                }
            }
        }
    }
    body
}

/// Where to cut `len` bytes into frames (the end offsets, the last one `len`).
pub fn cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut ends: Vec<usize> = match rng.below(8) {
        0 => Vec::new(),
        1 if len < 2000 => {
            let every = 1 + rng.below(4);
            (1..len.div_ceil(every)).map(|i| i * every).collect()
        }
        _ => {
            let n = 1 + rng.below(12);
            (0..n).map(|_| rng.below(len + 1)).collect()
        }
    };
    ends.push(len);
    ends.sort_unstable();
    ends.dedup();
    ends.retain(|&e| e > 0);
    ends
}

/// A whole case from one seed.
pub fn case(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let limits = if rng.chance(25) {
        Limits::SMALL
    } else {
        Limits::DEFAULT
    };
    let mode = *rng.pick(&[
        Mode::Native,
        Mode::Native,
        Mode::Native,
        Mode::Head,
        Mode::Json,
        Mode::Mixed,
        Mode::Mixed,
    ]);
    let body = document(&mut rng, &limits);
    let ends = cuts(&mut rng, body.len());
    let exact = rng.chance(30);
    Case {
        body,
        ends,
        exact,
        mode,
        limits,
    }
}
