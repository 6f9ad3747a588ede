//! Header work of a reverse proxy: hop-by-hop headers, `Forwarded`, and `Location` rewriting.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::{HeaderMap, Uri};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the legacy
/// ones proxies have always dropped.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, and every header that `Connection` names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The host the client addressed: `Host`, else the request URI's authority.
pub(crate) fn client_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))?;
    // Only a well-formed authority without user info may flow into other headers.
    match host.parse::<http::uri::Authority>() {
        Ok(authority) if !authority.as_str().contains('@') => Some(host),
        _ => None,
    }
}

/// The forwarding headers a client may set to lie about where a request came from.
const FORWARDING: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Adds `Forwarded` (RFC 7239) and the `X-Forwarded-*` headers. When the client is a `trusted`
/// proxy, what it wrote is kept and appended to; otherwise every forwarding header it sent
/// (`X-Real-IP` included) is replaced.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: Option<IpAddr>,
    trusted: bool,
    host: Option<&str>,
    proto: &str,
) {
    if !trusted {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    let mut element = Vec::new();
    if let Some(ip) = client {
        element.push(match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        });
        append_list(headers, "x-forwarded-for", &ip.to_string());
    }
    if let Some(host) = host {
        element.push(format!("host=\"{host}\""));
        if !headers.contains_key("x-forwarded-host") {
            if let Ok(value) = HeaderValue::from_str(host) {
                headers.insert("x-forwarded-host", value);
            }
        }
    }
    element.push(format!("proto={proto}"));
    if !headers.contains_key("x-forwarded-proto") {
        if let Ok(value) = HeaderValue::from_str(proto) {
            headers.insert("x-forwarded-proto", value);
        }
    }
    append_list(headers, "forwarded", &element.join(";"));
}

/// Appends `item` to a comma-separated list header, merging its lines into one.
fn append_list(headers: &mut HeaderMap, name: &'static str, item: &str) {
    let mut items: Vec<String> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    items.push(item.to_owned());
    if let Ok(value) = HeaderValue::from_str(&items.join(", ")) {
        headers.insert(name, value);
    }
}

/// The `Host` values `Location` may be rewritten to.
#[derive(Clone, Debug)]
pub(crate) enum AllowedHosts {
    Any,
    /// Lowercase `name` or `name:port`.
    Listed(Vec<String>),
}

impl AllowedHosts {
    /// `*` among `hosts` allows any.
    pub(crate) fn new(hosts: &[String]) -> Self {
        if hosts.iter().any(|h| h.trim() == "*") {
            AllowedHosts::Any
        } else {
            AllowedHosts::Listed(
                hosts
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect(),
            )
        }
    }

    pub(crate) fn allows(&self, host: &str) -> bool {
        match self {
            AllowedHosts::Any => true,
            AllowedHosts::Listed(hosts) => hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
        }
    }
}

/// The addresses whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Each of `entries` is a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address.
    pub(crate) fn parse(entries: &[String]) -> std::io::Result<Self> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("trusted proxy `{entry}`: not an address or CIDR"),
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Rewrites URLs that point into the upstream base so that they point into the proxy's.
#[derive(Clone, Debug)]
pub(crate) struct Rebase {
    /// `scheme://authority/base-path` of the upstream, without a trailing slash.
    upstream: String,
    /// The upstream's base path, without a trailing slash (empty for the root).
    upstream_path: String,
}

impl Rebase {
    pub(crate) fn new(upstream: &Uri) -> Self {
        let upstream_path = upstream.path().trim_end_matches('/').to_owned();
        let scheme = upstream.scheme_str().unwrap_or("http");
        let authority = upstream.authority().map_or("", |a| a.as_str());
        Rebase {
            upstream: format!("{scheme}://{authority}{upstream_path}"),
            upstream_path,
        }
    }

    /// `value` pointed at the proxy base `public` (`scheme://authority[/path]`, no trailing
    /// slash), or None when it does not point into the upstream base.
    ///
    /// An absolute URL stays absolute; an absolute path stays a path.
    pub(crate) fn rewrite(&self, value: &str, public: &str) -> Option<String> {
        if let Some(rest) = strip_base(value, &self.upstream, true) {
            return Some(format!("{public}{rest}"));
        }
        if value.starts_with('/') && !value.starts_with("//") && !self.upstream_path.is_empty() {
            let rest = strip_base(value, &self.upstream_path, false)?;
            let public_path = public
                .find("://")
                .and_then(|i| public[i + 3..].find('/').map(|j| &public[i + 3 + j..]))
                .unwrap_or("");
            let joined = format!("{public_path}{rest}");
            return Some(if joined.is_empty() {
                "/".into()
            } else {
                joined
            });
        }
        None
    }

    /// Rewrites the header `name` in place when it points into the upstream base.
    pub(crate) fn rewrite_header(&self, headers: &mut HeaderMap, name: HeaderName, public: &str) {
        let Some(rewritten) = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.rewrite(v, public))
        else {
            return;
        };
        if let Ok(value) = HeaderValue::from_str(&rewritten) {
            headers.insert(name, value);
        }
    }
}

/// What follows `base` in `value`, when `value` starts with `base` at a path boundary.
fn strip_base<'a>(value: &'a str, base: &str, ignore_case_prefix: bool) -> Option<&'a str> {
    let head = value.get(..base.len())?;
    let same = if ignore_case_prefix {
        // Scheme and host are case-insensitive; the path is not, but a base path that differs
        // only in case is not worth telling apart here.
        head.eq_ignore_ascii_case(base)
    } else {
        head == base
    };
    if !same {
        return None;
    }
    let rest = &value[base.len()..];
    match rest.as_bytes().first() {
        None | Some(b'/' | b'?' | b'#') => Some(rest),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "close, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("transfer-encoding", "chunked".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["authorization"], "Bearer t");
    }

    #[test]
    fn forwarded_headers_are_added_and_appended() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        headers.insert("forwarded", "for=10.0.0.1".parse().unwrap());
        headers.insert("x-forwarded-host", "spoofed".parse().unwrap());
        headers.insert("x-real-ip", "10.0.0.9".parse().unwrap());
        let trusted = headers.clone();
        add_forwarded(
            &mut headers,
            Some("127.0.0.1".parse().unwrap()),
            true,
            Some("localhost:8080"),
            "http",
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(
            headers["forwarded"],
            "for=10.0.0.1, for=127.0.0.1;host=\"localhost:8080\";proto=http"
        );
        assert_eq!(headers["x-forwarded-host"], "spoofed");
        assert_eq!(headers["x-real-ip"], "10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");

        // From a client that is not a trusted proxy, all of them are replaced.
        let mut headers = trusted;
        add_forwarded(
            &mut headers,
            Some("127.0.0.1".parse().unwrap()),
            false,
            Some("localhost:8080"),
            "http",
        );
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(
            headers["forwarded"],
            "for=127.0.0.1;host=\"localhost:8080\";proto=http"
        );
        assert_eq!(headers["x-forwarded-host"], "localhost:8080");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(!headers.contains_key("x-real-ip"));

        let mut headers = HeaderMap::new();
        add_forwarded(
            &mut headers,
            Some("::1".parse().unwrap()),
            false,
            None,
            "http",
        );
        assert_eq!(headers["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn trusted_proxies_and_allowed_hosts() {
        let trusted =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), " 192.168.1.7 ".into()])
                .unwrap();
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::1".parse().unwrap()));
        assert!(trusted.contains("192.168.1.7".parse().unwrap()));
        assert!(!trusted.contains("192.168.1.8".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));

        let allowed = AllowedHosts::new(&["FHIR.example.org".into(), "localhost:8080".into()]);
        assert!(allowed.allows("fhir.example.org"));
        assert!(allowed.allows("localhost:8080"));
        assert!(!allowed.allows("localhost:8081"));
        assert!(!allowed.allows("evil.example"));
        assert!(!AllowedHosts::new(&[]).allows("localhost"));
        assert!(AllowedHosts::new(&["*".into()]).allows("evil.example"));
    }

    #[test]
    fn client_host_rejects_junk() {
        let uri: Uri = "/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "example.org:8080".parse().unwrap());
        assert_eq!(
            client_host(&headers, &uri).as_deref(),
            Some("example.org:8080")
        );
        headers.insert(HOST, "a b".parse().unwrap());
        assert_eq!(client_host(&headers, &uri), None);
        headers.insert(HOST, "user@evil".parse().unwrap());
        assert_eq!(client_host(&headers, &uri), None);
        let absolute: Uri = "http://h:1/x".parse().unwrap();
        assert_eq!(
            client_host(&HeaderMap::new(), &absolute).as_deref(),
            Some("h:1")
        );
    }

    #[test]
    fn locations_into_the_upstream_base_are_rebased() {
        let rebase = Rebase::new(&"http://127.0.0.1:9090/fhir/".parse().unwrap());
        let public = "http://127.0.0.1:8080";
        assert_eq!(
            rebase
                .rewrite("http://127.0.0.1:9090/fhir/Binary/1/_history/2", public)
                .as_deref(),
            Some("http://127.0.0.1:8080/Binary/1/_history/2")
        );
        assert_eq!(
            rebase
                .rewrite("HTTP://127.0.0.1:9090/fhir", public)
                .as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            rebase.rewrite("/fhir/Binary/1", public).as_deref(),
            Some("/Binary/1")
        );
        assert_eq!(
            rebase
                .rewrite("/fhir/Binary/1", "https://example.org/proxy")
                .as_deref(),
            Some("/proxy/Binary/1")
        );
        assert_eq!(
            rebase
                .rewrite("http://127.0.0.1:9090/fhir/x", "https://example.org/proxy")
                .as_deref(),
            Some("https://example.org/proxy/x")
        );
        // Not under the base: left alone.
        assert_eq!(
            rebase.rewrite("http://127.0.0.1:9090/fhirx/1", public),
            None
        );
        assert_eq!(rebase.rewrite("http://other/fhir/1", public), None);
        assert_eq!(rebase.rewrite("/other/1", public), None);
        assert_eq!(rebase.rewrite("Binary/1", public), None);
    }

    #[test]
    fn a_root_upstream_rebases_absolute_urls_only() {
        let rebase = Rebase::new(&"http://up:9090".parse().unwrap());
        assert_eq!(
            rebase
                .rewrite("http://up:9090/Binary/1", "http://p")
                .as_deref(),
            Some("http://p/Binary/1")
        );
        assert_eq!(rebase.rewrite("/Binary/1", "http://p"), None);
    }
}
