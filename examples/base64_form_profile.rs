//! A driver for profilers (callgrind, perf): the Binary of the `throughput` benchmark with its
//! base64 written in one of the benchmark's forms, read through the layer `reps` times,
//! natively or as FHIR XML. Instructions for one read are the difference between two runs
//! (`reps` 2 and 1), which takes the setup out.
//!
//! ```sh
//! cargo build --release --example base64_form_profile
//! valgrind --tool=callgrind target/release/examples/base64_form_profile lf 4 1
//! perf record -e cpu-clock target/release/examples/base64_form_profile dotnet 64 20 xml
//! ```
//!
//! Arguments: the form (`plain`, `pretty`, `space`, `crlf`, `lf`, `php`, `dotnet`, `lower`,
//! `gson`), the decoded size in MiB, the repetitions, and `xml` for FHIR XML. Prints the
//! median time of one read.

use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_fhir_binary::BinaryNegotiationLayer;
use tower_layer::Layer;

#[path = "../benches/support/base64_forms.rs"]
mod base64_forms;
use base64_forms::{frames_of, inner, random_bytes, Form};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let Some(form) = Form::ALL.into_iter().find(|f| f.key() == arg(0)) else {
        let keys: Vec<_> = Form::ALL.iter().map(|f| f.key()).collect();
        eprintln!(
            "usage: base64_form_profile <{}> [MiB] [reps] [xml]",
            keys.join("|")
        );
        std::process::exit(2);
    };
    let mib: usize = arg(1).parse().unwrap_or(64);
    let reps: usize = arg(2).parse().unwrap_or(1);
    let uri = if arg(3) == "xml" {
        "/Binary/profile?_format=xml"
    } else {
        "/Binary/profile"
    };

    let service = BinaryNegotiationLayer::new().layer(inner(frames_of(
        &random_bytes(mib << 20),
        64 << 10,
        form,
    )));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        let total = runtime.block_on(async {
            let request = Request::get(uri)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                }
            }
            total
        });
        times.push(started.elapsed());
        assert!(total >= mib << 20, "{total}");
    }
    times.sort();
    if let Some(median) = times.get(times.len() / 2) {
        println!(
            "{} {mib} MiB {uri}: median {median:.2?} of {reps}",
            form.key()
        );
    }
}
