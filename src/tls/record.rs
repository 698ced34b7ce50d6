//! The TLS 1.3 record layer (RFC 8446 §5) that runs once the handshake is done: one
//! [`Sealer`] for what we send, one [`Opener`] for what we receive, each with its own key
//! and sequence number so the two directions never share a lock.
//!
//! Records are sealed and opened in place in the caller's buffers: a sealed record is
//! `header(5) | ciphertext(plaintext | content type | padding) | tag(16)`.

use core::ops::Range;

use wsktls_crypto::{TAG_LEN, TrafficKey};

use super::TlsError;

/// Bytes of record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// The largest plaintext a record may carry (2^14).
pub const MAX_FRAGMENT: usize = 1 << 14;
/// The largest protected payload a peer may send (2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
/// The largest record on the wire.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT;
/// What sealing adds to a plaintext: header, inner content type, tag. We never pad.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

/// The block both TLS 1.3 AEADs work in: AES-GCM's counter and GHASH blocks, Poly1305's.
const AEAD_BLOCK: usize = 16;

/// The plaintext a full record of at most `record_size` bytes carries: the most whose inner
/// plaintext (the bytes and the content-type byte) is whole AEAD blocks. A partial last
/// block costs ring a second, slower pass (measured: 6% of the send path at 4 KiB records);
/// the price is one more record per ~16,000.
pub const fn full_record_fill(record_size: usize) -> usize {
    let inner = record_size + 1;
    let whole = inner - inner % AEAD_BLOCK;
    if whole == 0 { record_size } else { whole - 1 }
}

/// legacy_record_version of every protected record.
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ContentType {
    ChangeCipherSpec = 20,
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

impl ContentType {
    fn from_inner(byte: u8) -> Option<ContentType> {
        match byte {
            21 => Some(ContentType::Alert),
            22 => Some(ContentType::Handshake),
            23 => Some(ContentType::ApplicationData),
            _ => None,
        }
    }
}

/// The sending direction: key, next sequence number, and how many records the key may
/// still seal before its confidentiality limit.
pub struct Sealer {
    key: TrafficKey,
    sequence: u64,
    limit: u64,
}

impl Sealer {
    /// `limit` is the number of records this suite's keys may protect (the suite's
    /// confidentiality limit, or a lower one for tests).
    pub fn new(key: TrafficKey, sequence: u64, limit: u64) -> Sealer {
        Sealer { key, sequence, limit }
    }

    /// Seals the `len` plaintext bytes at `record[HEADER_LEN..]` as one record of
    /// `content_type`, in place, and returns the record's length on the wire. `record` must
    /// have room for `len + OVERHEAD` bytes and `len` must not exceed MAX_FRAGMENT.
    pub fn seal(
        &mut self,
        content_type: ContentType,
        record: &mut [u8],
        len: usize,
    ) -> Result<usize, TlsError> {
        let total = len + OVERHEAD;
        if len > MAX_FRAGMENT || record.len() < total || self.sequence >= self.limit {
            return Err(TlsError::Internal);
        }
        let ciphertext_len = (len + 1 + TAG_LEN) as u16;
        let (head, body) = record[..total].split_at_mut(HEADER_LEN);
        // Written where it goes and read back from there as the AAD, rather than built on
        // the stack and copied in (that copy stalled on store forwarding every record).
        head[0] = ContentType::ApplicationData as u8;
        head[1..3].copy_from_slice(&LEGACY_VERSION);
        head[3..5].copy_from_slice(&ciphertext_len.to_be_bytes());
        let (inner, tag) = body.split_at_mut(len + 1);
        inner[len] = content_type as u8;
        self.key.seal_in_place(self.sequence, head, inner, tag).map_err(|_| TlsError::Internal)?;
        self.sequence += 1;
        Ok(total)
    }

    /// Records this key may still seal. The channel sends KeyUpdate while at least one
    /// (the KeyUpdate itself) remains.
    pub fn records_left(&self) -> u64 {
        self.limit.saturating_sub(self.sequence)
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Switches to the next traffic key (after sending KeyUpdate): sequence restarts at 0.
    pub fn rekey(&mut self, key: TrafficKey) {
        self.key = key;
        self.sequence = 0;
    }
}

/// One record opened in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub content_type: ContentType,
    /// Where the plaintext now lies in the buffer given to [`Opener::open`].
    pub plaintext: Range<usize>,
    /// Bytes of the buffer the record occupied (header included).
    pub consumed: usize,
}

/// The receiving direction.
pub struct Opener {
    key: TrafficKey,
    sequence: u64,
}

impl Opener {
    pub fn new(key: TrafficKey, sequence: u64) -> Opener {
        Opener { key, sequence }
    }

    /// How many bytes the record at the start of `buf` occupies, once its header is
    /// there; `None` while fewer than HEADER_LEN bytes are. Checks the header, so an
    /// oversized or malformed record is refused before we wait for its body.
    pub fn record_len(buf: &[u8]) -> Result<Option<usize>, TlsError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        // After the handshake only protected records may arrive (RFC 8446 §5): no plaintext
        // alerts, no change_cipher_spec.
        if header[0] != ContentType::ApplicationData as u8 {
            return Err(TlsError::IllegalMessage);
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len > MAX_CIPHERTEXT {
            return Err(TlsError::RecordOverflow); // §5.2
        }
        if len < 1 + TAG_LEN {
            return Err(TlsError::IllegalMessage); // no room for a content type and a tag
        }
        Ok(Some(HEADER_LEN + len))
    }

    /// Opens the record at the start of `buf` in place. `Ok(None)`: the record is not
    /// complete yet. A record that fails authentication is `BadRecordMac`, and the
    /// sequence number does not advance: the connection is dead.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, TlsError> {
        let Some(total) = Self::record_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        let (header, body) = buf[..total].split_at_mut(HEADER_LEN);
        let inner =
            self.key.open_in_place(self.sequence, header, body).map_err(|_| TlsError::BadRecordMac)?;
        self.sequence += 1;
        // §5.4: TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1 bytes.
        if inner.len() > MAX_FRAGMENT + 1 {
            return Err(TlsError::RecordOverflow);
        }
        // Padding is zeros after the content type; a record of nothing but zeros has none.
        let type_at = inner.iter().rposition(|&b| b != 0).ok_or(TlsError::IllegalMessage)?;
        let content_type = ContentType::from_inner(inner[type_at]).ok_or(TlsError::IllegalMessage)?;
        if type_at == 0 && content_type != ContentType::ApplicationData {
            return Err(TlsError::IllegalMessage); // empty handshake or alert fragment
        }
        Ok(Some(Opened { content_type, plaintext: HEADER_LEN..HEADER_LEN + type_at, consumed: total }))
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Switches to the peer's next traffic key (after its KeyUpdate).
    pub fn rekey(&mut self, key: TrafficKey) {
        self.key = key;
        self.sequence = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsktls_crypto::Suite;

    fn pair(suite: Suite) -> (Sealer, Opener) {
        let key = [7u8; 32];
        let key = &key[..if suite == Suite::Aes128Gcm { 16 } else { 32 }];
        let iv = [9u8; 12];
        let seal = TrafficKey::from_raw(suite, key, &iv).unwrap();
        let open = TrafficKey::from_raw(suite, key, &iv).unwrap();
        (Sealer::new(seal, 0, 1 << 20), Opener::new(open, 0))
    }

    fn sealed(sealer: &mut Sealer, ty: ContentType, plaintext: &[u8]) -> alloc::vec::Vec<u8> {
        let mut record = alloc::vec![0u8; plaintext.len() + OVERHEAD];
        record[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
        let n = sealer.seal(ty, &mut record, plaintext.len()).unwrap();
        assert_eq!(n, record.len());
        record
    }

    #[test]
    fn a_sealed_record_opens_to_its_plaintext_in_every_suite() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            let (mut s, mut o) = pair(suite);
            for len in [0, 1, 100, MAX_FRAGMENT] {
                let plaintext: alloc::vec::Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut record = sealed(&mut s, ContentType::ApplicationData, &plaintext);
                let opened = o.open(&mut record).unwrap().unwrap();
                assert_eq!(opened.content_type, ContentType::ApplicationData);
                assert_eq!(&record[opened.plaintext], &plaintext[..]);
            }
            assert_eq!((s.sequence(), o.sequence()), (4, 4));
        }
    }

    #[test]
    fn one_flipped_bit_anywhere_fails_authentication() {
        let (mut s, _) = pair(Suite::Aes128Gcm);
        let record = sealed(&mut s, ContentType::ApplicationData, b"attack at dawn");
        for i in 0..record.len() {
            let (_, mut o) = pair(Suite::Aes128Gcm);
            let mut bad = record.clone();
            bad[i] ^= 1;
            // Never opens: a changed length leaves it incomplete or unauthentic.
            let r = o.open(&mut bad);
            assert!(!matches!(r, Ok(Some(_))), "byte {i}: {r:?}");
        }
    }

    #[test]
    fn a_record_out_of_order_fails_authentication() {
        let (mut s, mut o) = pair(Suite::Chacha20Poly1305);
        let _first = sealed(&mut s, ContentType::ApplicationData, b"one");
        let mut second = sealed(&mut s, ContentType::ApplicationData, b"two");
        assert_eq!(o.open(&mut second), Err(TlsError::BadRecordMac));
    }

    #[test]
    fn padding_is_removed_and_the_inner_type_kept() {
        let (s, mut o) = pair(Suite::Aes256Gcm);
        // A handshake message followed by 10 bytes of zero padding, sealed by hand.
        let mut padded = alloc::vec![0u8; 4 + 1 + 10];
        padded[..4].copy_from_slice(&[24, 0, 0, 1]);
        padded[4] = 22; // inner type, then zeros
        let mut record = alloc::vec![0u8; HEADER_LEN + padded.len() + TAG_LEN];
        let len = (padded.len() + TAG_LEN) as u16;
        record[..HEADER_LEN].copy_from_slice(&[23, 3, 3, (len >> 8) as u8, len as u8]);
        record[HEADER_LEN..HEADER_LEN + padded.len()].copy_from_slice(&padded);
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let (inner, tag) = body.split_at_mut(padded.len());
        s.key.seal_in_place(0, header, inner, tag).unwrap();
        let opened = o.open(&mut record).unwrap().unwrap();
        assert_eq!(opened.content_type, ContentType::Handshake);
        assert_eq!(&record[opened.plaintext], &[24, 0, 0, 1]);
    }

    #[test]
    fn an_inner_plaintext_beyond_2_14_plus_1_is_a_record_overflow_even_when_mostly_padding() {
        let (s, mut o) = pair(Suite::Aes128Gcm);
        // One byte of data, its type, and 2^14 zeros of padding: 2^14 + 2 inner bytes.
        let inner_len = MAX_FRAGMENT + 2;
        let mut record = alloc::vec![0u8; HEADER_LEN + inner_len + TAG_LEN];
        let len = (inner_len + TAG_LEN) as u16;
        record[..HEADER_LEN].copy_from_slice(&[23, 3, 3, (len >> 8) as u8, len as u8]);
        record[HEADER_LEN] = b'x';
        record[HEADER_LEN + 1] = ContentType::ApplicationData as u8;
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let (inner, tag) = body.split_at_mut(inner_len);
        s.key.seal_in_place(0, header, inner, tag).unwrap();
        assert_eq!(o.open(&mut record), Err(TlsError::RecordOverflow));
    }

    #[test]
    fn headers_the_peer_may_not_send_are_refused_before_the_body_arrives() {
        // Oversized length field.
        let len = (MAX_CIPHERTEXT + 1) as u16;
        assert_eq!(
            Opener::record_len(&[23, 3, 3, (len >> 8) as u8, len as u8]),
            Err(TlsError::RecordOverflow)
        );
        // Plaintext alert after the handshake.
        assert_eq!(Opener::record_len(&[21, 3, 3, 0, 2]), Err(TlsError::IllegalMessage));
        // Too short to hold a tag.
        assert_eq!(Opener::record_len(&[23, 3, 3, 0, 16]), Err(TlsError::IllegalMessage));
        assert_eq!(Opener::record_len(&[23, 3, 3]), Ok(None));
        assert_eq!(Opener::record_len(&[23, 3, 3, 0, 17]), Ok(Some(22)));
    }

    #[test]
    fn sealing_stops_at_the_confidentiality_limit() {
        let key = TrafficKey::from_raw(Suite::Aes128Gcm, &[1; 16], &[2; 12]).unwrap();
        let mut s = Sealer::new(key, 0, 2);
        let mut record = [0u8; 64];
        assert!(s.seal(ContentType::ApplicationData, &mut record, 1).is_ok());
        assert_eq!(s.records_left(), 1);
        assert!(s.seal(ContentType::Handshake, &mut record, 1).is_ok());
        assert_eq!(s.seal(ContentType::ApplicationData, &mut record, 1), Err(TlsError::Internal));
        s.rekey(TrafficKey::from_raw(Suite::Aes128Gcm, &[3; 16], &[4; 12]).unwrap());
        assert_eq!((s.sequence(), s.records_left()), (0, 2));
    }

    #[test]
    fn a_full_record_fills_whole_aead_blocks_within_the_record_size() {
        assert_eq!(full_record_fill(MAX_FRAGMENT), MAX_FRAGMENT - 1);
        assert_eq!(full_record_fill(4096), 4095);
        assert_eq!(full_record_fill(1000), 991);
        for size in [1, 15, 16, 17, 256, 1000, 4096, MAX_FRAGMENT] {
            let fill = full_record_fill(size);
            assert!(fill <= size, "{size}");
            assert!(fill + 1 < AEAD_BLOCK || (fill + 1) % AEAD_BLOCK == 0, "{size}: {fill}");
            assert!(size - fill < AEAD_BLOCK, "{size}: {fill} gives away a whole block");
        }
    }
}
