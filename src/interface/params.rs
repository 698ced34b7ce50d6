//! Connect's parameters: checked field by field and copied into a [`ChannelConfig`]
//! before Connect returns, so the consumer may free them as soon as it has the status.
//!
//! Each mistake has its own status: a wrong `Size` is STATUS_INVALID_BUFFER_SIZE, a wrong
//! `Version` STATUS_REVISION_MISMATCH, an address of another family STATUS_INVALID_ADDRESS,
//! running out of memory STATUS_INSUFFICIENT_RESOURCES; anything else the consumer got
//! wrong (a missing trust anchor, a bad name, a count without an array, a size out of
//! range) is STATUS_INVALID_PARAMETER.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use wsktls_crypto::{SecretBytes, Suite};

use super::Defaults;
use crate::channel::{ChannelConfig, MAX_SEND_BUDGET, MIN_RECEIVE_BUFFER, MIN_RECORD_SIZE, MIN_SEND_BUDGET};
use crate::nt::{
    AF_INET, AF_INET6, NTSTATUS, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_ADDRESS, STATUS_INVALID_BUFFER_SIZE, STATUS_INVALID_PARAMETER, STATUS_REVISION_MISMATCH,
    WSKTLS_BLOB, WSKTLS_CONNECT_PARAMETERS, WSKTLS_SUITE_AES_128_GCM_SHA256, WSKTLS_SUITE_AES_256_GCM_SHA384,
    WSKTLS_SUITE_CHACHA20_POLY1305_SHA256, WSKTLS_VERSION_1_0,
};
use crate::tls::record::MAX_FRAGMENT;
use crate::tls::{ClientAuth, TlsParams};

/// Limits on what a consumer may hand us, so a wrong count cannot make us read or copy
/// without end.
const MAX_NAME: usize = 253;
const MAX_CERTIFICATES: u32 = 16;
const MAX_CERTIFICATE: u32 = 64 * 1024;
const MAX_KEY: u32 = 16 * 1024;
const MAX_PROTOCOLS: u32 = 16;
const MAX_PROTOCOL: u32 = 255;
const MAX_RECEIVE_BUFFER: u32 = 16 << 20;
const MAX_TIMEOUT_MS: u32 = 10 * 60 * 1000;

const ALL_SUITES: u32 =
    WSKTLS_SUITE_AES_128_GCM_SHA256 | WSKTLS_SUITE_AES_256_GCM_SHA384 | WSKTLS_SUITE_CHACHA20_POLY1305_SHA256;

type Checked<T> = Result<T, NTSTATUS>;

/// Checks and copies `p`.
///
/// # Safety
/// `p` is null or points at a WSKTLS_CONNECT_PARAMETERS whose pointers are null or valid
/// for the lengths beside them (the documented contract; nonpaged if the caller is above
/// APC_LEVEL).
pub(crate) unsafe fn capture(
    p: *const WSKTLS_CONNECT_PARAMETERS,
    defaults: &Defaults,
) -> Checked<ChannelConfig> {
    // SAFETY: null or valid, per the contract.
    let p = unsafe { p.as_ref() }.ok_or(STATUS_INVALID_PARAMETER)?;
    if p.Size as usize != size_of::<WSKTLS_CONNECT_PARAMETERS>() {
        return Err(STATUS_INVALID_BUFFER_SIZE);
    }
    if p.Version != WSKTLS_VERSION_1_0 {
        return Err(STATUS_REVISION_MISMATCH);
    }
    if p.Reserved != 0 || p.Reserved2 != 0 {
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: forwarded contract, field by field.
    let (remote, tls) = unsafe { (address(p.RemoteAddress)?, tls_params(p)?) };
    let mut config = ChannelConfig::new(remote, tls);
    config.record_size =
        or_default(p.RecordSize, MAX_FRAGMENT as u32, MIN_RECORD_SIZE as u32, MAX_FRAGMENT as u32)? as usize;
    config.send_budget = match p.SendBudget {
        0 => None,
        b => Some(within(b, MIN_SEND_BUDGET as u32, MAX_SEND_BUDGET as u32)? as usize),
    };
    config.receive_buffer = or_default(
        p.ReceiveBuffer,
        config.receive_buffer as u32,
        MIN_RECEIVE_BUFFER as u32,
        MAX_RECEIVE_BUFFER,
    )? as usize;
    config.connect_timeout_ms =
        or_default(p.ConnectTimeoutMs, defaults.connect_timeout_ms, 1, MAX_TIMEOUT_MS)?;
    config.handshake_timeout_ms =
        or_default(p.HandshakeTimeoutMs, defaults.handshake_timeout_ms, 1, MAX_TIMEOUT_MS)?;
    Ok(config)
}

fn within(value: u32, min: u32, max: u32) -> Checked<u32> {
    if (min..=max).contains(&value) { Ok(value) } else { Err(STATUS_INVALID_PARAMETER) }
}

/// Zero takes `default`; anything else must be in `min..=max`.
fn or_default(value: u32, default: u32, min: u32, max: u32) -> Checked<u32> {
    if value == 0 { Ok(default) } else { within(value, min, max) }
}

/// # Safety
/// `a` is null or a SOCKADDR_IN / SOCKADDR_IN6 (as its family says).
unsafe fn address(a: *const SOCKADDR) -> Checked<SocketAddr> {
    // SAFETY: per the contract.
    let family = unsafe { a.as_ref() }.ok_or(STATUS_INVALID_PARAMETER)?.sa_family;
    // SAFETY: the family says which structure `a` is.
    let remote = unsafe {
        if family == AF_INET {
            let v4 = &*a.cast::<SOCKADDR_IN>();
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v4.sin_addr), u16::from_be(v4.sin_port)))
        } else if family == AF_INET6 {
            let v6 = &*a.cast::<SOCKADDR_IN6>();
            let ip = Ipv6Addr::from(v6.sin6_addr);
            SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            ))
        } else {
            return Err(STATUS_INVALID_ADDRESS);
        }
    };
    if remote.port() == 0 || remote.ip().is_unspecified() {
        return Err(STATUS_INVALID_ADDRESS);
    }
    Ok(remote)
}

/// # Safety
/// As for [`capture`].
unsafe fn tls_params(p: &WSKTLS_CONNECT_PARAMETERS) -> Checked<TlsParams> {
    // SAFETY: forwarded contract, one field at a time.
    unsafe {
        let name = bytes(&p.ServerName, MAX_NAME as u32)?;
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let trust_anchors = blobs(p.TrustAnchors, p.TrustAnchorCount, MAX_CERTIFICATES, MAX_CERTIFICATE)?;
        if trust_anchors.is_empty() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        Ok(TlsParams {
            server_name: copy_name(name)?,
            trust_anchors,
            pin_sha256: pin(p.PinSha256),
            client_auth: client_auth(p)?,
            alpn: blobs(p.Alpn, p.AlpnCount, MAX_PROTOCOLS, MAX_PROTOCOL)?,
            suites: suites(p.Suites)?,
        })
    }
}

fn copy_name(name: &[u8]) -> Checked<String> {
    let mut s = String::new();
    s.try_reserve_exact(name.len()).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    // ASCII graphic bytes, checked by the caller: each is one char.
    s.extend(name.iter().map(|&b| b as char));
    Ok(s)
}

/// # Safety
/// `pin` is null or 32 readable bytes.
unsafe fn pin(pin: *const u8) -> Option<[u8; 32]> {
    // SAFETY: per the contract.
    (!pin.is_null()).then(|| unsafe { *pin.cast::<[u8; 32]>() })
}

/// # Safety
/// As for [`capture`].
unsafe fn client_auth(p: &WSKTLS_CONNECT_PARAMETERS) -> Checked<Option<ClientAuth>> {
    // SAFETY: forwarded contract.
    let (chain, key) = unsafe {
        (
            blobs(p.ClientChain, p.ClientChainCount, MAX_CERTIFICATES, MAX_CERTIFICATE)?,
            bytes(&p.ClientKey, MAX_KEY)?,
        )
    };
    match (chain.is_empty(), key.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => {
            let mut key_pkcs8 = SecretBytes::new();
            key_pkcs8.extend_from_slice(key).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
            Ok(Some(ClientAuth { chain, key_pkcs8 }))
        }
        _ => Err(STATUS_INVALID_PARAMETER),
    }
}

fn suites(bits: u32) -> Checked<Vec<Suite>> {
    if bits & !ALL_SUITES != 0 {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let mut suites = Vec::new();
    suites.try_reserve_exact(3).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    for (bit, suite) in [
        (WSKTLS_SUITE_AES_128_GCM_SHA256, Suite::Aes128Gcm),
        (WSKTLS_SUITE_AES_256_GCM_SHA384, Suite::Aes256Gcm),
        (WSKTLS_SUITE_CHACHA20_POLY1305_SHA256, Suite::Chacha20Poly1305),
    ] {
        if bits & bit != 0 {
            suites.push(suite);
        }
    }
    Ok(suites)
}

/// The bytes a blob describes: empty for a zero length; a null pointer with a length, or
/// a length over `max`, is STATUS_INVALID_PARAMETER.
///
/// # Safety
/// `blob.Data` is null or valid for `blob.Length` bytes.
unsafe fn bytes(blob: &WSKTLS_BLOB, max: u32) -> Checked<&[u8]> {
    if blob.Reserved != 0 {
        return Err(STATUS_INVALID_PARAMETER);
    }
    match (blob.Length, blob.Data.is_null()) {
        (0, _) => Ok(&[]),
        (_, true) => Err(STATUS_INVALID_PARAMETER),
        // SAFETY: per the contract.
        (len, false) if len <= max => Ok(unsafe { core::slice::from_raw_parts(blob.Data, len as usize) }),
        _ => Err(STATUS_INVALID_PARAMETER),
    }
}

/// Copies of `count` blobs (each non-empty, at most `max_len` bytes) from `array`.
///
/// # Safety
/// `array` is null or valid for `count` blobs, each valid per [`bytes`].
unsafe fn blobs(
    array: *const WSKTLS_BLOB,
    count: u32,
    max_count: u32,
    max_len: u32,
) -> Checked<Vec<Vec<u8>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if array.is_null() || count > max_count {
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: per the contract.
    let array = unsafe { core::slice::from_raw_parts(array, count as usize) };
    let mut out = Vec::new();
    out.try_reserve_exact(array.len()).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    for blob in array {
        // SAFETY: per the contract.
        let data = unsafe { bytes(blob, max_len)? };
        if data.is_empty() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(data.len()).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        copy.extend_from_slice(data);
        out.push(copy);
    }
    Ok(out)
}
