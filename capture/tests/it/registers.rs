//! Registers and the auxiliary vector in a captured image, and a gdb
//! backtrace of a core exported from it.
//!
//! The core is written by [`export_core`], a minimal ELF core writer kept
//! here so that these tests do not depend on `imgtool` (which depends on this
//! crate). `imgtool export-core` writes the kept notes the same way,
//! verbatim and in the image's order; its own tests cover the rest.
#![cfg(target_arch = "x86_64")]

use std::path::Path;
use std::process::Command;

use memimg::{ExtentKind, Image, Note, Region};
use memimg_capture::{capture_to_path, CaptureOptions, CaptureReport};

use crate::child::SLEEPERS;
use crate::common::{spawn_role, ChildProc};
use crate::live::need_ptrace;

/// Offsets in the x86_64 `struct elf_prstatus`.
const PRSTATUS_SIZE: usize = 336;
const PR_PID: usize = 32;
const PR_REG: usize = 112;
const PR_FPVALID: usize = 328;
/// Indexes of rip and rsp in `user_regs_struct`.
const RIP: usize = 16;
const RSP: usize = 19;

fn u64_at(d: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(d[off..off + 8].try_into().unwrap())
}

fn i32_at(d: &[u8], off: usize) -> i32 {
    i32::from_ne_bytes(d[off..off + 4].try_into().unwrap())
}

fn region_of(regions: &[Region], addr: u64) -> Option<&Region> {
    regions
        .iter()
        .find(|r| r.info.start <= addr && addr < r.info.end())
}

/// Captures the quiet `threads` child into `dir/threads.img`.
fn capture(dir: &Path) -> (ChildProc, CaptureReport, std::path::PathBuf) {
    let child = spawn_role("threads", &[]);
    let path = dir.join("threads.img");
    let report = capture_to_path(child.pid(), &path, &CaptureOptions::default()).unwrap();
    eprintln!(
        "captured {} threads ({} with registers), frozen {:?}",
        report.threads, report.registers, report.frozen
    );
    (child, report, path)
}

#[test]
fn registers_and_auxv_of_every_thread() {
    need_ptrace!("registers_and_auxv_of_every_thread");
    let dir = tempfile::tempdir().unwrap();
    let (child, report, path) = capture(dir.path());
    let pid = child.pid();
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).unwrap();
    let tasks = memimg_capture::procfs::tasks(pid).unwrap();
    let img = Image::open(&path).unwrap();
    let regions = img.regions().unwrap();
    let notes: &[Note] = img.notes().unwrap();
    let names: Vec<&str> = notes.iter().map(|n| n.name.as_str()).collect();

    // Kernel order: main thread's PRSTATUS, AUXV, its FP state, then each
    // other thread's PRSTATUS and FP state (xsave after the FP state when
    // the CPU has it).
    assert_eq!(names.first(), Some(&"CORE/1"), "{names:?}");
    assert_eq!(names.get(1), Some(&"CORE/6"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "CORE/6").count(), 1);
    let rest: Vec<&str> = names.iter().copied().filter(|n| *n != "CORE/6").collect();
    let mut i = 0;
    while i < rest.len() {
        assert_eq!(rest[i], "CORE/1", "{names:?}");
        assert_eq!(rest.get(i + 1), Some(&"CORE/2"), "{names:?}");
        i += 2;
        if rest.get(i) == Some(&"LINUX/514") {
            i += 1;
        }
    }

    // The auxiliary vector, as /proc says.
    let aux = notes.iter().find(|n| n.name == "CORE/6").unwrap();
    assert_eq!(aux.data, auxv);

    // One NT_PRSTATUS per thread, the main thread first.
    let prs: Vec<&Note> = notes.iter().filter(|n| n.name == "CORE/1").collect();
    let tids: Vec<i32> = prs.iter().map(|n| i32_at(&n.data, PR_PID)).collect();
    assert_eq!(tids[0], pid, "main thread first: {tids:?}");
    let mut sorted = tids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, tasks, "one NT_PRSTATUS per thread");
    assert_eq!(report.threads, tasks.len());
    assert_eq!(report.registers, tasks.len());

    for (k, n) in notes.iter().enumerate() {
        match n.name.as_str() {
            "CORE/1" => {
                let d = &n.data;
                assert_eq!(d.len(), PRSTATUS_SIZE);
                let tid = i32_at(d, PR_PID);
                assert_eq!(i32_at(d, PR_FPVALID), 1, "thread {tid}");
                let rip = u64_at(d, PR_REG + 8 * RIP);
                let rsp = u64_at(d, PR_REG + 8 * RSP);
                let code = region_of(regions, rip)
                    .unwrap_or_else(|| panic!("thread {tid}: rip {rip:#x} outside every region"));
                assert!(
                    code.info.prot.exec(),
                    "thread {tid}: rip {rip:#x} in non-executable {:?}",
                    code.info
                );
                let stack = region_of(regions, rsp)
                    .unwrap_or_else(|| panic!("thread {tid}: rsp {rsp:#x} outside every region"));
                assert!(stack.info.prot.write(), "thread {tid}: rsp {rsp:#x}");
                if tid == pid {
                    assert_eq!(stack.info.name, b"[stack]", "main thread rsp {rsp:#x}");
                }
                // The threads that told us a stack address: rsp lies in the
                // same mapping, below that address (stacks grow down).
                for j in 0..=SLEEPERS {
                    if child.var(&format!("tid{j}")) == tid as u64 {
                        let sp = child.var(&format!("sp{j}"));
                        assert!(
                            stack.info.start <= sp && sp < stack.info.end() && rsp < sp,
                            "thread {tid}: rsp {rsp:#x}, its local at {sp:#x}, mapping {:?}",
                            stack.info
                        );
                    }
                }
            }
            "CORE/2" => {
                assert_eq!(n.data.len(), 512);
                // mxcsr at offset 24 of the fxsave area: the default
                // 0x1f80, give or take the sticky exception flags.
                let mxcsr = u32::from_ne_bytes(n.data[24..28].try_into().unwrap());
                assert_eq!(mxcsr & !0x3f, 0x1f80, "note {k}: mxcsr {mxcsr:#x}");
            }
            "LINUX/514" => assert!(n.data.len() > 512, "xsave area of {}", n.data.len()),
            _ => {}
        }
    }
    // Every thread that reported itself was captured.
    for j in 0..=SLEEPERS {
        let tid = child.var(&format!("tid{j}")) as i32;
        assert!(tids.contains(&tid), "thread {tid} missing from {tids:?}");
    }
    // The child keeps running.
    assert!(memimg_capture::procfs::alive(pid));
    assert_ne!(crate::common::state(pid), b't');
}

/// Writes `image` as a little-endian ELF64 x86_64 core at `core`: one
/// `PT_NOTE` with every image note named `OWNER/TYPE` (verbatim, in order),
/// one `PT_LOAD` per data extent (its bytes) and per zero extent (no file
/// bytes, read as zeros). Absent pages are left out; gdb reads code from the
/// executable and the shared libraries.
///
/// This stands in for `imgtool::elfcore::export_core`, which cannot be a
/// dev-dependency here without a cycle (imgtool depends on this crate).
fn export_core(image: &Path, core: &Path) {
    let img = Image::open(image).unwrap();
    let ps = img.header().page_size;
    let mut notes = Vec::new();
    for n in img.notes().unwrap() {
        let Some((owner, ty)) = n.name.rsplit_once('/') else {
            continue;
        };
        let Ok(ty) = ty.parse::<u32>() else { continue };
        let pad = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(4), 0);
        notes.extend_from_slice(&(owner.len() as u32 + 1).to_le_bytes());
        notes.extend_from_slice(&(n.data.len() as u32).to_le_bytes());
        notes.extend_from_slice(&ty.to_le_bytes());
        notes.extend_from_slice(owner.as_bytes());
        notes.push(0);
        pad(&mut notes);
        notes.extend_from_slice(&n.data);
        pad(&mut notes);
    }
    // (vaddr, memsz, flags, data extent or none)
    let mut loads = Vec::new();
    for r in img.regions().unwrap() {
        let p = r.info.prot;
        let flags = u32::from(p.exec()) | u32::from(p.write()) << 1 | u32::from(p.read()) << 2;
        for e in img.region_extents(r).unwrap() {
            match e.kind {
                ExtentKind::Data => loads.push((e.addr, e.len(ps), flags, Some(e))),
                ExtentKind::Zero => loads.push((e.addr, e.len(ps), flags, None)),
                ExtentKind::Absent | ExtentKind::InParent => {}
            }
        }
    }
    let phnum = loads.len() + 1;
    assert!(phnum < 0xffff, "{phnum} segments need PN_XNUM");
    let mut head = Vec::new();
    head.extend_from_slice(b"\x7fELF\x02\x01\x01");
    head.resize(16, 0);
    head.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    head.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    head.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    head.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    head.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, phnum as u16, 0, 0, 0] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |h: &mut Vec<u8>,
                ty: u32,
                flags: u32,
                off: u64,
                vaddr: u64,
                filesz: u64,
                memsz: u64,
                align: u64| {
        h.extend_from_slice(&ty.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        for v in [off, vaddr, 0, filesz, memsz, align] {
            h.extend_from_slice(&v.to_le_bytes());
        }
    };
    let notes_off = 64 + 56 * phnum as u64;
    phdr(&mut head, 4, 0, notes_off, 0, notes.len() as u64, 0, 4); // PT_NOTE
    let mut off = (notes_off + notes.len() as u64).next_multiple_of(u64::from(ps));
    for &(vaddr, memsz, flags, data) in &loads {
        let filesz = if data.is_some() { memsz } else { 0 };
        phdr(
            &mut head,
            1,
            flags,
            off,
            vaddr,
            filesz,
            memsz,
            u64::from(ps),
        ); // PT_LOAD
        off += filesz;
    }
    head.extend_from_slice(&notes);
    head.resize(head.len().next_multiple_of(ps as usize), 0);
    let mut f = std::io::BufWriter::new(std::fs::File::create(core).unwrap());
    std::io::Write::write_all(&mut f, &head).unwrap();
    let mut buf = Vec::new();
    for (_, memsz, _, data) in loads {
        if let Some(e) = data {
            buf.resize(memsz as usize, 0);
            img.decode_extent(e, &mut buf).unwrap();
            std::io::Write::write_all(&mut f, &buf).unwrap();
        }
    }
    std::io::Write::flush(&mut f).unwrap();
}

#[test]
fn gdb_backtraces_an_exported_capture() {
    need_ptrace!("gdb_backtraces_an_exported_capture");
    if let Some(why) = crate::common::tool_missing("gdb") {
        crate::common::skip(
            crate::common::test_name!("gdb_backtraces_an_exported_capture"),
            &why,
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, report, path) = capture(dir.path());
    let core = dir.path().join("threads.core");
    export_core(&path, &core);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx"])
        .arg(&exe)
        .arg("-c")
        .arg(&core)
        .args(["-ex", "info threads", "-ex", "thread apply all bt"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Couldn't find general-purpose registers"),
        "{text}"
    );
    // One backtrace per thread (after its "Thread N (…):" header), each
    // unwound past frame 0 through the captured stack.
    let bts: Vec<&str> = text.split("\nThread ").skip(1).collect();
    assert_eq!(bts.len(), report.threads, "{text}");
    for bt in &bts {
        assert!(
            bt.contains("\n#0 ") && bt.contains("\n#1 "),
            "a thread without frames: {bt}"
        );
    }
    // gdb names every thread by its id.
    for j in 0..=SLEEPERS {
        let tid = child.var(&format!("tid{j}"));
        assert!(text.contains(&format!("LWP {tid}")), "thread {tid}: {text}");
    }
    // The stacks unwind into this binary's own code.
    let sleepers = text
        .lines()
        .filter(|l| l.contains("child::sleeper"))
        .count();
    assert!(sleepers >= SLEEPERS, "{sleepers} frames in sleeper: {text}");
}
