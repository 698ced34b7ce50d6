//! The messages that arrive inside protected records after the handshake: alerts and the
//! post-handshake handshake messages (NewSessionTicket, KeyUpdate), which may be split
//! across records or share one.

use alloc::vec::Vec;

use super::TlsError;

const HANDSHAKE_HEADER_LEN: usize = 4;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// The largest post-handshake message we reassemble. Tickets are a few hundred bytes;
/// anything near this is hostile.
const MAX_MESSAGE: usize = 1 << 16;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// A post-handshake message the channel must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum PostHandshake<'a> {
    /// The peer switched its sending key; `update_requested`: it asks us to switch ours.
    KeyUpdate { update_requested: bool },
    /// A session ticket (the message body), for rustls to check and file.
    NewSessionTicket(&'a [u8]),
}

/// Reassembles handshake messages from the plaintext of Handshake records.
#[derive(Default)]
pub struct HandshakeReader {
    /// A message split across records, kept until its last fragment arrives.
    partial: Vec<u8>,
}

impl HandshakeReader {
    /// Feeds one record's plaintext; `on_message` sees every complete message in order. A
    /// KeyUpdate must end its record (RFC 8446 §5.1: handshake messages may not span a key
    /// change), so nothing may follow it.
    pub fn feed(
        &mut self,
        fragment: &[u8],
        mut on_message: impl FnMut(PostHandshake<'_>) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        if self.partial.is_empty() {
            let rest = parse_messages(fragment, &mut on_message)?;
            return self.keep(rest);
        }
        if self.partial.len() + fragment.len() > MAX_MESSAGE + HANDSHAKE_HEADER_LEN {
            return Err(TlsError::IllegalMessage);
        }
        self.partial.try_reserve(fragment.len()).map_err(|_| TlsError::Internal)?;
        self.partial.extend_from_slice(fragment);
        let joined = core::mem::take(&mut self.partial);
        let rest = parse_messages(&joined, &mut on_message)?;
        self.keep(rest)
    }

    fn keep(&mut self, rest: &[u8]) -> Result<(), TlsError> {
        self.partial.clear();
        self.partial.try_reserve(rest.len()).map_err(|_| TlsError::Internal)?;
        self.partial.extend_from_slice(rest);
        Ok(())
    }
}

/// Parses whole messages from `data` and returns the incomplete tail.
fn parse_messages<'d>(
    mut data: &'d [u8],
    on_message: &mut impl FnMut(PostHandshake<'_>) -> Result<(), TlsError>,
) -> Result<&'d [u8], TlsError> {
    while let [kind, a, b, c, rest @ ..] = data {
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if len > MAX_MESSAGE {
            return Err(TlsError::IllegalMessage);
        }
        let Some((body, after)) = rest.split_at_checked(len) else {
            break;
        };
        match *kind {
            KEY_UPDATE => {
                let update_requested = match body {
                    [0] => false,
                    [1] => true,
                    _ => return Err(TlsError::IllegalMessage),
                };
                if !after.is_empty() {
                    return Err(TlsError::IllegalMessage);
                }
                on_message(PostHandshake::KeyUpdate { update_requested })?;
            }
            NEW_SESSION_TICKET => on_message(PostHandshake::NewSessionTicket(body))?,
            // We offer no post-handshake authentication; nothing else may come.
            _ => return Err(TlsError::IllegalMessage),
        }
        data = after;
    }
    Ok(data)
}

/// What an alert record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// close_notify: the peer sends no more data.
    CloseNotify,
    /// user_canceled: a warning that precedes close_notify; nothing to do.
    Ignored,
}

/// Reads an alert record's plaintext. In TLS 1.3 every alert other than close_notify and
/// user_canceled is fatal whatever its level says.
pub fn read_alert(plaintext: &[u8]) -> Result<Alert, TlsError> {
    match *plaintext {
        [_, CLOSE_NOTIFY] => Ok(Alert::CloseNotify),
        [_, USER_CANCELED] => Ok(Alert::Ignored),
        [_, description] => Err(TlsError::PeerAlert(description)),
        _ => Err(TlsError::IllegalMessage),
    }
}

/// The plaintext of an alert we send.
pub fn alert(description: rustls::AlertDescription) -> [u8; 2] {
    let description = u8::from(description);
    let level = if description == CLOSE_NOTIFY { ALERT_WARNING } else { ALERT_FATAL };
    [level, description]
}

/// The plaintext of a KeyUpdate message.
pub fn key_update(update_requested: bool) -> [u8; 5] {
    [KEY_UPDATE, 0, 0, 1, update_requested as u8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn collect(reader: &mut HandshakeReader, fragments: &[&[u8]]) -> Result<Vec<String>, TlsError> {
        let mut seen = Vec::new();
        for f in fragments {
            reader.feed(f, |m| {
                seen.push(alloc::format!("{m:?}"));
                Ok(())
            })?;
        }
        Ok(seen)
    }
    use alloc::string::String;

    #[test]
    fn a_ticket_split_across_three_records_is_reassembled() {
        let mut msg = vec![NEW_SESSION_TICKET, 0, 0, 6];
        msg.extend_from_slice(b"ticket");
        let seen = collect(&mut HandshakeReader::default(), &[&msg[..2], &msg[2..5], &msg[5..]]).unwrap();
        assert_eq!(seen, ["NewSessionTicket([116, 105, 99, 107, 101, 116])"]);
    }

    #[test]
    fn two_messages_in_one_record_are_both_seen() {
        let mut data = vec![NEW_SESSION_TICKET, 0, 0, 1, 9];
        data.extend_from_slice(&key_update(true));
        let seen = collect(&mut HandshakeReader::default(), &[&data]).unwrap();
        assert_eq!(seen, ["NewSessionTicket([9])", "KeyUpdate { update_requested: true }"]);
    }

    #[test]
    fn data_after_a_key_update_in_the_same_record_is_refused() {
        let mut data = key_update(false).to_vec();
        data.extend_from_slice(&[NEW_SESSION_TICKET, 0, 0, 0]);
        assert_eq!(collect(&mut HandshakeReader::default(), &[&data]), Err(TlsError::IllegalMessage));
    }

    #[test]
    fn malformed_or_unexpected_messages_are_refused() {
        let bad: [&[u8]; 4] = [
            &[KEY_UPDATE, 0, 0, 1, 2],         // update_requested out of range
            &[KEY_UPDATE, 0, 0, 2, 0, 0],      // wrong length
            &[13, 0, 0, 0],                    // CertificateRequest: no post-handshake auth
            &[NEW_SESSION_TICKET, 0x7f, 0, 0], // far beyond any ticket
        ];
        for data in bad {
            assert_eq!(
                collect(&mut HandshakeReader::default(), &[data]),
                Err(TlsError::IllegalMessage),
                "{data:?}"
            );
        }
    }

    #[test]
    fn alerts_are_read_as_tls13_says() {
        assert_eq!(read_alert(&[1, 0]), Ok(Alert::CloseNotify));
        assert_eq!(read_alert(&[1, 90]), Ok(Alert::Ignored));
        // A "warning" other than these is fatal in TLS 1.3.
        assert_eq!(read_alert(&[1, 42]), Err(TlsError::PeerAlert(42)));
        assert_eq!(read_alert(&[2, 20]), Err(TlsError::PeerAlert(20)));
        assert_eq!(read_alert(&[2, 20, 0]), Err(TlsError::IllegalMessage));
        assert_eq!(alert(rustls::AlertDescription::CloseNotify), [1, 0]);
        assert_eq!(alert(rustls::AlertDescription::BadRecordMac), [2, 20]);
    }
}
