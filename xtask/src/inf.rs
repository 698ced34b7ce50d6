//! The INF: stamping inf/wsktls.inx into target/kernel/wsktls.inf, as the WDK's stampinf
//! would (DriverVer from the package version and the build date, the platform in the NT$ARCH$
//! decorations), and a small reader of INF text for checking the result.
//!
//! It never writes files and never guesses: a version, date or architecture Windows would
//! reject, or a template placeholder nobody fills, is an error, not an INF.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where the template wants `mm/dd/yyyy,w.x.y.z`: the value of [Version] DriverVer.
pub const DRIVERVER_PLACEHOLDER: &str = "$DRIVERVER$";
/// Where the template wants the platform: `NT$ARCH$` becomes `NTamd64`.
pub const ARCH_PLACEHOLDER: &str = "$ARCH$";
/// The platform extensions INF decorations know (`NTamd64`, ...). Rust's `x86_64` is not one.
const ARCHITECTURES: [&str; 4] = ["x86", "amd64", "arm", "arm64"];
/// `$Chicago$` is a [Version] Signature, not a placeholder (`$Windows NT$` has a space, so it
/// never looks like one).
const SIGNATURE_NOT_PLACEHOLDER: &str = "$Chicago$";

/// Turns the .inx `template` into the INF for `version` (the crate version, `a.b.c` or
/// `a.b.c.d`; DriverVer gets four parts, each at most 65535), built on `date`
/// (year, month, day; UTC) for `arch` (`amd64`, `arm64`, ...).
///
/// The template must hold [`DRIVERVER_PLACEHOLDER`] exactly once, as [Version] DriverVer, and
/// no placeholder but that one and [`ARCH_PLACEHOLDER`]. The result must read back as an INF
/// whose every `%string%` token is in [Strings].
pub fn stamp(template: &str, version: &str, date: (u32, u32, u32), arch: &str) -> Result<String, String> {
    let driver_ver = format!("{},{}", driver_date(date)?, driver_version(version)?);
    if !ARCHITECTURES.contains(&arch) {
        return Err(format!("unknown INF architecture {arch:?}: expected one of {ARCHITECTURES:?}"));
    }
    let places = template.matches(DRIVERVER_PLACEHOLDER).count();
    if places != 1 {
        return Err(format!(
            "the template holds {DRIVERVER_PLACEHOLDER} {places} times; DriverVer needs it once"
        ));
    }
    let stamped = template.replace(DRIVERVER_PLACEHOLDER, &driver_ver).replace(ARCH_PLACEHOLDER, arch);
    if let Some(left) = leftover_placeholder(&stamped) {
        return Err(format!("the template holds {left}, which nothing stamps"));
    }

    let inf = parse(&stamped)?;
    let stamped_ver = inf.section("Version").and_then(|version| version.get("DriverVer"));
    if stamped_ver != Some(driver_ver.as_str()) {
        return Err(format!("{DRIVERVER_PLACEHOLDER} is not the value of [Version] DriverVer"));
    }
    inf.check_tokens()?;
    Ok(stamped)
}

/// DriverVer's date: `mm/dd/yyyy`, for a date that exists in a four-digit year.
fn driver_date((year, month, day): (u32, u32, u32)) -> Result<String, String> {
    let real = (1000..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=days_in(year, month)).contains(&day);
    if !real {
        return Err(format!("{year:04}-{month:02}-{day:02} is not a date DriverVer can hold"));
    }
    Ok(format!("{month:02}/{day:02}/{year:04}"))
}

fn days_in(year: u32, month: u32) -> u32 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// DriverVer's version: `w.x.y.z`, each a 16-bit number; a three-part crate version gets `.0`.
fn driver_version(version: &str) -> Result<String, String> {
    if version.contains(['-', '+']) {
        return Err(format!("version {version:?}: DriverVer has no pre-release or build part"));
    }
    let mut parts = version
        .split('.')
        .map(|part| match part.parse::<u16>() {
            Ok(n) if part.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("version {version:?}: {part:?} is not a number from 0 to {}", u16::MAX)),
        })
        .collect::<Result<Vec<u16>, String>>()?;
    match parts.len() {
        3 => parts.push(0),
        4 => {}
        _ => return Err(format!("version {version:?}: DriverVer wants three or four parts")),
    }
    Ok(parts.iter().map(u16::to_string).collect::<Vec<_>>().join("."))
}

/// The first `$NAME$` left in `text` (letters, digits, underscores between the dollars).
fn leftover_placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        let after = &rest[start + 1..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('$') {
            let found = &rest[start..start + name_len + 2];
            if !found.eq_ignore_ascii_case(SIGNATURE_NOT_PLACEHOLDER) {
                return Some(found);
            }
        }
        rest = after;
    }
    None
}

/// Today's date in UTC, (year, month, day), for DriverVer; `SOURCE_DATE_EPOCH` (seconds since
/// 1970, reproducible-builds.org) replaces the clock when set.
///
/// # Panics
/// When `SOURCE_DATE_EPOCH` is set but is not a count of seconds (the specification asks a
/// build to fail then, not to fall back to the clock), or the clock is before 1970.
pub fn build_date_utc() -> (u32, u32, u32) {
    let pinned = std::env::var_os("SOURCE_DATE_EPOCH").map(|v| v.to_string_lossy().into_owned());
    build_date(pinned.as_deref(), SystemTime::now()).unwrap_or_else(|e| panic!("{e}"))
}

/// [`build_date_utc`] with its inputs given: the `SOURCE_DATE_EPOCH` value, if any, and now.
pub fn build_date(source_date_epoch: Option<&str>, now: SystemTime) -> Result<(u32, u32, u32), String> {
    let seconds = match source_date_epoch {
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("SOURCE_DATE_EPOCH={text:?} is not a count of seconds since 1970"))?,
        None => now.duration_since(UNIX_EPOCH).map_err(|_| "the clock is before 1970".to_string())?.as_secs(),
    };
    let (year, month, day) = civil_from_days(seconds / SECONDS_PER_DAY);
    let year = u32::try_from(year)
        .map_err(|_| format!("{seconds} s after 1970 is past any year DriverVer holds"))?;
    Ok((year, month, day))
}

const SECONDS_PER_DAY: u64 = 86_400;

/// The proleptic Gregorian date (year, month, day) `days` after 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`, on unsigned days: count from 0000-03-01 so that the
/// leap day ends the year, split into 400-year eras (146097 days each, the same in every
/// era), then years of the era, then the day of a March-based year, whose months have
/// lengths 31 30 31 30 31 31 30 31 30 31 31 28/29 — which `(5 * day + 2) / 153` inverts.
pub fn civil_from_days(days: u64) -> (u64, u32, u32) {
    const DAYS_0000_03_01_TO_1970: u64 = 719_468;
    const DAYS_PER_ERA: u64 = 146_097;
    let z = days + DAYS_0000_03_01_TO_1970;
    let era = z / DAYS_PER_ERA;
    let day_of_era = z % DAYS_PER_ERA; // 0..=146096
    // 0..=399: the era's leap days taken out (one per 1460 days, none per 36524, one per 146096).
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365
    let march_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// An INF file, read: its sections in file order (sections named twice are merged, as
/// SetupAPI merges them), each with its lines in order.
pub struct Inf {
    pub sections: Vec<Section>,
}

/// A `[name]` section. Names and keys compare ignoring ASCII case, as Windows compares them.
pub struct Section {
    pub name: String,
    pub lines: Vec<Line>,
}

/// One line of a section, comment removed: `key = value`, or a bare value (the file list of a
/// CopyFiles section, an AddReg line). Values keep their quotes: see [`fields`].
pub struct Line {
    pub key: Option<String>,
    pub value: String,
}

/// Reads INF text: `[section]` headers, `key = value` and bare lines, `;` comments outside
/// double quotes (where `""` is a quote). No line continuations. A line outside any section, an
/// unclosed `[` or an unclosed quote is an error that names its line.
pub fn parse(text: &str) -> Result<Inf, String> {
    let mut inf = Inf { sections: Vec::new() };
    let mut current: Option<usize> = None;
    for (index, raw) in text.lines().enumerate() {
        let at = |what: &str| format!("INF line {}: {what}", index + 1);
        let line = strip_comment(raw).ok_or_else(|| at("unclosed quote"))?.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header.strip_suffix(']').ok_or_else(|| at("section header without `]`"))?.trim();
            if name.is_empty() {
                return Err(at("section without a name"));
            }
            current = Some(match inf.sections.iter().position(|s| s.name.eq_ignore_ascii_case(name)) {
                Some(existing) => existing,
                None => {
                    inf.sections.push(Section { name: name.to_string(), lines: Vec::new() });
                    inf.sections.len() - 1
                }
            });
            continue;
        }
        let section = current.ok_or_else(|| at("line outside any section"))?;
        let parsed = match find_unquoted(line, '=') {
            Some(eq) => {
                Line { key: Some(line[..eq].trim().to_string()), value: line[eq + 1..].trim().to_string() }
            }
            None => Line { key: None, value: line.to_string() },
        };
        if parsed.key.as_deref() == Some("") {
            return Err(at("`=` without a key"));
        }
        inf.sections[section].lines.push(parsed);
    }
    Ok(inf)
}

impl Inf {
    /// The section called `name`, ignoring case.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// `value` with every `%key%` replaced by its [Strings] value (unquoted), `%%` by `%`, and
    /// numeric tokens (`%13%`, directory ids) left as they are. An unknown key is an error.
    pub fn resolve(&self, value: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = value;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('%').ok_or_else(|| format!("{value:?}: `%` without its closing `%`"))?;
            let token = &after[..end];
            if token.is_empty() {
                out.push('%');
            } else if token.bytes().all(|b| b.is_ascii_digit()) {
                out.push_str(&rest[start..start + end + 2]);
            } else {
                let strings = self.section("Strings");
                let found = strings
                    .and_then(|s| s.get(token))
                    .ok_or_else(|| format!("%{token}% is not in [Strings]"))?;
                out.push_str(&unquote(found));
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Every key and value outside [Strings] resolves ([`Inf::resolve`]).
    pub fn check_tokens(&self) -> Result<(), String> {
        let used = self.sections.iter().filter(|s| !s.name.eq_ignore_ascii_case("Strings"));
        for section in used {
            for line in &section.lines {
                let text = line.key.iter().chain([&line.value]);
                for part in text {
                    self.resolve(part).map_err(|e| format!("[{}]: {e}", section.name))?;
                }
            }
        }
        Ok(())
    }
}

impl Section {
    /// The value of the first `key = value` line, ignoring the key's case.
    pub fn get(&self, key: &str) -> Option<&str> {
        let line =
            self.lines.iter().find(|line| line.key.as_deref().is_some_and(|k| k.eq_ignore_ascii_case(key)));
        line.map(|line| line.value.as_str())
    }
}

/// A value's comma-separated fields, each trimmed and unquoted: `HKR,,Security,,"D:P(A;;GA;;;SY)"`
/// gives `["HKR", "", "Security", "", "D:P(A;;GA;;;SY)"]`.
// The INF tests read AddService, AddReg and SourceDisksFiles lines with it; xtask does not.
#[allow(dead_code)]
pub fn fields(value: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = value;
    while let Some(comma) = find_unquoted(rest, ',') {
        fields.push(unquote(rest[..comma].trim()));
        rest = &rest[comma + 1..];
    }
    fields.push(unquote(rest.trim()));
    fields
}

/// `text` without its enclosing double quotes, `""` inside read as `"`; unquoted text as is.
pub fn unquote(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => text.to_string(),
    }
}

/// `line` up to its first `;` outside quotes; `None` if a quote is left open.
fn strip_comment(line: &str) -> Option<&str> {
    let end = find_unquoted(line, ';').unwrap_or(line.len());
    let quotes = line[..end].bytes().filter(|&b| b == b'"').count();
    (quotes % 2 == 0).then_some(&line[..end])
}

/// Byte index of the first `wanted` outside double quotes (`""` closes and reopens a quote,
/// so it needs no case of its own).
fn find_unquoted(text: &str, wanted: char) -> Option<usize> {
    let mut quoted = false;
    for (index, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == wanted && !quoted => return Some(index),
            _ => {}
        }
    }
    None
}
