#![no_main]
//! Fuzz target `elf_core`: arbitrary bytes as an ELF core for import; see
//! memimg_tests::fuzz::elf_core.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memimg_tests::fuzz::elf_core(data));
