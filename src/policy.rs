//! How the raw document is presented to a browser: sniffing, sandboxing, inline or download,
//! and the file name it is saved under.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS,
};

/// How the layer protects a browser from the documents it serves natively.
///
/// A Binary is whatever someone uploaded: an HTML page or an SVG image with a script in it,
/// served from the FHIR server's own origin, would run with the user's session there. The
/// layer therefore sorts content types into *active* ones, which a browser may execute or
/// render as a page (HTML, XHTML, SVG, any XML type, JavaScript and ECMAScript types,
/// Flash, WebAssembly, `multipart/x-mixed-replace`, and every type the layer does not know),
/// and *passive* ones, which a browser only shows (PDF, images other than SVG, audio, video,
/// fonts, `text/plain`, `text/csv`, JSON, `application/dicom`, `application/zip`,
/// `application/gzip` and `application/octet-stream`, which browsers download and never
/// execute).
///
/// Whatever the policy, every native response carries `X-Content-Type-Options: nosniff`, so
/// that a browser never takes a passive type for an active one. The `Content-Disposition`
/// names the file after the Binary's `id` with an extension for its content type
/// (`example.pdf`), falling back to `binary` when the id is missing or not a plain FHIR id.
///
/// ```
/// use tower_fhir_binary::{BinaryNegotiationLayer, SecurityPolicy};
///
/// let layer = BinaryNegotiationLayer::new().security_policy(SecurityPolicy::AttachmentAlways);
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityPolicy {
    /// The default. Active content gets `Content-Security-Policy: sandbox` and
    /// `Content-Disposition: attachment` (the browser saves it rather than running it, and a
    /// page that is shown anyway runs in a unique origin without scripts); passive content is
    /// `inline`, so that a browser shows a PDF or an image. No sandbox ever goes on a passive
    /// type: browsers refuse to render a PDF under `sandbox`.
    #[default]
    Standard,
    /// Every document is an `attachment` (always downloaded); active content is also
    /// sandboxed.
    AttachmentAlways,
    /// Every document is `inline`; active content is sandboxed, so that an HTML page or an
    /// SVG image is shown with its scripts disabled, in a unique origin.
    InlineSandboxed,
    /// Only `X-Content-Type-Options: nosniff`: no `Content-Disposition` and no
    /// `Content-Security-Policy` are added. For applications that serve Binaries from a
    /// separate, cookie-less origin, or set these headers themselves.
    NosniffOnly,
}

/// `X-Content-Type-Options: nosniff`, checked once at compile time.
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// `Content-Security-Policy: sandbox`, checked once at compile time.
const SANDBOX: HeaderValue = HeaderValue::from_static("sandbox");

/// Sets `X-Content-Type-Options: nosniff`, which every response the layer makes or negotiates
/// carries: a browser must take it for the type it says it is.
pub(crate) fn nosniff(headers: &mut HeaderMap) {
    headers.insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF);
}

impl SecurityPolicy {
    /// Adds the headers of this policy for a document of `content_type` whose Binary has the
    /// id `id`.
    pub(crate) fn apply(
        self,
        headers: &mut HeaderMap,
        content_type: &HeaderValue,
        id: Option<&str>,
    ) {
        nosniff(headers);
        if self == SecurityPolicy::NosniffOnly {
            return;
        }
        let Presentation { active, extension } = presentation(content_type);
        if active {
            // Appended: a policy the inner service set is enforced as well.
            headers.append(CONTENT_SECURITY_POLICY, SANDBOX);
        }
        let attachment = match self {
            SecurityPolicy::AttachmentAlways => true,
            SecurityPolicy::InlineSandboxed => false,
            _ => active,
        };
        if let Some(value) = content_disposition(attachment, file_base(id), extension) {
            headers.insert(CONTENT_DISPOSITION, value);
        }
    }
}

/// What the policy needs to know of a media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Presentation {
    /// See [`is_active_essence`].
    active: bool,
    /// See [`extension_of_essence`].
    extension: Option<&'static str>,
}

/// Content types most Binaries have, each a bare media type (lowercase, without parameters),
/// with its [`Presentation`]: the transcoder serves them from these static header values (no
/// copy, no allocation, checked once at compile time), and the policy takes what the parsing
/// path would give for them without parsing.
pub(crate) static COMMON_CONTENT_TYPES: [(HeaderValue, Presentation); 10] = [
    (
        HeaderValue::from_static("application/pdf"),
        Presentation::passive("pdf"),
    ),
    (
        HeaderValue::from_static("image/jpeg"),
        Presentation::passive("jpg"),
    ),
    (
        HeaderValue::from_static("image/png"),
        Presentation::passive("png"),
    ),
    (
        HeaderValue::from_static("application/dicom"),
        Presentation::passive("dcm"),
    ),
    (
        HeaderValue::from_static("text/plain"),
        Presentation::passive("txt"),
    ),
    (
        HeaderValue::from_static("application/octet-stream"),
        Presentation::passive("bin"),
    ),
    (
        HeaderValue::from_static("text/xml"),
        Presentation::active("xml"),
    ),
    (
        HeaderValue::from_static("application/xml"),
        Presentation::active("xml"),
    ),
    (
        HeaderValue::from_static("application/hl7-v3+xml"),
        Presentation::active("xml"),
    ),
    (
        HeaderValue::from_static("text/html"),
        Presentation::active("html"),
    ),
];

/// The entry of [`COMMON_CONTENT_TYPES`] written exactly as `text`.
pub(crate) fn common_content_type(text: &[u8]) -> Option<&'static (HeaderValue, Presentation)> {
    COMMON_CONTENT_TYPES
        .iter()
        .find(|(known, _)| known.as_bytes() == text)
}

impl Presentation {
    /// A type a browser only shows, saved with `extension`.
    const fn passive(extension: &'static str) -> Self {
        Presentation {
            active: false,
            extension: Some(extension),
        }
    }

    /// A type a browser may execute, saved with `extension`.
    const fn active(extension: &'static str) -> Self {
        Presentation {
            active: true,
            extension: Some(extension),
        }
    }
}

/// The [`Presentation`] of a whole content type: from [`COMMON_CONTENT_TYPES`] when it is
/// written as there, else from its essence.
fn presentation(content_type: &HeaderValue) -> Presentation {
    if let Some((_, known)) = common_content_type(content_type.as_bytes()) {
        return *known;
    }
    parsed_presentation(content_type.to_str().unwrap_or_default())
}

/// The [`Presentation`] of any content type, from its lowercased essence.
fn parsed_presentation(content_type: &str) -> Presentation {
    let essence = lowercase_essence(content_type);
    Presentation {
        active: is_active_essence(&essence),
        extension: extension_of_essence(&essence),
    }
}

/// `Content-Disposition: inline` or `attachment`, with the file name `base` and `extension`.
/// The name is made of `[A-Za-z0-9._-]` only (see `filename`), so this is never None.
fn content_disposition(
    attachment: bool,
    base: &str,
    extension: Option<&str>,
) -> Option<HeaderValue> {
    let start = if attachment {
        "attachment; filename=\""
    } else {
        "inline; filename=\""
    };
    // One buffer of the exact length: `Bytes` takes it over without another allocation.
    let dot_extension = extension.map_or(0, |e| e.len() + 1);
    let mut value = Vec::with_capacity(start.len() + base.len() + dot_extension + 1);
    value.extend_from_slice(start.as_bytes());
    value.extend_from_slice(base.as_bytes());
    if let Some(extension) = extension {
        value.push(b'.');
        value.extend_from_slice(extension.as_bytes());
    }
    value.push(b'"');
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// The media type without parameters, lowercased (borrowed when it already is).
fn lowercase_essence(content_type: &str) -> Cow<'_, str> {
    let essence = crate::negotiate::essence(content_type);
    if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(essence.to_ascii_lowercase())
    } else {
        Cow::Borrowed(essence)
    }
}

/// [`is_active_essence`] of a whole content type.
#[cfg(test)]
pub(crate) fn is_active(content_type: &str) -> bool {
    is_active_essence(&lowercase_essence(content_type))
}

/// Whether a browser may execute a document of this media type (lowercased, without
/// parameters) or render it as a page. Unknown types are active: the safe side (a browser
/// downloads a type it does not know anyway).
fn is_active_essence(essence: &str) -> bool {
    let Some((kind, subtype)) = essence.split_once('/') else {
        return true;
    };
    // XML of any kind can carry XHTML, scripts or XSLT: text/xml, application/xml, SVG,
    // XHTML, application/fhir+xml...
    if subtype == "xml" || subtype.ends_with("+xml") {
        return true;
    }
    let passive = match kind {
        "image" | "audio" | "video" | "font" => true,
        "text" => matches!(subtype, "plain" | "csv"),
        "application" => {
            matches!(
                subtype,
                "pdf" | "octet-stream" | "json" | "dicom" | "zip" | "gzip"
            ) || subtype.ends_with("+json")
        }
        _ => false,
    };
    !passive
}

/// [`extension_of_essence`] of a whole content type.
#[cfg(test)]
pub(crate) fn extension(content_type: &str) -> Option<&'static str> {
    extension_of_essence(&lowercase_essence(content_type))
}

/// The usual file extension for a media type (lowercased, without parameters), from a small
/// table of the types FHIR servers commonly hold; None for others.
fn extension_of_essence(essence: &str) -> Option<&'static str> {
    let known = match essence {
        "application/pdf" => "pdf",
        "image/jpeg" | "image/jpg" | "image/pjpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/bmp" => "bmp",
        "image/tiff" => "tif",
        "image/avif" => "avif",
        "image/heic" => "heic",
        "image/svg+xml" => "svg",
        "text/html" => "html",
        "application/xhtml+xml" => "xhtml",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "text/rtf" | "application/rtf" => "rtf",
        "text/javascript" | "application/javascript" | "application/ecmascript" => "js",
        "application/json" => "json",
        "application/dicom" => "dcm",
        "application/zip" => "zip",
        "application/gzip" => "gz",
        "application/octet-stream" => "bin",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "audio/mpeg" => "mp3",
        "audio/wav" | "audio/x-wav" => "wav",
        "audio/ogg" => "ogg",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        "text/xml" | "application/xml" => "xml",
        _ => "",
    };
    if !known.is_empty() {
        return Some(known);
    }
    if essence.ends_with("+xml") {
        Some("xml")
    } else if essence.ends_with("+json") {
        Some("json")
    } else {
        None
    }
}

/// The name a browser saves the document under: the Binary's id and an extension for its
/// content type. The id is used only when it is a plain FHIR id (`[A-Za-z0-9.-]{1,64}`, not
/// starting with a dot); anything else (quotes, CR/LF, path separators, non-ASCII) falls back
/// to `binary`, so that the header is never built from unchecked input.
#[cfg(test)]
pub(crate) fn filename(id: Option<&str>, content_type: &str) -> String {
    match (file_base(id), extension(content_type)) {
        (base, Some(extension)) => format!("{base}.{extension}"),
        (base, None) => base.to_owned(),
    }
}

/// The file name without its extension (see `filename`).
fn file_base(id: Option<&str>) -> &str {
    id.filter(|id| {
        (1..=64).contains(&id.len())
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    })
    .unwrap_or("binary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_and_passive_types() {
        for active in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "application/xhtml+xml",
            "image/svg+xml",
            "text/xml",
            "application/xml",
            "application/fhir+xml",
            "application/hl7-cda+xml",
            "application/javascript",
            "text/javascript",
            "application/ecmascript",
            "application/x-shockwave-flash",
            "application/wasm",
            "multipart/x-mixed-replace",
            "text/css",
            "application/x-unknown",
            "nonsense",
        ] {
            assert!(is_active(active), "{active} should be active");
        }
        for passive in [
            "application/pdf",
            "image/jpeg",
            "image/png",
            "image/gif",
            "audio/mpeg",
            "video/mp4",
            "text/plain",
            "text/plain; charset=UTF-8",
            "text/csv",
            "application/octet-stream",
            "application/json",
            "application/fhir+json",
            "application/dicom",
            "font/woff2",
        ] {
            assert!(!is_active(passive), "{passive} should be passive");
        }
    }

    #[test]
    fn extensions_from_the_table() {
        assert_eq!(extension("application/pdf"), Some("pdf"));
        assert_eq!(extension("image/jpeg"), Some("jpg"));
        assert_eq!(extension("Image/SVG+XML"), Some("svg"));
        assert_eq!(extension("text/html; charset=utf-8"), Some("html"));
        assert_eq!(extension("application/hl7-cda+xml"), Some("xml"));
        assert_eq!(extension("application/fhir+json"), Some("json"));
        assert_eq!(extension("application/octet-stream"), Some("bin"));
        assert_eq!(extension("application/x-unknown"), None);
    }

    #[test]
    fn file_names_are_built_from_checked_ids_only() {
        assert_eq!(filename(Some("example"), "application/pdf"), "example.pdf");
        assert_eq!(filename(Some("f006"), "image/jpeg"), "f006.jpg");
        assert_eq!(filename(Some("a.b-C9"), "text/plain"), "a.b-C9.txt");
        assert_eq!(filename(Some("x"), "application/x-unknown"), "x");
        for bad in [
            "",
            "a\"b",
            "a\r\nSet-Cookie: x=1",
            "../etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "é",
            "a b",
            "a;b",
        ] {
            assert_eq!(
                filename(Some(bad), "application/pdf"),
                "binary.pdf",
                "{bad:?}"
            );
        }
        assert_eq!(filename(Some(&"a".repeat(65)), "text/plain"), "binary.txt");
        assert_eq!(filename(Some(&"a".repeat(64)), "text/plain").len(), 68);
        assert_eq!(filename(None, "image/png"), "binary.png");
    }

    #[test]
    fn the_common_table_agrees_with_the_parser() {
        for (header, known) in &COMMON_CONTENT_TYPES {
            let text = header.to_str().unwrap();
            assert_eq!(*known, parsed_presentation(text), "{text}");
            assert_eq!(presentation(header), *known, "{text}");
        }
        // Whatever is not written exactly as in the table takes the parser, to the same result.
        for text in [
            "application/pdf",
            "Application/PDF",
            "application/pdf; charset=x",
            "text/html",
            "TEXT/HTML",
            "image/svg+xml",
            "application/fhir+json",
            "application/x-unknown",
            "nonsense",
        ] {
            let header = HeaderValue::from_str(text).unwrap();
            assert_eq!(presentation(&header), parsed_presentation(text), "{text}");
        }
    }

    fn applied(policy: SecurityPolicy, content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_str(content_type).unwrap();
        policy.apply(&mut headers, &content_type, Some("doc"));
        headers
    }

    #[test]
    fn the_standard_policy_sandboxes_active_content_and_never_a_pdf() {
        let html = applied(SecurityPolicy::Standard, "text/html");
        assert_eq!(html[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(html[CONTENT_SECURITY_POLICY], "sandbox");
        assert_eq!(
            html[CONTENT_DISPOSITION],
            "attachment; filename=\"doc.html\""
        );

        let pdf = applied(SecurityPolicy::Standard, "application/pdf");
        assert_eq!(pdf[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(pdf.get(CONTENT_SECURITY_POLICY).is_none());
        assert_eq!(pdf[CONTENT_DISPOSITION], "inline; filename=\"doc.pdf\"");
    }

    #[test]
    fn the_other_policies() {
        let pdf = applied(SecurityPolicy::AttachmentAlways, "application/pdf");
        assert!(pdf.get(CONTENT_SECURITY_POLICY).is_none());
        assert_eq!(pdf[CONTENT_DISPOSITION], "attachment; filename=\"doc.pdf\"");

        let svg = applied(SecurityPolicy::InlineSandboxed, "image/svg+xml");
        assert_eq!(svg[CONTENT_SECURITY_POLICY], "sandbox");
        assert_eq!(svg[CONTENT_DISPOSITION], "inline; filename=\"doc.svg\"");

        let html = applied(SecurityPolicy::NosniffOnly, "text/html");
        assert_eq!(html[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(html.get(CONTENT_SECURITY_POLICY).is_none());
        assert!(html.get(CONTENT_DISPOSITION).is_none());
    }

    #[test]
    fn an_inner_policy_is_kept_beside_the_sandbox() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'"),
        );
        let html = HeaderValue::from_static("text/html");
        SecurityPolicy::Standard.apply(&mut headers, &html, None);
        let all: Vec<_> = headers.get_all(CONTENT_SECURITY_POLICY).iter().collect();
        assert_eq!(all, ["default-src 'none'", "sandbox"]);
    }
}
