//! The proxy's Prometheus metrics, in a registry of its own.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    representation: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    representation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

/// What the proxy counts.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    upstream_errors: Family<ErrorLabels, Counter>,
    pub(crate) open_connections: Gauge,
    pub(crate) refused_connections: Counter,
}

/// A method as a label: the standard ones by name, anything else as `other` (so that clients
/// cannot grow the series without bound).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    pub(crate) fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("fhir_binary_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by method, representation and status",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from the request to the end of the response body",
            latency.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "request_body_bytes",
            "Bytes of request bodies forwarded",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "response_body_bytes",
            "Bytes of response bodies sent",
            bytes_out.clone(),
        );
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures, by kind (connect, timeout, stall, head_too_large, other)",
            upstream_errors.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open",
            open_connections.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Client connections refused with 503 beyond --max-connections",
            refused_connections.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            upstream_errors,
            open_connections,
            refused_connections,
        })
    }

    /// Records one answered request.
    pub(crate) fn request(
        &self,
        method: &Method,
        representation: &'static str,
        status: u16,
        bytes_out: u64,
        duration: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                representation,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                method,
                representation,
            })
            .observe(duration.as_secs_f64());
        self.bytes_out.inc_by(bytes_out);
    }

    pub(crate) fn bytes_in(&self, bytes: u64) {
        self.bytes_in.inc_by(bytes);
    }

    /// Records an upstream failure of `kind`.
    pub(crate) fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_encoded() {
        let metrics = Metrics::new();
        metrics.request(&Method::GET, "native", 200, 4096, Duration::from_millis(3));
        metrics.request(&Method::GET, "native", 200, 4096, Duration::from_millis(1));
        metrics.request(
            &Method::from_bytes(b"BREW").unwrap(),
            "pass-through",
            405,
            10,
            Duration::from_millis(1),
        );
        metrics.bytes_in(7);
        metrics.upstream_error("timeout");
        metrics.open_connections.inc();
        let text = metrics.encode();
        for line in [
            "fhir_binary_proxy_requests_total{method=\"GET\",representation=\"native\",status=\"200\"} 2",
            "fhir_binary_proxy_requests_total{method=\"other\",representation=\"pass-through\",status=\"405\"} 1",
            "fhir_binary_proxy_response_body_bytes_total 8202",
            "fhir_binary_proxy_request_body_bytes_total 7",
            "fhir_binary_proxy_upstream_errors_total{kind=\"timeout\"} 1",
            "fhir_binary_proxy_open_connections 1",
            "fhir_binary_proxy_request_duration_seconds_count{method=\"GET\",representation=\"native\"} 2",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
