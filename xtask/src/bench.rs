//! `cargo xtask bench [--quick] [--json] [--only SECTIONS]`: builds the host runner in
//! release, runs `wsktls bench` (sections 1 to 6, one table), then measures the send
//! path's instructions per byte under callgrind (section 7): `wsktls __bench-send` run
//! twice, with SMALL and LARGE bytes, and (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL), so
//! the setup both runs share (boot, handshake) cancels out. Instruction counts do not
//! depend on what else the machine is doing, so a regression shows even in CI-sized runs.

use std::path::Path;
use std::process::Command;

use crate::Dirs;

const SMALL: u64 = 8 << 20;
const LARGE: u64 = 40 << 20;

pub struct BenchOptions {
    /// Passed to `wsktls bench` as they are.
    pub runner_args: Vec<String>,
    pub json: bool,
    /// Skip the runner's sections (callgrind only).
    pub callgrind_only: bool,
}

pub fn parse(args: &[String]) -> Result<BenchOptions, String> {
    let mut options = BenchOptions { runner_args: Vec::new(), json: false, callgrind_only: false };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => {
                options.json = true;
                options.runner_args.push(a.clone());
            }
            "--quick" => options.runner_args.push(a.clone()),
            "--only" => {
                let v = it.next().ok_or("--only needs section names")?;
                if v == "instructions" {
                    options.callgrind_only = true;
                } else {
                    options.runner_args.extend([a.clone(), v.clone()]);
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

pub fn bench(dirs: &Dirs, options: &BenchOptions) -> Result<(), String> {
    let status = Command::new(env!("CARGO"))
        .current_dir(&dirs.root)
        .args(["build", "--release", "--locked", "--bin", "wsktls"])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("cargo build --release --bin wsktls failed".into());
    }
    let runner = dirs.root.join("target").join("release").join("wsktls");
    if !options.callgrind_only {
        let status = Command::new(&runner)
            .arg("bench")
            .args(&options.runner_args)
            .status()
            .map_err(|e| format!("{}: {e}", runner.display()))?;
        if !status.success() {
            return Err("wsktls bench failed".into());
        }
    }
    let per_byte = instructions_per_byte(&runner, &dirs.root.join("target").join("bench"))?;
    if options.json {
        println!(
            "{{\"section\":\"7 instructions\",\"what\":\"send path, AES-128-GCM, 16 KiB records, 1 MiB sends\",\"value\":{per_byte:.3},\"unit\":\"instructions/byte\"}}"
        );
    } else {
        println!(
            "| 7 instructions | send path, AES-128-GCM, 16 KiB records, 1 MiB sends (callgrind) | {per_byte:.3} instructions/byte | | | |"
        );
    }
    Ok(())
}

/// The send path's instructions per plaintext byte, from two callgrind runs.
fn instructions_per_byte(runner: &Path, out: &Path) -> Result<f64, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let small = callgrind(runner, out, SMALL)?;
    let large = callgrind(runner, out, LARGE)?;
    if large <= small {
        return Err(format!("callgrind: {large} instructions for {LARGE} bytes, {small} for {SMALL}"));
    }
    Ok((large - small) as f64 / (LARGE - SMALL) as f64)
}

/// Total instructions (Ir) of `wsktls __bench-send bytes` under callgrind.
fn callgrind(runner: &Path, out: &Path, bytes: u64) -> Result<u64, String> {
    let file = out.join(format!("callgrind.send.{bytes}"));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(runner)
        .arg("__bench-send")
        .arg(bytes.to_string())
        .output()
        .map_err(|e| format!("valgrind (apt install valgrind): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "callgrind run of {bytes} bytes failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let moved = String::from_utf8_lossy(&output.stdout).trim().parse::<u64>().unwrap_or(0);
    if moved != bytes {
        return Err(format!("__bench-send moved {moved} of {bytes} bytes"));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{}: no totals line", file.display()))
}
