//! Failures in plain words: what failed, the NTSTATUS name when wsktls or ntsim gave one,
//! and what to do about it. Every error the runner reports goes through [`Failure`]; the
//! advice for each status lives here and nowhere else. Nothing here may panic.

use std::fmt;

use wsktls::nt::*;

/// One failure of the runner, ready to print.
#[derive(Debug)]
pub struct Failure {
    /// What failed, as a verb phrase: "handshake with 127.0.0.1:4433", "load wsktls".
    what: String,
    status: Option<NTSTATUS>,
    /// What it means and what to do.
    advice: String,
}

impl Failure {
    /// A failure wsktls, the sample consumer or ntsim reported with `status`.
    pub fn status(what: impl Into<String>, status: NTSTATUS, advice: impl Into<String>) -> Failure {
        Failure { what: what.into(), status: Some(status), advice: advice.into() }
    }

    /// A failure of the runner's own (a file, a child process, a check of the data).
    pub fn plain(what: impl Into<String>, advice: impl Into<String>) -> Failure {
        Failure { what: what.into(), status: None, advice: advice.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            // NTSTATUS's Debug is "NAME (0x........)", or the bare value when unnamed.
            Some(status) => write!(f, "{} failed: {status:?}: {}", self.what, self.advice),
            None => write!(f, "{} failed: {}", self.what, self.advice),
        }
    }
}

/// What a channel was asked to reach, for advice that names it.
pub struct Target<'a> {
    /// HOST:PORT as the user wrote it.
    pub address: &'a str,
    pub server_name: &'a str,
    /// Where the trust anchors came from ("--ca ca.pem", "the demo's CA").
    pub ca: &'a str,
}

/// Whether a failed Connect failed before TLS (the TCP connect) or during the handshake.
pub fn connect_stage(status: NTSTATUS) -> &'static str {
    match status {
        STATUS_CONNECTION_REFUSED
        | STATUS_HOST_UNREACHABLE
        | STATUS_NETWORK_UNREACHABLE
        | STATUS_CONNECTION_ABORTED
        | STATUS_INVALID_ADDRESS => "connect",
        STATUS_IO_TIMEOUT => "connect or handshake",
        STATUS_INVALID_PARAMETER => "connect (parameters)",
        _ => "handshake",
    }
}

/// What a failed Connect means for `target`, and what to do.
pub fn connect_advice(status: NTSTATUS, target: &Target<'_>) -> String {
    let Target { address, server_name, ca } = target;
    match status {
        SEC_E_UNTRUSTED_ROOT => {
            format!("the server's certificate does not chain to the CA in {ca}: pass the CA that issued it")
        }
        SEC_E_WRONG_PRINCIPAL => {
            format!("the certificate is not valid for {server_name}: pass --sni with a name it has")
        }
        SEC_E_CERT_EXPIRED => "the server's certificate has expired or is not valid yet: renew it, or check \
                               this machine's clock"
            .into(),
        SEC_E_CERT_UNKNOWN => "the certificate was refused for another reason (key usage, constraints, a \
                               malformed certificate), or the server wants a client certificate"
            .into(),
        STATUS_WSKTLS_PIN_MISMATCH => "the server's public key does not match --pin: check the pin (the \
                                       SHA-256 of the certificate's SubjectPublicKeyInfo, in hex) or leave \
                                       --pin out"
            .into(),
        SEC_E_ALGORITHM_MISMATCH => "no TLS 1.3 suite, group or version in common: the server must speak \
                                     TLS 1.3 with AES-GCM or ChaCha20-Poly1305 (and --suite, if given, must \
                                     be one it offers)"
            .into(),
        STATUS_CONNECTION_REFUSED => format!(
            "nothing is listening at {address}: start the server, or check \
                                              the port"
        ),
        STATUS_HOST_UNREACHABLE | STATUS_NETWORK_UNREACHABLE => {
            format!("{address} cannot be reached; ntsim connects only to loopback (127.0.0.1, ::1)")
        }
        STATUS_IO_TIMEOUT => format!(
            "{address} did not complete a TLS 1.3 handshake in time (10 s to connect, 10 s to \
             handshake): check that it is a TLS server and that it speaks TLS 1.3"
        ),
        STATUS_INVALID_PARAMETER => format!(
            "wsktls refused the parameters: the trust anchor from {ca} is not an X.509 certificate it \
             can parse (PEM or DER), or {server_name:?} is not a DNS name or IP address"
        ),
        _ => channel_advice(status),
    }
}

/// What a failure of an open channel (send, receive, disconnect) means.
pub fn channel_advice(status: NTSTATUS) -> String {
    match status {
        STATUS_WSKTLS_TRUNCATED => {
            "the server closed TCP without close_notify: what came before may be cut short".into()
        }
        STATUS_WSKTLS_PEER_ALERT => {
            "the server ended the connection with a fatal TLS alert: its log says why".into()
        }
        SEC_E_MESSAGE_ALTERED => "a record failed authentication: something between us and the server \
                                  changed the bytes"
            .into(),
        SEC_E_ILLEGAL_MESSAGE => "the server broke the TLS protocol (a malformed or unexpected message, \
                                  an oversized record): is it a TLS 1.3 server?"
            .into(),
        STATUS_CONNECTION_RESET => "the server reset the connection".into(),
        STATUS_FILE_FORCED_CLOSED => "the channel had already failed, or the runner gave up on a stalled \
                                      transfer and closed the sockets"
            .into(),
        STATUS_INVALID_DEVICE_STATE => "the channel was not in a state that allows this call".into(),
        STATUS_INSUFFICIENT_RESOURCES => "out of (simulated) nonpaged pool".into(),
        SEC_E_INTERNAL_ERROR => {
            "wsktls failed on its own (no randomness, extended state): a bug to report".into()
        }
        _ => "README.md's table of statuses says what this one means".into(),
    }
}
