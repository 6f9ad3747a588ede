//! Memory of `fhir-binary-proxy` under slow readers: many clients each reading a 64 MiB Binary
//! slowly (16 KiB/s by default), natively, as FHIR JSON or as FHIR XML. Prints the proxy
//! process's resident memory before, at the peak (per reader) and after the readers leave, and
//! the requests per second other clients get (wrk, when installed) alone and during the attack.
//!
//! ```sh
//! cargo build --release --features proxy --bin fhir-binary-proxy
//! cargo run --release --example slow_readers -- --proxy target/release/fhir-binary-proxy \
//!     --format xml --readers 1000 --seconds 30
//! ```
//!
//! `scripts/slow-readers.sh` runs it for the three formats. Everything is on 127.0.0.1: this
//! program is the upstream (a FHIR server answering Binary JSON with `contentType` before
//! `data`, the payload made on the fly) and the readers; the proxy runs as a child process so
//! that its memory is its own. Needs about three file descriptors per reader (`ulimit -n`).
//!
//! Options: `--proxy PATH`, `--format native|json|xml`, `--readers N` (1000), `--rate
//! BYTES_PER_S` (16384), `--seconds S` held at full attack (30), `--after S` waited once the
//! readers have left (30), `--others N` wrk connections for the others' load, 0 for none (16),
//! `--size MIB` of the document (64), `--proxy-arg ARG` (repeatable) passed to the proxy.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Decoded bytes per generated piece of the payload (64 KiB of base64, no padding).
const PIECE: usize = 48 * 1024;

struct Options {
    proxy: String,
    format: String,
    readers: usize,
    rate: usize,
    seconds: u64,
    after: u64,
    others: usize,
    size_mib: usize,
    proxy_args: Vec<String>,
}

fn options() -> Options {
    let mut options = Options {
        proxy: "target/release/fhir-binary-proxy".into(),
        format: "native".into(),
        readers: 1000,
        rate: 16 * 1024,
        seconds: 30,
        after: 30,
        others: 16,
        size_mib: 64,
        proxy_args: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{name} needs a value"));
        let number = || -> usize {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a number"))
        };
        match name.as_str() {
            "--proxy" => options.proxy = value.clone(),
            "--format" => options.format = value.clone(),
            "--readers" => options.readers = number(),
            "--rate" => options.rate = number(),
            "--seconds" => options.seconds = number() as u64,
            "--after" => options.after = number() as u64,
            "--others" => options.others = number(),
            "--size" => options.size_mib = number(),
            "--proxy-arg" => options.proxy_args.push(value.clone()),
            _ => panic!("unknown option {name}"),
        }
    }
    options
}

/// The upstream's Binary JSON for `size` decoded bytes: a head, the same 64 KiB of base64
/// repeated, a padded tail.
struct Document {
    head: Bytes,
    piece: Bytes,
    pieces: usize,
    tail: Bytes,
}

impl Document {
    fn new(id: &str, size: usize) -> Document {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut tail = b64.encode(random(size % PIECE)).into_bytes();
        tail.extend_from_slice(b"\"}");
        Document {
            head: Bytes::from(format!(
                r#"{{"resourceType":"Binary","id":"{id}","contentType":"application/octet-stream","data":""#
            )),
            piece: Bytes::from(b64.encode(random(PIECE))),
            pieces: size / PIECE,
            tail: Bytes::from(tail),
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.piece.len() * self.pieces + self.tail.len()
    }
}

/// A FHIR server on 127.0.0.1 that answers `GET .../Binary/big` and `GET .../Binary/small`
/// with Binary JSON (HTTP/1.1, keep-alive, `Content-Length`), writing as fast as it is read.
async fn upstream(listener: TcpListener, big: Arc<Document>, small: Arc<Document>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (big, small) = (Arc::clone(&big), Arc::clone(&small));
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let end = loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                buffer.drain(..end);
                let document = if head.contains("/Binary/big") {
                    &big
                } else if head.contains("/Binary/small") {
                    &small
                } else {
                    let _ = stream
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    continue;
                };
                let response_head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
                    document.len()
                );
                let mut start = response_head.into_bytes();
                start.extend_from_slice(&document.head);
                if document.pieces == 0 {
                    start.extend_from_slice(&document.tail);
                }
                let sent = async {
                    stream.write_all(&start).await?;
                    if document.pieces > 0 {
                        for _ in 0..document.pieces {
                            stream.write_all(&document.piece).await?;
                        }
                        stream.write_all(&document.tail).await?;
                    }
                    Ok::<(), std::io::Error>(())
                };
                if sent.await.is_err() {
                    return;
                }
            }
        });
    }
}

/// What the readers saw, all together.
#[derive(Default)]
struct Tally {
    connected: AtomicUsize,
    ok: AtomicUsize,
    other_status: AtomicUsize,
    ended: AtomicUsize,
    bytes: AtomicU64,
}

/// One client reading the response at `rate` bytes a second until told to leave (then it
/// closes its connection).
async fn reader(
    proxy: SocketAddr,
    target: String,
    rate: usize,
    leave: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let Ok(mut stream) = TcpStream::connect(proxy).await else {
        tally.ended.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let request = format!("GET {target} HTTP/1.1\r\nHost: {proxy}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        tally.ended.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // A quarter of a second's worth at a time.
    let tick = Duration::from_millis(250);
    let mut buffer = vec![0u8; (rate / 4).max(1)];
    let mut first = true;
    let mut interval = tokio::time::interval(tick);
    while !leave.load(Ordering::Relaxed) {
        interval.tick().await;
        let read = tokio::time::timeout(tick, stream.read(&mut buffer)).await;
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => {
                tally.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Ok(n)) => {
                if first {
                    first = false;
                    let status = if buffer[..n].starts_with(b"HTTP/1.1 200") {
                        &tally.ok
                    } else {
                        &tally.other_status
                    };
                    status.fetch_add(1, Ordering::Relaxed);
                }
                tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The proxy's resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Requests per second wrk gets for `url` with `connections` connections for `seconds`; None
/// without wrk.
fn others(url: &str, connections: usize, seconds: u64) -> Option<f64> {
    if connections == 0 {
        return None;
    }
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            url,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let errors = text
        .lines()
        .find(|line| line.contains("Non-2xx") || line.contains("errors"));
    if let Some(errors) = errors {
        println!("  wrk: {}", errors.trim());
    }
    Some(rps)
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn spawn_proxy(options: &Options, upstream: SocketAddr, listen: SocketAddr) -> Child {
    Command::new(&options.proxy)
        .args([
            "--listen",
            &listen.to_string(),
            "--upstream",
            &format!("http://{upstream}/fhir"),
        ])
        .args(&options.proxy_args)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.proxy))
}

/// The whole response to `GET target`, on a connection of its own.
async fn get(proxy: SocketAddr, target: &str) -> String {
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::main]
async fn main() {
    let options = options();
    let query = match options.format.as_str() {
        "native" => "",
        "json" => "?_format=json",
        "xml" => "?_format=xml",
        other => panic!("--format {other}: native, json or xml"),
    };
    let big = Arc::new(Document::new("big", options.size_mib << 20));
    let small = Arc::new(Document::new("small", 4096));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream_addr = listener.local_addr().expect("address");
    tokio::spawn(upstream(listener, big, small));

    let proxy_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = spawn_proxy(&options, upstream_addr, proxy_addr);
    let pid = child.id();
    let started = Instant::now();
    while TcpStream::connect(proxy_addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up: the small Binary in each format, a few times.
    for _ in 0..20 {
        for format in ["", "?_format=json", "?_format=xml"] {
            let response = get(proxy_addr, &format!("/Binary/small{format}")).await;
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "small{format}: {}",
                response.lines().next().unwrap_or_default()
            );
        }
    }
    let small_url = format!("http://{proxy_addr}/Binary/small");
    let alone = others(&small_url, options.others, 5);
    let (before, _) = memory(pid);
    println!(
        "format {}, {} readers at {} B/s of a {} MiB Binary; proxy {}",
        options.format, options.readers, options.rate, options.size_mib, options.proxy
    );
    println!("  before: RSS {} KiB", before);
    if let Some(rps) = alone {
        println!("  others alone: {rps:.0} requests/s");
    }

    let leave = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let target = format!("/Binary/big{query}");
    let mut readers = Vec::with_capacity(options.readers);
    for _ in 0..options.readers {
        readers.push(tokio::spawn(reader(
            proxy_addr,
            target.clone(),
            options.rate,
            Arc::clone(&leave),
            Arc::clone(&tally),
        )));
    }
    // Until every reader has its head (or 20 s).
    let started = Instant::now();
    while tally.ok.load(Ordering::Relaxed)
        + tally.other_status.load(Ordering::Relaxed)
        + tally.ended.load(Ordering::Relaxed)
        < options.readers
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  {} readers connected, {} got 200, {} another status, {} ended early (after {:.1} s)",
        tally.connected.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.other_status.load(Ordering::Relaxed),
        tally.ended.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    // Held at full attack; the others' load in the middle of it.
    let during = {
        let url = small_url.clone();
        let (connections, seconds) = (options.others, options.seconds.min(10));
        let wait = Duration::from_secs(options.seconds.saturating_sub(seconds) / 2);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            tokio::task::spawn_blocking(move || others(&url, connections, seconds))
                .await
                .ok()
                .flatten()
        })
    };
    let mut peak_rss = 0;
    for _ in 0..options.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(memory(pid).0);
        print!(".");
        let _ = std::io::stdout().flush();
    }
    println!();
    let (rss, hwm) = memory(pid);
    let bytes = tally.bytes.load(Ordering::Relaxed);
    let per_reader = |kib: u64| (kib.saturating_sub(before)) / options.readers.max(1) as u64;
    println!(
        "  at full attack: RSS {rss} KiB, peak sampled {peak_rss} KiB, VmHWM {hwm} KiB: {} KiB a reader (VmHWM), {} KiB (RSS now)",
        per_reader(hwm),
        per_reader(rss),
    );
    println!(
        "  readers read {:.1} MiB in all, {:.1} KiB/s each; {} ended early",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1024.0 / options.readers.max(1) as f64 / started.elapsed().as_secs_f64(),
        tally.ended.load(Ordering::Relaxed),
    );
    if let Ok(Some(rps)) = during.await {
        println!("  others during the attack: {rps:.0} requests/s");
    }

    leave.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    let left = Instant::now();
    let mut marks = vec![1, 10, options.after];
    marks.sort_unstable();
    marks.dedup();
    for mark in marks {
        if mark == 0 {
            continue;
        }
        let until = Duration::from_secs(mark);
        if let Some(rest) = until.checked_sub(left.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let (rss, _) = memory(pid);
        println!(
            "  {mark} s after the readers left: RSS {rss} KiB ({} KiB above before, {:.0} % of the peak's growth)",
            rss.saturating_sub(before),
            100.0 * rss.saturating_sub(before) as f64 / hwm.saturating_sub(before).max(1) as f64
        );
    }
    let metrics = get(proxy_addr, "/metrics").await;
    if let Some(line) = metrics
        .lines()
        .find(|line| line.starts_with("fhir_binary_proxy_open_connections"))
    {
        println!("  {line}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
