//! The engine's layering, checked on its source text:
//! - the step logic (everything the simulator runs) never names glommio or
//!   the runtime module, so that the simulator runs the production code;
//! - the modules import each other without cycles (file granularity:
//!   `use crate::…` trees, inline `crate::…` paths and `super::…` paths),
//!   so that each layer can be read, tested and changed on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`, as (module path, file).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                p.push(name);
            }
            out.insert(p, path);
        }
    }
}

/// The text of a file without comments, string contents and its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_string = false;
        let mut escaped = false;
        for c in line.chars() {
            if in_string {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => escaped = false,
                }
                continue;
            }
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

/// Paths a file names: `crate::a::b` and `super::a` (resolved against
/// `module`), with `use` trees expanded.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let text: String = bytes.iter().collect();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let tail = &text[at..];
            for path in expand(&take_tree(tail)) {
                let mut segments: Vec<String> = path
                    .split("::")
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                let resolved = match segments.first().map(String::as_str) {
                    Some("crate") => segments.split_off(1),
                    Some("super") => {
                        let mut base = module.to_vec();
                        let mut rest = segments.split_off(0);
                        while rest.first().map(String::as_str) == Some("super") {
                            rest.remove(0);
                            base.pop();
                        }
                        base.extend(rest);
                        base
                    }
                    _ => continue,
                };
                paths.push(resolved);
            }
        }
    }
    paths
}

/// The path or `use` tree starting at the beginning of `text`.
fn take_tree(text: &str) -> String {
    let mut depth = 0;
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => break,
            _ => {}
        }
        out.push(c);
        if depth == 0 && c == '}' {
            break;
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let close = tree.rfind('}').unwrap_or(tree.len());
    let (prefix, body) = (&tree[..open], &tree[open + 1..close]);
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in body.chars() {
        match c {
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            '{' => {
                depth += 1;
                current.push(c)
            }
            '}' => {
                depth -= 1;
                current.push(c)
            }
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty() && *p != "self")
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// Module → the modules (files) it imports, the crate root left out.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = BTreeMap::new();
    modules(&src(), &[], &mut files);
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        if module.is_empty() {
            continue;
        }
        let mut edges = BTreeSet::new();
        for named in named_paths(module, &code(path)) {
            // The longest prefix that is a module of the crate.
            if let Some(target) = (1..=named.len())
                .rev()
                .map(|n| named[..n].to_vec())
                .find(|p| files.contains_key(p))
            {
                if &target != module {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

#[test]
fn the_step_logic_never_names_glommio_or_the_runtime() {
    let mut files = BTreeMap::new();
    modules(&src(), &[], &mut files);
    // What the simulator runs (and the shared state it runs with).
    let step_logic = [
        "worker",
        "dataflow",
        "state",
        "checkpoint",
        "env",
        "data",
        "schema",
        "archive",
        "window",
        "sink",
        "source",
        "keygroup",
        "time",
        "sim",
        "net",
        "message",
        "rng",
    ];
    let mut offenders = Vec::new();
    for (module, path) in &files {
        if !module
            .first()
            .is_some_and(|m| step_logic.contains(&m.as_str()))
        {
            continue;
        }
        let code = code(path);
        for forbidden in ["glommio", "crate::runtime"] {
            if code.contains(forbidden) {
                offenders.push(format!("{} names {forbidden}", path.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn engine_modules_import_each_other_without_cycles() {
    let graph = graph();
    // Tarjan's strongly connected components.
    struct Search<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        components: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let Some((w, _)) = self.graph.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.components.push(component);
                }
            }
        }
    }
    let mut search = Search {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in graph.keys() {
        if !search.index.contains_key(v) {
            search.visit(v);
        }
    }
    assert!(
        search.components.is_empty(),
        "import cycles among engine modules: {:#?}",
        search.components
    );
    // The check sees the imports at all.
    assert!(graph[&vec!["worker".to_string()]].contains(&vec!["env".to_string()]));
}
