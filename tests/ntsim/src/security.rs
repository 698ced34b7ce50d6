//! Device security descriptors, as an INF's SDDL sets them (`D:P(A;;GA;;;SY)...`), and the
//! access check the I/O manager makes before an open from user mode reaches a driver.
//!
//! Only the DACL matters: access-allowed and access-denied ACEs for the well-known SIDs
//! SY, BA, BU, WD, AU and IU. A descriptor without a DACL grants everyone; an empty DACL
//! (`D:P`) grants no one, as in Windows.

/// Who opens a device from user mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A standard user (Users, Authenticated Users, Everyone, Interactive).
    User,
    /// An elevated administrator (also a user).
    Administrators,
    /// LocalSystem, whose token also holds Administrators.
    System,
}

impl Caller {
    /// The SIDs in the caller's token, by SDDL alias.
    fn sids(self) -> &'static [&'static str] {
        match self {
            Caller::User => &["BU", "AU", "WD", "IU"],
            Caller::Administrators => &["BA", "BU", "AU", "WD", "IU"],
            Caller::System => &["SY", "BA", "AU", "WD"],
        }
    }
}

const KNOWN_SIDS: &[&str] = &["SY", "BA", "BU", "WD", "AU", "IU"];
const KNOWN_RIGHTS: &[&str] = &["GA", "GR", "GW", "GX", "FA", "FR", "FW", "FX", "RC", "SD", "WD", "WO"];

#[derive(Clone, Debug)]
struct Ace {
    allow: bool,
    sid: String,
}

/// A parsed descriptor: `None` is a NULL DACL.
#[derive(Clone, Debug)]
pub(crate) struct Descriptor {
    dacl: Option<Vec<Ace>>,
}

impl Descriptor {
    /// Parses the SDDL string; an empty string is a descriptor without a DACL.
    pub(crate) fn parse(sddl: &str) -> Result<Descriptor, String> {
        match dacl_section(sddl) {
            None => Ok(Descriptor { dacl: None }),
            Some(d) if d.starts_with("NO_ACCESS_CONTROL") => Ok(Descriptor { dacl: None }),
            Some(d) => parse_dacl(d).map(|aces| Descriptor { dacl: Some(aces) }),
        }
    }

    /// Whether `caller` gets any access: the first ACE naming one of its SIDs decides.
    pub(crate) fn grants(&self, caller: Caller) -> bool {
        let Some(aces) = &self.dacl else {
            return true;
        };
        let sids = caller.sids();
        aces.iter().find(|a| sids.contains(&a.sid.as_str())).is_some_and(|a| a.allow)
    }
}

/// The text after `D:` up to the next top-level section (`O:`, `G:`, `S:`).
fn dacl_section(sddl: &str) -> Option<&str> {
    let bytes = sddl.as_bytes();
    let mut depth = 0;
    let mut start = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'O' | b'G' | b'D' | b'S' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                if let Some(s) = start {
                    return Some(&sddl[s..i]);
                }
                if b == b'D' {
                    start = Some(i + 2);
                }
            }
            _ => {}
        }
    }
    start.map(|s| &sddl[s..])
}

fn parse_dacl(d: &str) -> Result<Vec<Ace>, String> {
    let (flags, mut rest) = d.split_at(d.find('(').unwrap_or(d.len()));
    if !flags.replace("AI", "").replace("AR", "").replace('P', "").is_empty() {
        return Err(format!("unknown DACL flags {flags:?}"));
    }
    let mut aces = Vec::new();
    while let Some(body) = rest.strip_prefix('(') {
        let end = body.find(')').ok_or("an ACE without ')'")?;
        aces.push(parse_ace(&body[..end])?);
        rest = &body[end + 1..];
    }
    if !rest.is_empty() {
        return Err(format!("trailing text {rest:?}"));
    }
    Ok(aces)
}

fn parse_ace(ace: &str) -> Result<Ace, String> {
    let fields: Vec<&str> = ace.split(';').collect();
    let [kind, _flags, rights, _object, _inherited, sid] = fields[..] else {
        return Err(format!("ACE {ace:?} does not have six fields"));
    };
    let allow = match kind {
        "A" => true,
        "D" => false,
        other => return Err(format!("ACE type {other:?} (ntsim knows A and D)")),
    };
    let known = rights.starts_with("0x")
        || (!rights.is_empty()
            && rights.len() % 2 == 0
            && rights.as_bytes().chunks(2).all(|c| KNOWN_RIGHTS.iter().any(|r| r.as_bytes() == c)));
    if !known {
        return Err(format!("access rights {rights:?}"));
    }
    if !KNOWN_SIDS.contains(&sid) {
        return Err(format!("SID {sid:?} (ntsim knows {KNOWN_SIDS:?})"));
    }
    Ok(Ace { allow, sid: sid.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_administrators_only() {
        let d = Descriptor::parse("D:P(A;;GA;;;SY)(A;;GA;;;BA)").expect("parses");
        assert!(d.grants(Caller::System));
        assert!(d.grants(Caller::Administrators));
        assert!(!d.grants(Caller::User));
    }

    #[test]
    fn no_dacl_grants_everyone_and_an_empty_one_no_one() {
        assert!(Descriptor::parse("").expect("parses").grants(Caller::User));
        assert!(!Descriptor::parse("D:P").expect("parses").grants(Caller::System));
    }

    #[test]
    fn a_deny_ace_before_an_allow_decides() {
        let d = Descriptor::parse("O:BAG:SYD:(D;;GA;;;BU)(A;;GRGW;;;WD)").expect("parses");
        assert!(!d.grants(Caller::User));
        assert!(d.grants(Caller::System));
    }

    #[test]
    fn malformed_sddl_is_refused() {
        assert!(Descriptor::parse("D:P(A;;GA;;SY)").is_err());
        assert!(Descriptor::parse("D:P(X;;GA;;;SY)").is_err());
        assert!(Descriptor::parse("D:P(A;;GA;;;S-1-5-99)").is_err());
    }
}
