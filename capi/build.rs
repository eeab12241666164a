//! Links `libmemimg.so` with `layout/hot.ld`, which places the functions a
//! first `memimg_restore()` runs together at the start of the library's code.
//!
//! A program's first call into a library it has not used yet takes a page
//! fault for each 64 KiB window of code it touches (the kernel maps 16 pages
//! at a time from the page cache), about 5 us each here. Left where rustc and
//! the linker put them, the restore path's functions lie in a dozen windows
//! spread over 2 MB; placed together they fit in a few. See the README, *The
//! restore path's code layout*, and `layout/regen.sh`, which writes the script.
//!
//! The script only orders sections; a linker without GNU linker-script
//! support (mold) can be given `MEMIMG_DEFAULT_LAYOUT=1` to link without it.
//! The static library cannot carry a linker script: a C program linking
//! `libmemimg.a` passes `-Wl,-T,capi/layout/hot.ld` itself (the README says how).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=layout/hot.ld");
    println!("cargo:rerun-if-env-changed=MEMIMG_DEFAULT_LAYOUT");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let opted_out = std::env::var_os("MEMIMG_DEFAULT_LAYOUT").is_some_and(|v| !v.is_empty());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/hot.ld");
    let used = linux && !opted_out;
    if used {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{}", script.display());
    }
    // The tests and the bench link their static C programs the same way,
    // and check the layout only where it was used: they read this decision
    // (empty: not used) rather than making it again.
    let shown = if used {
        script.display().to_string()
    } else {
        String::new()
    };
    println!("cargo:rustc-env=MEMIMG_HOT_LD={shown}");
}
