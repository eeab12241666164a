//! `imgtool cat`: the bytes at a virtual address, raw or as a hexdump.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use memimg::{ExtentKind, Image};
use memimg_remote::Location;
use zeroize::Zeroizing;

use crate::cli::CatArgs;
use crate::fmt;
use crate::keys::KeySource;

/// Bytes read per step, so a long range streams in bounded memory.
const STEP: u64 = 1 << 20;

struct Plan {
    image: Location,
    addr: u64,
    len: u64,
    hex: bool,
    key: Option<KeySource>,
}

impl Plan {
    fn new(a: &CatArgs) -> Result<Plan> {
        let addr = fmt::parse_u64(&a.addr, false).map_err(|e| anyhow!("--addr: {e}"))?;
        let len = fmt::parse_u64(&a.len, true).map_err(|e| anyhow!("--len: {e}"))?;
        if addr.checked_add(len).is_none() {
            bail!("--addr {addr:#x} --len {len} runs past the end of the address space");
        }
        Ok(Plan {
            image: crate::open::location(&a.image)?,
            addr,
            len,
            hex: a.hex,
            key: a.key.source(),
        })
    }
}

/// Writes the bytes of `[addr, addr + len)` to `out`.
///
/// # Errors
/// When part of the range was not captured (naming the gap; nothing is
/// written then), when the image cannot be read or unlocked, or a chunk is
/// damaged.
pub fn cat(args: &CatArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key = plan.key.as_ref().map(KeySource::load).transpose()?;
    let img = crate::open::open_at(&plan.image, key.as_ref(), true)?;
    check_captured(&img, plan.addr, plan.len)?;
    // Plaintext memory: zeroized on drop.
    let mut buf = Zeroizing::new(vec![0u8; usize::try_from(plan.len.min(STEP))?]);
    let mut done = 0u64;
    let mut hex = HexDump::default();
    while done < plan.len {
        let n = usize::try_from((plan.len - done).min(STEP))?;
        let chunk = &mut buf[..n];
        let at = plan.addr + done;
        img.read_at(at, chunk)
            .map_err(|e| read_error(e, at, &plan.image))?;
        if plan.hex {
            hex.write(at, chunk, out)?;
        } else {
            out.write_all(chunk)?;
        }
        done += n as u64;
    }
    if plan.hex {
        hex.finish(out)?;
    }
    Ok(super::code(crate::EXIT_OK))
}

/// The error of a read at `at`: a failed request of a remote image says
/// which, with the object named once; anything else names the image too.
fn read_error(e: memimg::Error, at: u64, loc: &Location) -> anyhow::Error {
    if memimg_remote::Error::find(&e).is_some() {
        anyhow::Error::new(memimg_remote::Error::from_memimg(&loc.to_string(), e))
            .context(format!("reading {at:#x}"))
    } else {
        anyhow::Error::new(e).context(format!("reading {at:#x} from {loc}"))
    }
}

/// Fails, naming the gap, when any byte of the range was not captured, so
/// that nothing is written for a range that cannot be read whole.
fn check_captured(img: &Image, addr: u64, len: u64) -> Result<()> {
    let ps = img.header().page_size;
    let end = addr + len;
    let mut a = addr;
    while a < end {
        match img.extent_at(a)? {
            Some(e) if e.kind != ExtentKind::Absent => a = e.end(ps),
            _ => {
                // read_at explains the gap: between regions, a region without
                // data, or absent pages.
                let e = img.read_at(a, &mut [0u8; 1]).err().map_or_else(
                    || format!("{a:#x} was not captured"),
                    |e| e.message().to_string(),
                );
                bail!("{e}");
            }
        }
    }
    Ok(())
}

/// A hexdump in the style of `hexdump -C`, addressed by virtual address.
#[derive(Default)]
struct HexDump {
    /// Bytes of an unfinished line (plaintext memory: zeroized on drop).
    pending: Zeroizing<Vec<u8>>,
    pending_addr: u64,
}

impl HexDump {
    fn write(&mut self, addr: u64, bytes: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.pending_addr = addr;
        }
        self.pending.extend_from_slice(bytes);
        let whole = self.pending.len() / 16 * 16;
        for (i, line) in self.pending[..whole].chunks(16).enumerate() {
            Self::line(self.pending_addr + (i * 16) as u64, line, out)?;
        }
        self.pending.drain(..whole);
        self.pending_addr += whole as u64;
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            Self::line(self.pending_addr, &self.pending, out)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn line(addr: u64, b: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
        let mut s = format!("{addr:016x} ");
        for i in 0..16 {
            if i == 8 {
                s.push(' ');
            }
            match b.get(i) {
                Some(v) => s.push_str(&format!(" {v:02x}")),
                None => s.push_str("   "),
            }
        }
        s.push_str("  |");
        s.extend(b.iter().map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        }));
        s.push('|');
        writeln!(out, "{s}")
    }
}
