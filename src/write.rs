//! The request the inner service receives for a write to the Binary endpoint: a FHIR JSON
//! body as it is, a raw document as the equivalent Binary JSON, or a 4xx answer instead.

use http::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use http::Request;

use crate::head::X_SECURITY_CONTEXT;
use crate::outcome::Outcome;
use crate::request_body::{RequestBody, UploadWatch};
use crate::upload::{plan, Upload, UploadOptions};
use crate::xml_to_json::XmlLimits;
use crate::FhirVersion;

/// Headers of the upload that must not reach the inner service with the Binary JSON: the
/// security context (now inside the resource), the encoding and the digests of the raw bytes.
/// (From the third on, those of FHIR XML converted to JSON.)
const NOT_FOR_THE_JSON: [HeaderName; 6] = [
    X_SECURITY_CONTEXT,
    CONTENT_ENCODING,
    HeaderName::from_static("content-md5"),
    HeaderName::from_static("digest"),
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("repr-digest"),
];

/// A request made ready for the inner service.
#[derive(Debug)]
pub(crate) struct Prepared<B> {
    /// The request to send on.
    pub(crate) request: Request<RequestBody<B>>,
    /// For a raw document of unknown length, whether it grew over the limit while streaming.
    pub(crate) watch: Option<UploadWatch>,
}

/// Prepares `request` (one the layer selected as addressed to the Binary endpoint): anything
/// but a raw document goes on untouched; a raw document goes on as Binary JSON with
/// `Content-Type: application/fhir+json` (the DSTU2 spelling for DSTU2) and an exact
/// `Content-Length` when the upload's length is known (chunked otherwise), without
/// `X-Security-Context` (now inside the resource) and without the digests of the raw bytes.
/// Every other header (`Authorization`, `If-Match`, `If-None-Exist`, `Prefer`, ...) goes on.
/// A request the layer must refuse gives the [`Outcome`] to answer with; the inner service
/// must then not be called.
pub(crate) fn prepare<B>(
    request: Request<B>,
    version: FhirVersion,
    options: &UploadOptions,
    frame_size: usize,
) -> Result<Prepared<B>, Outcome> {
    let upload = plan(
        request.method(),
        request.uri().path(),
        request.headers(),
        version,
        options,
    )?;
    let envelope = match upload {
        Upload::NotAWrite | Upload::FhirJson => {
            return Ok(Prepared {
                request: request.map(RequestBody::untouched),
                watch: None,
            })
        }
        Upload::Document(envelope) => envelope,
        Upload::FhirXml { json_media_type } => {
            return Ok(fhir_xml(request, version, options, json_media_type));
        }
    };
    let (mut parts, body) = request.into_parts();
    let json_length = envelope.upload_length().map(|n| envelope.json_length(n));
    let json_media_type = envelope.json_media_type();
    let (body, watch) = RequestBody::upload(body, envelope, options.max_upload_size, frame_size);
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(json_media_type));
    // A removal hashes the name even when it finds nothing: look at the few headers first.
    if headers.keys().any(|name| NOT_FOR_THE_JSON.contains(name)) {
        for name in NOT_FOR_THE_JSON {
            headers.remove(name);
        }
    }
    // Without a `Content-Length` from the client there is none to remove: chunked it is.
    if let Some(length) = json_length {
        headers.remove(TRANSFER_ENCODING);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(Prepared {
        request: Request::from_parts(parts, body),
        watch,
    })
}

/// A resource in FHIR XML goes on as FHIR JSON, converted as it arrives: its length is
/// unknown (no `Content-Length`, chunked), and the digests of the XML go.
fn fhir_xml<B>(
    request: Request<B>,
    version: FhirVersion,
    options: &UploadOptions,
    json_media_type: &'static str,
) -> Prepared<B> {
    let (mut parts, body) = request.into_parts();
    // The `value` of a Binary's base64 streams: the converter's bounds do not grow with it.
    let (body, watch) =
        RequestBody::fhir_xml(body, version, XmlLimits::default(), options.max_upload_size);
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(json_media_type));
    headers.remove(CONTENT_LENGTH);
    for name in &NOT_FOR_THE_JSON[2..] {
        headers.remove(name);
    }
    Prepared {
        request: Request::from_parts(parts, body),
        watch: Some(watch),
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;

    use http_body::Body;

    use super::*;

    fn prepared(
        request: Request<Full<Bytes>>,
        version: FhirVersion,
    ) -> Result<Prepared<Full<Bytes>>, Outcome> {
        prepare(request, version, &UploadOptions::default(), 64 * 1024)
    }

    #[tokio::test]
    async fn a_raw_document_goes_on_as_binary_json_with_an_exact_length() {
        let request = Request::put("http://h/fhir/Binary/r1?x=1")
            .header("content-type", "application/pdf")
            .header("content-length", "5")
            .header("x-security-context", "Patient/p")
            .header("authorization", "Bearer t")
            .header("if-match", "W/\"3\"")
            .header("prefer", "return=minimal")
            .header("content-md5", "x")
            .body(Full::new(Bytes::from_static(b"%PDF-")))
            .unwrap();
        let Prepared { request, watch } = prepared(request, FhirVersion::R4).unwrap();
        // Its length is announced: it cannot grow past the limit unnoticed.
        assert!(watch.is_none());
        assert_eq!(request.uri(), "http://h/fhir/Binary/r1?x=1");
        let headers = request.headers().clone();
        assert_eq!(headers["content-type"], "application/fhir+json");
        assert!(headers.get("x-security-context").is_none());
        assert!(headers.get("content-md5").is_none());
        for kept in ["authorization", "if-match", "prefer"] {
            assert!(headers.get(kept).is_some(), "{kept}");
        }
        let json = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(headers["content-length"], json.len().to_string().as_str());
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["id"], "r1");
        assert_eq!(value["securityContext"]["reference"], "Patient/p");
        assert_eq!(
            STANDARD.decode(value["data"].as_str().unwrap()).unwrap(),
            b"%PDF-"
        );
    }

    #[tokio::test]
    async fn an_upload_of_unknown_length_goes_on_chunked() {
        let frames = futures_frames(&[b"ab", b"c"]);
        let request = Request::post("/Binary")
            .header("content-type", "text/plain")
            .header("content-length", "3")
            .body(frames)
            .unwrap();
        // The length is the announced one: the body is not asked.
        let prepared =
            prepare(request, FhirVersion::Stu3, &UploadOptions::default(), 1024).unwrap();
        assert!(prepared.request.headers().get("content-length").is_some());
        let request = Request::post("/Binary")
            .header("content-type", "text/plain")
            .header("transfer-encoding", "chunked")
            .body(futures_frames(&[b"ab", b"c"]))
            .unwrap();
        let Prepared { request, watch } =
            prepare(request, FhirVersion::Stu3, &UploadOptions::default(), 1024).unwrap();
        assert!(watch.is_some());
        assert!(request.headers().get("content-length").is_none());
        assert_eq!(request.headers()["transfer-encoding"], "chunked");
        let json = request.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["content"], "YWJj");
        assert_eq!(value["contentType"], "text/plain");
    }

    /// A body of unknown length: the frames given, one at a time.
    fn futures_frames(parts: &[&'static [u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn fhir_json_and_other_requests_go_on_untouched() {
        for (method, path, content_type) in [
            ("POST", "/Binary", "application/fhir+json"),
            ("PUT", "/Binary/1", "application/json"),
            ("DELETE", "/Binary/1", "application/pdf"),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", content_type)
                .header("x-security-context", "Patient/1")
                .body(Full::new(Bytes::from_static(
                    b"{\"resourceType\":\"Binary\"}",
                )))
                .unwrap();
            let Prepared { request, watch } = prepared(request, FhirVersion::R4).unwrap();
            assert!(watch.is_none());
            assert_eq!(request.headers()["content-type"], content_type);
            assert_eq!(request.headers()["x-security-context"], "Patient/1");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "{\"resourceType\":\"Binary\"}");
        }
    }

    #[tokio::test]
    async fn fhir_xml_goes_on_as_fhir_json_of_unknown_length() {
        let xml = r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><content value="SGk="/></Binary>"#;
        for (version, path, media_type) in [
            (FhirVersion::Stu3, "/Binary", "application/fhir+json"),
            (FhirVersion::Dstu2, "/fhir/Binary", "application/json+fhir"),
        ] {
            let request = Request::post(path)
                .header("content-type", "application/fhir+xml")
                .header("content-length", xml.len())
                .header("content-md5", "x")
                .header("x-security-context", "Patient/1")
                .header("if-none-exist", "identifier=1")
                .body(Full::new(Bytes::from_static(xml.as_bytes())))
                .unwrap();
            let Prepared { request, watch } = prepared(request, version).unwrap();
            assert!(watch.is_some());
            let headers = request.headers().clone();
            assert_eq!(headers["content-type"], media_type);
            assert!(headers.get("content-length").is_none());
            assert!(headers.get("content-md5").is_none());
            assert_eq!(headers["x-security-context"], "Patient/1");
            assert_eq!(headers["if-none-exist"], "identifier=1");
            let json = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                json,
                r#"{"resourceType":"Binary","contentType":"text/plain","content":"SGk="}"#
            );
        }
        // Not FHIR: the body fails, it never ends as a document.
        let request = Request::put("/Binary/1")
            .header("content-type", "application/xml")
            .body(Full::new(Bytes::from_static(b"<Binary xmlns=\"http://hl7.org/fhir\"><data value=\"SGk=\"/><id value=\"1\"/></Binary>")))
            .unwrap();
        let Prepared { request, .. } = prepared(request, FhirVersion::R4).unwrap();
        let error = request.into_body().collect().await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("Binary: <id> repeated or out of the definition order"),
            "{error}"
        );
    }

    #[test]
    fn a_refused_request_gives_its_outcome() {
        let request = Request::post("/Binary")
            .header("content-type", "application/pdf")
            .header("x-security-context", "Patient/1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = prepared(request, FhirVersion::Dstu2).unwrap_err();
        assert_eq!(outcome.status, StatusCode::UNPROCESSABLE_ENTITY);
        let request = Request::post("/Binary")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            prepared(request, FhirVersion::R4).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
