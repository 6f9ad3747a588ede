//! The layer.

use tower_layer::Layer;

use crate::config::{option_methods, Config};
use crate::select::{AllRequests, BinaryEndpoint, Selector};
use crate::service::BinaryNegotiation;

/// Serves FHIR Binary resources the way the FHIR spec asks, in front of a service that only
/// answers with Binary JSON.
///
/// For `GET` and `HEAD` requests to the Binary endpoint (see [`select`](Self::select)) it
/// records what the client asked for (`_format`, then `Accept`), asks the inner service plainly
/// for FHIR JSON, and turns a Binary JSON answer into the raw document (the default), passes the
/// FHIR JSON through, or renders FHIR XML. `POST` and `PUT` to it are writes: a raw document
/// (any `Content-Type` but FHIR JSON and FHIR XML) reaches the inner service as the equivalent
/// Binary JSON, made as the upload arrives (see [`RequestBody`](crate::RequestBody)), a
/// resource in FHIR XML as FHIR JSON, read ahead first (see
/// [`xml_request_read_ahead`](Self::xml_request_read_ahead)), and the answer comes back as FHIR
/// JSON, or FHIR XML when asked. Every other request passes untouched. See the
/// [crate documentation](crate) for the rules.
///
/// The options are set with consuming builder methods:
///
/// ```
/// use tower_fhir_binary::{BinaryNegotiationLayer, FhirVersion};
///
/// let layer = BinaryNegotiationLayer::new()
///     .fhir_version(FhirVersion::R4)
///     .reorder_buffer_limit(8 * 1024 * 1024);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct BinaryNegotiationLayer<P = BinaryEndpoint> {
    config: Config,
    selector: P,
}

impl Default for BinaryNegotiationLayer {
    fn default() -> Self {
        BinaryNegotiationLayer {
            config: Config::default(),
            selector: BinaryEndpoint,
        }
    }
}

impl BinaryNegotiationLayer {
    /// A layer with the default options: it negotiates the requests to the Binary endpoint
    /// ([`BinaryEndpoint`]).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<P: Selector> BinaryNegotiationLayer<P> {
    /// Negotiates the requests `selector` selects, instead of those to the Binary endpoint
    /// ([`BinaryEndpoint`], the default); the others, and their responses, pass untouched.
    ///
    /// Which to use:
    ///
    /// - On a whole axum `Router` (`Router::layer`), a `nest`ed FHIR router, a hyper service or
    ///   a tonic server's `Server::builder().layer(...)`: the default. The layer sees every
    ///   request and negotiates only the Binary endpoint's, under any base path.
    /// - With axum's `route_layer` on the Binary routes alone, or for a service that serves
    ///   nothing but Binaries: [`select_all`](Self::select_all), or the default, which selects
    ///   the same requests when the routes are the FHIR ones.
    /// - Documents under another path layout: a closure over the request head, as in
    ///   [`Selector`]'s example.
    pub fn select<Q: Selector>(self, selector: Q) -> BinaryNegotiationLayer<Q> {
        BinaryNegotiationLayer {
            config: self.config,
            selector,
        }
    }

    /// Negotiates every `GET` and `HEAD` request, whatever its path ([`AllRequests`]).
    pub fn select_all(self) -> BinaryNegotiationLayer<AllRequests> {
        self.select(AllRequests)
    }

    option_methods!();
}

impl<S, P: Clone> Layer<S> for BinaryNegotiationLayer<P> {
    type Service = BinaryNegotiation<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BinaryNegotiation::from_parts(inner, self.config, self.selector.clone())
    }
}
