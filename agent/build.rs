//! Builds two tiny static programs with the same `rustc` cargo uses and leaves them in
//! `$OUT_DIR` for `include_bytes!`: `logshim/main.rs` (`berth-logshim`), which a detached
//! container's shim becomes once the container runs, and `trampoline/main.rs`
//! (`berth-trampoline`), which a container's init executes to start the program (see those
//! files). Where they cannot be built (another OS or architecture, no linker), the files are
//! empty: the shim stays the berth process, and the init is berth re-executed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=nolibc/mod.rs");
    build(
        "logshim/main.rs",
        "berth_logshim",
        "berth-logshim",
        "detached containers keep the full berth shim",
    );
    build(
        "trampoline/main.rs",
        "berth_trampoline",
        "berth-trampoline",
        "a container's init is berth re-executed",
    );
}

/// Compiles `src` into `$OUT_DIR/name` (an empty file, with a warning naming `fallback`,
/// where it cannot).
fn build(src: &str, crate_name: &str, name: &str, fallback: &str) {
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join(name);
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let empty = |why: &str| {
        println!("cargo:warning={name} not built ({why}): {fallback}");
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
            crate_name,
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
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => empty(&format!("rustc exited with {s}")),
        Err(e) => empty(&format!("rustc: {e}")),
    }
}
