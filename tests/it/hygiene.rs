//! No test, example or bench uses port 6379 or a server it did not
//! start. Every server address in them comes from `RedisServer` (or a proxy
//! in front of one); 6379 appears only where a config is parsed, never
//! connected, on lines marked so.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_test_example_or_bench_touches_port_6379_or_a_fixed_address() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["tests", "examples", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 5, "found the sources");
    let needle = ["63", "79"].concat();
    for file in files.into_iter().filter(|f| !f.ends_with("hygiene.rs")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains(&needle) && !line.contains("parsed only, never connected") {
                panic!("{}:{}: {line}", file.display(), n + 1);
            }
            // Fixed server addresses: only the examples' docs mention the
            // docker-compose ports, in comments.
            for fixed in ["127.0.0.1:638", "localhost:63"] {
                if line.contains(fixed) && !line.trim_start().starts_with("//") {
                    panic!("{}:{}: fixed server address: {line}", file.display(), n + 1);
                }
            }
        }
    }
}
