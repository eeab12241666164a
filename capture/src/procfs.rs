//! Reading what the kernel says about a process under `/proc/PID`.

use std::fs;
use std::io;
use std::path::PathBuf;

use memimg::{Prot, RegionInfo, RegionKind};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Read, write, execute.
    pub prot: Prot,
    /// `s` in the flags column: a shared mapping.
    pub shared: bool,
    /// Offset in the mapped file.
    pub offset: u64,
    /// Device, `major << 32 | minor`.
    pub dev: u64,
    /// Inode of the mapped file, 0 for anonymous memory.
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]` …); empty for anonymous memory.
    pub path: Vec<u8>,
}

impl MapsEntry {
    /// Parses one line; `None` when it is not a maps line.
    pub fn parse(line: &[u8]) -> Option<MapsEntry> {
        // "start-end perms offset major:minor inode   path"
        let mut fields = line.splitn(6, |&b| b == b' ');
        let range = fields.next()?;
        let perms = fields.next()?;
        let offset = fields.next()?;
        let dev = fields.next()?;
        let inode = fields.next()?;
        let rest = fields.next().unwrap_or(b"");
        let dash = range.iter().position(|&b| b == b'-')?;
        let start = hex(&range[..dash])?;
        let end = hex(&range[dash + 1..])?;
        if perms.len() != 4 || end < start {
            return None;
        }
        let mut prot = 0;
        if perms[0] == b'r' {
            prot |= Prot::READ;
        }
        if perms[1] == b'w' {
            prot |= Prot::WRITE;
        }
        if perms[2] == b'x' {
            prot |= Prot::EXEC;
        }
        let colon = dev.iter().position(|&b| b == b':')?;
        let major = hex(&dev[..colon])?;
        let minor = hex(&dev[colon + 1..])?;
        let inode = std::str::from_utf8(inode).ok()?.parse().ok()?;
        let path = rest.iter().skip_while(|&&b| b == b' ').copied().collect();
        Some(MapsEntry {
            start,
            end,
            prot: Prot(prot),
            shared: perms[3] == b's',
            offset: hex(offset)?,
            dev: major << 32 | minor,
            inode,
            path,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for an empty range (never seen in practice).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// True when the mapping is backed by a file (it has an inode).
    pub fn is_file(&self) -> bool {
        self.inode != 0
    }

    /// True for kernel pseudo-mappings that cannot or should not be read:
    /// `[vvar]`, `[vvar_vclock]` and `[vsyscall]`.
    pub fn is_special(&self) -> bool {
        self.path.starts_with(b"[vvar") || self.path == b"[vsyscall]"
    }

    /// What the region holds.
    pub fn kind(&self) -> RegionKind {
        let p = self.path.as_slice();
        if self.prot.0 == 0 {
            RegionKind::Guard
        } else if p == b"[heap]" {
            RegionKind::Heap
        } else if p == b"[stack]" || p.starts_with(b"[stack:") {
            RegionKind::Stack
        } else if self.is_file() && self.prot.exec() {
            RegionKind::Code
        } else if self.is_file() {
            RegionKind::FileBacked
        } else if p.is_empty() || p.starts_with(b"[anon") {
            RegionKind::Anonymous
        } else {
            RegionKind::Other
        }
    }

    /// The region facts a writer takes.
    pub fn region_info(&self) -> RegionInfo {
        RegionInfo {
            start: self.start,
            len: self.len(),
            prot: self.prot,
            shared: self.shared,
            kind: self.kind(),
            name: self.path.clone(),
            file_offset: if self.is_file() { self.offset } else { 0 },
            dev: self.dev,
            inode: self.inode,
        }
    }
}

fn hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn proc_path(pid: i32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// Parses all of `/proc/PID/maps`, in address order.
///
/// # Errors
/// When the file cannot be read.
pub fn read_maps(pid: i32) -> io::Result<Vec<MapsEntry>> {
    let bytes = fs::read(proc_path(pid, "maps"))?;
    Ok(parse_maps(&bytes))
}

/// Parses the text of a maps file, skipping lines that do not parse.
pub fn parse_maps(bytes: &[u8]) -> Vec<MapsEntry> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(MapsEntry::parse)
        .collect()
}

/// Reads `len` bytes at `addr` of process `pid` through `/proc/PID/mem`
/// (whatever the protection, for a tracer).
///
/// # Errors
/// When the file cannot be opened or the range read.
pub(crate) fn read_mem(pid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(proc_path(pid, "mem"))?;
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, addr)?;
    Ok(v)
}

/// The `VmFlags` line of each mapping in `/proc/PID/smaps`, by start
/// address (`rd wr mr mw me ac wf …`).
///
/// # Errors
/// When the file cannot be read.
pub(crate) fn vm_flags(pid: i32) -> io::Result<Vec<(u64, String)>> {
    let text = fs::read(proc_path(pid, "smaps"))?;
    let mut out = Vec::new();
    let mut start = None;
    for line in text.split(|&b| b == b'\n') {
        if let Some(m) = MapsEntry::parse(line) {
            start = Some(m.start);
        } else if let (Some(rest), Some(s)) = (line.strip_prefix(b"VmFlags:"), start) {
            out.push((s, String::from_utf8_lossy(rest).trim().to_string()));
        }
    }
    Ok(out)
}

/// The thread ids in `/proc/PID/task`.
///
/// # Errors
/// When the directory cannot be read (the process is gone).
pub fn tasks(pid: i32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for e in fs::read_dir(proc_path(pid, "task"))? {
        let e = e?;
        if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The state letter from `/proc/PID/stat` (`R`, `S`, `t`, `Z` …), `None`
/// when the process is gone.
pub fn state(pid: i32) -> Option<u8> {
    let s = fs::read(proc_path(pid, "stat")).ok()?;
    // The comm field is in parentheses and may hold anything: the state is
    // the first field after the last ')'.
    let close = s.iter().rposition(|&b| b == b')')?;
    s.get(close + 2).copied()
}

/// The pid of the process tracing `pid` (`TracerPid` in its status), if any.
pub fn tracer(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(proc_path(pid, "status")).ok()?;
    let t: i32 = s
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    (t != 0).then_some(t)
}

/// True while the process exists and has not exited (zombie or dead).
pub fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(s) if s != b'Z' && s != b'X' && s != b'x')
}

/// The process facts for the image header: pid, comm, cmdline, exe, build
/// id and kernel release. Facts that cannot be read are left empty.
pub fn process_facts(pid: i32) -> memimg::ProcessFacts {
    let read = |what: &str| fs::read(proc_path(pid, what)).unwrap_or_default();
    let mut comm = read("comm");
    if comm.last() == Some(&b'\n') {
        comm.pop();
    }
    comm.truncate(64);
    let mut cmdline = read("cmdline");
    cmdline.truncate(1024);
    let exe = fs::read_link(proc_path(pid, "exe"))
        .map(|p| {
            use std::os::unix::ffi::OsStrExt;
            let mut b = p.as_os_str().as_bytes().to_vec();
            b.truncate(1024);
            b
        })
        .unwrap_or_default();
    let build_id = read_build_id(pid).unwrap_or_default();
    memimg::ProcessFacts {
        pid: u32::try_from(pid).ok(),
        comm,
        cmdline,
        exe,
        build_id,
        kernel_release: kernel_release(),
    }
}

/// `uname -r`.
pub fn kernel_release() -> Vec<u8> {
    let mut r = fs::read("/proc/sys/kernel/osrelease").unwrap_or_default();
    while r.last() == Some(&b'\n') {
        r.pop();
    }
    r.truncate(128);
    r
}

/// The GNU build id of `/proc/PID/exe`, if it has one.
fn read_build_id(pid: i32) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(proc_path(pid, "exe")).ok()?;
    // The program headers and notes sit near the start of any binary; 64 KiB
    // holds them in every ELF file the linkers produce, and we never read more.
    let mut head = vec![0u8; 64 * 1024];
    let n = f.read(&mut head).ok()?;
    head.truncate(n);
    if let Some(id) = crate::elfnote::build_id(&head, |off, len| {
        let mut buf = vec![0u8; usize::try_from(len).ok()?.min(1 << 16)];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut buf).ok()?;
        Some(buf)
    }) {
        return Some(id);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = b"\
55d0c8a00000-55d0c8a02000 r-xp 00001000 fd:01 1234567                    /usr/bin/cat
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
7f00aa000000-7f00aa001000 ---p 00000000 00:00 0 
7f00ab000000-7f00ab400000 rw-s 00000000 00:05 42                         /dev/zero (deleted)
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].start, 0x55d0c8a00000);
        assert_eq!(m[0].end, 0x55d0c8a02000);
        assert_eq!(m[0].prot, Prot(Prot::READ | Prot::EXEC));
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].dev, 0xfd << 32 | 1);
        assert_eq!(m[0].inode, 1234567);
        assert_eq!(m[0].path, b"/usr/bin/cat");
        assert_eq!(m[0].kind(), RegionKind::Code);
        assert_eq!(m[1].kind(), RegionKind::Stack);
        assert_eq!(m[2].kind(), RegionKind::Guard);
        assert!(m[2].path.is_empty());
        assert!(m[3].shared);
        assert_eq!(m[3].kind(), RegionKind::FileBacked);
        assert_eq!(m[3].path, b"/dev/zero (deleted)");
        assert!(m[4].is_special());
        assert_eq!(m[4].end, 0xffffffffff601000);
    }

    #[test]
    fn reads_own_process() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let m = read_maps(pid).unwrap();
        assert!(m.iter().any(|e| e.kind() == RegionKind::Stack));
        assert!(m.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(tasks(pid).unwrap().contains(&pid));
        assert!(alive(pid));
        let f = process_facts(pid);
        assert!(!f.comm.is_empty());
        assert!(!f.kernel_release.is_empty());
    }
}
