//! The module layering, checked: the top-level modules of the crate form no import loop, and
//! sinks and sources depend on `backend`, never on each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `top module → modules it uses`, from every non-test source file.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let name = rel.trim_end_matches(".rs");
            if !rel.ends_with(".rs") || name.contains("test") || ["lib", "main", "layering"].contains(&name) {
                continue;
            }
            let top = name.split('/').next().unwrap().to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for line in code.lines() {
                let line = line.split("//").next().unwrap();
                for part in line.split("crate::").skip(1) {
                    let used: String = part.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !used.is_empty() && used != top {
                        out.entry(top.clone()).or_default().insert(used);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_import_loops_between_top_level_modules() {
    let g = graph();
    // Depth-first search for a path back to the start.
    fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str, seen: &mut BTreeSet<String>) -> bool {
        g.get(from).into_iter().flatten().any(|n| n == to || (seen.insert(n.clone()) && reaches(g, n, to, seen)))
    }
    for (module, uses) in &g {
        for used in uses {
            assert!(
                !reaches(&g, used, module, &mut BTreeSet::new()),
                "import loop: {module} uses {used}, and {used} leads back to {module} ({g:?})"
            );
        }
    }
}

#[test]
fn sinks_and_sources_stand_side_by_side_on_backend() {
    let g = graph();
    assert!(!g["source"].contains("sink"), "source uses sink: {:?}", g["source"]);
    assert!(!g["sink"].contains("source"), "sink uses source: {:?}", g["sink"]);
    assert!(g["source"].contains("backend") && g["sink"].contains("backend"));
    assert!(!g.get("backend").is_some_and(|b| b.contains("sink") || b.contains("source")));
}
