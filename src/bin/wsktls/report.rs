//! How the runner writes figures: units, names of what was negotiated, and a one-line JSON
//! object written by hand (flat: strings, numbers and booleans only).

use std::fmt::Write;

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// TLS's name for a protocol version on the wire.
pub fn protocol_name(version: u16) -> String {
    match version {
        0x0304 => "TLS 1.3".into(),
        0 => "none".into(),
        other => format!("unknown ({other:#06x})"),
    }
}

/// The IANA name of a TLS 1.3 suite (RFC 8446 §B.4).
pub fn suite_name(suite: u16) -> &'static str {
    match suite {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0 => "none",
        _ => "unknown",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A JSON object being written, one field at a time, in order.
#[derive(Default)]
pub struct Json {
    text: String,
}

impl Json {
    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        self.string_literal(key);
        self.text.push(':');
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Json {
        self.key(key);
        self.string_literal(value);
        self
    }

    pub fn num(&mut self, key: &str, value: impl Into<f64>) -> &mut Json {
        self.key(key);
        let value = value.into();
        // JSON has no NaN or infinity; whole numbers print without a fraction.
        if !value.is_finite() {
            self.text.push_str("null");
        } else if value.fract() == 0.0 && value.abs() < 9e15 {
            let _ = write!(self.text, "{}", value as i64);
        } else {
            let _ = write!(self.text, "{value:.3}");
        }
        self
    }

    pub fn int(&mut self, key: &str, value: u64) -> &mut Json {
        self.key(key);
        let _ = write!(self.text, "{value}");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Json {
        self.key(key);
        self.text.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn finish(&mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        std::mem::take(&mut self.text)
    }

    fn string_literal(&mut self, s: &str) {
        self.text.push('"');
        for c in s.chars() {
            match c {
                '"' => self.text.push_str("\\\""),
                '\\' => self.text.push_str("\\\\"),
                '\n' => self.text.push_str("\\n"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.text, "\\u{:04x}", c as u32);
                }
                c => self.text.push(c),
            }
        }
        self.text.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn json_is_flat_and_escaped() {
        let text = Json::default().str("a", "x\"y\n").num("b", 1.5).int("c", 7).bool("d", true).finish();
        assert_eq!(text, r#"{"a":"x\"y\n","b":1.500,"c":7,"d":true}"#);
    }
}
