//! Serve FHIR `Binary` resources the way the FHIR spec asks, in front of a server that can only
//! answer with Binary JSON.
//!
//! `GET [base]/Binary/[id]` should return the document itself (a PDF, a JPEG, a CDA document)
//! with its own `Content-Type`, unless the client explicitly asks for the FHIR resource, and
//! `_format` overrides `Accept`. [`BinaryNegotiationLayer`] wraps an inner service that always
//! answers with FHIR Binary JSON and, on the way back, passes the JSON through, renders FHIR
//! XML, or decodes the base64 payload and streams the raw bytes, without ever holding the whole
//! document in memory.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_fhir_binary::BinaryNegotiationLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A legacy FHIR server: Binary JSON, whatever the client asked for.
//! let legacy = service_fn(|_request: Request<Full<Bytes>>| async {
//!     let json = r#"{"resourceType":"Binary","id":"1","contentType":"text/plain","data":"SGVsbG8="}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder()
//!             .header("content-type", "application/fhir+json")
//!             .body(Full::new(Bytes::from(json)))
//!             .unwrap(),
//!     )
//! });
//! let service = ServiceBuilder::new()
//!     .layer(BinaryNegotiationLayer::new())
//!     .service(legacy);
//!
//! // A client that asks for nothing in particular gets the document.
//! let request = Request::get("/Binary/1").body(Full::default())?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.headers()["content-type"], "text/plain");
//! assert_eq!(response.headers()["vary"], "Accept");
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "Hello");
//!
//! // A client that asks for FHIR JSON gets the resource, untouched.
//! let request = Request::get("/Binary/1?_format=json").body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.headers()["content-type"], "application/fhir+json");
//! # Ok(())
//! # }
//! ```
//!
//! # Choosing the representation
//!
//! Only `GET` and `HEAD` are negotiated; every other request passes through untouched.
//!
//! 1. `_format` wins over `Accept`. `json`, `application/json`, `application/fhir+json`,
//!    `application/json+fhir` and `text/json` mean FHIR JSON; `xml`, `application/xml`,
//!    `application/fhir+xml`, `application/xml+fhir` and `text/xml` mean FHIR XML. The value is
//!    percent-decoded, a space stands for an unescaped `+`, parameters are ignored. Anything
//!    else is answered with 406 Not Acceptable.
//! 2. Otherwise `Accept` (every line, with q-values): an explicit FHIR media type
//!    (`application/fhir+json`, `application/fhir+xml` and the DSTU2 spellings) that weighs at
//!    least as much as the Binary's own content type chooses FHIR; else the Binary's content
//!    type, matched by its most specific range (`image/jpeg`, `image/*`, `*/*`), chooses the
//!    document; else 406. Wildcards and plain `application/json` or `application/xml` never
//!    ask for FHIR, so a browser's navigation gets the document.
//! 3. No `_format` and no `Accept`: the document.
//!
//! # What goes to the inner service
//!
//! For negotiated requests the inner service is asked plainly: `Accept: application/fhir+json`
//! (`application/json+fhir` with [`FhirVersion::Dstu2`]), `_format` removed from the query
//! (the rest kept byte for byte), `HEAD` sent as `GET`. `Range` and `If-Range` are removed: a
//! range of the JSON is not a range of the document; the layer serves ranges itself. Every
//! other header goes on, conditional ones included.
//!
//! # What comes back
//!
//! Only a 2xx FHIR JSON response (`application/fhir+json`, `application/json+fhir` or
//! `application/json`, without `Content-Encoding`) whose `resourceType` is `Binary` is changed.
//! Anything else, a 404 OperationOutcome, a search Bundle, a compressed body, passes through
//! untouched, with `Vary: Accept` added. A Binary without `data` is answered with its FHIR JSON.
//!
//! # FHIR XML
//!
//! `<Binary xmlns="http://hl7.org/fhir">`, valid against the official schema: elements in
//! schema order whatever order the JSON keys came in, `meta` and `securityContext` nested,
//! primitive extensions merged, the base64 text streamed into the `value` attribute of `<data>`
//! (R4 and later) or `<content>` (DSTU2, STU3), `application/fhir+xml;charset=utf-8` (or
//! `application/xml+fhir` when the client spelled it so, or with [`FhirVersion::Dstu2`]).
//! Because XML puts `meta` before `data` and the HL7 examples write it after, the layer reads
//! the Binary whole within the reorder buffer before writing, so faults are 502s; a larger one
//! streams with the elements known so far, and an element XML needs before the payload that
//! only comes after it breaks the transfer instead of going missing. An OperationOutcome, the
//! layer's own or the inner service's error, is rendered as XML too for a client that asked
//! for XML.
//!
//! # The head of the raw document
//!
//! - `Content-Type`: the Binary's `contentType`, checked to be a media type and a valid header
//!   value. `Content-Length` when the decoded size is known before the head goes out: inner
//!   bodies of known size up to [`BinaryNegotiationLayer::read_whole_limit`], and `HEAD`;
//!   larger ones stream chunked as the inner body arrives.
//! - `ETag: W/"<meta.versionId>"` and `Last-Modified` (an HTTP-date) from `meta.lastUpdated`,
//!   unless the inner service set them; a `versionId` that cannot stand in an entity tag, or a
//!   `lastUpdated` that is not a FHIR instant between 1970 and 9999, gives none.
//!   `Content-Location` and the inner service's other headers stay.
//! - `X-Security-Context: <securityContext.reference>`, when it is a valid header value.
//! - `Vary: Accept`, merged with the inner service's `Vary`, on every negotiated response
//!   (the raw document, FHIR JSON, FHIR XML, 406, 502).
//! - `Accept-Ranges: bytes`.
//! - `X-Content-Type-Options: nosniff`, and what the [`SecurityPolicy`] adds: by default
//!   `Content-Security-Policy: sandbox` and `Content-Disposition: attachment` for active
//!   content (HTML, SVG, XML, scripts), `Content-Disposition: inline` for passive content
//!   (PDF, images, text), with a file name made of the Binary's id and an extension
//!   (`example.pdf`).
//!
//! **Metadata that comes after the payload.** The official HL7 examples put `meta` after
//! `data`. When the layer reads the inner body whole before the head (known size within the
//! limit, `HEAD`, and conditional or range requests within the limit, see below), the head is
//! made from every member of the Binary. When it streams, the head goes out at the first byte
//! of the payload, so it carries only what came before the payload: a streamed `GET` of such
//! a Binary has no `ETag` or `Last-Modified` (and no `Content-Length`), while its `HEAD` has
//! them. Servers that write `meta` before `data`, or send `Content-Length`, avoid the
//! difference.
//!
//! # Conditional and range requests
//!
//! The client's `Range`, `If-Range`, `If-None-Match` and `If-Modified-Since` are recorded at
//! request time and applied to the raw document when the inner service answered 200 (RFC 9110
//! sections 13 and 14). `If-None-Match` and `If-Modified-Since` also go on to the inner
//! service: a 304 it answers itself passes on, with `Vary`.
//!
//! - `If-None-Match` (weak comparison, lists, `*`), else `If-Modified-Since`, gives 304 Not
//!   Modified with the validators, `Vary` and `Content-Location`, for `GET` and `HEAD`.
//! - `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` give 206 Partial Content with
//!   `Content-Range`, or 416 Range Not Satisfiable with `Content-Range: bytes */length`.
//!   Several ranges are answered with the whole document (200), and an invalid `Range` is
//!   ignored, as RFC 9110 allows. `HEAD` ignores `Range` (ranges are defined for `GET` only).
//! - `If-Range` holds with the exact `Last-Modified` date, or with a strong entity tag equal
//!   to the `ETag`. The layer's own `ETag` is weak, and RFC 9110 says a weak tag never
//!   matches `If-Range`: clients resume with the date (browsers do), or the inner service
//!   sets a strong `ETag`. When `If-Range` does not hold, the whole document is sent.
//!
//! The validators must be known before the head, and a range's position needs the output
//! made so far. So, when the body is streamed and the request has a `Range`, or a condition
//! whose validator is not known yet (`meta` not read yet, not set by the inner service), the
//! layer keeps up to `read_whole_limit` bytes of decoded output before answering:
//!
//! - If the document ends within the limit, everything is known and answered exactly
//!   (`Content-Range: bytes a-b/length`).
//! - If not, the head goes out with what is known then: a condition whose validator is still
//!   unknown does not hold (the document is sent); `bytes=a-b` is answered with
//!   `Content-Range: bytes a-b/*` and `Content-Length` once byte `b` is made, keeping only
//!   the range; `bytes=a-` and `bytes=-n`, which need the length, get the whole document (200).
//!   If a range larger than the limit turns out to pass the end of the document after its
//!   head went out, the body fails rather than end short of its announced length.
//! - As soon as a range is complete, decoding stops and the inner body is dropped.
//!
//! # Errors
//!
//! When the inner service's body is not a valid Binary (invalid JSON, bad base64, junk after
//! the padding, a missing or invalid `contentType`, duplicate members) the client gets 502 Bad
//! Gateway with an OperationOutcome that says what was wrong, if the response head has not gone
//! out yet; after that, the body fails with [`InvalidBinary`] so that the client sees a broken
//! transfer, never a document silently cut short. Errors of the inner service itself are
//! returned as they are (`Error = S::Error`).
//!
//! The memory the layer uses is bounded by its options: the frame size, the reorder buffer
//! (for Binaries that write `contentType` after `data`), the metadata cap and the depth cap.
//!
//! # With tower-http
//!
//! Put `CompressionLayer` outside this layer and `DecompressionLayer` inside it (between it and
//! an inner service that compresses): the layer leaves compressed bodies untouched, so it must
//! see the Binary JSON uncompressed, and compression belongs to the document it produces.
//! `TraceLayer` works on either side; outside, it records what the client gets.
//!
//! ```ignore
//! let service = ServiceBuilder::new()
//!     .layer(TraceLayer::new_for_http())
//!     .layer(CompressionLayer::new())
//!     .layer(BinaryNegotiationLayer::new())
//!     .layer(DecompressionLayer::new())
//!     .service(legacy_fhir_service);
//! ```
//!
//! # The proxy
//!
//! With the cargo feature `proxy` (off by default, so that library users compile none of its
//! runtime dependencies) the crate also builds the `fhir-binary-proxy` binary, a reverse proxy
//! that puts the layer in front of a FHIR server you cannot change, with an embedded demo
//! backend; the module `proxy` runs the same pieces in-process.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod conditional;
mod decode;
mod error;
mod frames;
mod future;
mod head;
mod layer;
mod model;
mod negotiate;
mod outcome;
mod policy;
mod scan;
mod service;
#[cfg(test)]
mod test_rng;
mod transcode;
mod version;
mod xml;

pub use body::NegotiatedBody;
pub use error::{BoxError, InvalidBinary};
pub use future::ResponseFuture;
pub use layer::BinaryNegotiationLayer;
pub use negotiate::Representation;
pub use policy::SecurityPolicy;
pub use service::BinaryNegotiation;
pub use version::FhirVersion;

#[cfg(feature = "proxy")]
pub mod proxy;
