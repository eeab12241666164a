//! gdb helpers shared by the CLI and elfcore test binaries (included with
//! `#[path]`, since they are separate binaries).

use std::path::Path;
use std::process::{Command, Stdio};

/// True when `tool --version` runs and succeeds.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The bytes gdb prints for `x/{n}xb addr` on `core`, or its whole output.
pub fn gdb_bytes(core: &Path, addr: u64, n: usize) -> Result<Vec<u8>, String> {
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-c"])
        .arg(core)
        .arg("-ex")
        .arg(format!("x/{n}xb {addr:#x}"))
        .output()
        .map_err(|e| format!("running gdb: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut bytes = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("0x") && l.contains(':'))
    {
        let rest = line.split_once(':').map_or("", |(_, r)| r);
        for w in rest.split_whitespace() {
            bytes.push(
                u8::from_str_radix(w.trim_start_matches("0x"), 16).map_err(|_| text.clone())?,
            );
        }
    }
    if bytes.len() == n {
        Ok(bytes)
    } else {
        Err(text)
    }
}
