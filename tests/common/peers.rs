//! Real TLS 1.3 servers for the channel tests to talk to: the test PKI, and launchers for
//! OpenSSL's `s_server`, socat, and GnuTLS's `gnutls-serv` (the in-process rustls server is
//! `echo_peer::Peer`, used directly). Each launcher returns a guard that kills the server's
//! processes when dropped, and the loopback address it listens on; or [`Skip`] when a tool
//! is missing, which becomes a panic when `WSKTLS_REQUIRE_PEERS=1` (CI sets it).
//!
//! Servers listen on 127.0.0.1 only, or inside a network namespace of their own.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use echo_peer::pki::{self, Identity, Pki};

/// With this set to 1, a missing tool fails the test instead of skipping it.
pub const REQUIRE_PEERS: &str = "WSKTLS_REQUIRE_PEERS";

/// How long a server may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Diagnostics kept per process (stderr, socat's log): enough to explain a failure.
const LOG_LIMIT: usize = 1 << 20;

/// The port gnutls-serv uses inside its own network namespace.
const GNUTLS_PORT: u16 = 5556;

/// Why a peer test did not run: a tool it needs is not installed here.
#[derive(Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

/// A TLS 1.3 cipher suite (RFC 8446 §B.4) that every peer here can be held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128GcmSha256,
    Aes256GcmSha384,
    Chacha20Poly1305Sha256,
}

impl Suite {
    pub const ALL: [Suite; 3] =
        [Suite::Aes128GcmSha256, Suite::Aes256GcmSha384, Suite::Chacha20Poly1305Sha256];

    /// The IANA name, which OpenSSL also uses.
    pub fn iana_name(self) -> &'static str {
        match self {
            Suite::Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Suite::Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
            Suite::Chacha20Poly1305Sha256 => "TLS_CHACHA20_POLY1305_SHA256",
        }
    }

    /// The code point on the wire.
    pub fn id(self) -> u16 {
        match self {
            Suite::Aes128GcmSha256 => 0x1301,
            Suite::Aes256GcmSha384 => 0x1302,
            Suite::Chacha20Poly1305Sha256 => 0x1303,
        }
    }

    /// GnuTLS's priority-string name of the suite's AEAD.
    fn gnutls_cipher(self) -> &'static str {
        match self {
            Suite::Aes128GcmSha256 => "AES-128-GCM",
            Suite::Aes256GcmSha384 => "AES-256-GCM",
            Suite::Chacha20Poly1305Sha256 => "CHACHA20-POLY1305",
        }
    }
}

/// The test PKI, generated once per test process into `target/tmp/wsktls-pki-<pid>`.
/// Directories left by earlier processes that are gone are removed on the way.
pub fn test_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_pki_dirs(&root);
        let dir = root.join(format!("{PKI_DIR_PREFIX}{}", std::process::id()));
        pki::generate(&dir).unwrap_or_else(|e| panic!("generating the test PKI in {}: {e}", dir.display()))
    })
}

const PKI_DIR_PREFIX: &str = "wsktls-pki-";

fn remove_stale_pki_dirs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PKI_DIR_PREFIX)) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A server running in processes of its own. Dropping it kills them all.
pub struct PeerProcess {
    addr: SocketAddr,
    name: &'static str,
    /// Each leads a process group of its own (with whatever it forked), killed whole.
    groups: Vec<Child>,
    stdin: Option<ChildStdin>,
    /// The server's stdout, whole: with `OpensslMode::Stdio`, what the client sent.
    output: Captured,
    /// Diagnostics: stderr, and socat's log.
    log: Captured,
    scratch: Option<PathBuf>,
}

impl PeerProcess {
    /// The loopback address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `s_server` in [`OpensslMode::Stdio`] only: sends a TLS 1.3 KeyUpdate to the client
    /// (RFC 8446 §4.6.3), with `update_requested` when `ask_peer_to_update`, which obliges
    /// the client to answer with a KeyUpdate of its own before its next record.
    ///
    /// The mechanism is s_server's stdin command `K\n` (`k\n` for update_not_requested). It
    /// is only a command when those two bytes arrive alone in one read() of stdin (and only
    /// without `-quiet`), so this pauses before and after writing them.
    pub fn request_key_update(&mut self, ask_peer_to_update: bool) -> io::Result<()> {
        const APART: Duration = Duration::from_millis(100);
        thread::sleep(APART);
        self.send(if ask_peer_to_update { b"K\n" } else { b"k\n" })?;
        thread::sleep(APART);
        Ok(())
    }

    /// `s_server` in [`OpensslMode::Stdio`] only: sends `data` to the client.
    ///
    /// s_server reads its stdin in chunks and treats a chunk whose first byte is one of
    /// `Q q r R K k c P S` as a command (`Q`/`q` end the connection, `P` writes plaintext
    /// onto the wire), so data sent this way must not contain those letters.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("{} takes no input", self.name)));
        };
        stdin.write_all(data)?;
        stdin.flush()
    }

    /// Everything the server wrote to stdout so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.contents()
    }

    /// Waits until the server's stdout contains `needle`; false if `timeout` passed first.
    pub fn wait_for_output(&self, needle: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output.contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's diagnostics so far (its stderr; socat's log), for failure messages.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.contents()).into_owned()
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        for child in &mut self.groups {
            // SIGKILL to the whole group: forked socat children and gnutls-serv included.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.scratch {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// What `s_server` does with a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpensslMode {
    /// `-rev`: a line-reversing echo. Each line the client sends (bytes up to and including
    /// `\n`) comes back with its trailing `\r` and `\n` bytes stripped, the rest reversed
    /// byte for byte, and one `\n` appended, as one record: `abc\r\n` → `cba\n`, `\n` → `\n`.
    /// Bytes after the last `\n` wait for one. A line is read in pieces of at most
    /// 16384 bytes (BIO_gets into s_server's 16 KiB buffer), each reversed and answered on
    /// its own, so a line of up to 16383 bytes plus `\n` is the longest that comes back
    /// whole; 16384 bytes plus `\n` comes back as those bytes reversed, `\n`, and an extra
    /// `\n`. Any byte but `\n` may appear in a line (NUL included). The line `CLOSE` ends
    /// the connection: s_server sends close_notify and closes.
    #[default]
    Rev,
    /// Plain s_server: what the client sends goes to stdout ([`PeerProcess::output`], mixed
    /// with s_server's own messages), what is written to stdin goes to the client
    /// ([`PeerProcess::send`]), and [`PeerProcess::request_key_update`] works.
    Stdio,
}

/// How to run `s_server`. Identity defaults to the PKI's ECDSA P-256 server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Openssl<'a> {
    pub mode: OpensslMode,
    pub identity: Option<&'a Identity>,
    /// `-ciphersuites`: the only TLS 1.3 suite offered.
    pub suite: Option<Suite>,
    /// `-Verify 1 -CAfile`: require a client certificate from this CA.
    pub client_ca: Option<&'a Path>,
    /// More `s_server` arguments, e.g. `-msg` (prints every handshake message, KeyUpdates
    /// included, to stdout) or `-num_tickets 0`.
    pub extra: &'a [&'a str],
}

/// `openssl s_server -tls1_3` on 127.0.0.1 (a free port), sending the leaf certificate
/// only, two NewSessionTickets after each handshake (OpenSSL's default), and not asking for
/// a client certificate unless `client_ca` is set. It serves one connection at a time and
/// goes on accepting. Ready when its `ACCEPT 127.0.0.1:<port>` line appears.
///
/// In `-rev` mode every KeyUpdate the client sends costs one second: the read that
/// consumes it returns "retry" without data, and s_server prints `read R BLOCK` and sleeps
/// 1 s before reading again (measured: 1.000 s; `tests/peers.rs`). Tests that send many
/// KeyUpdates should use `Stdio` mode, socat, gnutls-serv or the echo peer.
pub fn openssl_server(pki: &Pki, args: Openssl<'_>) -> Result<PeerProcess, Skip> {
    need(&["openssl"])?;
    let id = args.identity.unwrap_or(&pki.server);
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-accept", "127.0.0.1:0", "-tls1_3"]);
    cmd.arg("-cert").arg(&id.cert).arg("-key").arg(&id.key);
    if let Some(suite) = args.suite {
        cmd.args(["-ciphersuites", suite.iana_name()]);
    }
    if let Some(ca) = args.client_ca {
        cmd.args(["-Verify", "1", "-CAfile"]).arg(ca);
    }
    if args.mode == OpensslMode::Rev {
        cmd.arg("-rev");
    }
    cmd.args(args.extra);
    // Stdio mode: s_server takes EOF on stdin as "quit", so stdin stays an open pipe.
    let stdin = if args.mode == OpensslMode::Stdio { Stdio::piped() } else { Stdio::null() };
    let (output, log) = (Captured::unlimited(), Captured::limited());
    let mut child = start(cmd.stdin(stdin), "openssl s_server", &output, &log);
    let stdin = child.stdin.take();
    let addr =
        wait_ready(&mut child, "openssl s_server", &output, &log, |text| listening_addr(text, "ACCEPT "));
    Ok(PeerProcess { addr, name: "openssl s_server", groups: vec![child], stdin, output, log, scratch: None })
}

/// `socat OPENSSL-LISTEN:0,bind=127.0.0.1,fork,... PIPE`: a true byte echo (any bytes, any
/// lengths), TLS 1.3 only (`openssl-min-proto-version=TLS1.3`), one process per connection.
/// It sends the PKI's server chain (leaf, CA), answers in records of up to 16 KiB (its
/// `-b` buffer), sends OpenSSL's two NewSessionTickets, and answers the client's
/// close_notify with its own. socat 1.7.4 has no option for TLS 1.3 suites (its `cipher=` is OpenSSL's
/// pre-1.3 cipher list), so a `suite` is forced through an OpenSSL configuration file
/// (`OPENSSL_CONF`, `Ciphersuites = ...`) that only this socat reads. Ready when its
/// `listening on AF=2 127.0.0.1:<port>` log line appears.
pub fn socat_server(pki: &Pki, suite: Option<Suite>) -> Result<PeerProcess, Skip> {
    need(&["socat"])?;
    let scratch = scratch_dir("socat");
    let mut cmd = Command::new("socat");
    if let Some(suite) = suite {
        let conf = scratch.join("openssl.cnf");
        fs::write(&conf, openssl_conf(suite)).expect("write socat's OpenSSL configuration");
        cmd.env("OPENSSL_CONF", conf);
    }
    let listen = format!(
        "OPENSSL-LISTEN:0,bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0,openssl-min-proto-version=TLS1.3",
        pki.server.chain.display(),
        pki.server.key.display()
    );
    // `-b 4096`, not more: with PIPE, socat writes what it read from TLS into a pipe that
    // it alone drains, with a blocking write once poll() says "writable" (one free page).
    // A 16 KiB write into a nearly full pipe then blocks socat for good: seen here as a
    // stall after ~8 MiB of a fast echo. Writes of one page always fit.
    cmd.args(["-d", "-d", "-b", "4096"]).arg(listen).arg("PIPE").stdin(Stdio::null());
    let (output, log) = (Captured::limited(), Captured::limited());
    let mut child = start(&mut cmd, "socat", &output, &log);
    let addr = wait_ready(&mut child, "socat", &log, &log, |text| listening_addr(text, "listening on AF=2 "));
    Ok(PeerProcess {
        addr,
        name: "socat",
        groups: vec![child],
        stdin: None,
        output,
        log,
        scratch: Some(scratch),
    })
}

/// `gnutls-serv --echo`, TLS 1.3 only (`--priority NORMAL:-VERS-ALL:+VERS-TLS1.3`, plus
/// `:-CIPHER-ALL:+<AEAD>` for a `suite`), sending the PKI's server chain and no
/// CertificateRequest (`--disable-client-cert`).
///
/// gnutls-serv listens on every address, so it runs in a network namespace of its own
/// (`unshare -n`, only `lo` up, port 5556 there), and two socats bridge it into ours:
/// 127.0.0.1:<free port> → a Unix socket in a scratch directory → 127.0.0.1:5556 inside.
///
/// What `--echo` does (GnuTLS 3.7.9, `src/serv.c`; checked in `tests/peers.rs`): it appends
/// what it receives to a buffer until the buffer holds a `\n`, then sends the whole buffer
/// back (bytes after that `\n` included) and starts again; it does not read while it
/// writes. With `--crlf` (given here) the bytes come back unchanged (without it a final
/// `\r\n` comes back as `\n`). It is C-string handling: a NUL hides every later `\n`
/// (strchr stops at it), so after a NUL nothing is ever echoed again on that connection.
/// A buffer that starts with `**REHANDSHAKE**` is a command: under TLS 1.3 the server
/// sends a KeyUpdate with update_requested and answers `Successfully executed command\n`
/// instead of an echo (`**REAUTH**` and `**HEARTBEAT**` are commands too). So echo data
/// must have no NUL and no `*`, and end with `\n`. There is no line limit (64 KiB lines
/// are tested), but each received record rescans the whole buffer for `\n` (quadratic), so
/// keep lines short: 4 to 16 KiB per line moves 4 MiB in well under a second.
/// Every connection stops being served 30 to 40 s after it was accepted, busy or not
/// (serv.c's inactivity check uses the accept time; measured: fine at 30 s, gone at 35 s):
/// a transfer through one connection must finish sooner.
pub fn gnutls_server(pki: &Pki, suite: Option<Suite>) -> Result<PeerProcess, Skip> {
    need(&["gnutls-serv", "socat", "unshare", "ip"])?;
    let unshare: &[&str] = if is_root() { &["-n"] } else { &["-r", "-n"] };
    let probe = Command::new("unshare").args(unshare).arg("true").stderr(Stdio::piped()).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return skip(format!(
                "cannot create a network namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return skip(format!("cannot run unshare: {e}")),
    }
    let scratch = scratch_dir("gnutls");
    let socket = scratch.join("gnutls.sock");
    let mut priority = String::from("NORMAL:-VERS-ALL:+VERS-TLS1.3");
    if let Some(suite) = suite {
        priority += &format!(":-CIPHER-ALL:+{}", suite.gnutls_cipher());
    }
    // Inside the namespace: lo up, gnutls-serv (its stderr repeats every request: dropped),
    // wait until it listens, then the Unix-socket end of the bridge.
    let script = format!(
        "ip link set lo up || exit 1\n\
         gnutls-serv --echo --crlf --disable-client-cert --port {GNUTLS_PORT} \
           --x509certfile='{chain}' --x509keyfile='{key}' --priority='{priority}' >/dev/null 2>&1 &\n\
         i=0\n\
         until grep -q ':{port_hex:04X} [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do\n\
           i=$((i + 1)); [ $i -lt 500 ] || {{ echo 'gnutls-serv did not listen' >&2; exit 1; }}\n\
           kill -0 $! || {{ echo 'gnutls-serv exited' >&2; exit 1; }}\n\
           sleep 0.02\n\
         done\n\
         exec socat UNIX-LISTEN:'{socket}',fork TCP:127.0.0.1:{GNUTLS_PORT}\n",
        chain = pki.server.chain.display(),
        key = pki.server.key.display(),
        port_hex = GNUTLS_PORT,
        socket = socket.display(),
    );
    let (output, log) = (Captured::limited(), Captured::limited());
    let mut inner = Command::new("unshare");
    inner.args(unshare).args(["sh", "-c", &script]).stdin(Stdio::null());
    let mut inside = start(&mut inner, "gnutls-serv namespace", &output, &log);
    wait_ready(&mut inside, "gnutls-serv namespace", &log, &log, |_| socket.exists().then_some(()));

    let mut outer = Command::new("socat");
    outer
        .args(["-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork"])
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .stdin(Stdio::null());
    let mut bridge = start(&mut outer, "socat bridge", &output, &log);
    let addr = wait_ready(&mut bridge, "socat bridge", &log, &log, |text| {
        listening_addr(text, "listening on AF=2 ")
    });
    Ok(PeerProcess {
        addr,
        name: "gnutls-serv",
        groups: vec![bridge, inside],
        stdin: None,
        output,
        log,
        scratch: Some(scratch),
    })
}

/// An OpenSSL configuration that allows TLS 1.3 with `suite` only.
fn openssl_conf(suite: Suite) -> String {
    format!(
        "openssl_conf = openssl_init\n\
         [openssl_init]\nssl_conf = ssl_sect\n\
         [ssl_sect]\nsystem_default = system_default_sect\n\
         [system_default_sect]\nMinProtocol = TLSv1.3\nCiphersuites = {}\n",
        suite.iana_name()
    )
}

/// Output captured from a process by a thread that keeps its pipe drained.
#[derive(Clone)]
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Captured {
    fn unlimited() -> Captured {
        Captured { bytes: Arc::default(), limit: usize::MAX }
    }

    fn limited() -> Captured {
        Captured { bytes: Arc::default(), limit: LOG_LIMIT }
    }

    /// Reads `from` to its end on a thread of its own; past the limit, bytes are dropped.
    fn drain(&self, mut from: impl Read + Send + 'static) {
        let this = self.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let mut bytes = this.bytes.lock().unwrap_or_else(PoisonError::into_inner);
                let room = this.limit.saturating_sub(bytes.len()).min(n);
                bytes.extend_from_slice(&buf[..room]);
            }
        });
    }

    fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn contains(&self, needle: &[u8]) -> bool {
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        needle.is_empty() || bytes.windows(needle.len()).any(|w| w == needle)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

/// Starts `cmd` as the leader of a new process group, its stdout into `output` and its
/// stderr into `log`.
fn start(cmd: &mut Command, what: &str, output: &Captured, log: &Captured) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    if let Some(stdout) = child.stdout.take() {
        output.drain(stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        log.drain(stderr);
    }
    child
}

/// Waits until `ready` finds what it looks for in `watched`. A server that exits or takes
/// too long is a broken harness: panics with its log (killing its group first).
fn wait_ready<T>(
    child: &mut Child,
    what: &str,
    watched: &Captured,
    log: &Captured,
    ready: impl Fn(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(found) = ready(&watched.text()) {
            return found;
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
            thread::sleep(Duration::from_millis(50));
            let why =
                exited.map_or("did not start listening in time".to_string(), |s| format!("exited ({s})"));
            panic!("{what} {why}; its log:\n{}", log.text());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The address after `prefix` on a line of `text`, when it is a loopback one.
fn listening_addr(text: &str, prefix: &str) -> Option<SocketAddr> {
    let at = text.find(prefix)? + prefix.len();
    let addr: SocketAddr = text[at..].split_whitespace().next()?.parse().ok()?;
    assert!(addr.ip().is_loopback(), "a test peer listens on {addr}, not on loopback");
    Some(addr)
}

/// `Err(Skip)` naming the first of `tools` not on PATH; a panic under WSKTLS_REQUIRE_PEERS=1.
fn need(tools: &[&str]) -> Result<(), Skip> {
    match tools.iter().find(|tool| !on_path(tool)) {
        Some(missing) => skip(format!("{missing} is not installed")),
        None => Ok(()),
    }
}

fn skip<T>(why: String) -> Result<T, Skip> {
    if std::env::var(REQUIRE_PEERS).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_PEERS}=1, but {why}");
    }
    Err(Skip(why))
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
}

/// A fresh directory for one peer's files, removed when the peer is dropped.
fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wsktls-{what}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
