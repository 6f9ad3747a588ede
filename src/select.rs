//! Which requests the layer negotiates: the Binary endpoint by default, or what a [`Selector`]
//! says.
//!
//! A request that is not selected goes to the inner service untouched, and its response comes
//! back untouched: no header added, no query parameter or `Range` removed.

use http::{HeaderMap, Method, Request, Uri};

/// Decides, from the request head, whether the layer negotiates a request.
///
/// Implemented by [`BinaryEndpoint`] (the default), [`AllRequests`], and every
/// `Fn(&Method, &Uri, &HeaderMap) -> bool + Clone`, so that a closure can be given to
/// [`BinaryNegotiationLayer::select`](crate::BinaryNegotiationLayer::select):
///
/// ```
/// use http::{HeaderMap, Method, Uri};
/// use tower_fhir_binary::BinaryNegotiationLayer;
///
/// // Documents live at /documents/{id} in this application.
/// let layer = BinaryNegotiationLayer::new()
///     .select(|_: &Method, uri: &Uri, _: &HeaderMap| uri.path().starts_with("/documents/"));
/// # let _ = layer;
/// ```
pub trait Selector: Clone {
    /// Whether the layer negotiates `request`. Called once per request, before the inner
    /// service sees it.
    fn select<B>(&self, request: &Request<B>) -> bool;
}

/// Selects the requests addressed to the FHIR Binary endpoint: a path whose resource segment
/// is `Binary`, under any base path: `.../Binary`, `.../Binary/{id}`,
/// `.../Binary/{id}/_history` and `.../Binary/{id}/_history/{vid}`, with or without one
/// trailing `/`. The default [`Selector`].
///
/// Operations (`.../Binary/{id}/$op`) and other resources are not selected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BinaryEndpoint;

impl Selector for BinaryEndpoint {
    fn select<B>(&self, request: &Request<B>) -> bool {
        is_binary_path(request.uri().path())
    }
}

/// Selects every request: each `GET` and `HEAD` is negotiated as a Binary read, whatever its
/// path (a `POST` or `PUT` is a write only at `.../Binary` or `.../Binary/{id}`). For an inner
/// service that serves nothing but Binaries (a route of its own, a dedicated server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllRequests;

impl Selector for AllRequests {
    fn select<B>(&self, _: &Request<B>) -> bool {
        true
    }
}

impl<F> Selector for F
where
    F: Fn(&Method, &Uri, &HeaderMap) -> bool + Clone,
{
    fn select<B>(&self, request: &Request<B>) -> bool {
        self(request.method(), request.uri(), request.headers())
    }
}

/// Whether `path` addresses the Binary endpoint (see [`BinaryEndpoint`]).
pub(crate) fn is_binary_path(path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    // The segments after the last `Binary` one that could start the endpoint: at most three.
    let mut tail = path.rsplitn(5, '/');
    let segments: [Option<&str>; 4] = [tail.next(), tail.next(), tail.next(), tail.next()];
    match segments {
        [Some("Binary"), Some(_), ..] => true,
        [Some(id), Some("Binary"), Some(_), _] => is_segment(id),
        [Some("_history"), Some(id), Some("Binary"), Some(_)] => is_segment(id),
        [Some(vid), Some("_history"), Some(id), Some("Binary")] => {
            is_segment(vid) && is_segment(id) && tail.next().is_some()
        }
        _ => false,
    }
}

/// A segment that can be an id: not empty, not an operation, `_history` or `_search`.
fn is_segment(segment: &str) -> bool {
    !segment.is_empty() && !segment.starts_with('$') && !segment.starts_with('_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_endpoint_paths_are_selected_under_any_base() {
        for path in [
            "/Binary",
            "/Binary/",
            "/Binary/1",
            "/Binary/1/",
            "/fhir/Binary/example",
            "/a/b/c/Binary/f006",
            "/Binary/1/_history",
            "/fhir/Binary/1/_history/2",
            "/fhir/r4/Binary/a.b-c/_history/3/",
            "/Binary/1/_history/",
        ] {
            assert!(is_binary_path(path), "{path}");
        }
    }

    #[test]
    fn other_paths_are_not_selected() {
        for path in [
            "",
            "/",
            "Binary",
            "/binary/1",
            "/Binary2/1",
            "/fhir/Patient/p",
            "/fhir/Patient/p/_history/1",
            "/static/file",
            "/Binary/1/$binary-access-read",
            "/Binary/$op",
            "/Binary/_search",
            "/Binary/_history",
            "/Binary/1/_history/2/x",
            "/Binary/1/x",
            "/Binary//",
            "Binary/1/_history/2",
            "/metadata",
        ] {
            assert!(!is_binary_path(path), "{path}");
        }
    }

    #[test]
    fn selectors_decide_from_the_request_head() {
        let request = |uri: &str| Request::get(uri).body(()).unwrap();
        assert!(BinaryEndpoint.select(&request("http://h/fhir/Binary/1?_format=xml")));
        assert!(!BinaryEndpoint.select(&request("http://h/fhir/Patient/1?_format=xml")));
        assert!(AllRequests.select(&request("/anything")));
        let closure = |method: &Method, uri: &Uri, headers: &HeaderMap| {
            method == Method::GET && uri.path() == "/doc" && !headers.contains_key("x-skip")
        };
        assert!(closure.select(&request("/doc")));
        assert!(!closure.select(&request("/doc2")));
    }
}
