//! Tidy: the crates that must run unchanged under simulation reach the clock, the file
//! system, the network, randomness and task spawning only through `lode-env`, and the
//! sans-IO core reaches none of them at all.
//!
//! A violation names the file, the line and the rule, so the fix is obvious.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::fs;
use std::path::{Path, PathBuf};

/// Calls that bypass the environment interface.
const BYPASS: &[(&str, &str)] = &[
    ("std::fs", "files go through lode_env::disk"),
    ("tokio::fs", "files go through lode_env::disk"),
    ("File::open(", "files go through lode_env::disk"),
    ("std::time::Instant", "time goes through lode_env::Clock"),
    ("std::time::SystemTime", "time goes through lode_env::Clock"),
    ("Instant::now(", "time goes through lode_env::Clock"),
    ("SystemTime::now(", "time goes through lode_env::Clock"),
    ("tokio::time", "time goes through lode_env::Clock"),
    ("std::thread::sleep", "time goes through lode_env::Clock"),
    ("tokio::net", "the network goes through lode_env::net"),
    (
        "std::net::TcpStream",
        "the network goes through lode_env::net",
    ),
    (
        "std::net::TcpListener",
        "the network goes through lode_env::net",
    ),
    (
        "std::net::UdpSocket",
        "the network goes through lode_env::net",
    ),
    ("tokio::spawn", "tasks go through lode_env::task"),
    ("tokio::task::spawn", "tasks go through lode_env::task"),
    ("std::thread::spawn", "tasks go through lode_env::task"),
    ("thread_rng(", "randomness goes through lode_env::rng"),
    ("rand::", "randomness goes through lode_env::rng"),
    ("getrandom", "randomness goes through lode_env::rng"),
    (
        "RandomState",
        "hash seeds are randomness: use BTreeMap or a fixed hasher",
    ),
    ("madsim::", "only lode-env and lode-sim know about madsim"),
    (
        "tokio::sync::watch",
        "tokio's watch wakes waiters in an order seeded outside the simulation: use lode_env::sync::watch",
    ),
];

/// What the sans-IO core may not mention at all.
const CORE_EXTRA: &[(&str, &str)] = &[
    (
        "lode_env",
        "lode-core does no IO: take inputs and return decisions",
    ),
    ("tokio", "lode-core has no runtime"),
    (
        "async fn",
        "lode-core is synchronous: IO completions come in as inputs",
    ),
];

/// Dependencies a crate's manifest may not name.
const CORE_DEPS: &[&str] = &[
    "tokio",
    "madsim-tokio",
    "madsim",
    "rand",
    "lode-env",
    "getrandom",
];
const SIM_DEPS: &[&str] = &["madsim", "rand", "getrandom"];

/// One rule broken at one place.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    pattern: String,
    why: String,
}

/// Source with comments removed and `use a::{b, c}` groups expanded to `a::b`, `a::c`, so a
/// grouped import cannot hide a path.
fn normalise(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for (i, raw) in src.lines().enumerate() {
        let mut line = raw.to_owned();
        if in_block {
            match line.find("*/") {
                Some(end) => {
                    line = line[end + 2..].to_owned();
                    in_block = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            if !line[start..].contains("*/") {
                in_block = true;
            }
            line.truncate(start);
        }
        if let Some(c) = line.find("//") {
            line.truncate(c);
        }
        let compact: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut expanded = compact.clone();
        if let Some(open) = compact.find("::{") {
            let prefix_start = compact[..open].rfind([' ', '(']).map_or(0, |p| p + 1);
            let prefix = &compact[prefix_start..open];
            if let Some(close) = compact[open..].find('}') {
                for item in compact[open + 3..open + close].split(',') {
                    expanded.push_str(&format!(" {prefix}::{}", item.trim()));
                }
            }
        }
        out.push((i + 1, expanded));
    }
    out
}

fn check_source(file: &str, src: &str, rules: &[&[(&str, &str)]]) -> Vec<Violation> {
    let mut found = Vec::new();
    for (line, text) in normalise(src) {
        for rule_set in rules {
            for (pattern, why) in *rule_set {
                if text.contains(pattern) {
                    found.push(Violation {
                        file: file.to_owned(),
                        line,
                        pattern: (*pattern).to_owned(),
                        why: (*why).to_owned(),
                    });
                }
            }
        }
    }
    found
}

/// `select!` picks among ready branches at random unless told `biased;`, from a generator
/// the simulator does not seed: every select in simulated code must be biased.
fn check_select(file: &str, src: &str) -> Vec<Violation> {
    let lines = normalise(src);
    let mut found = Vec::new();
    for (i, (line, text)) in lines.iter().enumerate() {
        if !text.contains("select! {") {
            continue;
        }
        let biased = lines[i..]
            .iter()
            .take(4)
            .any(|(_, t)| t.contains("biased;"));
        if !biased {
            found.push(Violation {
                file: file.to_owned(),
                line: *line,
                pattern: "select!".to_owned(),
                why: "an unbiased select chooses at random outside the seed: add `biased;`"
                    .to_owned(),
            });
        }
    }
    found
}

fn check_manifest(file: &str, toml: &str, banned: &[&str]) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut section = String::new();
    for (i, line) in toml.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_owned();
            continue;
        }
        // Build and dev dependencies may use anything: tests and benches are not the node.
        if !(section.ends_with("dependencies]")
            && !section.contains("dev-")
            && !section.contains("build-"))
        {
            continue;
        }
        let name = t.split(['=', '.', ' ']).next().unwrap_or("").trim();
        if banned.contains(&name) {
            found.push(Violation {
                file: file.to_owned(),
                line: i + 1,
                pattern: name.to_owned(),
                why: format!("dependency not allowed in {section}"),
            });
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

#[test]
fn simulated_crates_reach_the_world_only_through_lode_env() {
    let root = workspace();
    let mut violations = Vec::new();
    let crates: &[(&str, bool)] = &[
        ("lode-core", true),
        ("lode-proto", true),
        ("lode-storage", false),
        ("lode-broker", false),
        ("lode-client", false),
    ];
    let mut files_checked = 0;
    for (krate, is_core) in crates {
        let dir = root.join("crates").join(krate);
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        assert!(
            !files.is_empty(),
            "{krate} has no sources: is the layout still crates/{krate}/src?"
        );
        for f in files {
            let src = fs::read_to_string(&f).unwrap();
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            let rules: Vec<&[(&str, &str)]> = if *is_core {
                vec![BYPASS, CORE_EXTRA]
            } else {
                vec![BYPASS]
            };
            violations.extend(check_source(&rel, &src, &rules));
            violations.extend(check_select(&rel, &src));
            files_checked += 1;
        }
        let manifest = dir.join("Cargo.toml");
        let toml = fs::read_to_string(&manifest).unwrap();
        let banned = if *is_core { CORE_DEPS } else { SIM_DEPS };
        violations.extend(check_manifest(
            &format!("crates/{krate}/Cargo.toml"),
            &toml,
            banned,
        ));
    }
    assert!(files_checked >= 10, "only {files_checked} files checked");
    let report: Vec<String> = violations
        .iter()
        .map(|v| format!("{}:{}: `{}`: {}", v.file, v.line, v.pattern, v.why))
        .collect();
    assert!(
        violations.is_empty(),
        "environment bypasses:\n{}",
        report.join("\n")
    );
}

// The checker itself must catch planted violations, or the test above proves nothing.

#[test]
fn catches_direct_calls_and_grouped_imports() {
    let planted = "use std::{fs, io};\nfn f() { let t = std::time::Instant::now(); }\nuse tokio::{net::TcpStream, sync};\n";
    let v = check_source("x.rs", planted, &[BYPASS]);
    let patterns: Vec<&str> = v.iter().map(|v| v.pattern.as_str()).collect();
    assert!(patterns.contains(&"std::fs"), "{patterns:?}");
    assert!(patterns.contains(&"std::time::Instant"), "{patterns:?}");
    assert!(patterns.contains(&"tokio::net"), "{patterns:?}");
    assert_eq!(v.iter().find(|v| v.pattern == "std::fs").unwrap().line, 1);
    let v = check_source("y.rs", "use tokio::sync::{mpsc, watch};\n", &[BYPASS]);
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn ignores_comments_but_not_code_after_them() {
    let src = "// std::fs is banned\n/* tokio::spawn\n still comment */ let x = 1;\n/// rand:: in docs\nlet r = rand::random::<u8>();\n";
    let v = check_source("x.rs", src, &[BYPASS]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].line, 5);
}

#[test]
fn core_may_not_use_the_environment_or_a_runtime() {
    let v = check_source(
        "core.rs",
        "use lode_env::Clock;\nasync fn step() {}\n",
        &[BYPASS, CORE_EXTRA],
    );
    assert_eq!(v.len(), 2, "{v:?}");
}

#[test]
fn catches_an_unbiased_select() {
    let src = "let x = tokio::select! {\n    a = f() => a,\n    b = g() => b,\n};\nlet y = tokio::select! {\n    // why\n    biased;\n    a = f() => a,\n};\n";
    let v = check_select("x.rs", src);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].line, 1);
}

#[test]
fn manifests_are_checked_but_dev_dependencies_are_free() {
    let toml = "[dependencies]\nlode-proto.workspace = true\ntokio = \"1\"\n\n[dev-dependencies]\nrand = \"0.8\"\n\n[target.'cfg(madsim)'.dependencies]\nmadsim.workspace = true\n";
    let v = check_manifest("Cargo.toml", toml, CORE_DEPS);
    let names: Vec<&str> = v.iter().map(|v| v.pattern.as_str()).collect();
    assert_eq!(names, vec!["tokio", "madsim"]);
}
