//! What can go wrong in TLS, as the channel needs to tell it apart. The channel turns each
//! kind into the NTSTATUS a consumer sees; this layer knows nothing of NT.

use rustls::{AlertDescription, CertificateError};

/// A TLS failure. Every variant is fatal to the connection it happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// The certificate is not valid for the server name we asked for.
    NameMismatch,
    /// The chain does not lead to one of the consumer's trust anchors.
    UntrustedIssuer,
    /// The certificate (or one in its chain) has expired or is not valid yet.
    CertificateExpired,
    /// Any other certificate problem: bad encoding, bad signature, wrong usage, an
    /// algorithm or key size we do not accept.
    BadCertificate,
    /// The chain is valid but the server's public key does not hash to the pinned value.
    PinMismatch,
    /// The peer sent a fatal alert (its description code).
    PeerAlert(u8),
    /// The peer broke the protocol: a malformed or unexpected message, an oversized record.
    IllegalMessage,
    /// A field of a well-formed message holds a value the protocol forbids (a KeyUpdate's
    /// request_update other than 0 or 1).
    IllegalParameter,
    /// The peer sent a record longer than TLS 1.3 allows (RFC 8446 §5.2, §5.4).
    RecordOverflow,
    /// A record failed authentication: tampered, reordered, or under the wrong key.
    BadRecordMac,
    /// The transport ended without the peer's close_notify.
    Truncated,
    /// No suite, group or signature scheme in common; or the peer is not TLS 1.3.
    NoCommonParameters,
    /// The consumer's parameters are unusable: no trust anchor, an anchor, certificate or
    /// key that does not parse, an invalid server name.
    BadParameters,
    /// Our side failed: no random bytes, no clock, a buffer we could not allocate, a state
    /// rustls refused.
    Internal,
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        use rustls::Error as E;
        match e {
            E::InvalidCertificate(c) => certificate_error(c),
            E::NoCertificatesPresented => TlsError::BadCertificate,
            E::AlertReceived(a) => TlsError::PeerAlert(u8::from(a)),
            E::DecryptError => TlsError::BadRecordMac,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => TlsError::NoCommonParameters,
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::InvalidMessage(_)
            | E::PeerMisbehaved(_)
            | E::PeerSentOversizedRecord => TlsError::IllegalMessage,
            _ => TlsError::Internal,
        }
    }
}

fn certificate_error(e: CertificateError) -> TlsError {
    use CertificateError as C;
    match e {
        C::NotValidForName | C::NotValidForNameContext { .. } => TlsError::NameMismatch,
        C::UnknownIssuer => TlsError::UntrustedIssuer,
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            TlsError::CertificateExpired
        }
        // Our pinning verifier is the only application check.
        C::ApplicationVerificationFailure => TlsError::PinMismatch,
        _ => TlsError::BadCertificate,
    }
}

impl TlsError {
    /// The alert we send the peer when we fail with this error, if any. Errors the peer
    /// told us about, or that a dead transport caused, get none.
    pub fn alert(self) -> Option<AlertDescription> {
        match self {
            TlsError::NameMismatch | TlsError::BadCertificate | TlsError::PinMismatch => {
                Some(AlertDescription::BadCertificate)
            }
            TlsError::UntrustedIssuer => Some(AlertDescription::UnknownCA),
            TlsError::CertificateExpired => Some(AlertDescription::CertificateExpired),
            TlsError::IllegalMessage => Some(AlertDescription::UnexpectedMessage),
            TlsError::IllegalParameter => Some(AlertDescription::IllegalParameter),
            TlsError::BadRecordMac => Some(AlertDescription::BadRecordMac),
            TlsError::RecordOverflow => Some(AlertDescription::RecordOverflow),
            TlsError::NoCommonParameters => Some(AlertDescription::HandshakeFailure),
            TlsError::Internal => Some(AlertDescription::InternalError),
            TlsError::PeerAlert(_) | TlsError::Truncated | TlsError::BadParameters => None,
        }
    }
}
