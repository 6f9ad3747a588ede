//! Serve FHIR `Binary` resources the way the FHIR specification asks, in front of a server that
//! can only answer with Binary JSON.
//!
//! `GET [base]/Binary/[id]` should return the document itself (a PDF, a JPEG, a CDA document)
//! with its own `Content-Type`, unless the client explicitly asks for the FHIR resource, and
//! `_format` overrides `Accept`. [`BinaryNegotiationLayer`] wraps an inner service that always
//! answers with FHIR Binary JSON and, on the way back, passes the JSON through, renders FHIR
//! XML, or decodes the base64 payload and streams the raw bytes, without holding the whole
//! document in memory.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_fhir_binary::{BinaryNegotiationLayer, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A legacy FHIR server: Binary JSON, whatever the client asked for.
//! // It receives the client's body as a `RequestBody` (a raw upload becomes Binary JSON).
//! let legacy = service_fn(|_request: Request<RequestBody<Full<Bytes>>>| async {
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
//! With axum, put the layer on the whole `Router` (`Router::new().route(...).layer(...)`): it
//! negotiates the requests addressed to the Binary endpoint and passes every other one through.
//! The README has the complete example.
//!
//! `GET` and `HEAD` of the Binary endpoint are negotiated as reads. `POST` and `PUT` of it are
//! writes: a raw document becomes Binary JSON for the inner service (see [`RequestBody`]), a
//! resource in FHIR XML becomes FHIR JSON, read ahead so that XML that is not FHIR is refused
//! before the inner service is called (see
//! [`xml_request_read_ahead`](BinaryNegotiationLayer::xml_request_read_ahead)), and the answer
//! comes back as FHIR JSON, or FHIR XML when asked. Every other request passes through
//! untouched.
//!
//! # The API
//!
//! - [`BinaryNegotiationLayer`]: the layer, configured with consuming builder methods, each of
//!   which documents its default and what it bounds. It makes a [`BinaryNegotiation`], the
//!   service, whose [`ResponseFuture`] resolves to a response with a [`NegotiatedBody`].
//! - [`Selector`]: which requests are negotiated ([`BinaryNegotiationLayer::select`]);
//!   [`BinaryEndpoint`] by default, [`AllRequests`], or a closure over the request head.
//! - [`Negotiation`]: what the layer did, in the extensions of every response; a
//!   [`Representation`] when it served one.
//! - [`FhirVersion`]: the release the layer writes where it must choose.
//! - [`SecurityPolicy`]: the headers that protect a browser from the documents served.
//! - [`InvalidBinary`], [`BoxError`]: the body's errors.
#![cfg_attr(
    feature = "proxy",
    doc = "- [`proxy`] (feature `proxy`): `fhir-binary-proxy`, run in-process."
)]
#![cfg_attr(
    not(feature = "proxy"),
    doc = "- `proxy` (feature `proxy`): `fhir-binary-proxy`, run in-process."
)]
//!
//! # More in the repository
//!
//! - `docs/negotiation.md`: the rules, included below.
//! - `docs/bad-inputs.md`: every bad input an inner service can send, and what the client gets.
//! - `docs/writes.md`: creating and updating a Binary with its raw bytes.
//! - `docs/proxy.md`: the proxy's flags, deployment, and what it does to headers.
//! - `docs/performance.md`: figures, baselines, and how to reproduce them.
//! - `docs/architecture.md`: how a request and its response go through the modules.
//!
#![doc = include_str!("../docs/negotiation.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Lowest first: a module imports only those listed before it (`tests/layering.rs`).
// Plain sync modules.
mod simd;
mod alphabet;
mod decode;
mod encode;
mod conditional;
mod frames;
mod negotiate;
mod outcome;
mod select;
mod version;
mod scan;
mod model;
mod policy;
mod error;
mod extension;
mod xml;
mod xml_to_json;
mod config;
mod request;
mod transcode;
mod head;
mod upload;
#[cfg(test)]
mod test_rng;
// The request and response paths, driven by the Tower types.
mod request_body;
mod write;
mod body;
mod respond;
// The Tower types.
mod future;
mod service;
mod layer;

pub use body::NegotiatedBody;
pub use error::{BoxError, InvalidBinary};
pub use extension::Negotiation;
pub use future::ResponseFuture;
pub use layer::BinaryNegotiationLayer;
pub use negotiate::Representation;
pub use policy::SecurityPolicy;
pub use request_body::RequestBody;
pub use select::{AllRequests, BinaryEndpoint, Selector};
pub use service::BinaryNegotiation;
pub use version::FhirVersion;

#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;

/// The README's code blocks, compiled by `cargo test --doc` so that the README cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
