//! The request the inner service receives for a write to the Binary endpoint: a FHIR JSON
//! body as it is, a raw document as the equivalent Binary JSON, or a 4xx answer instead.

use http::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{HeaderMap, Request};

use crate::config::Config;
use crate::head::X_SECURITY_CONTEXT;
use crate::outcome::Outcome;
use crate::request_body::{RequestBody, UploadWatch, XmlBodyOptions, XmlReadAhead};
use crate::upload::{plan, too_large, Upload};
use crate::xml_to_json::XmlLimits;

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
pub(crate) enum Prepared<B> {
    /// The request to send on; for a raw document of unknown length, whether it grew over the
    /// limit while streaming.
    Ready {
        request: Request<RequestBody<B>>,
        watch: Option<UploadWatch>,
    },
    /// A resource in FHIR XML: its body is read ahead, then the head and body go on with
    /// [`xml_request`].
    ReadAhead { head: Parts, body: XmlReadAhead<B> },
}

/// Prepares `request` (one the layer selected as addressed to the Binary endpoint): anything
/// but a raw document or FHIR XML goes on untouched; a raw document goes on as Binary JSON
/// with `Content-Type: application/fhir+json` (the DSTU2 spelling for DSTU2) and an exact
/// `Content-Length` when the upload's length is known (chunked otherwise), without
/// `X-Security-Context` (now inside the resource) and without the digests of the raw bytes;
/// FHIR XML is read ahead first. Every other header (`Authorization`, `If-Match`,
/// `If-None-Exist`, `Prefer`, ...) goes on. A request the layer must refuse gives the
/// [`Outcome`] to answer with; the inner service must then not be called.
pub(crate) fn prepare<B>(request: Request<B>, config: &Config) -> Result<Prepared<B>, Outcome> {
    let version = config.fhir_version;
    let options = &config.uploads;
    let upload = plan(
        request.method(),
        request.uri().path(),
        request.headers(),
        version,
        options,
    )?;
    let envelope = match upload {
        Upload::NotAWrite | Upload::FhirJson => {
            return Ok(Prepared::Ready {
                request: request.map(RequestBody::untouched),
                watch: None,
            })
        }
        Upload::Document(envelope) => envelope,
        Upload::FhirXml { json_media_type } => {
            return fhir_xml(request, config, json_media_type);
        }
    };
    let (mut parts, body) = request.into_parts();
    let json_length = envelope.upload_length().map(|n| envelope.json_length(n));
    let json_media_type = envelope.json_media_type();
    let (body, watch) =
        RequestBody::upload(body, envelope, options.max_upload_size, config.frame_size);
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
    Ok(Prepared::Ready {
        request: Request::from_parts(parts, body),
        watch,
    })
}

/// A resource in FHIR XML goes on as FHIR JSON, read ahead, then converted as it arrives; the
/// digests of the XML go. One whose `Content-Length` says it is over the upload limit is
/// refused at once.
fn fhir_xml<B>(
    request: Request<B>,
    config: &Config,
    json_media_type: &'static str,
) -> Result<Prepared<B>, Outcome> {
    let (mut head, body) = request.into_parts();
    let max_upload_size = config.uploads.max_upload_size;
    let expected = announced_length(&head.headers);
    if let Some(length) = expected.filter(|&n| n > max_upload_size) {
        return Err(too_large(Some(length), max_upload_size));
    }
    let options = XmlBodyOptions {
        version: config.fhir_version,
        // The `value` of a Binary's base64 streams: the converter's bounds do not grow with it.
        limits: XmlLimits::default(),
        max_upload_size,
        frame_size: config.frame_size,
        read_ahead: config.xml_request_read_ahead,
    };
    let headers = &mut head.headers;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(json_media_type));
    headers.remove(CONTENT_LENGTH);
    for name in &NOT_FOR_THE_JSON[2..] {
        headers.remove(name);
    }
    Ok(Prepared::ReadAhead {
        head,
        body: XmlReadAhead::new(body, expected, &options),
    })
}

/// The request for the inner service once its FHIR XML body has been read ahead: with an
/// exact `Content-Length` when it was read whole (many servers refuse chunked uploads),
/// chunked otherwise; and the watch of the faults found after the call.
pub(crate) fn xml_request<B>(
    mut head: Parts,
    body: XmlReadAhead<B>,
) -> (Request<RequestBody<B>>, UploadWatch) {
    let (body, watch, length) = body.into_body();
    if let Some(length) = length {
        head.headers.remove(TRANSFER_ENCODING);
        head.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    (Request::from_parts(head, body), watch)
}

/// The client's `Content-Length`, when it sent one that is a length.
fn announced_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let text = value.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
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
    use crate::FhirVersion;

    fn config(version: FhirVersion, frame_size: usize) -> Config {
        Config {
            fhir_version: version,
            frame_size,
            ..Config::default()
        }
    }

    /// The request prepared, when it goes on at once.
    fn ready<B: std::fmt::Debug>(
        prepared: Result<Prepared<B>, Outcome>,
    ) -> (Request<RequestBody<B>>, Option<UploadWatch>) {
        match prepared {
            Ok(Prepared::Ready { request, watch }) => (request, watch),
            other => panic!("{other:?}"),
        }
    }

    fn prepared(
        request: Request<Full<Bytes>>,
        version: FhirVersion,
    ) -> (Request<RequestBody<Full<Bytes>>>, Option<UploadWatch>) {
        ready(prepare(request, &config(version, 64 * 1024)))
    }

    /// FHIR XML, read ahead with `read_ahead` bytes: the request, or the refusal.
    async fn read_ahead(
        request: Request<Full<Bytes>>,
        version: FhirVersion,
        read_ahead: usize,
    ) -> Result<Request<RequestBody<Full<Bytes>>>, Outcome> {
        let config = Config {
            xml_request_read_ahead: read_ahead,
            ..config(version, 64 * 1024)
        };
        let Prepared::ReadAhead { head, mut body } = prepare(request, &config)? else {
            panic!("not read ahead");
        };
        std::future::poll_fn(|cx| body.poll(cx)).await?;
        Ok(xml_request(head, body).0)
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
        let (request, watch) = prepared(request, FhirVersion::R4);
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
        let (request, _) = ready(prepare(request, &config(FhirVersion::Stu3, 1024)));
        assert!(request.headers().get("content-length").is_some());
        let request = Request::post("/Binary")
            .header("content-type", "text/plain")
            .header("transfer-encoding", "chunked")
            .body(futures_frames(&[b"ab", b"c"]))
            .unwrap();
        let (request, watch) = ready(prepare(request, &config(FhirVersion::Stu3, 1024)));
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

    #[derive(Debug)]
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
            let (request, watch) = prepared(request, FhirVersion::R4);
            assert!(watch.is_none());
            assert_eq!(request.headers()["content-type"], content_type);
            assert_eq!(request.headers()["x-security-context"], "Patient/1");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "{\"resourceType\":\"Binary\"}");
        }
    }

    #[tokio::test]
    async fn fhir_xml_read_whole_goes_on_as_fhir_json_with_its_length() {
        let xml = r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><content value="SGk="/></Binary>"#;
        let json = r#"{"resourceType":"Binary","contentType":"text/plain","content":"SGk="}"#;
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
            let request = read_ahead(request, version, 1 << 20).await.unwrap();
            let headers = request.headers().clone();
            assert_eq!(headers["content-type"], media_type);
            assert_eq!(headers["content-length"], json.len().to_string().as_str());
            assert!(headers.get("content-md5").is_none());
            assert_eq!(headers["x-security-context"], "Patient/1");
            assert_eq!(headers["if-none-exist"], "identifier=1");
            let body = request.into_body();
            assert_eq!(body.size_hint().exact(), Some(json.len() as u64));
            assert_eq!(body.collect().await.unwrap().to_bytes(), json);
        }
    }

    #[tokio::test]
    async fn fhir_xml_past_the_read_ahead_goes_on_chunked() {
        let xml = r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><data value="SGk="/></Binary>"#;
        for read_ahead_bytes in [0, 1, 20] {
            let request = Request::put("/Binary/1")
                .header("content-type", "application/fhir+xml")
                .header("content-length", xml.len())
                .body(Full::new(Bytes::from_static(xml.as_bytes())))
                .unwrap();
            let request = read_ahead(request, FhirVersion::R4, read_ahead_bytes)
                .await
                .unwrap();
            assert!(request.headers().get("content-length").is_none());
            let body = request.into_body();
            assert_eq!(body.size_hint().exact(), None);
            assert_eq!(
                body.collect().await.unwrap().to_bytes(),
                r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGk="}"#
            );
        }
    }

    #[tokio::test]
    async fn fhir_xml_that_is_not_fhir_is_refused_or_fails_past_the_read_ahead() {
        let xml: &[u8] = b"<Binary xmlns=\"http://hl7.org/fhir\"><data value=\"SGk=\"/><id value=\"1\"/></Binary>";
        let request = || {
            Request::put("/Binary/1")
                .header("content-type", "application/xml")
                .body(Full::new(Bytes::from_static(xml)))
                .unwrap()
        };
        let outcome = read_ahead(request(), FhirVersion::R4, 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(outcome.status, StatusCode::BAD_REQUEST);
        assert_eq!(outcome.code, "structure");
        assert!(
            outcome
                .diagnostics
                .contains("Binary: <id> repeated or out of the definition order"),
            "{outcome:?}"
        );
        // Past the read-ahead, the body fails: it never ends as a document.
        let request = read_ahead(request(), FhirVersion::R4, 0).await.unwrap();
        let error = request.into_body().collect().await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("Binary: <id> repeated or out of the definition order"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn fhir_xml_announced_over_the_limit_or_short_is_refused() {
        let xml =
            r#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/></Binary>"#;
        let config = Config {
            uploads: crate::config::UploadOptions {
                max_upload_size: 10,
                ..Default::default()
            },
            ..Config::default()
        };
        let request = Request::post("/Binary")
            .header("content-type", "application/fhir+xml")
            .header("content-length", xml.len())
            .body(Full::new(Bytes::from_static(xml.as_bytes())))
            .unwrap();
        let outcome = prepare(request, &config).unwrap_err();
        assert_eq!(outcome.status, StatusCode::PAYLOAD_TOO_LARGE);
        // A body shorter than its Content-Length, though well-formed.
        let request = Request::post("/Binary")
            .header("content-type", "application/fhir+xml")
            .header("content-length", xml.len() + 5)
            .body(Full::new(Bytes::from_static(xml.as_bytes())))
            .unwrap();
        let outcome = read_ahead(request, FhirVersion::R4, 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(outcome.status, StatusCode::BAD_REQUEST);
        assert!(
            outcome.diagnostics.contains(&format!(
                "the upload ended after {} of its {} bytes",
                xml.len(),
                xml.len() + 5
            )),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_refused_request_gives_its_outcome() {
        let request = Request::post("/Binary")
            .header("content-type", "application/pdf")
            .header("x-security-context", "Patient/1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = prepare(request, &config(FhirVersion::Dstu2, 1024)).unwrap_err();
        assert_eq!(outcome.status, StatusCode::UNPROCESSABLE_ENTITY);
        let request = Request::post("/Binary")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            prepare(request, &Config::default()).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
