//! The module structure as a test: which module may use which outside crate, and no import cycles between the
//! crate's own files (a review flows one way: admission → engine → plan → gather → decide → check).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Outside crates that only some files may use, and those files (paths under `src/`; a folder covers its files).
const CONFINED: &[(&str, &[&str])] = &[
    ("sigstore", &["verify/"]),
    ("oci_client", &["registry/"]),
    // The CEL engine and the conversion of verified evidence into its values.
    ("cel", &["policy/cel.rs", "policy/eval.rs"]),
    (
        "kube",
        &[
            "keys/",
            "credentials.rs",
            "app.rs",
            "events/publish.rs",
            "managed_tls/",
            "policy/model.rs",
            "policy/cluster.rs",
        ],
    ),
    ("k8s_openapi", &["keys/", "credentials.rs", "app.rs", "events/publish.rs", "managed_tls/"]),
    ("axum", &["admission/", "admin.rs"]),
    ("hyper", &["admission/"]),
    // Registries, and HTTPS evidence stores read with the same TLS trust.
    ("reqwest", &["registry/", "evidence/store.rs"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, as a path relative to it.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(src()).unwrap().to_path_buf());
        }
    }
}

/// The code of a file without its test modules, comments and string literals.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(src().join(path)).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let strings = regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    text.lines()
        .map(|l| if l.trim_start().starts_with("//") { "" } else { l.split(" // ").next().unwrap_or_default() })
        .map(|l| strings.replace_all(l, "\"\"").into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Test-only files (a test module in a file of its own).
fn is_test_file(path: &Path) -> bool {
    let name = path.file_stem().unwrap().to_string_lossy();
    name == "tests" || name.ends_with("_tests")
}

#[test]
fn outside_crates_are_used_only_where_they_belong() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut wrong = Vec::new();
    for path in all.iter().filter(|p| !is_test_file(p)) {
        let code = code(path);
        let shown = path.to_string_lossy().replace('\\', "/");
        for (krate, allowed) in CONFINED {
            let used = regex::Regex::new(&format!(r"(^|[^:\w]){krate}::")).unwrap();
            if used.is_match(&code) && !allowed.iter().any(|a| shown == *a || shown.starts_with(a)) {
                wrong.push(format!("src/{shown} uses {krate}, which only {allowed:?} may use"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The module path of a file: `verify/keyless.rs` → `verify::keyless`, `verify/mod.rs` → `verify`.
fn module_of(path: &Path) -> String {
    let mut parts: Vec<String> = path.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts.join("::")
}

/// The file a module path names, trying the longest prefix that is a module.
fn target(path: &[&str], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains_key(m))
}

/// `use crate::` and `super::` edges between files, leaving out a folder's `mod.rs` with its own children (it
/// declares and re-exports them; they read its shared helpers).
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let modules: BTreeMap<String, PathBuf> =
        all.iter().filter(|p| !is_test_file(p)).map(|p| (module_of(p), p.clone())).collect();
    let path_re = regex::Regex::new(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)").unwrap();
    let grouped = regex::Regex::new(r"\b(crate|super)::\{([^}]*)\}").unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        if module.is_empty() {
            continue;
        }
        let code = code(file);
        let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = module.split("::").collect();
            if !is_mod_rs {
                p.pop();
            }
            p
        };
        let mut paths: Vec<(String, Vec<String>)> = Vec::new();
        for c in path_re.captures_iter(&code) {
            paths.push((c[1].to_owned(), c[2].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect()));
        }
        for c in grouped.captures_iter(&code) {
            for item in c[2].split(',') {
                let first = item.trim().split("::").next().unwrap_or_default().trim().to_owned();
                if !first.is_empty() && first.chars().next().is_some_and(|ch| ch.is_ascii_lowercase()) {
                    paths.push((c[1].to_owned(), vec![first]));
                }
            }
        }
        for (root, rest) in paths {
            let mut full: Vec<&str> = if root == "crate" {
                Vec::new()
            } else {
                let mut base = module.split("::").collect::<Vec<_>>();
                if !is_mod_rs {
                    base.pop();
                }
                base
            };
            full.extend(rest.iter().map(String::as_str));
            let Some(to) = target(&full, &modules) else { continue };
            if to.is_empty() || &to == module || module.starts_with(&format!("{to}::")) && to == parent.join("::") {
                continue;
            }
            let to_parent: Vec<&str> = to.split("::").collect();
            if is_mod_rs && to_parent.len() > 1 && to_parent[..to_parent.len() - 1].join("::") == *module {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(to);
        }
    }
    graph
}

#[test]
fn the_crates_own_modules_import_each_other_without_cycles() {
    let graph = edges();
    assert!(graph.get("engine").is_some_and(|e| e.contains("decide")), "the edge reader sees use crate:: edges");
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, &graph, &mut state, &mut stack) {
                panic!("import cycle: {}", cycle.join(" -> "));
            }
        }
    }
}

#[test]
fn the_review_flows_one_way() {
    let graph = edges();
    let imports = |a: &str, b: &str| graph.get(a).is_some_and(|e| e.contains(b));
    for (later, earlier) in [("decide", "plan"), ("gather", "plan"), ("decide", "check"), ("check", "gather")] {
        assert!(imports(later, earlier), "{later} reads {earlier}");
        assert!(!imports(earlier, later), "{earlier} must not import {later}");
    }
    for pure in ["decide", "check", "plan"] {
        for io in ["registry", "keys", "credentials", "admission", "engine", "app"] {
            assert!(!imports(pure, io), "{pure} is pure and must not import {io}");
        }
    }
}
