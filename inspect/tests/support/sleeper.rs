//! A live `sleep` child with a known pattern on its stack, shared by the CLI
//! and elfcore test binaries (included with `#[path]`, since they are separate
//! binaries).

// Each binary reads part of what `locate` returns.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A live `sleep 30` whose environment holds a known 48-byte pattern, which
/// the kernel places on its stack. Drop kills and reaps it.
pub struct Sleeper {
    pub child: Child,
    pub pattern: Vec<u8>,
}

/// Where the pattern is in the live child.
pub struct Located {
    /// The `[stack]` mapping, `[start, end)`.
    pub stack: (u64, u64),
    /// The pattern's address.
    pub addr: u64,
    /// /proc/PID/maps as read then.
    pub maps: String,
}

impl Sleeper {
    /// Starts the child. With `core_dir`, it runs under `sh -c 'ulimit -c
    /// unlimited && exec sleep 30'` in that directory, so a fatal signal makes
    /// the kernel write `core` there (when core_pattern is plain `core`).
    pub fn spawn(core_dir: Option<&Path>) -> Sleeper {
        let pattern: Vec<u8> = (0..48u8).map(|i| b'A' + (i % 26) * 7 % 26).collect();
        let mut cmd = match core_dir {
            Some(dir) => {
                let mut c = Command::new("sh");
                c.args(["-c", "ulimit -c unlimited && exec sleep 30"])
                    .current_dir(dir);
                c
            }
            None => {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            }
        };
        cmd.env(
            "MEMIMG_PATTERN",
            String::from_utf8(pattern.clone()).unwrap(),
        )
        .stdin(Stdio::null());
        let s = Sleeper {
            child: cmd.spawn().unwrap(),
            pattern,
        };
        // Wait for the exec.
        let t = Instant::now();
        while std::fs::read_to_string(format!("/proc/{}/comm", s.pid()))
            .map_or(true, |c| c.trim() != "sleep")
        {
            assert!(t.elapsed() < Duration::from_secs(5), "sleep did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Finds the pattern on the stack through /proc/PID/mem.
    pub fn locate(&self) -> Located {
        use std::io::{Read, Seek, SeekFrom};
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid())).unwrap();
        let stack = maps.lines().find(|l| l.ends_with("[stack]")).unwrap();
        let (lo, hi) = maps_range(stack);
        let mut mem = std::fs::File::open(format!("/proc/{}/mem", self.pid())).unwrap();
        mem.seek(SeekFrom::Start(lo)).unwrap();
        let mut buf = vec![0u8; usize::try_from(hi - lo).unwrap()];
        mem.read_exact(&mut buf).unwrap();
        let i = buf
            .windows(self.pattern.len())
            .position(|w| w == self.pattern.as_slice())
            .unwrap();
        Located {
            stack: (lo, hi),
            addr: lo + i as u64,
            maps,
        }
    }
}

/// The `[start, end)` of a /proc/PID/maps line.
pub fn maps_range(line: &str) -> (u64, u64) {
    let (lo, hi) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        u64::from_str_radix(lo, 16).unwrap(),
        u64::from_str_radix(hi, 16).unwrap(),
    )
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
