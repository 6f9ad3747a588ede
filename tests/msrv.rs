//! The `rust-version` in `Cargo.toml` is a promise to users on older compilers. Only one
//! toolchain builds this crate's tests, so instead of building with the oldest one, this checks
//! that no dependency the library or the proxy builds with (all features, the locked versions)
//! asks for a newer Rust than the crate says it needs.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// `1.89` or `1.89.0` as comparable numbers.
fn rust_version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|part| {
        part.parse::<u64>()
            .unwrap_or_else(|_| panic!("rust-version {text:?}"))
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

fn output(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn no_dependency_needs_a_newer_rust_than_the_crate_declares() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = String::from_utf8(output(&rustc, &["-vV"])).unwrap();
    let host = host
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let metadata: Value = serde_json::from_slice(&output(
        &cargo,
        &[
            "metadata",
            "--format-version=1",
            "--locked",
            "--all-features",
            "--filter-platform",
            host,
        ],
    ))
    .unwrap();

    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let root = metadata["resolve"]["root"].as_str().unwrap();
    let declared = packages[root]["rust_version"]
        .as_str()
        .expect("Cargo.toml declares rust-version");
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();

    // Everything reachable from the crate through normal and build dependencies; the
    // development dependencies (test and bench tools) are not part of the promise.
    let mut seen = HashSet::from([root]);
    let mut queue = vec![root];
    let mut too_new = Vec::new();
    while let Some(id) = queue.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let used = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kind| kind["kind"].as_str() != Some("dev"));
            let dep_id = dep["pkg"].as_str().unwrap();
            if used && seen.insert(dep_id) {
                queue.push(dep_id);
                let package = packages[dep_id];
                if let Some(needed) = package["rust_version"].as_str() {
                    if rust_version(needed) > rust_version(declared) {
                        too_new.push(format!(
                            "{} {} needs {needed}",
                            package["name"].as_str().unwrap(),
                            package["version"].as_str().unwrap()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        seen.len() > 20,
        "the dependency walk found only {} packages",
        seen.len()
    );
    assert!(
        too_new.is_empty(),
        "Cargo.toml says rust-version = {declared:?}, but: {}",
        too_new.join(", ")
    );
}

#[test]
fn rust_versions_compare_by_number() {
    assert!(rust_version("1.89") > rust_version("1.88.0"));
    assert!(rust_version("1.100") > rust_version("1.99.9"));
    assert_eq!(rust_version("1.88"), rust_version("1.88.0"));
}
