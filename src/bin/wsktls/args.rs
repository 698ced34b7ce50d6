//! The command line, parsed by hand (two subcommands and a few flags do not need a crate).
//! A mistake here is a usage error: the runner prints it with the usage and exits 2.

use std::path::PathBuf;
use std::time::Duration;

use wsktls::nt::{
    WSKTLS_SUITE_AES_128_GCM_SHA256, WSKTLS_SUITE_AES_256_GCM_SHA384, WSKTLS_SUITE_CHACHA20_POLY1305_SHA256,
};

pub const USAGE: &str = "\
usage: wsktls demo [--bytes N] [--channels N] [--suite aes128|aes256|chacha20] [--json]
       wsktls connect HOST:PORT --ca FILE [--sni NAME] [--pin SHA256HEX] [--send FILE] [--timeout SECS]
       wsktls bench [--quick] [--json] [--only send,receive,sink,handshake,memory,scale]

demo     echoes N bytes (default 256MiB; 64KiB, 1GiB and plain numbers work too) through
         wsktls to an echo server it starts on 127.0.0.1, split evenly over the channels
         (default 1), checking every byte; --json ends stdout with the figures as JSON.
connect  opens one channel to a TLS 1.3 server on loopback (ntsim connects nowhere else),
         trusting the CA in FILE (PEM or DER), prints what was negotiated, sends FILE's
         bytes, sends close_notify, and writes what comes back to stdout until the server
         closes or is silent for SECS seconds (default 10). SNI defaults to HOST; --pin is
         the hex SHA-256 of the server's SubjectPublicKeyInfo.
bench    measures wsktls against ring's bare AEAD, the rustls client and OpenSSL on this
         machine (needs `openssl`; `cargo xtask bench` adds instructions per byte) and
         prints one table; --quick moves fewer bytes, --json prints the rows as JSON.";

/// The demo's defaults.
const DEFAULT_BYTES: u64 = 256 << 20;
/// More channels than this is more threads than the demo means to start.
const MAX_CHANNELS: u32 = 1024;
const DEFAULT_SILENCE: Duration = Duration::from_secs(10);

pub enum Command {
    Demo(DemoOptions),
    Bench(crate::bench::BenchOptions),
    /// `__bench-send BYTES`: the send path alone, for callgrind (xtask bench).
    BenchSend(u64),
    Connect(ConnectOptions),
    /// The demo's child process: its own arguments, parsed there.
    EchoPeer(Vec<String>),
    Help,
}

pub struct DemoOptions {
    pub bytes: u64,
    pub channels: u32,
    /// WSKTLS_SUITE_* bits; 0 for every suite.
    pub suites: u32,
    pub json: bool,
}

pub struct ConnectOptions {
    /// HOST:PORT as given, and its two halves (HOST without IPv6 brackets).
    pub target: String,
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
    pub sni: Option<String>,
    pub pin: Option<[u8; 32]>,
    pub send: Option<PathBuf>,
    /// How long the server may stay silent before the runner stops waiting for it.
    pub silence: Duration,
}

/// A usage error: what was wrong with the command line.
pub struct Usage(pub String);

pub fn parse(args: &[String]) -> Result<Command, Usage> {
    match args.split_first() {
        None => Err(Usage("no command given".into())),
        Some((command, rest)) => match command.as_str() {
            "demo" => demo(rest).map(Command::Demo),
            "connect" => connect(rest).map(Command::Connect),
            "bench" => bench(rest).map(Command::Bench),
            crate::bench::SEND_ONLY => match rest {
                [bytes] => size(bytes).map(Command::BenchSend),
                _ => Err(Usage(format!("{} BYTES", crate::bench::SEND_ONLY))),
            },
            crate::peer::SUBCOMMAND => Ok(Command::EchoPeer(rest.to_vec())),
            "help" | "--help" | "-h" => Ok(Command::Help),
            other => Err(Usage(format!("unknown command {other:?}"))),
        },
    }
}

/// Flags and their values, one at a time.
struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    fn value(&mut self, flag: &str) -> Result<&'a str, Usage> {
        self.args.next().map(String::as_str).ok_or_else(|| Usage(format!("{flag} needs a value")))
    }
}

fn demo(args: &[String]) -> Result<DemoOptions, Usage> {
    let mut options = DemoOptions { bytes: DEFAULT_BYTES, channels: 1, suites: 0, json: false };
    let mut flags = Flags { args: args.iter() };
    while let Some(flag) = flags.args.next() {
        match flag.as_str() {
            "--bytes" => options.bytes = size(flags.value(flag)?)?,
            "--channels" => options.channels = channels(flags.value(flag)?)?,
            "--suite" => options.suites = suite(flags.value(flag)?)?,
            "--json" => options.json = true,
            other => return Err(Usage(format!("demo: unexpected argument {other:?}"))),
        }
    }
    if options.bytes < u64::from(options.channels) {
        return Err(Usage(format!("demo: --bytes must be at least one per channel ({})", options.channels)));
    }
    Ok(options)
}

fn bench(args: &[String]) -> Result<crate::bench::BenchOptions, Usage> {
    let mut options = crate::bench::BenchOptions { json: false, quick: false, only: Vec::new() };
    let mut flags = Flags { args: args.iter() };
    while let Some(flag) = flags.args.next() {
        match flag.as_str() {
            "--quick" => options.quick = true,
            "--json" => options.json = true,
            "--only" => {
                for name in flags.value(flag)?.split(',') {
                    if !crate::bench::SECTIONS.contains(&name) {
                        return Err(Usage(format!("bench: no section {name:?}")));
                    }
                    options.only.push(name.to_owned());
                }
            }
            other => return Err(Usage(format!("bench: unexpected argument {other:?}"))),
        }
    }
    Ok(options)
}

fn connect(args: &[String]) -> Result<ConnectOptions, Usage> {
    let (mut target, mut ca, mut sni, mut pin, mut send) = (None, None, None, None, None);
    let mut silence = DEFAULT_SILENCE;
    let mut flags = Flags { args: args.iter() };
    while let Some(arg) = flags.args.next() {
        match arg.as_str() {
            "--ca" => ca = Some(PathBuf::from(flags.value(arg)?)),
            "--sni" => sni = Some(flags.value(arg)?.to_owned()),
            "--pin" => pin = Some(sha256_hex(flags.value(arg)?)?),
            "--send" => send = Some(PathBuf::from(flags.value(arg)?)),
            "--timeout" => silence = seconds(flags.value(arg)?)?,
            flag if flag.starts_with("--") => return Err(Usage(format!("connect: unknown flag {flag:?}"))),
            _ if target.is_none() => target = Some(arg.clone()),
            extra => return Err(Usage(format!("connect: unexpected argument {extra:?}"))),
        }
    }
    let target = target.ok_or_else(|| Usage("connect: HOST:PORT is required".into()))?;
    let (host, port) = host_port(&target)?;
    let ca =
        ca.ok_or_else(|| Usage("connect: --ca FILE is required (the kernel has no trust store)".into()))?;
    Ok(ConnectOptions { target, host, port, ca, sni, pin, send, silence })
}

/// "127.0.0.1:4433", "localhost:4433", "[::1]:4433".
fn host_port(target: &str) -> Result<(String, u16), Usage> {
    let bad = || Usage(format!("connect: {target:?} is not HOST:PORT (e.g. 127.0.0.1:4433)"));
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// "256MiB", "1GiB", "64KiB", "8M" (binary multiples) or a plain number of bytes.
pub fn size(text: &str) -> Result<u64, Usage> {
    let bad = || Usage(format!("--bytes {text:?}: expected a number, optionally with KiB, MiB or GiB"));
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(bad()),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(Usage("--bytes must be more than 0".into()));
    }
    Ok(bytes)
}

fn channels(text: &str) -> Result<u32, Usage> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_CHANNELS).contains(&n) => Ok(n),
        _ => Err(Usage(format!("--channels {text:?}: expected 1 to {MAX_CHANNELS}"))),
    }
}

fn suite(text: &str) -> Result<u32, Usage> {
    match text {
        "aes128" => Ok(WSKTLS_SUITE_AES_128_GCM_SHA256),
        "aes256" => Ok(WSKTLS_SUITE_AES_256_GCM_SHA384),
        "chacha20" => Ok(WSKTLS_SUITE_CHACHA20_POLY1305_SHA256),
        _ => Err(Usage(format!("--suite {text:?}: expected aes128, aes256 or chacha20"))),
    }
}

fn seconds(text: &str) -> Result<Duration, Usage> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(Usage(format!("--timeout {text:?}: expected a whole number of seconds"))),
    }
}

/// 64 hex digits (colons allowed between bytes, as `openssl x509 -fingerprint` prints).
fn sha256_hex(text: &str) -> Result<[u8; 32], Usage> {
    let bad = || Usage(format!("--pin {text:?}: expected a SHA-256 as 64 hex digits"));
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let mut pin = [0u8; 32];
    for (byte, pair) in pin.iter_mut().zip(digits.chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(size("256MiB").ok(), Some(256 << 20));
        assert_eq!(size("1GiB").ok(), Some(1 << 30));
        assert_eq!(size("64KiB").ok(), Some(64 << 10));
        assert_eq!(size("8m").ok(), Some(8 << 20));
        assert_eq!(size("1000").ok(), Some(1000));
        assert!(size("MiB").is_err() && size("12XB").is_err() && size("0").is_err());
        assert!(size("99999999999999GiB").is_err(), "overflow is refused");
    }

    #[test]
    fn targets_are_host_and_port() {
        let split = |t: &str| host_port(t).ok();
        assert_eq!(split("127.0.0.1:4433"), Some(("127.0.0.1".into(), 4433)));
        assert_eq!(split("[::1]:443"), Some(("::1".into(), 443)));
        assert_eq!(split("localhost:1"), Some(("localhost".into(), 1)));
        assert!(split("localhost").is_none() && split(":443").is_none() && split("a:0").is_none());
    }

    #[test]
    fn pins_are_64_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(sha256_hex(&hex).ok(), Some([0xab; 32]));
        assert!(sha256_hex("abcd").is_err() && sha256_hex(&"zz".repeat(32)).is_err());
    }
}
