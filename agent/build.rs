//! Builds `logshim/main.rs`, the tiny static program a detached container's shim becomes once
//! the container runs (see that file), with the same `rustc` cargo uses, and leaves it in
//! `$OUT_DIR/berth-logshim` for `include_bytes!`. Where it cannot be built (another OS or
//! architecture, no linker), the file is empty and the shim stays the berth process.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=logshim/main.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("berth-logshim");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let empty = |why: &str| {
        println!(
            "cargo:warning=berth-logshim not built ({why}): detached containers keep the full berth shim"
        );
        let _ = std::fs::write(&out, b"");
    };
    if os != "linux" || !(arch == "x86_64" || arch == "aarch64") {
        return empty("only x86_64 and aarch64 Linux");
    }
    // No libc, no std: raw system calls only, so the process maps a few pages.
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--crate-name",
            "berth_logshim",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "relocation-model=static", "-C", "strip=symbols"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static"])
        .arg("-o")
        .arg(&out)
        .arg("logshim/main.rs")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => empty(&format!("rustc exited with {s}")),
        Err(e) => empty(&format!("rustc: {e}")),
    }
}
