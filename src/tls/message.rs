//! The messages that arrive inside protected records after the handshake: alerts and the
//! post-handshake handshake messages (NewSessionTicket, KeyUpdate), which may be split
//! across records or share one.

use alloc::vec::Vec;

use super::TlsError;

const HANDSHAKE_HEADER_LEN: usize = 4;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// The largest post-handshake message we take, header included. Tickets are a few hundred
/// bytes (rustls, OpenSSL, GnuTLS); a peer that sends more is refused rather than buffered.
pub const MAX_MESSAGE: usize = 8 * 1024;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// A post-handshake message the channel must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum PostHandshake {
    /// The peer switched its sending key; `update_requested`: it asks us to switch ours.
    KeyUpdate { update_requested: bool },
    /// A well-formed session ticket. Resumption is off, so it is counted and dropped.
    NewSessionTicket,
}

/// Reassembles post-handshake messages from the plaintext of Handshake records. A message
/// split across records is rare (rustls, OpenSSL and GnuTLS send each ticket and KeyUpdate
/// in one record), so its buffer is allocated the first time one is, and then kept: an
/// idle channel does not carry 8 KiB for it, and nothing this big sits on a kernel stack.
pub struct HandshakeReader {
    /// The start of a message split across records: empty, or MAX_MESSAGE bytes long.
    partial: Vec<u8>,
    len: usize,
}

impl HandshakeReader {
    pub fn new() -> Result<HandshakeReader, TlsError> {
        Ok(HandshakeReader { partial: Vec::new(), len: 0 })
    }

    /// Holds `rest`, the start of a message the record did not finish.
    fn hold(&mut self, rest: &[u8]) -> Result<(), TlsError> {
        if !rest.is_empty() && self.partial.is_empty() {
            self.partial.try_reserve_exact(MAX_MESSAGE).map_err(|_| TlsError::Internal)?;
            self.partial.resize(MAX_MESSAGE, 0);
        }
        self.partial[..rest.len()].copy_from_slice(rest);
        self.len = rest.len();
        Ok(())
    }

    /// A message has begun and not ended: RFC 8446 §5.1 forbids any other record type
    /// until it does.
    pub fn is_mid_message(&self) -> bool {
        self.len > 0
    }

    /// Feeds one record's plaintext; `on_message` sees every complete message in order. A
    /// KeyUpdate must end its record (RFC 8446 §5.1: handshake messages may not span a key
    /// change), so nothing may follow it.
    pub fn feed(
        &mut self,
        mut fragment: &[u8],
        mut on_message: impl FnMut(PostHandshake) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        // First finish the message held back, header then body.
        while self.len > 0 {
            let want = if self.len < HANDSHAKE_HEADER_LEN {
                HANDSHAKE_HEADER_LEN
            } else {
                HANDSHAKE_HEADER_LEN + body_len(&self.partial[..HANDSHAKE_HEADER_LEN])?
            };
            let take = (want - self.len).min(fragment.len());
            self.partial[self.len..self.len + take].copy_from_slice(&fragment[..take]);
            self.len += take;
            fragment = &fragment[take..];
            if self.len < want {
                return Ok(()); // the record ended first
            }
            if want > HANDSHAKE_HEADER_LEN || body_len(&self.partial[..HANDSHAKE_HEADER_LEN])? == 0 {
                let (kind, body) = (self.partial[0], &self.partial[HANDSHAKE_HEADER_LEN..want]);
                message(kind, body, fragment.is_empty(), &mut on_message)?;
                self.len = 0;
            }
        }
        let rest = parse_messages(fragment, &mut on_message)?;
        self.hold(rest)
    }
}

/// The body length a handshake header announces, refused beyond MAX_MESSAGE.
fn body_len(header: &[u8]) -> Result<usize, TlsError> {
    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    if len > MAX_MESSAGE - HANDSHAKE_HEADER_LEN {
        return Err(TlsError::IllegalMessage);
    }
    Ok(len)
}

/// Parses whole messages from `data` and returns the incomplete tail (shorter than
/// MAX_MESSAGE).
fn parse_messages<'d>(
    mut data: &'d [u8],
    on_message: &mut impl FnMut(PostHandshake) -> Result<(), TlsError>,
) -> Result<&'d [u8], TlsError> {
    while data.len() >= HANDSHAKE_HEADER_LEN {
        let len = body_len(&data[..HANDSHAKE_HEADER_LEN])?;
        let Some((body, after)) = data[HANDSHAKE_HEADER_LEN..].split_at_checked(len) else {
            break;
        };
        message(data[0], body, after.is_empty(), on_message)?;
        data = after;
    }
    Ok(data)
}

/// One whole message; `ends_record`: nothing follows it in its record.
fn message(
    kind: u8,
    body: &[u8],
    ends_record: bool,
    on_message: &mut impl FnMut(PostHandshake) -> Result<(), TlsError>,
) -> Result<(), TlsError> {
    match kind {
        KEY_UPDATE => {
            let update_requested = match body {
                [0] => false,
                [1] => true,
                // RFC 8446 §4.6.3: any other request_update value is illegal_parameter.
                [_] => return Err(TlsError::IllegalParameter),
                _ => return Err(TlsError::IllegalMessage),
            };
            if !ends_record {
                return Err(TlsError::IllegalMessage);
            }
            on_message(PostHandshake::KeyUpdate { update_requested })
        }
        NEW_SESSION_TICKET => {
            check_new_session_ticket(body)?;
            on_message(PostHandshake::NewSessionTicket)
        }
        // We offer no post-handshake authentication; nothing else may come.
        _ => Err(TlsError::IllegalMessage),
    }
}

/// RFC 8446 §4.6.1: lifetime(4) age_add(4) nonce<0..255> ticket<1..2^16-1>
/// extensions<0..2^16-2>, each extension type(2) data<0..2^16-1>, and nothing after.
fn check_new_session_ticket(body: &[u8]) -> Result<(), TlsError> {
    fn take<'b>(b: &mut &'b [u8], n: usize) -> Result<&'b [u8], TlsError> {
        let (head, tail) = b.split_at_checked(n).ok_or(TlsError::IllegalMessage)?;
        *b = tail;
        Ok(head)
    }
    fn vector<'b>(b: &mut &'b [u8], len_bytes: usize) -> Result<&'b [u8], TlsError> {
        let len = take(b, len_bytes)?.iter().fold(0usize, |acc, &x| acc << 8 | x as usize);
        take(b, len)
    }
    let mut b = body;
    take(&mut b, 8)?; // ticket_lifetime, ticket_age_add
    vector(&mut b, 1)?; // ticket_nonce
    if vector(&mut b, 2)?.is_empty() {
        return Err(TlsError::IllegalMessage); // an empty ticket
    }
    let mut extensions = vector(&mut b, 2)?;
    while !extensions.is_empty() {
        take(&mut extensions, 2)?;
        vector(&mut extensions, 2)?;
    }
    if b.is_empty() { Ok(()) } else { Err(TlsError::IllegalMessage) }
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
    use alloc::string::String;
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

    /// A NewSessionTicket: lifetime, age_add, a 2-byte nonce, a 6-byte ticket, one
    /// early_data extension.
    fn ticket() -> Vec<u8> {
        let mut body = vec![0, 0, 0x1c, 0x20, 1, 2, 3, 4, 2, 0xaa, 0xbb, 0, 6];
        body.extend_from_slice(b"ticket");
        body.extend_from_slice(&[0, 8, 0, 42, 0, 4, 0, 0, 0x40, 0]);
        let mut msg = vec![NEW_SESSION_TICKET, 0, 0, body.len() as u8];
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn a_ticket_split_across_three_records_is_reassembled() {
        let msg = ticket();
        let seen =
            collect(&mut HandshakeReader::new().unwrap(), &[&msg[..2], &msg[2..9], &msg[9..]]).unwrap();
        assert_eq!(seen, ["NewSessionTicket"]);
    }

    #[test]
    fn two_messages_in_one_record_are_both_seen() {
        let mut data = ticket();
        data.extend_from_slice(&key_update(true));
        let seen = collect(&mut HandshakeReader::new().unwrap(), &[&data]).unwrap();
        assert_eq!(seen, ["NewSessionTicket", "KeyUpdate { update_requested: true }"]);
    }

    #[test]
    fn a_message_finished_by_a_record_that_starts_another_is_seen_and_the_next_kept() {
        let (a, b) = (ticket(), ticket());
        let mut second = a[5..].to_vec();
        second.extend_from_slice(&b[..3]);
        let mut reader = HandshakeReader::new().unwrap();
        let seen = collect(&mut reader, &[&a[..5], &second]).unwrap();
        assert_eq!(seen, ["NewSessionTicket"]);
        assert!(reader.is_mid_message());
        assert_eq!(collect(&mut reader, &[&b[3..]]).unwrap(), ["NewSessionTicket"]);
        assert!(!reader.is_mid_message());
    }

    #[test]
    fn data_after_a_key_update_in_the_same_record_is_refused() {
        let mut data = key_update(false).to_vec();
        data.extend_from_slice(&ticket());
        assert_eq!(collect(&mut HandshakeReader::new().unwrap(), &[&data]), Err(TlsError::IllegalMessage));
    }

    #[test]
    fn malformed_oversized_or_unexpected_messages_are_refused() {
        let mut truncated_ticket = ticket();
        truncated_ticket[3] -= 1; // the extensions run past the body
        let mut trailing = ticket();
        trailing[3] += 1;
        trailing.push(0); // a byte after the extensions
        let bad: [&[u8]; 5] = [
            &[KEY_UPDATE, 0, 0, 2, 0, 0],      // wrong length
            &[13, 0, 0, 0],                    // CertificateRequest: no post-handshake auth
            &[NEW_SESSION_TICKET, 0, 0x20, 0], // beyond MAX_MESSAGE
            &truncated_ticket[..truncated_ticket.len() - 1],
            &trailing,
        ];
        for data in bad {
            assert_eq!(
                collect(&mut HandshakeReader::new().unwrap(), &[data]),
                Err(TlsError::IllegalMessage),
                "{data:?}"
            );
        }
        // Well formed, but request_update out of range (RFC 8446 §4.6.3).
        let update_two: &[u8] = &[KEY_UPDATE, 0, 0, 1, 2];
        assert_eq!(
            collect(&mut HandshakeReader::new().unwrap(), &[update_two]),
            Err(TlsError::IllegalParameter)
        );
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
