//! `make-test-pki --out DIR [--rsa4096]`: writes the test PKI (see keys/README.md) into DIR.

use std::path::PathBuf;
use std::process::ExitCode;

use echo_peer::pki;

const USAGE: &str = "usage: make-test-pki --out DIR [--rsa4096]";

fn main() -> ExitCode {
    let mut out = None;
    let mut options = pki::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            "--rsa4096" => options.rsa4096 = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("make-test-pki: unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(out) = out else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match pki::generate_with(&out, options) {
        Ok(pki) => {
            println!("test PKI written to {}", pki.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("make-test-pki: {e}");
            ExitCode::FAILURE
        }
    }
}
