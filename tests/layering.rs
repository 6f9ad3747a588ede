//! The crate's modules are layered: each imports only the modules `src/lib.rs` declares before
//! it, so that the plain sync modules stay below the response path and the Tower types.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// The modules `lib.rs` declares, in order, and the module each root re-export comes from.
fn declared() -> (Vec<String>, HashMap<String, String>) {
    let lib = fs::read_to_string("src/lib.rs").unwrap();
    let mut order = Vec::new();
    let mut exports = HashMap::new();
    for line in lib.lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("mod ")
            .or_else(|| line.strip_prefix("pub mod "))
        {
            order.push(name.trim_end_matches(';').to_owned());
        } else if let Some(rest) = line.strip_prefix("pub use ") {
            let (module, items) = rest.trim_end_matches(';').split_once("::").unwrap();
            for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
                exports.insert(item.trim().to_owned(), module.to_owned());
            }
        }
    }
    (order, exports)
}

/// The non-test source of a module: its file and the files of its submodules.
fn source(module: &str) -> String {
    let mut text = String::new();
    let file = Path::new("src").join(format!("{module}.rs"));
    let mut files: Vec<_> = file.exists().then_some(file).into_iter().collect();
    let dir = Path::new("src").join(module);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
    }
    for file in files {
        let code = fs::read_to_string(&file).unwrap();
        let code = code.split("#[cfg(test)]\nmod tests").next().unwrap();
        // Code only: a link in a comment is no import.
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

#[test]
fn no_module_imports_one_declared_after_it() {
    let (order, exports) = declared();
    assert!(order.len() > 20, "lib.rs lists {order:?}");
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut faults = Vec::new();
    for (index, module) in order.iter().enumerate() {
        let text = source(module);
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let target = exports.get(&name).cloned().unwrap_or(name);
            if let Some(&target_index) = position.get(target.as_str()) {
                if target_index > index {
                    faults.push(format!("{module} imports {target}"));
                }
            }
        }
    }
    faults.sort();
    faults.dedup();
    assert!(
        faults.is_empty(),
        "imports against the layering: {faults:?}"
    );
}
