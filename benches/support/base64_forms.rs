//! The Binary JSON of the `throughput` benchmark in each way a backend's serializer writes the
//! base64, shared with the profiling driver in `examples/` so that both read the same input.
#![allow(dead_code)]

use base64::Engine as _;
use bytes::Bytes;

#[path = "frames.rs"]
mod frames;
use frames::frames;
// Each program that includes this uses some of them.
#[allow(unused_imports)]
pub use frames::{inner, Frames};

/// How a backend's JSON serializer wrote the base64 (and the document around it).
#[derive(Clone, Copy)]
pub enum Form {
    /// One line, no escapes.
    Plain,
    /// Indented, one member a line (Jackson's and Python's pretty printers); the base64 plain.
    Pretty,
    /// A space every 76 characters, as in HL7's published examples.
    Spaces76,
    /// `\r\n` every 76 characters: Java's MIME encoder, .NET `InsertLineBreaks`.
    CrLf76,
    /// `\n` every 76 characters and at the end: Python's `base64.encodebytes`.
    Lf76,
    /// PHP's `json_encode`: `\/` for every `/`.
    Php,
    /// .NET System.Text.Json: `\u002B` for every `+`.
    DotNet,
    /// Lowercase `\u002b` and `\u002f` for every `+` and `/`.
    LowerHex,
    /// Gson: `\u003d` for every `=`.
    Gson,
}

impl Form {
    pub const ALL: [Form; 9] = [
        Form::Plain,
        Form::Pretty,
        Form::Spaces76,
        Form::CrLf76,
        Form::Lf76,
        Form::Php,
        Form::DotNet,
        Form::LowerHex,
        Form::Gson,
    ];

    /// A short name for the command line of the profiling driver.
    pub fn key(self) -> &'static str {
        match self {
            Form::Plain => "plain",
            Form::Pretty => "pretty",
            Form::Spaces76 => "space",
            Form::CrLf76 => "crlf",
            Form::Lf76 => "lf",
            Form::Php => "php",
            Form::DotNet => "dotnet",
            Form::LowerHex => "lower",
            Form::Gson => "gson",
        }
    }

    /// The name in the benchmark's report.
    pub fn name(self) -> &'static str {
        match self {
            Form::Plain => "plain",
            Form::Pretty => "pretty-printed JSON",
            Form::Spaces76 => "a space every 76",
            Form::CrLf76 => "\\r\\n every 76",
            Form::Lf76 => "\\n every 76",
            Form::Php => "PHP \\/",
            Form::DotNet => ".NET \\u002B",
            Form::LowerHex => "\\u002b and \\u002f",
            Form::Gson => "Gson \\u003d",
        }
    }

    /// The JSON string content for `base64`.
    pub fn write(self, base64: &str) -> String {
        let wrap = |separator: &str, trailing: bool| {
            let lines: Vec<&str> = base64
                .as_bytes()
                .chunks(76)
                .map(|line| std::str::from_utf8(line).unwrap())
                .collect();
            let mut text = lines.join(separator);
            if trailing {
                text.push_str(separator);
            }
            text
        };
        match self {
            Form::Plain | Form::Pretty => base64.to_owned(),
            Form::Spaces76 => wrap(" ", false),
            Form::CrLf76 => wrap("\\r\\n", false),
            Form::Lf76 => wrap("\\n", true),
            Form::Php => base64.replace('/', "\\/"),
            Form::DotNet => base64.replace('+', "\\u002B"),
            Form::LowerHex => base64.replace('+', "\\u002b").replace('/', "\\u002f"),
            Form::Gson => base64.replace('=', "\\u003d"),
        }
    }
}

/// `size` pseudo-random bytes.
pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The Binary JSON of `decoded` written in `form`, cut into frames of `frame` bytes.
pub fn frames_of(decoded: &[u8], frame: usize, form: Form) -> Vec<Bytes> {
    let base64 = form.write(&base64::engine::general_purpose::STANDARD.encode(decoded));
    let json = match form {
        Form::Pretty => format!(
            "{{\n  \"resourceType\": \"Binary\",\n  \"id\": \"bench\",\n  \"meta\": {{\n    \"versionId\": \"1\"\n  }},\n  \"contentType\": \"application/pdf\",\n  \"data\": \"{base64}\"\n}}\n"
        ),
        _ => format!(
            r#"{{"resourceType":"Binary","id":"bench","meta":{{"versionId":"1"}},"contentType":"application/pdf","data":"{base64}"}}"#
        ),
    };
    frames(&Bytes::from(json), frame)
}
