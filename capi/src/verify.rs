//! Verify: check every byte of an image and report every problem with its
//! location, through [`img::verify_path`].

use std::ffi::{c_char, CString};

use img::{Report, Status, VerifyOptions};

use crate::args;
use crate::error::{c_string, guard, memimg_status};
use crate::ext::{read_in, write_out};
use crate::handle::{free_handle, give, handle_ref, Handle};
use crate::key::{memimg_key, opt_key};
use crate::types::*;

/// What a verify found. Opaque: made by `memimg_verify()`, freed by
/// `memimg_report_free()`; the strings it gives stay valid until then.
pub struct memimg_report {
    report: Report,
    /// Each problem's message and its printable line.
    problems: Vec<(CString, CString)>,
    fatal: Option<CString>,
    text: CString,
}

impl Handle for memimg_report {
    const NAME: &'static str = "memimg_report";
}

/// `1024` as `1.0 KiB` and so on, as imgtool prints sizes.
fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The report as imgtool prints it, without the image's name.
fn text(r: &Report, deep: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(e) = &r.fatal {
        let _ = writeln!(s, "unable to check: {e}");
        return s;
    }
    let n = r.problems.len();
    if n == 0 {
        s.push_str("intact\n");
    } else {
        let _ = writeln!(s, "DAMAGED, {n} problem{}", if n == 1 { "" } else { "s" });
    }
    for p in &r.problems {
        let _ = writeln!(s, "  {p}");
    }
    let what = if deep && r.unlocked {
        format!("{} chunks checked and decoded", r.chunks_checked)
    } else {
        format!("{} chunks checked", r.chunks_checked)
    };
    let index = if r.unlocked {
        "index checked"
    } else {
        "index encrypted (give a key to check it and decode the chunks)"
    };
    let _ = writeln!(s, "  {what}, {} stored, {index}", size(r.bytes_checked));
    s
}

/// Verifies the image at `path`: the header, trailer, index, every stored
/// checksum, tag and padding byte, and with `MEMIMG_VERIFY_DECODE` every
/// chunk's raw content. `key` (may be NULL) unlocks an encrypted image;
/// `opts` may be NULL. The verdict is in the report, not the status:
/// `MEMIMG_OK` means a report was made, whether the image is intact,
/// damaged or could not be checked (a missing file, a wrong key).
///
/// Errors: `MEMIMG_E_INVALID_ARGUMENT` only.
#[no_mangle]
pub unsafe extern "C" fn memimg_verify(
    path: *const c_char,
    key: *const memimg_key,
    opts: *const memimg_verify_options,
    out: *mut *mut memimg_report,
) -> memimg_status {
    guard("memimg_verify", || {
        // SAFETY: out is checked by give; the rest by contract and checks.
        unsafe {
            give(out, || {
                let path = args::path(path, "path")?;
                let key = opt_key(key, "key")?;
                let flags = if opts.is_null() {
                    0
                } else {
                    read_in(opts, "opts")?.flags
                };
                if flags & !MEMIMG_VERIFY_DECODE != 0 {
                    return Err(crate::error::Failure::invalid(format!(
                        "opts->flags {flags:#x} has bits other than MEMIMG_VERIFY_*"
                    )));
                }
                let deep = flags & MEMIMG_VERIFY_DECODE != 0;
                let report = img::verify_path(
                    path,
                    key,
                    &VerifyOptions {
                        decode: deep,
                        progress: None,
                    },
                );
                let problems = report
                    .problems
                    .iter()
                    .map(|p| (c_string(&p.message), c_string(&p.to_string())))
                    .collect();
                let fatal = report.fatal.as_ref().map(|e| c_string(&e.to_string()));
                let text = c_string(&text(&report, deep));
                Ok(memimg_report {
                    report,
                    problems,
                    fatal,
                    text,
                })
            })
        }
    })
}

/// Fills `*info` with the verdict and the counts of a report.
#[no_mangle]
pub unsafe extern "C" fn memimg_report_info(
    report: *const memimg_report,
    info: *mut memimg_report_info,
) -> memimg_status {
    guard("memimg_report_info", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(report, "report")? };
        let r = &h.report;
        let v = memimg_report_info {
            struct_size: 0,
            chunks_checked: r.chunks_checked,
            chunks_decoded: r.chunks_decoded,
            bytes_checked: r.bytes_checked,
            problem_count: r.problems.len(),
            fatal_message: h.fatal.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fatal_location: r
                .fatal
                .as_ref()
                .map(|e| e.location().into())
                .unwrap_or_default(),
            verdict: match r.status() {
                Status::Intact => MEMIMG_VERIFY_INTACT,
                Status::Damaged => MEMIMG_VERIFY_DAMAGED,
                Status::Unchecked => MEMIMG_VERIFY_UNCHECKED,
            },
            fatal_status: r.fatal.as_ref().map_or(memimg_status::MEMIMG_OK, |e| {
                memimg_status::of_kind(e.kind())
            }),
            unlocked: u32::from(r.unlocked),
            reserved: 0,
        };
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(info, v, "info") }
    })
}

/// Fills `*problem` with problem `index` (0 to `problem_count - 1`, in file
/// order).
///
/// Errors: `MEMIMG_E_OUT_OF_RANGE` past the last problem.
#[no_mangle]
pub unsafe extern "C" fn memimg_report_problem(
    report: *const memimg_report,
    index: usize,
    problem: *mut memimg_problem,
) -> memimg_status {
    guard("memimg_report_problem", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(report, "report")? };
        let p = args::nth(&h.report.problems, index, "problem")?;
        let (message, text) = &h.problems[index];
        let v = memimg_problem {
            struct_size: 0,
            message: message.as_ptr(),
            text: text.as_ptr(),
            location: p.location.into(),
            status: memimg_status::of_kind(p.kind),
            reserved: 0,
        };
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(problem, v, "problem") }
    })
}

/// Stores in `*text` the whole report as lines to print, as `imgtool
/// verify` prints it: `intact`, `DAMAGED, N problems` then one line per
/// problem, or `unable to check: ...`; then the counts. NUL-terminated,
/// owned by the report.
#[no_mangle]
pub unsafe extern "C" fn memimg_report_text(
    report: *const memimg_report,
    text: *mut *const c_char,
) -> memimg_status {
    guard("memimg_report_text", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(report, "report")? };
        // SAFETY: checked for NULL by put; writable by contract.
        unsafe { args::put(text, h.text.as_ptr(), "text") }
    })
}

/// Frees a report and every string it gave. NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn memimg_report_free(report: *mut memimg_report) -> memimg_status {
    // SAFETY: the handle table checks the pointer before it is freed.
    guard("memimg_report_free", || unsafe {
        free_handle(report, "report")
    })
}
