//! The command line of `fhir-binary-proxy`: flags (each also an environment variable), logging,
//! the runtime.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{BoolishValueParser, PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use http::Uri;
use tokio::net::TcpListener;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use super::demo::DEMO_BINARIES;
use super::server::shutdown_signal;
use super::{start_demo, start_proxy, ProxyOptions};
use crate::{BoxError, FhirVersion};

/// The command line of `fhir-binary-proxy`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "fhir-binary-proxy",
    version,
    about = "Serves FHIR Binary resources natively, as FHIR JSON or as FHIR XML, in front of a \
             FHIR server that only answers Binary JSON. Every flag can also be set with the \
             environment variable shown.",
    long_about = None
)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        env = "FHIR_BINARY_PROXY_LISTEN"
    )]
    pub(crate) listen: SocketAddr,

    /// Base URL of the FHIR server to forward to (http or https), e.g. http://127.0.0.1:9090/fhir.
    /// User info in it (http://user:password@host/...) is sent as Basic authorization and never
    /// printed. Without it, an embedded demo backend with sample Binaries is started.
    #[arg(
        long,
        value_name = "URL",
        env = "FHIR_BINARY_PROXY_UPSTREAM",
        hide_env_values = true
    )]
    pub(crate) upstream: Option<Uri>,

    /// PEM file of the CA certificates to trust for an https upstream, instead of the system's.
    #[arg(long, value_name = "FILE", env = "FHIR_BINARY_PROXY_UPSTREAM_CA")]
    pub(crate) upstream_ca: Option<PathBuf>,

    /// PEM certificate chain to present to an https upstream that asks for one (mutual TLS).
    #[arg(
        long,
        value_name = "FILE",
        requires = "upstream_client_key",
        env = "FHIR_BINARY_PROXY_UPSTREAM_CLIENT_CERT"
    )]
    pub(crate) upstream_client_cert: Option<PathBuf>,

    /// PEM private key of --upstream-client-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "upstream_client_cert",
        env = "FHIR_BINARY_PROXY_UPSTREAM_CLIENT_KEY"
    )]
    pub(crate) upstream_client_key: Option<PathBuf>,

    /// PEM certificate chain of the proxy: it then listens with TLS (ALPN h2 and http/1.1).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "FHIR_BINARY_PROXY_TLS_CERT"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "FHIR_BINARY_PROXY_TLS_KEY"
    )]
    pub(crate) tls_key: Option<PathBuf>,

    /// FHIR release the proxy speaks where it must choose (media types, Accept sent upstream).
    #[arg(
        long,
        value_name = "VERSION",
        default_value = "r4",
        env = "FHIR_BINARY_PROXY_FHIR_VERSION",
        value_parser = PossibleValuesParser::new(["dstu2", "stu3", "r4", "r4b", "r5"])
            .map(|v| parse_fhir_version(&v))
    )]
    pub(crate) fhir_version: FhirVersion,

    /// Time allowed to connect to the upstream (e.g. 500ms, 5s, 1m; a plain number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_CONNECT_TIMEOUT")]
    pub(crate) connect_timeout: Duration,

    /// Time allowed for the upstream's response head, connecting included; 504 after it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_RESPONSE_TIMEOUT")]
    pub(crate) response_timeout: Duration,

    /// Time the upstream may send nothing in the middle of a body; the transfer is then broken
    /// off (504 when the client has not had the head yet).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_UPSTREAM_IDLE_TIMEOUT")]
    pub(crate) upstream_idle_timeout: Duration,

    /// The proxy's base URL as clients see it, for rewriting Location and Content-Location
    /// (default: http:// and the client's Host if it is an allowed host, else the address the
    /// client connected to).
    #[arg(long, value_name = "URL", env = "FHIR_BINARY_PROXY_PUBLIC_BASE_URL")]
    pub(crate) public_base_url: Option<Uri>,

    /// Leave the upstream's URLs in JSON response bodies as they are (by default, JSON strings
    /// that begin with the upstream base URL, such as a search Bundle's fullUrl and link.url,
    /// are rewritten to the proxy's base, like Location).
    #[arg(long, env = "FHIR_BINARY_PROXY_NO_REWRITE_BODY_URLS", value_parser = BoolishValueParser::new())]
    pub(crate) no_rewrite_body_urls: bool,

    /// Host values (name or name:port) Location may be rewritten to, comma-separated; `*` for
    /// any (clients then choose where rewritten URLs point).
    #[arg(
        long,
        value_name = "HOSTS",
        value_delimiter = ',',
        env = "FHIR_BINARY_PROXY_ALLOWED_HOSTS"
    )]
    pub(crate) allowed_hosts: Vec<String>,

    /// Addresses or CIDRs of proxies in front of this one whose Forwarded, X-Forwarded-* and
    /// X-Real-IP headers are kept, comma-separated; from anyone else they are replaced.
    #[arg(
        long,
        value_name = "CIDRS",
        value_delimiter = ',',
        env = "FHIR_BINARY_PROXY_TRUSTED_PROXIES"
    )]
    pub(crate) trusted_proxies: Vec<String>,

    /// Time allowed to receive a request head, from the connection's start or the end of the
    /// previous response (so also the HTTP/1 keep-alive idle time).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_HEADER_READ_TIMEOUT")]
    pub(crate) header_read_timeout: Duration,

    /// A client connection on which nothing is read or written for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_IDLE_TIMEOUT")]
    pub(crate) idle_timeout: Duration,

    /// A client that reads nothing of a response for this long is disconnected.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_CLIENT_SEND_TIMEOUT")]
    pub(crate) client_send_timeout: Duration,

    /// Client connections served at once; beyond it new ones get 503 with Retry-After.
    #[arg(
        long,
        value_name = "N",
        default_value = "4096",
        env = "FHIR_BINARY_PROXY_MAX_CONNECTIONS"
    )]
    pub(crate) max_connections: usize,

    /// Largest request head (e.g. 64KiB; at least 8KiB): 431 or 414 beyond it.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size, env = "FHIR_BINARY_PROXY_MAX_REQUEST_HEAD")]
    pub(crate) max_request_head: u64,

    /// Largest request body forwarded (e.g. 1GiB, 500MB): 413 beyond it.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size, env = "FHIR_BINARY_PROXY_MAX_REQUEST_BODY")]
    pub(crate) max_request_body: u64,

    /// Largest upstream response head (at least 8KiB): 502 beyond it. Also the size of the
    /// reads from the upstream, about three of which a response to a slow client holds.
    #[arg(long, value_name = "SIZE", default_value = "16KiB", value_parser = parse_size, env = "FHIR_BINARY_PROXY_MAX_UPSTREAM_HEAD")]
    pub(crate) max_upstream_head: u64,

    /// Most a compressed upstream body may decompress to; the transfer breaks beyond it.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size, env = "FHIR_BINARY_PROXY_MAX_DECOMPRESSED_SIZE")]
    pub(crate) max_decompressed_size: u64,

    /// Most a compressed upstream body may grow by decompression (checked past 1 MiB).
    #[arg(
        long,
        value_name = "RATIO",
        default_value = "100",
        env = "FHIR_BINARY_PROXY_MAX_DECOMPRESSION_RATIO"
    )]
    pub(crate) max_decompression_ratio: u64,

    /// Path answering 200 while the proxy runs (empty: none); never forwarded.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/healthz",
        env = "FHIR_BINARY_PROXY_HEALTH_PATH"
    )]
    pub(crate) health_path: String,

    /// Path answering 200 when the upstream answers GET [base]/metadata in time, else 503
    /// (empty: none); never forwarded.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/readyz",
        env = "FHIR_BINARY_PROXY_READY_PATH"
    )]
    pub(crate) ready_path: String,

    /// Time the readiness check waits for the upstream.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, env = "FHIR_BINARY_PROXY_READY_TIMEOUT")]
    pub(crate) ready_timeout: Duration,

    /// Path answering the Prometheus metrics (empty: none); never forwarded.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/metrics",
        env = "FHIR_BINARY_PROXY_METRICS_PATH"
    )]
    pub(crate) metrics_path: String,

    /// Most of an upstream body held to write FHIR XML in element order (e.g. 64KiB); it bounds
    /// what a slow FHIR XML reader holds. A Binary whose JSON has an element XML needs before
    /// the payload only after more than this is a broken transfer.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size, env = "FHIR_BINARY_PROXY_XML_REORDER_LIMIT")]
    pub(crate) xml_reorder_limit: u64,

    /// Most of a FHIR XML request body's JSON read ahead before the upstream is called (e.g.
    /// 1MiB): XML that is not FHIR within it is answered 400 without reaching the upstream, and
    /// a body that ends within it goes upstream with its `Content-Length`. 0: no read-ahead.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size, env = "FHIR_BINARY_PROXY_XML_REQUEST_READ_AHEAD")]
    pub(crate) xml_request_read_ahead: u64,

    /// Log lines as text or as JSON objects (one a line, for log collectors).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "text",
        env = "FHIR_BINARY_PROXY_LOG_FORMAT"
    )]
    pub(crate) log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Args {
    fn options(&self, upstream: Uri) -> ProxyOptions {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let mut options = ProxyOptions::new(upstream);
        options.fhir_version = self.fhir_version;
        options.upstream_ca = self.upstream_ca.clone();
        options.upstream_client_cert = self
            .upstream_client_cert
            .clone()
            .zip(self.upstream_client_key.clone());
        options.tls = self.tls_cert.clone().zip(self.tls_key.clone());
        options.connect_timeout = self.connect_timeout;
        options.response_timeout = self.response_timeout;
        options.upstream_idle_timeout = self.upstream_idle_timeout;
        options.public_base_url = self.public_base_url.clone();
        options.rewrite_body_urls = !self.no_rewrite_body_urls;
        options.allowed_hosts = self.allowed_hosts.clone();
        options.trusted_proxies = self.trusted_proxies.clone();
        options.header_read_timeout = self.header_read_timeout;
        options.idle_timeout = self.idle_timeout;
        options.client_send_timeout = self.client_send_timeout;
        options.max_connections = self.max_connections;
        options.max_request_head = size(self.max_request_head);
        options.max_request_body = self.max_request_body;
        options.max_upstream_head = size(self.max_upstream_head);
        options.max_decompressed_size = self.max_decompressed_size;
        options.max_decompression_ratio = self.max_decompression_ratio;
        options.health_path = self.health_path.clone();
        options.ready_path = self.ready_path.clone();
        options.ready_timeout = self.ready_timeout;
        options.metrics_path = self.metrics_path.clone();
        options.xml_reorder_limit = size(self.xml_reorder_limit);
        options.xml_request_read_ahead = size(self.xml_request_read_ahead);
        options
    }
}

/// The `main` of `fhir-binary-proxy`: reads the command line and the environment, logs to
/// standard error (`RUST_LOG` filters), and runs the proxy until Ctrl-C or SIGTERM.
pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fhir-binary-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fhir-binary-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // RUST_LOG takes `info`, `warn`, `fhir_binary_proxy=debug,info` and the like.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// `uri` with any user info replaced by `***`, for printing.
pub(crate) fn redacted(uri: &Uri) -> String {
    let text = uri.to_string();
    match uri.authority().map(|a| a.as_str()) {
        Some(authority) if authority.contains('@') => {
            let host = &authority[authority.rfind('@').map_or(0, |i| i + 1)..];
            text.replacen(authority, &format!("***@{host}"), 1)
        }
        _ => text,
    }
}

fn parse_fhir_version(value: &str) -> FhirVersion {
    match value {
        "dstu2" => FhirVersion::Dstu2,
        "stu3" => FhirVersion::Stu3,
        "r4b" => FhirVersion::R4B,
        "r5" => FhirVersion::R5,
        _ => FhirVersion::R4,
    }
}

/// `512`, `64KiB`, `1GiB`, `500MB`, `10k`: bytes, with binary (KiB, k) or decimal (KB) units.
fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a size (try 65536, 64KiB or 1GiB)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{value}`: the unit must be B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{value}` is too large"))
}

/// `500ms`, `5s`, `2m`, or a number of seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a duration (try 500ms, 5s or 1m)"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("`{value}`: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{value}`: {e}"))
}

/// Runs the proxy until Ctrl-C or SIGTERM, then shuts down gracefully.
///
/// Without an upstream it first starts the demo backend on a loopback port and proxies to it,
/// and prints how to try each representation.
async fn run(args: Args) -> Result<(), BoxError> {
    let (upstream, demo) = match args.upstream.clone() {
        Some(upstream) => (upstream, None),
        None => {
            let demo = start_demo(TcpListener::bind("127.0.0.1:0").await?)?;
            let upstream: Uri = format!("http://{}/fhir", demo.local_addr()).parse()?;
            (upstream, Some(demo))
        }
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let options = args.options(upstream.clone());
    if options.public_base_url.is_none() && options.allowed_hosts.iter().any(|h| h.trim() == "*") {
        tracing::warn!(
            target: "fhir_binary_proxy",
            "--allowed-hosts '*': Location and Content-Location follow whatever Host a client \
             sends; set --public-base-url or list the real host names"
        );
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let proxy = start_proxy(listener, options)?;
    let url = format!("{scheme}://{}", proxy.local_addr());
    let upstream = redacted(&upstream);
    println!("fhir-binary-proxy listening on {url}, forwarding to {upstream}");
    if demo.is_some() {
        print_demo_help(&url);
    }
    tracing::info!(target: "fhir_binary_proxy", %url, %upstream, "listening");

    shutdown_signal().await;
    tracing::info!(target: "fhir_binary_proxy", "shutting down");
    proxy.shutdown().await;
    if let Some(demo) = demo {
        demo.shutdown().await;
    }
    Ok(())
}

fn print_demo_help(url: &str) {
    println!("(no --upstream given: serving the embedded demo backend, a JSON-only FHIR server)");
    println!();
    println!("Sample Binaries:");
    for sample in DEMO_BINARIES {
        println!(
            "  {url}/Binary/{:<8} {:<22} {}",
            sample.id, sample.content_type, sample.description
        );
    }
    println!();
    println!("Try:");
    println!("  curl -o example.pdf {url}/Binary/example                        # the PDF itself");
    println!("  curl -sD - -o /dev/null {url}/Binary/f006                       # a JPEG: see its headers");
    println!("  curl -H 'Accept: application/fhir+json' {url}/Binary/cda        # FHIR JSON");
    println!("  curl '{url}/Binary/cda?_format=xml'                             # FHIR XML");
    println!("  curl -i {url}/Binary/html                                       # sandboxed HTML");
    println!("  curl -H 'Accept: application/fhir+json' {url}/Binary/patient    # the Binary, not the Patient");
    println!(
        "  curl -i {url}/Binary/nope                                       # 404 OperationOutcome"
    );
    println!(
        "  curl -s {url}/Binary | head -c 300                              # search Bundle (JSON)"
    );
    println!("Ctrl-C stops it.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(parse_size("big").is_err());
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn user_info_is_never_printed() {
        let uri: Uri = "http://user:s3cret@127.0.0.1:9090/fhir".parse().unwrap();
        assert_eq!(redacted(&uri), "http://***@127.0.0.1:9090/fhir");
        let uri: Uri = "http://127.0.0.1:9090/fhir".parse().unwrap();
        assert_eq!(redacted(&uri), "http://127.0.0.1:9090/fhir");
    }

    #[test]
    fn arguments() {
        let args = Args::try_parse_from(["fhir-binary-proxy"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(args.upstream.is_none());
        assert_eq!(args.fhir_version, FhirVersion::R4);
        assert_eq!(args.connect_timeout, Duration::from_secs(5));
        assert!(
            args.options("http://u/fhir".parse().unwrap())
                .rewrite_body_urls
        );
        let args = Args::try_parse_from(["fhir-binary-proxy", "--no-rewrite-body-urls"]).unwrap();
        assert!(
            !args
                .options("http://u/fhir".parse().unwrap())
                .rewrite_body_urls
        );

        let args = Args::try_parse_from([
            "fhir-binary-proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9090/fhir",
            "--fhir-version",
            "dstu2",
            "--response-timeout",
            "250ms",
        ])
        .unwrap();
        assert_eq!(args.upstream.unwrap(), "http://127.0.0.1:9090/fhir");
        assert_eq!(args.fhir_version, FhirVersion::Dstu2);
        assert_eq!(args.response_timeout, Duration::from_millis(250));

        assert!(Args::try_parse_from(["fhir-binary-proxy", "--fhir-version", "r6"]).is_err());
        // Certificates come with their keys.
        assert!(Args::try_parse_from(["fhir-binary-proxy", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Args::try_parse_from(["fhir-binary-proxy", "--upstream-client-key", "k.pem"]).is_err()
        );
        let args = Args::try_parse_from([
            "fhir-binary-proxy",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--trusted-proxies",
            "10.0.0.0/8,::1",
            "--max-request-body",
            "10MiB",
        ])
        .unwrap();
        let options = args.options("http://u/fhir".parse().unwrap());
        assert_eq!(
            options.tls,
            Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
        );
        assert_eq!(options.trusted_proxies, ["10.0.0.0/8", "::1"]);
        assert_eq!(options.max_request_body, 10 << 20);
    }
}
