//! The checked-in header is what cbindgen makes of the code now, so a
//! change to the ABI shows in review as a change to `include/memimg.h`.

use crate::support::crate_dir;

/// The header cbindgen generates from `src/` with `cbindgen.toml`.
pub fn generate() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    // From the source files rather than `with_crate`, which would run
    // `cargo metadata` from inside a test.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .unwrap();
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_current() {
    let path = crate_dir().join("include/memimg.h");
    let want = generate();
    if std::env::var_os("MEMIMG_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "{} is not what cbindgen makes of src/ (first difference at line {}: {:?} vs {:?}); \
             regenerate it with `MEMIMG_UPDATE_HEADER=1 cargo test -p memimg-capi --test c header` \
             and review the change: appending is compatible, anything else breaks callers",
            path.display(),
            first + 1,
            have.lines().nth(first).unwrap_or("<end of file>"),
            want.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
