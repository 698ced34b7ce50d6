//! The import libraries the kernel link uses are made from src/nt's .def files: every
//! function src/nt declares for the kernel must be exported by exactly one of them, so a
//! new declaration cannot be forgotten (the link would fail far from the cause).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn nt_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../src/nt"))
}

/// Functions declared in `extern` blocks of src/nt, except blocks for host builds only.
fn declared() -> Vec<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(nt_dir()).expect("src/nt") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("source");
        let mut host_only = false;
        let mut in_block = false;
        let mut previous = "";
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("unsafe extern \"") && t.ends_with('{') {
                in_block = true;
                host_only = previous.contains("not(all(windows");
            } else if in_block && t == "}" && !line.starts_with(' ') {
                in_block = false;
            } else if in_block && !host_only {
                if let Some(rest) = t.strip_prefix("pub fn ") {
                    names.push(rest.split('(').next().unwrap_or("").to_string());
                }
            }
            if !t.is_empty() {
                previous = t;
            }
        }
    }
    names.sort();
    names
}

/// Export name → the .def files that list it.
fn exported() -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in fs::read_dir(nt_dir()).expect("src/nt") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "def") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("def");
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let mut in_exports = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(';') {
                continue;
            }
            if line == "EXPORTS" {
                in_exports = true;
            } else if in_exports {
                map.entry(line.to_string()).or_default().push(file.clone());
            }
        }
    }
    map
}

#[test]
fn every_kernel_function_src_nt_declares_is_exported_by_exactly_one_def_file() {
    let declared = declared();
    assert!(declared.len() > 40, "found only {declared:?}");
    let exported = exported();
    for name in &declared {
        match exported.get(name).map(Vec::len) {
            Some(1) => {}
            Some(n) => panic!("{name} is in {n} .def files"),
            None => panic!("{name} is declared in src/nt but in no .def file"),
        }
    }
}

#[test]
fn the_host_only_irql_and_thread_imports_are_not_kernel_imports() {
    let declared = declared();
    for inline in ["KeGetCurrentIrql", "KfRaiseIrql", "KeLowerIrql", "KeGetCurrentThread"] {
        assert!(!declared.contains(&inline.to_string()), "{inline} is a CR8 or gs inline on x64");
    }
    assert!(
        declared.contains(&"WskRegister".to_string()) && declared.contains(&"BCryptGenRandom".to_string())
    );
}
