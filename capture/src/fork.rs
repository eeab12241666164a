//! Fork snapshots: the stopped process forks a traced copy of itself, is
//! resumed at once, and the capture reads the copy at leisure.
//!
//! A forked process shares its parent's memory copy-on-write: it is a
//! consistent snapshot of it at the instant of the fork (Redis saves its data
//! set that way, gdb's `checkpoint` forks the inferior). With every thread
//! stopped and its registers read, [`Snapshot::take`]:
//!
//! 1. makes one thread call `clone` (see [`crate::inject`]: a `syscall`
//!    instruction the process already has, in its vDSO or libc; the thread
//!    gets its registers back exactly, an interrupted system call restarts).
//!    The child is traced from birth (`PTRACE_O_TRACECLONE`) and never runs a
//!    single instruction of the program: it waits in a ptrace-stop, with
//!    `PTRACE_O_EXITKILL` set as soon as it exists, so it dies with the
//!    capture whatever happens to it. `PTRACE_O_EXITKILL` is never set on
//!    the process itself. Its exit signal is 0 (the process gets no
//!    `SIGCHLD` for it, and a plain `wait` does not see it), and it shares
//!    the file descriptor table (`CLONE_FILES`), so that it keeps no socket
//!    or pipe open that the process closes meanwhile;
//! 2. reads, from the still-stopped process, what the copy does not hold as
//!    it was: shared mappings (the copy shares them, so they change once the
//!    process runs), regions the copy did not inherit (`MADV_DONTFORK`: absent
//!    from its maps) and regions it inherited empty (`MADV_WIPEONFORK`:
//!    pages in the process, none in the copy). These bytes are held in memory
//!    up to [`crate::CaptureOptions::fork_hold_limit`];
//! 3. records which pages of the private file mappings the process has
//!    loaded (a fork copies no page table entry of a file mapping that was
//!    never written to, so the copy's pagemap cannot say);
//! 4. puts back what the injection changed: the kernel rewrites the injected
//!    thread's rseq area (CPU number; an rseq critical section pointer) when
//!    it returns to user mode to run the call, so the area is read before and
//!    its old bytes go into the image; the critical-section pointer is also
//!    written back into the process, so an abort still happens.
//!
//! Then the process is resumed, and [`Snapshot::read`] walks the maps,
//! reading the copy. [`Snapshot::finish`] (or dropping it) kills the copy and
//! reaps it: its parent is the process, so one thread of the process is
//! stopped once more for a moment, to run `wait4` on the copy (as gdb does
//! for its checkpoints).
//!
//! Whenever the fork cannot be used the capture stops the process for the
//! whole read instead, and says why: an architecture other than x86-64, a
//! 32-bit process, a seccomp filter that would not let `clone` through
//! (checked by running the filters here, see [`crate::seccomp`]), syscall
//! user dispatch, a userfaultfd that asks for fork events (its reader would
//! be one of the stopped threads), `clone` failing (a limit on processes or
//! memory), no thread in a plain stop (job control stopped the process), or
//! more than the hold limit to read while stopped.
//!
//! **If the capturing process is killed (SIGKILL).** The kernel then lets
//! every thread of the process go on, and kills the copy
//! (`PTRACE_O_EXITKILL`), which has not run. What cannot be cleaned up: the
//! dead copy stays a zombie child of the process (hidden from its `wait`
//! without `__WALL`) until the process exits; and a kill within the
//! injected call itself (the fork's length) lets the injected thread go on
//! with the call's registers, which crashes the process. Running the
//! injection from a helper process that outlives the capturing one would
//! close that window; it is not done.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use memimg::RegionInfo;

use crate::error::CaptureError;
use crate::freeze::Frozen;
use crate::live::{Sink, Walker};
use crate::procfs::MapsEntry;
use crate::CaptureOptions;

/// Why there is no fork snapshot.
#[derive(Debug)]
pub(crate) enum NoFork {
    /// The fork cannot be used: capture by stopping the process instead.
    Why(String),
    /// The capture cannot go on at all.
    Failed(CaptureError),
}

/// Checks that cost time, made before the process is stopped: why a fork
/// snapshot of `pid` is impossible, if it is.
pub(crate) fn precheck(pid: i32) -> Option<String> {
    if cfg!(not(target_arch = "x86_64")) {
        return Some(format!(
            "fork snapshots are implemented on x86-64 only, not {}",
            std::env::consts::ARCH
        ));
    }
    uffd_fork_events(pid)
}

/// `UFFD_FEATURE_EVENT_FORK`.
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;

/// Why `pid` cannot fork while stopped because of a userfaultfd, if so: a
/// fork then waits until the userfaultfd's reader has taken the fork event,
/// and that reader is one of the stopped threads.
fn uffd_fork_events(pid: i32) -> Option<String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for e in dir.flatten() {
        let is_uffd =
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]");
        if !is_uffd {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        // "API:\t<api>:<features>:<ioctls>", in hex.
        let features = info
            .lines()
            .find_map(|l| l.strip_prefix("API:"))
            .and_then(|v| v.trim().split(':').nth(1))
            .and_then(|f| u64::from_str_radix(f, 16).ok())
            .unwrap_or(0);
        if features & UFFD_FEATURE_EVENT_FORK != 0 {
            return Some(
                "it has a userfaultfd that asks for fork events (a fork would wait for a stopped thread)"
                    .into(),
            );
        }
    }
    None
}

/// Pages of a region read from the stopped process, kept for the image.
#[derive(Debug)]
enum Op {
    Data(Vec<u8>),
    Zero(u64),
    Absent(u64),
}

/// The regions read from the stopped process: a [`Sink`] into memory, with
/// a limit on the bytes held.
#[derive(Debug, Default)]
struct Held {
    regions: HashMap<u64, Vec<Op>>,
    open: Option<(u64, Vec<Op>)>,
    bytes: u64,
    limit: u64,
    page_size: u64,
    over: bool,
}

impl Sink for Held {
    fn begin_region(&mut self, info: RegionInfo) -> Result<(), CaptureError> {
        self.open = Some((info.start, Vec::new()));
        Ok(())
    }
    fn push_data(&mut self, data: &[u8]) -> Result<(), CaptureError> {
        // Zero pages (of a mapping the process only read, say) cost nothing.
        let ps = usize::try_from(self.page_size).unwrap_or(4096);
        let mut i = 0;
        while i < data.len() {
            let zero = |p: &[u8]| p.iter().all(|&b| b == 0);
            let is_zero = zero(&data[i..(i + ps).min(data.len())]);
            let mut j = i;
            while j < data.len() && zero(&data[j..(j + ps).min(data.len())]) == is_zero {
                j += ps;
            }
            let j = j.min(data.len());
            if is_zero {
                self.push_zero((j - i) as u64)?;
            } else {
                self.bytes += (j - i) as u64;
                if self.bytes > self.limit {
                    self.over = true;
                    return Err(CaptureError::io(
                        "holding memory for a fork snapshot",
                        std::io::Error::other("over the hold limit"),
                    ));
                }
                if let Some((_, ops)) = &mut self.open {
                    ops.push(Op::Data(data[i..j].to_vec()));
                }
            }
            i = j;
        }
        Ok(())
    }
    fn push_zero(&mut self, len: u64) -> Result<(), CaptureError> {
        if let Some((_, ops)) = &mut self.open {
            ops.push(Op::Zero(len));
        }
        Ok(())
    }
    fn push_absent(&mut self, len: u64) -> Result<(), CaptureError> {
        if let Some((_, ops)) = &mut self.open {
            ops.push(Op::Absent(len));
        }
        Ok(())
    }
    fn end_region(&mut self) -> Result<(), CaptureError> {
        if let Some((start, ops)) = self.open.take() {
            self.regions.insert(start, ops);
        }
        Ok(())
    }
    fn add_empty_region(&mut self, _info: RegionInfo) -> Result<(), CaptureError> {
        Ok(())
    }
}

/// A fork snapshot: the traced copy of the process, and what was read from
/// the process itself while it was stopped. Dropping it kills and reaps the
/// copy.
#[derive(Debug)]
pub(crate) struct Snapshot {
    target: i32,
    /// The copy, while it lives.
    child: Option<i32>,
    ps: u64,
    exclude_file: bool,
    held: Held,
    /// The target's pagemap entries of its private file mappings.
    entries: HashMap<u64, Vec<u64>>,
    patches: Vec<(u64, Vec<u8>)>,
    fork_time: Duration,
    warnings: Vec<String>,
    /// The thread asked for to run the clone.
    thread: Option<i32>,
}

impl Snapshot {
    /// Takes a fork snapshot of `pid`, whose threads are all stopped in
    /// `frozen`; see the module docs. `maps` are its maps, read while
    /// stopped.
    ///
    /// # Errors
    /// [`NoFork::Why`] when the fork cannot be used (nothing changed in
    /// the process, which is still stopped), [`NoFork::Failed`] when the
    /// capture cannot go on.
    pub(crate) fn take(
        frozen: &mut Frozen,
        pid: i32,
        maps: &[MapsEntry],
        opts: &CaptureOptions,
        ps: u64,
    ) -> Result<Snapshot, NoFork> {
        let snap = Snapshot {
            target: pid,
            child: None,
            ps,
            exclude_file: opts.exclude_file_backed,
            held: Held {
                limit: opts.fork_hold_limit,
                page_size: ps,
                ..Held::default()
            },
            entries: HashMap::new(),
            patches: Vec::new(),
            fork_time: Duration::ZERO,
            warnings: Vec::new(),
            thread: opts.fork_thread,
        };
        imp::take(snap, frozen, maps)
    }

    /// How long the fork took.
    pub(crate) fn fork_time(&self) -> Duration {
        self.fork_time
    }

    /// The copy's pid (0 once it is gone).
    pub(crate) fn copy_pid(&self) -> i32 {
        self.child.unwrap_or(0)
    }

    /// Bytes read from the stopped process and held.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held.bytes
    }

    /// Walks `maps` (the target's, from the stop) into `w`: held regions as
    /// they were read, the others from the copy.
    ///
    /// # Errors
    /// The writer's errors; [`CaptureError::SnapshotLost`] when the copy was
    /// killed; [`CaptureError::Interrupted`] on SIGINT/SIGTERM.
    pub(crate) fn read(
        &mut self,
        maps: &[MapsEntry],
        w: &mut dyn Sink,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), CaptureError> {
        let Some(child) = self.child else {
            return Err(CaptureError::SnapshotLost { pid: self.target });
        };
        let mut walker = Walker::new(child, self.ps, self.exclude_file).copy_of(self.target);
        for (start, e) in self.entries.drain() {
            walker.set_entries(start, e);
        }
        for (at, bytes) in &self.patches {
            walker.add_patch(*at, bytes.clone());
        }
        for m in maps {
            match self.held.regions.remove(&m.start) {
                Some(ops) => {
                    progress(m.len());
                    w.begin_region(m.region_info())?;
                    for op in ops {
                        match op {
                            Op::Data(d) => w.push_data(&d)?,
                            Op::Zero(n) => w.push_zero(n)?,
                            Op::Absent(n) => w.push_absent(n)?,
                        }
                    }
                    w.end_region()?;
                }
                None => walker.region(m, w, progress)?,
            }
        }
        Ok(())
    }

    /// Sends the copy SIGKILL without waiting for it to die: it is then
    /// reaped by [`Snapshot::finish`] (or the drop), which waits.
    pub(crate) fn kill(&self) {
        if let Some(child) = self.child {
            // SAFETY: kill takes integers only.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
    }

    /// Kills and reaps the copy; the problems met, for the report.
    pub(crate) fn finish(mut self) -> Vec<String> {
        self.end(None);
        std::mem::take(&mut self.warnings)
    }

    /// Kills the copy and has the target reap it: through thread `tid` when
    /// it is one of ours, stopped; else by stopping one thread for a moment.
    fn end(&mut self, tid: Option<i32>) {
        let Some(child) = self.child.take() else {
            return;
        };
        imp::kill_child(child);
        if let Err(e) = imp::reap(self.target, child, tid) {
            self.warnings.push(format!(
                "the snapshot copy (pid {child}) was killed but not reaped, and stays a zombie child of pid {} until it exits: {e}",
                self.target
            ));
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.end(None);
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{HashSet, Instant, NoFork, Snapshot};
    use crate::error::CaptureError;
    use crate::freeze::{self, Frozen, Stop};
    use crate::inject::{self, InjectError};
    use crate::live::{captured, Walker};
    use crate::pagemap::Pagemap;
    use crate::procfs::{self, MapsEntry};
    use crate::seccomp;

    /// `clone` flags of the snapshot copy: share the descriptor table and
    /// the filesystem context; exit signal 0.
    const CLONE_FLAGS: u64 = (libc::CLONE_FILES | libc::CLONE_FS) as u64;
    const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
    const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4211;

    pub(super) fn take(
        mut snap: Snapshot,
        frozen: &mut Frozen,
        maps: &[MapsEntry],
    ) -> Result<Snapshot, NoFork> {
        let pid = snap.target;
        let why = |s: String| Err(NoFork::Why(s));
        let Some(tid) = frozen.injectable(snap.thread) else {
            return why(match snap.thread {
                Some(t) => format!("thread {t} is not in a plain stop"),
                None => "no thread is in a plain stop (job control stopped the process, or every thread has a signal pending)".into(),
            });
        };
        let regs = match inject::get_regs(tid) {
            Ok(r) => r,
            Err(InjectError::Gone) => {
                return Err(NoFork::Failed(CaptureError::ProcessExited { pid }))
            }
            Err(e) => return why(format!("reading the registers of thread {tid}: {e}")),
        };
        if !inject::is_64bit(&regs) {
            return why("the process runs 32-bit code".into());
        }
        let Some(insn) = find_syscall(pid, maps) else {
            return why("no `syscall` instruction in its vDSO or code to run clone with".into());
        };
        if let Some(w) = seccomp_refuses(pid, tid, insn) {
            return why(w);
        }
        if syscall_user_dispatch(tid) {
            return why("syscall user dispatch is on in the thread that would fork".into());
        }
        let rseq = rseq_area(tid).and_then(|(addr, len)| {
            let b = crate::procfs::read_mem(pid, addr, len).ok()?;
            Some((addr, b))
        });
        let t = Instant::now();
        let mut child = None;
        let res = inject::syscall(
            tid,
            insn,
            inject::SYS_CLONE,
            [CLONE_FLAGS, 0, 0, 0, 0, 0],
            inject::PTRACE_O_TRACECLONE,
            &mut |event, msg| {
                if event != inject::PTRACE_EVENT_CLONE {
                    return Ok(());
                }
                let c = i32::try_from(msg)
                    .map_err(|_| InjectError::Unexpected(format!("child pid {msg}")))?;
                child = Some(c);
                adopt(c)
            },
        );
        snap.fork_time = t.elapsed();
        snap.child = child;
        match res {
            Ok(done) if done.ret > 0 && child.is_some_and(|c| i64::from(c) == done.ret) => {}
            Ok(done) if done.ret < 0 => {
                snap.end(Some(tid));
                let e = std::io::Error::from_raw_os_error(i32::try_from(-done.ret).unwrap_or(0));
                return why(format!(
                    "clone failed in the process: {e} (a limit on processes or memory?)"
                ));
            }
            Ok(done) => {
                snap.end(Some(tid));
                return why(format!(
                    "clone returned {} but the traced child was {child:?}",
                    done.ret
                ));
            }
            Err(InjectError::Gone) => {
                snap.end(None);
                return Err(NoFork::Failed(CaptureError::ProcessExited { pid }));
            }
            Err(e) => {
                snap.end(Some(tid));
                return why(format!("running clone in thread {tid}: {e}"));
            }
        }
        if let Some((addr, before)) = rseq {
            if let Ok(after) = crate::procfs::read_mem(pid, addr, before.len()) {
                if after != before {
                    // rseq_cs, at offset 8: a critical section the thread
                    // was in must still abort when it resumes.
                    if after.get(8..16) != before.get(8..16) {
                        if let Some(w) = before.get(8..16) {
                            let mut word = [0u8; 8];
                            word.copy_from_slice(w);
                            poke(tid, addr + 8, u64::from_ne_bytes(word));
                        }
                    }
                    snap.patches.push((addr, before));
                }
            }
        }
        match hold_and_record(&mut snap, maps) {
            Ok(()) => Ok(snap),
            Err(e) => {
                snap.end(Some(tid));
                Err(e)
            }
        }
    }

    /// Reads what the copy does not hold as it was from the stopped
    /// process, and records the pages of its private file mappings.
    fn hold_and_record(snap: &mut Snapshot, maps: &[MapsEntry]) -> Result<(), NoFork> {
        let pid = snap.target;
        let Some(child) = snap.child else {
            return Err(NoFork::Why("the snapshot copy is gone".into()));
        };
        let child_maps = procfs::read_maps(child)
            .map_err(|e| NoFork::Why(format!("reading the maps of the snapshot copy: {e}")))?;
        let in_child: HashSet<(u64, u64)> = child_maps.iter().map(|m| (m.start, m.end)).collect();
        let target_pm = Pagemap::open(pid, snap.ps);
        let child_pm = Pagemap::open(child, snap.ps);
        let mut flags: Option<Vec<(u64, String)>> = None;
        let mut walker = Walker::new(pid, snap.ps, snap.exclude_file);
        for (at, bytes) in &snap.patches {
            walker.add_patch(*at, bytes.clone());
        }
        for m in maps.iter().filter(|m| captured(m)) {
            let not_inherited = !in_child.contains(&(m.start, m.end));
            let hold = m.shared
                || not_inherited
                || wiped_on_fork(m, pid, &target_pm, &child_pm, &mut flags);
            if hold {
                // Progress is told when the held regions go into the image.
                if let Err(e) = walker.region(m, &mut snap.held, &mut |_| {}) {
                    return Err(if snap.held.over {
                        NoFork::Why(format!(
                            "more than {} MiB of shared or not inherited memory would be held in memory",
                            snap.held.limit >> 20
                        ))
                    } else {
                        NoFork::Failed(e)
                    });
                }
            } else if m.is_file() {
                let pages = usize::try_from(m.len() / snap.ps).unwrap_or(0);
                let mut e = Vec::new();
                target_pm.read(m.start, &mut e, pages);
                snap.entries.insert(m.start, e);
            }
        }
        Ok(())
    }

    /// True when private anonymous region `m` is wiped in a child
    /// (`MADV_WIPEONFORK`): the child has no page of it although the process
    /// has some. Without `PAGEMAP_SCAN`, `VmFlags` of /proc/PID/smaps say.
    fn wiped_on_fork(
        m: &MapsEntry,
        pid: i32,
        target: &Pagemap,
        child: &Pagemap,
        flags: &mut Option<Vec<(u64, String)>>,
    ) -> bool {
        if m.shared || m.is_file() {
            return false;
        }
        // The zero page mapped by reads is not copied either; it holds
        // nothing, so it does not count.
        match (
            child.next_data(m.start, m.end),
            target.next_data(m.start, m.end),
        ) {
            (Some(in_child), Some(in_target)) => in_child.is_none() && in_target.is_some(),
            _ => {
                let f = flags.get_or_insert_with(|| procfs::vm_flags(pid).unwrap_or_default());
                f.iter()
                    .any(|(start, fl)| *start == m.start && fl.split(' ').any(|x| x == "wf"))
            }
        }
    }

    /// Waits for the new child's first stop and makes it die with us.
    fn adopt(child: i32) -> Result<(), InjectError> {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid, writable c_int.
            let r = unsafe { libc::waitpid(child, &mut status, libc::__WALL) };
            if r == -1 {
                match freeze::errno() {
                    libc::EINTR => continue,
                    e => {
                        return Err(InjectError::Ptrace(
                            "waiting for the snapshot copy",
                            std::io::Error::from_raw_os_error(e),
                        ))
                    }
                }
            }
            if libc::WIFSTOPPED(status) {
                return inject::set_options(child, inject::PTRACE_O_EXITKILL);
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Err(InjectError::Unexpected(
                    "the snapshot copy died at birth".into(),
                ));
            }
        }
    }

    /// Kills the traced copy and collects its exit as its tracer.
    pub(super) fn kill_child(child: i32) {
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(child, libc::SIGKILL) };
        loop {
            let mut status = 0;
            // SAFETY: status is a valid, writable c_int.
            let r = unsafe { libc::waitpid(child, &mut status, libc::__WALL) };
            if r == -1 {
                if freeze::errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return;
            }
        }
    }

    /// Has `target` reap its dead child `child` with `wait4`, run in thread
    /// `tid` (stopped by us) or else in a thread stopped for the purpose.
    pub(super) fn reap(target: i32, child: i32, tid: Option<i32>) -> Result<(), String> {
        if tid.is_none() && !procfs::alive(target) {
            // Its children went to a reaper when it exited.
            return Ok(());
        }
        let maps = procfs::read_maps(target).map_err(|e| format!("reading its maps: {e}"))?;
        let insn =
            find_syscall(target, &maps).ok_or("no `syscall` instruction in its vDSO or code")?;
        let wait = |tid: i32| -> Result<(), String> {
            // __WALL: the copy's exit signal is 0; WNOHANG: never block.
            let opts = (libc::__WALL | libc::WNOHANG) as u64;
            for _ in 0..100 {
                let done = inject::syscall(
                    tid,
                    insn,
                    inject::SYS_WAIT4,
                    [u64::from(child.cast_unsigned()), 0, opts, 0, 0, 0],
                    0,
                    &mut |_, _| Ok(()),
                )
                .map_err(|e| format!("running wait4 in thread {tid}: {e}"))?;
                match done.ret {
                    // Reaped; or no such child (the process reaped it itself).
                    r if r == i64::from(child) || r == -i64::from(libc::ECHILD) => return Ok(()),
                    // Not a zombie yet.
                    0 => std::thread::sleep(std::time::Duration::from_millis(1)),
                    r => return Err(format!("wait4 returned {r}")),
                }
            }
            Err("the copy did not become a zombie".into())
        };
        match tid {
            Some(tid) => wait(tid),
            None => with_one_thread(target, wait),
        }
    }

    /// Stops one thread of running process `pid` for the length of `f`,
    /// the main thread when it can.
    fn with_one_thread(pid: i32, f: impl Fn(i32) -> Result<(), String>) -> Result<(), String> {
        let mut tids = procfs::tasks(pid).map_err(|e| format!("listing its threads: {e}"))?;
        tids.sort_unstable_by_key(|&t| (t != pid, t));
        let mut refused = None;
        for tid in tids {
            match freeze::ptrace(libc::PTRACE_SEIZE, tid, 0) {
                Ok(()) => {}
                Err(libc::ESRCH) => continue,
                // An exiting thread (a main thread that returned while the
                // others run), or a tracer came meanwhile: try the next one.
                Err(e) => {
                    refused = Some(format!(
                        "cannot trace thread {tid}: {}",
                        std::io::Error::from_raw_os_error(e)
                    ));
                    continue;
                }
            }
            let _ = freeze::ptrace(libc::PTRACE_INTERRUPT, tid, 0);
            let stop = loop {
                match freeze::wait_stop(tid) {
                    Ok(s) => break s,
                    Err(CaptureError::Interrupted) => continue,
                    Err(_) => break None,
                }
            };
            match stop {
                Some(Stop::Interrupt) => {
                    let r = f(tid);
                    let _ = freeze::ptrace(libc::PTRACE_DETACH, tid, 0);
                    return r;
                }
                Some(Stop::Signal(sig)) => {
                    let _ =
                        freeze::ptrace(libc::PTRACE_DETACH, tid, usize::try_from(sig).unwrap_or(0));
                }
                Some(_) => {
                    let _ = freeze::ptrace(libc::PTRACE_DETACH, tid, 0);
                }
                None => {}
            }
        }
        Err(refused.unwrap_or_else(|| "no thread could be stopped".into()))
    }

    /// The address of a `syscall` instruction (`0f 05`) in the process: in
    /// its vDSO, else in its executable file mappings.
    fn find_syscall(pid: i32, maps: &[MapsEntry]) -> Option<u64> {
        let vdso = maps.iter().filter(|m| m.path == b"[vdso]");
        let code = maps
            .iter()
            .filter(|m| m.prot.exec() && m.is_file() && !m.shared);
        for m in vdso.chain(code) {
            // The first MiB of a region is enough to find one.
            let len = usize::try_from(m.len().min(1 << 20)).ok()?;
            let Ok(b) = crate::procfs::read_mem(pid, m.start, len) else {
                continue;
            };
            if let Some(i) = b.windows(2).position(|w| w == [0x0f, 0x05]) {
                return Some(m.start + i as u64);
            }
        }
        None
    }

    /// Why `pid`'s seccomp state would not let thread `tid` run `clone` at
    /// `insn`, if it would not.
    fn seccomp_refuses(pid: i32, tid: i32, insn: u64) -> Option<String> {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map_or("0", str::trim);
        match mode {
            "0" => return None,
            "2" => {}
            m => return Some(format!("seccomp mode {m} (strict) forbids clone")),
        }
        let filters = match seccomp::filters(tid) {
            Ok(f) => f,
            Err(e) => {
                return Some(format!(
                    "its seccomp filters cannot be read to check clone: {e}"
                ))
            }
        };
        let call = seccomp::Call {
            nr: i32::try_from(inject::SYS_CLONE).unwrap_or(0),
            arch: seccomp::AUDIT_ARCH_X86_64,
            ip: insn + 2,
            args: [CLONE_FLAGS, 0, 0, 0, 0, 0],
        };
        for (i, f) in filters.iter().enumerate() {
            match seccomp::run(f, &call) {
                Some(r) if seccomp::allows(r) => {}
                Some(r) => {
                    return Some(format!(
                        "its seccomp filter {i} answers clone with {r:#010x}, not allow"
                    ))
                }
                None => return Some(format!("its seccomp filter {i} could not be evaluated")),
            }
        }
        None
    }

    /// True when syscall user dispatch is on in stopped thread `tid` (its
    /// `syscall` would raise SIGSYS). An older kernel that cannot say has no
    /// such thing to say.
    fn syscall_user_dispatch(tid: i32) -> bool {
        let mut cfg = [0u64; 4];
        // SAFETY: the request writes addr = 32 bytes (struct
        // ptrace_sud_config) at data, which is cfg.
        let r = unsafe {
            libc::ptrace(
                PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG,
                tid,
                std::mem::size_of_val(&cfg),
                cfg.as_mut_ptr(),
            )
        };
        r >= 0 && cfg[0] != 0
    }

    /// The rseq area of stopped thread `tid`: (address, length), when it
    /// registered one.
    fn rseq_area(tid: i32) -> Option<(u64, usize)> {
        // struct ptrace_rseq_configuration: u64 pointer, u32 size, u32
        // signature, u32 flags, u32 pad.
        let mut cfg = [0u64; 3];
        // SAFETY: the request writes at most addr = 24 bytes at data, which
        // is cfg.
        let r = unsafe {
            libc::ptrace(
                PTRACE_GET_RSEQ_CONFIGURATION,
                tid,
                std::mem::size_of_val(&cfg),
                cfg.as_mut_ptr(),
            )
        };
        let size = usize::try_from(cfg[1] & 0xffff_ffff).ok()?;
        (r > 0 && cfg[0] != 0 && size >= 32).then_some((cfg[0], size.min(256)))
    }

    /// Writes one aligned word into stopped thread `tid`'s memory.
    fn poke(tid: i32, addr: u64, word: u64) {
        // SAFETY: PTRACE_POKEDATA takes the address in the tracee and the
        // word as integers; nothing of ours is dereferenced.
        unsafe {
            libc::ptrace(
                libc::PTRACE_POKEDATA,
                tid,
                crate::ptr_of(addr),
                crate::ptr_of(word),
            )
        };
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::{NoFork, Snapshot};
    use crate::freeze::Frozen;
    use crate::procfs::MapsEntry;

    pub(super) fn take(
        _snap: Snapshot,
        _frozen: &mut Frozen,
        _maps: &[MapsEntry],
    ) -> Result<Snapshot, NoFork> {
        Err(NoFork::Why(format!(
            "fork snapshots are implemented on x86-64 only, not {}",
            std::env::consts::ARCH
        )))
    }

    pub(super) fn kill_child(_child: i32) {}

    pub(super) fn reap(_target: i32, _child: i32, _tid: Option<i32>) -> Result<(), String> {
        Ok(())
    }
}
