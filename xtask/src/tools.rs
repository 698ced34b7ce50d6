//! The tools the kernel build needs, where Debian puts them, and the packages that bring
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tools {
    pub cargo: PathBuf,
    pub rustc: PathBuf,
    pub rustdoc: PathBuf,
    pub clang_cl: PathBuf,
    pub llvm_lib: PathBuf,
    pub dlltool: PathBuf,
    pub lld_link: PathBuf,
    pub readobj: PathBuf,
    pub osslsigncode: PathBuf,
    pub openssl: PathBuf,
}

/// (path, the Debian package that provides it). Debian's Rust, not rustup's: rustup's
/// toolchains here have no library sources for build-std.
const NEEDED: [(&str, &str); 11] = [
    ("/usr/bin/cargo", "cargo-web"),
    ("/usr/bin/rustc", "rustc-web"),
    ("/usr/lib/rustlib/src/rust/library/core/Cargo.toml", "rust-web-src"),
    ("/usr/bin/clang-cl-22", "clang-22"),
    ("/usr/bin/llvm-lib-22", "llvm-22"),
    ("/usr/bin/llvm-dlltool-22", "llvm-22"),
    ("/usr/bin/llvm-readobj-22", "llvm-22"),
    ("/usr/bin/lld-link-22", "lld-22"),
    ("/usr/bin/osslsigncode", "osslsigncode"),
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/rustdoc", "rustc-web"),
];

impl Tools {
    pub fn find_or_install() -> Result<Tools, String> {
        let missing = missing_packages();
        if !missing.is_empty() {
            if !is_root() {
                return Err(format!(
                    "missing tools; install these Debian packages (as root, `cargo xtask kernel` does it): {}",
                    missing.join(" ")
                ));
            }
            println!("xtask kernel: installing {}", missing.join(" "));
            let mut update = Command::new("apt-get");
            update.args(["update", "-qq"]);
            run(&mut update, "apt-get update")?;
            let mut install = Command::new("apt-get");
            install
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut install, "apt-get install")?;
            let still = missing_packages();
            if !still.is_empty() {
                return Err(format!("still missing after apt-get: {}", still.join(" ")));
            }
        }
        let p = |s: &str| PathBuf::from(s);
        Ok(Tools {
            cargo: p("/usr/bin/cargo"),
            rustc: p("/usr/bin/rustc"),
            rustdoc: p("/usr/bin/rustdoc"),
            clang_cl: p("/usr/bin/clang-cl-22"),
            llvm_lib: p("/usr/bin/llvm-lib-22"),
            dlltool: p("/usr/bin/llvm-dlltool-22"),
            lld_link: p("/usr/bin/lld-link-22"),
            readobj: p("/usr/bin/llvm-readobj-22"),
            osslsigncode: p("/usr/bin/osslsigncode"),
            openssl: p("/usr/bin/openssl"),
        })
    }
}

/// The packages whose files are absent, each named once.
fn missing_packages() -> Vec<String> {
    missing_from(&NEEDED)
}

fn missing_from(needed: &[(&str, &str)]) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    for &(path, package) in needed {
        if !Path::new(path).exists() && !missing.iter().any(|m| m == package) {
            missing.push(package.to_string());
        }
    }
    missing
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs `cmd`, failing with its name and exit status (its output goes to ours).
pub fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{what} failed ({status})")) }
}

/// Runs `cmd` and returns its standard output.
pub fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_package_is_named_once_and_present_ones_not_at_all() {
        let needed = [
            ("/nonexistent/wsktls/llvm-lib-22", "llvm-22"),
            ("/nonexistent/wsktls/llvm-readobj-22", "llvm-22"),
            ("/", "present-package"),
            ("/nonexistent/wsktls/osslsigncode", "osslsigncode"),
        ];
        assert_eq!(missing_from(&needed), ["llvm-22", "osslsigncode"]);
    }
}
