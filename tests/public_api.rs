//! The crate's public items and the inherent methods of its public types, read from rustdoc's
//! JSON output with every feature on, must be those listed in `tests/public-api.txt`: an
//! accidental export fails here. After a deliberate change, rerun with `PUBLIC_API_BLESS=1`
//! to rewrite the list, and review its diff.
//!
//! rustdoc's JSON output is unstable; `RUSTC_BOOTSTRAP=1` lets the stable toolchain write it.
//! Only its most basic structure is read (the index, module items, re-exports, impls).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Walks the public items reachable from the crate root, as `kind path` lines.
struct Walk<'a> {
    index: &'a serde_json::Map<String, Value>,
    lines: BTreeSet<String>,
}

impl<'a> Walk<'a> {
    fn item(&self, id: &Value) -> Option<&'a Value> {
        self.index.get(&id.to_string())
    }

    fn visit(&mut self, id: &Value, path: &str) {
        let Some(item) = self.item(id) else {
            return;
        };
        let Some((kind, inner)) = item["inner"].as_object().and_then(|o| o.iter().next()) else {
            return;
        };
        match kind.as_str() {
            "module" => {
                self.lines.insert(format!("mod {path}"));
                for child in inner["items"].as_array().into_iter().flatten() {
                    let Some(item) = self.item(child) else {
                        continue;
                    };
                    let is_use = item["inner"].get("use").is_some();
                    match item["name"].as_str() {
                        Some(name) if !is_use => self.visit(child, &format!("{path}::{name}")),
                        // A re-export is named by its `use`, below.
                        _ => self.visit(child, path),
                    }
                }
            }
            "use" => {
                let name = inner["name"].as_str().unwrap_or("?");
                let target = &inner["id"];
                if !target.is_null() {
                    self.visit(target, &format!("{path}::{name}"));
                }
            }
            "struct" | "enum" | "union" | "trait" => {
                self.lines.insert(format!("{kind} {path}"));
                for variant in inner["variants"].as_array().into_iter().flatten() {
                    if let Some(name) = self.item(variant).and_then(|v| v["name"].as_str()) {
                        self.lines.insert(format!("variant {path}::{name}"));
                    }
                }
                for method in inner["items"].as_array().into_iter().flatten() {
                    if let Some(name) = self.item(method).and_then(|m| m["name"].as_str()) {
                        self.lines.insert(format!("trait-item {path}::{name}"));
                    }
                }
                let impls: Vec<Value> = inner["impls"].as_array().cloned().unwrap_or_default();
                for id in impls {
                    self.inherent_methods(&id, path);
                }
            }
            other => {
                self.lines.insert(format!("{other} {path}"));
            }
        }
    }

    /// The methods of an inherent impl (trait impls are named by the traits).
    fn inherent_methods(&mut self, id: &Value, path: &str) {
        let Some(imp) = self.item(id) else {
            return;
        };
        let imp = &imp["inner"]["impl"];
        if !imp["trait"].is_null() || imp["is_synthetic"] == true {
            return;
        }
        for method in imp["items"].as_array().into_iter().flatten() {
            if let Some(method) = self.item(method) {
                if method["visibility"] == "public" {
                    let name = method["name"].as_str().unwrap_or("?");
                    self.lines.insert(format!("method {path}::{name}"));
                }
            }
        }
    }
}

#[test]
fn public_items_are_the_listed_ones() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("public-api");
    let output = Command::new(env!("CARGO"))
        .current_dir(manifest)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target)
        .args(["rustdoc", "--lib", "--all-features", "--quiet", "--"])
        .args(["-Z", "unstable-options", "--output-format", "json"])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "rustdoc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read(target.join("doc/tower_fhir_binary.json")).unwrap();
    let doc: Value = serde_json::from_slice(&json).unwrap();
    let mut walk = Walk {
        index: doc["index"].as_object().expect("an index"),
        lines: BTreeSet::new(),
    };
    walk.visit(&doc["root"], "tower_fhir_binary");
    let listed: String = walk.lines.iter().map(|line| format!("{line}\n")).collect();
    assert!(
        listed.contains("struct tower_fhir_binary::BinaryNegotiationLayer\n")
            && listed.contains("method tower_fhir_binary::BinaryNegotiationLayer::select\n"),
        "the walk found too little:\n{listed}"
    );

    let expected_file = manifest.join("tests/public-api.txt");
    if std::env::var_os("PUBLIC_API_BLESS").is_some() {
        std::fs::write(&expected_file, &listed).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
    if listed != expected {
        let expected: BTreeSet<&str> = expected.lines().collect();
        let added: Vec<&String> = walk
            .lines
            .iter()
            .filter(|l| !expected.contains(l.as_str()))
            .collect();
        let removed: Vec<&&str> = expected
            .iter()
            .filter(|l| !walk.lines.contains(**l))
            .collect();
        panic!(
            "the public API changed (rerun with PUBLIC_API_BLESS=1 if that is meant)\n\
             added: {added:#?}\nremoved: {removed:#?}"
        );
    }
}
