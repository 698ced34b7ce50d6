//! `cargo xtask kernel`: the kernel image, built on Linux. (`cargo xtask bench`: the
//! benchmarks, see bench.rs.)
//!
//! 1. Finds the tools (Debian's Rust 1.96 with its library sources, LLVM 22's clang-cl,
//!    llvm-lib, llvm-dlltool, lld-link and llvm-readobj, osslsigncode, openssl); as root on
//!    a machine that lacks them it installs them with apt and says so, otherwise it names
//!    the missing packages.
//! 2. Builds the driver crate as a staticlib for x86_64-pc-windows-msvc with build-std
//!    (core, alloc) and panic=abort; ring's C goes through clang-cl with /GS- /kernel.
//! 3. Makes import libraries from the `.def` files in src/nt and links
//!    target/kernel/wsktls.sys with lld-link (/DRIVER /SUBSYSTEM:NATIVE /ENTRY:DriverEntry).
//! 4. Checks the image (imports from the allowlist only, listed in imports.txt; NATIVE
//!    subsystem; not a DLL; no exports; no pageable code; entry point DriverEntry) and
//!    fails on any violation.
//! 5. Stamps inf/wsktls.inx into wsktls.inf and test-signs the image (a certificate made
//!    under target/kernel/test-signing unless --cert/--key name one), then verifies it.

mod bench;
mod image;
mod inf;
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use tools::Tools;

const TARGET: &str = "x86_64-pc-windows-msvc";

/// Where everything goes, under the workspace's target directory.
struct Dirs {
    root: PathBuf,
    out: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        let out = root.join("target").join("kernel");
        Dirs { root, out }
    }
}

struct Options {
    cert: Option<(PathBuf, PathBuf)>,
    /// Link a user-mode import in on purpose: the import check must then fail.
    plant_user_import: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options { cert: None, plant_user_import: false };
    let (mut cert, mut key) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cert" => cert = Some(PathBuf::from(it.next().ok_or("--cert needs a PEM file")?)),
            "--key" => key = Some(PathBuf::from(it.next().ok_or("--key needs a PEM file")?)),
            "--plant-user-import" => options.plant_user_import = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    options.cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("kernel") => parse(&args[1..]).and_then(|o| kernel(&o)),
        Some("bench") => bench::parse(&args[1..]).and_then(|o| bench::bench(&Dirs::new(), &o)),
        _ => Err("usage: cargo xtask kernel [--cert PEM --key PEM] [--plant-user-import]\n       \
                  cargo xtask bench [--quick] [--json] [--only SECTIONS|instructions]"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn kernel(options: &Options) -> Result<(), String> {
    let dirs = Dirs::new();
    let tools = Tools::find_or_install()?;
    std::fs::create_dir_all(&dirs.out).map_err(|e| format!("{}: {e}", dirs.out.display()))?;
    let staticlib = build_staticlib(&tools, &dirs)?;
    if options.plant_user_import {
        // A separate image, so the real artifacts are untouched; the check must refuse it.
        let planted = dirs.out.join("wsktls.planted.sys");
        image::link(&tools, &dirs.root, &dirs.out, &staticlib, &planted, true)?;
        image::check(&tools, &planted, &dirs.out.join("planted"))?;
        return Err("the image with a planted kernel32.dll import passed the checks".into());
    }
    let unsigned = dirs.out.join("wsktls.unsigned.sys");
    image::link(&tools, &dirs.root, &dirs.out, &staticlib, &unsigned, false)?;
    let report = image::check(&tools, &unsigned, &dirs.out)?;
    stamp_inf(&dirs)?;
    let signed = dirs.out.join("wsktls.sys");
    sign(&tools, &dirs, options, &unsigned, &signed)?;
    println!(
        "xtask kernel: {} ({} bytes, {} imports from {}), wsktls.inf, imports.txt: signed and checked",
        signed.display(),
        report.size,
        report.imports,
        report.modules.join(", ")
    );
    Ok(())
}

/// The driver crate as a staticlib for the kernel target.
fn build_staticlib(tools: &Tools, dirs: &Dirs) -> Result<PathBuf, String> {
    let include = dirs.out.join("include");
    write_freestanding_headers(&include)?;
    let cargo_target = dirs.out.join("cargo");
    let cflags = format!("/GS- /kernel /I{}", include.display());
    let mut cmd = Command::new(&tools.cargo);
    cmd.current_dir(&dirs.root)
        .args(["rustc", "--package", "wsktls", "--lib", "--release", "--locked", "--target", TARGET])
        .args(["--crate-type", "staticlib"])
        .args(["-Zbuild-std=core,alloc", "-Zbuild-std-features=compiler-builtins-mem"])
        .args(["--config", "profile.release.panic=\"abort\""])
        // The rustup toolchain that runs xtask must not leak into Debian's.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .env_remove("RUSTFLAGS")
        .env("RUSTC", &tools.rustc)
        .env("RUSTDOC", &tools.rustdoc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &cargo_target)
        .env("CC_x86_64_pc_windows_msvc", &tools.clang_cl)
        .env("AR_x86_64_pc_windows_msvc", &tools.llvm_lib)
        .env("CFLAGS_x86_64_pc_windows_msvc", cflags);
    tools::run(&mut cmd, "cargo rustc (kernel target)")?;
    let lib = cargo_target.join(TARGET).join("release").join("wsktls.lib");
    if !lib.exists() {
        return Err(format!("the build left no {}", lib.display()));
    }
    Ok(lib)
}

/// The three C headers ring's sources include, for a freestanding kernel build: no CRT.
fn write_freestanding_headers(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let headers = [
        ("assert.h", "#pragma once\n#define assert(x) ((void)0)\n"),
        (
            "string.h",
            "#pragma once\ntypedef unsigned long long size_t;\n\
             void *memcpy(void *, const void *, size_t);\nvoid *memmove(void *, const void *, size_t);\n\
             void *memset(void *, int, size_t);\nint memcmp(const void *, const void *, size_t);\n",
        ),
        ("stdlib.h", "#pragma once\ntypedef unsigned long long size_t;\n"),
    ];
    for (name, text) in headers {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

fn stamp_inf(dirs: &Dirs) -> Result<(), String> {
    let template_path = dirs.root.join("inf").join("wsktls.inx");
    let template =
        std::fs::read_to_string(&template_path).map_err(|e| format!("{}: {e}", template_path.display()))?;
    let inf = inf::stamp(&template, env!("CARGO_PKG_VERSION"), inf::build_date_utc(), "amd64")?;
    let out = dirs.out.join("wsktls.inf");
    std::fs::write(&out, inf).map_err(|e| format!("{}: {e}", out.display()))
}

/// Test-signs `unsigned` into `signed` and verifies the signature.
fn sign(tools: &Tools, dirs: &Dirs, options: &Options, unsigned: &Path, signed: &Path) -> Result<(), String> {
    let (cert, key) = match &options.cert {
        Some((c, k)) => (c.clone(), k.clone()),
        None => test_certificate(tools, &dirs.out.join("test-signing"))?,
    };
    let _ = std::fs::remove_file(signed);
    let mut cmd = Command::new(&tools.osslsigncode);
    cmd.args(["sign", "-h", "sha256", "-n", "wsktls"])
        .arg("-certs")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-in")
        .arg(unsigned)
        .arg("-out")
        .arg(signed);
    tools::run(&mut cmd, "osslsigncode sign")?;
    let mut verify = Command::new(&tools.osslsigncode);
    verify.arg("verify").arg("-CAfile").arg(&cert).arg("-in").arg(signed);
    tools::run(&mut verify, "osslsigncode verify")
}

/// A self-signed code-signing certificate for test-signing mode, made once.
fn test_certificate(tools: &Tools, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("wsktls-test.cer.pem"), dir.join("wsktls-test.key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(&tools.openssl);
    cmd.args(["req", "-x509", "-newkey", "rsa:3072", "-sha256", "-days", "3650", "-nodes"])
        .args(["-subj", "/CN=wsktls test signing (not trusted anywhere)"])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .args(["-addext", "extendedKeyUsage=codeSigning"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    tools::run(&mut cmd, "openssl req (test code-signing certificate)")?;
    println!("xtask kernel: made a test code-signing certificate: {}", cert.display());
    Ok((cert, key))
}
