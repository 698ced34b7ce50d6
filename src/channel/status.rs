//! The status a consumer sees for each TLS failure. Schannel's codes where Windows has one
//! (kernel TLS users know them), wsktls's own where it has none. README's status table is
//! this function.

use crate::nt::{
    NTSTATUS, SEC_E_ALGORITHM_MISMATCH, SEC_E_CERT_EXPIRED, SEC_E_CERT_UNKNOWN, SEC_E_ILLEGAL_MESSAGE,
    SEC_E_INTERNAL_ERROR, SEC_E_MESSAGE_ALTERED, SEC_E_UNTRUSTED_ROOT, SEC_E_WRONG_PRINCIPAL,
    STATUS_INVALID_PARAMETER, STATUS_WSKTLS_PEER_ALERT, STATUS_WSKTLS_PIN_MISMATCH, STATUS_WSKTLS_TRUNCATED,
};
use crate::tls::TlsError;

/// TLS alert codes that mean "your certificate or its absence": the server refused our
/// client credentials.
const CERTIFICATE_ALERTS: [u8; 7] = [42, 43, 44, 45, 46, 48, 116];
const HANDSHAKE_FAILURE: u8 = 40;
const INSUFFICIENT_SECURITY: u8 = 71;
const PROTOCOL_VERSION: u8 = 70;

pub(crate) fn status_of(e: TlsError) -> NTSTATUS {
    match e {
        TlsError::NameMismatch => SEC_E_WRONG_PRINCIPAL,
        TlsError::UntrustedIssuer => SEC_E_UNTRUSTED_ROOT,
        TlsError::CertificateExpired => SEC_E_CERT_EXPIRED,
        TlsError::BadCertificate => SEC_E_CERT_UNKNOWN,
        TlsError::PinMismatch => STATUS_WSKTLS_PIN_MISMATCH,
        TlsError::PeerAlert(a) if CERTIFICATE_ALERTS.contains(&a) => SEC_E_CERT_UNKNOWN,
        TlsError::PeerAlert(HANDSHAKE_FAILURE | INSUFFICIENT_SECURITY | PROTOCOL_VERSION) => {
            SEC_E_ALGORITHM_MISMATCH
        }
        TlsError::PeerAlert(_) => STATUS_WSKTLS_PEER_ALERT,
        TlsError::IllegalMessage | TlsError::IllegalParameter | TlsError::RecordOverflow => {
            SEC_E_ILLEGAL_MESSAGE
        }
        TlsError::BadRecordMac => SEC_E_MESSAGE_ALTERED,
        TlsError::Truncated => STATUS_WSKTLS_TRUNCATED,
        TlsError::NoCommonParameters => SEC_E_ALGORITHM_MISMATCH,
        TlsError::BadParameters => STATUS_INVALID_PARAMETER,
        TlsError::Internal => SEC_E_INTERNAL_ERROR,
    }
}
