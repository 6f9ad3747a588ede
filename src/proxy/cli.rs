//! The command line of `fhir-binary-proxy`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Parser;
use http::Uri;
use tokio::net::TcpListener;

use super::{shutdown_signal, start_demo, start_proxy, ProxyOptions, DEMO_BINARIES};
use crate::{BoxError, FhirVersion};

/// The command line of `fhir-binary-proxy`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "fhir-binary-proxy",
    version,
    about = "Serves FHIR Binary resources natively, as FHIR JSON or as FHIR XML, in front of a \
             FHIR server that only answers Binary JSON.",
    long_about = None
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Base URL of the FHIR server to forward to (http only), e.g. http://127.0.0.1:9090/fhir.
    /// Without it, an embedded demo backend with sample Binaries is started.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<Uri>,

    /// FHIR release the proxy speaks where it must choose (media types, Accept sent upstream).
    #[arg(
        long,
        value_name = "VERSION",
        default_value = "r4",
        value_parser = PossibleValuesParser::new(["dstu2", "stu3", "r4", "r4b", "r5"])
            .map(|v| parse_fhir_version(&v))
    )]
    pub fhir_version: FhirVersion,

    /// Time allowed to connect to the upstream (e.g. 500ms, 5s, 1m; a plain number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for the upstream's response head, connecting included; 504 after it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// The proxy's base URL as clients see it, for rewriting Location and Content-Location
    /// (default: http:// and the Host the client addressed).
    #[arg(long, value_name = "URL")]
    pub public_base_url: Option<Uri>,
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
pub async fn run(args: Args) -> Result<(), BoxError> {
    let (upstream, demo) = match args.upstream {
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
    let options = ProxyOptions {
        upstream: upstream.clone(),
        fhir_version: args.fhir_version,
        connect_timeout: args.connect_timeout,
        response_timeout: args.response_timeout,
        public_base_url: args.public_base_url,
    };
    let proxy = start_proxy(listener, options)?;
    let url = format!("http://{}", proxy.local_addr());
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
    fn arguments() {
        let args = Args::try_parse_from(["fhir-binary-proxy"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(args.upstream.is_none());
        assert_eq!(args.fhir_version, FhirVersion::R4);
        assert_eq!(args.connect_timeout, Duration::from_secs(5));

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
    }
}
