//! Style checks clippy cannot make (STYLE.md habit 14): `unsafe` only in the modules that touch
//! the kernel, each block with a `// SAFETY:` line and each `unsafe fn` or `unsafe trait` with a `# Safety`
//! section; the codec does no I/O; every module opens with a `//!` doc comment.

use std::path::{Path, PathBuf};

/// The only files allowed to contain `unsafe`, and why.
const UNSAFE_ALLOWED: &[&str] = &[
    "src/sys.rs",               // raw syscalls: sockets, eventfd, affinity, signals
    "src/uring.rs",             // io_uring submissions and the provided-buffer ring
    "src/mailbox.rs",           // the SPSC ring between shard threads
    "src/shard.rs", // leases a connection's send buffer and the eventfd target to the kernel
    "src/arena.rs", // maps the shards' huge-page message memory
    "client/src/shm.rs", // shared-memory rings: memfd, mmap, SCM_RIGHTS, eventfd, ppoll
    "client/src/rdma/verbs.rs", // every libibverbs and librdmacm call
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("client/src"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn code_part(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Every `unsafe` in `text` (the file at `path`) that is outside the allowed modules or lacks
/// its justification, as `path:line: why`.
fn unsafe_violations(path: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let code = code_part(line);
        if !code.contains("unsafe ") && !code.contains("unsafe{") || code.contains("unsafe_code") {
            continue;
        }
        if !UNSAFE_ALLOWED.contains(&path) {
            problems.push(format!("{path}:{}: unsafe outside the allowed modules", i + 1));
            continue;
        }
        let window = &lines[i.saturating_sub(12)..=i];
        if code.contains("unsafe fn") || code.contains("unsafe trait") {
            if !window.iter().any(|l| l.contains("# Safety")) {
                problems.push(format!("{path}:{}: unsafe fn or trait without # Safety", i + 1));
            }
        } else if !window.iter().any(|l| l.contains("SAFETY:")) {
            problems.push(format!("{path}:{}: unsafe without a SAFETY: comment", i + 1));
        }
    }
    problems
}

#[test]
fn unsafe_only_in_kernel_facing_modules_and_always_justified() {
    let problems: Vec<String> =
        sources().iter().flat_map(|(path, text)| unsafe_violations(path, text)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn codec_does_no_io() {
    for (path, text) in sources() {
        if !path.starts_with("client/src/wire/") {
            continue;
        }
        for banned in ["std::net", "std::io", "std::fs", "std::time", "std::thread"] {
            assert!(!text.contains(banned), "{path} uses {banned}: the codec must stay pure");
        }
    }
}

#[test]
fn every_module_opens_with_a_doc_comment() {
    for (path, text) in sources() {
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(first.starts_with("//!"), "{path} does not open with a //! module comment");
    }
}

/// The checker itself must be able to fail: each kind of violation is caught in a sample.
#[test]
fn tidy_detects_violations() {
    let outside = "fn f(p: *const u8) -> u8 {\n    // SAFETY: p is valid.\n    unsafe { *p }\n}\n";
    assert_eq!(unsafe_violations("src/handlers.rs", outside).len(), 1, "outside the allowed list");
    assert!(unsafe_violations("src/sys.rs", outside).is_empty(), "allowed and justified");
    let bare = "fn f(p: *const u8) -> u8 {\n    unsafe { *p }\n}\n";
    assert_eq!(unsafe_violations("src/sys.rs", bare).len(), 1, "no SAFETY: line");
    let undocumented = "pub unsafe fn f() {}\n";
    assert_eq!(unsafe_violations("src/sys.rs", undocumented).len(), 1, "no # Safety section");
    assert!(unsafe_violations("src/sys.rs", "#![allow(unsafe_code)]\n").is_empty());
}
