//! inf/wsktls.inx, stamped as `cargo xtask kernel` stamps it, read back the way Windows reads
//! it: Manufacturer → models → install section → .Services → service section. Then the
//! stamper's refusals, its build date, and the INF reader itself.

// xtask is a binary crate, so its modules are not a library this test could link: the test
// compiles the INF module itself.
#[path = "../src/inf.rs"]
mod inf;

use std::time::{Duration, UNIX_EPOCH};

use inf::{Inf, Section, fields};

const BUILT_ON: (u32, u32, u32) = (2026, 11, 24);

fn template() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../inf/wsktls.inx");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The driver crate's version: `version` in the [package] table of the workspace's Cargo.toml.
fn driver_crate_version() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let manifest = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let package =
        manifest.split("\n[").find(|table| table.starts_with("package]")).expect("a [package] table");
    let line = package.lines().find(|l| l.trim_start().starts_with("version")).expect("a package version");
    line.split('"').nth(1).expect("a quoted version").to_string()
}

fn stamped_text() -> String {
    inf::stamp(&template(), &driver_crate_version(), BUILT_ON, "amd64").expect("the template stamps")
}

fn stamped() -> Inf {
    inf::parse(&stamped_text()).expect("the stamped INF parses")
}

fn section<'a>(inf: &'a Inf, name: &str) -> &'a Section {
    inf.section(name).unwrap_or_else(|| panic!("no [{name}] section"))
}

fn value<'a>(section: &'a Section, key: &str) -> &'a str {
    section.get(key).unwrap_or_else(|| panic!("no {key} in [{}]", section.name))
}

/// The bare lines of a section (a CopyFiles list, an AddReg section), split into fields.
fn bare_lines(section: &Section) -> Vec<Vec<String>> {
    section.lines.iter().filter(|l| l.key.is_none()).map(|l| fields(&l.value)).collect()
}

/// The models section [Manufacturer] names for NTamd64, as Windows builds its name:
/// `<models>.<decoration>`.
fn models_section(inf: &Inf) -> &Section {
    let manufacturer = section(inf, "Manufacturer");
    assert_eq!(manufacturer.lines.len(), 1, "one manufacturer");
    let entry = fields(&manufacturer.lines[0].value);
    let decoration =
        entry[1..].iter().find(|d| d.to_ascii_lowercase().starts_with("ntamd64")).expect("NTamd64");
    section(inf, &format!("{}.{decoration}", entry[0]))
}

/// The install section Root\wsktls maps to, decorated the way Windows picks it for amd64:
/// `.NTamd64` first, then `.NT`, then none. Returns its name as written.
fn install_section(inf: &Inf) -> String {
    let models = models_section(inf);
    let device =
        models.lines.iter().map(|l| fields(&l.value)).find(|f| f[1..].iter().any(|id| id == "Root\\wsktls"));
    let base = device.expect("a model for Root\\wsktls")[0].clone();
    [".NTamd64", ".NT", ""]
        .iter()
        .find_map(|decoration| inf.section(&format!("{base}{decoration}")))
        .map(|s| s.name.clone())
        .unwrap_or_else(|| panic!("no install section for {base}"))
}

/// The service section wsktls's AddService names, with the AddService flags.
fn service(inf: &Inf) -> (u32, &Section) {
    let services = section(inf, &format!("{}.Services", install_section(inf)));
    let add = fields(&inf.resolve(value(services, "AddService")).unwrap());
    assert_eq!(add[0], "wsktls");
    let flags = u32::from_str_radix(add[1].trim_start_matches("0x"), 16).expect("hex flags");
    (flags, section(inf, &add[2]))
}

fn registry_values(inf: &Inf, holder: &Section) -> Vec<Vec<String>> {
    bare_lines(section(inf, value(holder, "AddReg")))
}

#[test]
fn version_declares_windows_nt_catalog_and_pnp_lockdown() {
    let inf = stamped();
    let version = section(&inf, "Version");
    assert_eq!(inf::unquote(value(version, "Signature")), "$WINDOWS NT$");
    assert_eq!(value(version, "CatalogFile"), "wsktls.cat");
    assert_eq!(value(version, "PnpLockdown"), "1");
    assert_eq!(value(version, "Class"), "System");
    assert_eq!(value(version, "ClassGuid").to_ascii_lowercase(), "{4d36e97d-e325-11ce-bfc1-08002be10318}");
    assert!(!inf.resolve(value(version, "Provider")).unwrap().is_empty());
}

#[test]
fn driver_ver_is_the_build_date_and_the_crate_version_in_four_parts() {
    let inf = stamped();
    let expected = format!("11/24/2026,{}.0", driver_crate_version());
    assert_eq!(value(section(&inf, "Version"), "DriverVer"), expected);
}

#[test]
fn xtask_stamps_its_own_version_which_is_the_drivers() {
    // main.rs passes env!("CARGO_PKG_VERSION") (xtask's) to `stamp`.
    assert_eq!(env!("CARGO_PKG_VERSION"), driver_crate_version());
}

#[test]
fn manufacturer_names_an_ntamd64_models_section_from_windows_10_1709() {
    let inf = stamped();
    assert_eq!(models_section(&inf).name.to_ascii_lowercase(), "wsktls.ntamd64.10.0...16299");
}

#[test]
fn root_wsktls_maps_to_an_install_section_that_exists() {
    assert_eq!(install_section(&stamped()), "Wsktls_Device.NT");
}

#[test]
fn install_section_copies_wsktls_sys_into_the_driver_store() {
    let inf = stamped();
    let install = section(&inf, &install_section(&inf));
    let copied = bare_lines(section(&inf, value(install, "CopyFiles")));
    assert_eq!(copied, [["wsktls.sys"]]);
    assert_eq!(value(section(&inf, "DestinationDirs"), "DefaultDestDir"), "13");
}

#[test]
fn source_disks_files_lists_wsktls_sys_on_a_named_disk() {
    let inf = stamped();
    let disk = fields(value(section(&inf, "SourceDisksFiles"), "wsktls.sys"))[0].clone();
    assert!(section(&inf, "SourceDisksNames").get(&disk).is_some(), "disk {disk} has no name");
}

#[test]
fn wsktls_service_is_the_devices_function_driver() {
    const SPSVCINST_ASSOCSERVICE: u32 = 0x2;
    let inf = stamped();
    let (flags, _) = service(&inf);
    assert_eq!(flags, SPSVCINST_ASSOCSERVICE);
}

#[test]
fn service_is_a_demand_start_kernel_driver_run_from_the_driver_store() {
    let inf = stamped();
    let (_, service) = service(&inf);
    assert_eq!(value(service, "ServiceType"), "1"); // SERVICE_KERNEL_DRIVER
    assert_eq!(value(service, "StartType"), "3"); // SERVICE_DEMAND_START
    assert_eq!(value(service, "ErrorControl"), "1"); // SERVICE_ERROR_NORMAL
    assert_eq!(value(service, "ServiceBinary"), "%13%\\wsktls.sys");
}

#[test]
fn service_parameters_hold_the_default_timeouts_as_dwords() {
    let inf = stamped();
    let (_, service) = service(&inf);
    let values = registry_values(&inf, service);
    // src/channel/config.rs: DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS.
    for name in ["DefaultConnectTimeoutMs", "DefaultHandshakeTimeoutMs"] {
        let entry = values.iter().find(|v| v[2] == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(entry[..2], ["HKR", "Parameters"]);
        let flags = u32::from_str_radix(entry[3].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(flags & 0xFFFF_0001, 0x0001_0001, "{name} is a REG_DWORD");
        assert_eq!(entry[4], "10000");
    }
}

#[test]
fn device_opens_to_system_only_and_checks_its_namespace_too() {
    let inf = stamped();
    let hardware = section(&inf, &format!("{}.HW", install_section(&inf)));
    let values = registry_values(&inf, hardware);
    let security = values.iter().find(|v| v[2] == "Security").expect("a Security value");
    assert_eq!(security[4], "D:P(A;;GA;;;SY)");
    let characteristics = values.iter().find(|v| v[2] == "DeviceCharacteristics").expect("characteristics");
    assert_eq!(characteristics[4], "0x100"); // FILE_DEVICE_SECURE_OPEN
}

#[test]
fn stamped_inf_has_no_placeholder_left() {
    let text = stamped_text();
    let signature = "\"$WINDOWS NT$\"";
    assert_eq!(text.matches(signature).count(), 1);
    assert!(!text.replace(signature, "").contains('$'), "a `$` outside the Signature");
}

#[test]
fn every_string_token_resolves_in_strings() {
    stamped().check_tokens().unwrap();
}

#[test]
fn stamp_refuses_a_version_part_wider_than_16_bits() {
    let refused = inf::stamp(&template(), "70000.0.0", BUILT_ON, "amd64").unwrap_err();
    assert!(refused.contains("70000"), "{refused}");
}

#[test]
fn stamp_refuses_a_pre_release_version() {
    assert!(inf::stamp(&template(), "0.2.0-rc.1", BUILT_ON, "amd64").is_err());
}

#[test]
fn stamp_refuses_a_leftover_placeholder() {
    let template = template().replace("CatalogFile = wsktls.cat", "CatalogFile = $CATALOG$");
    let refused = inf::stamp(&template, "0.1.0", BUILT_ON, "amd64").unwrap_err();
    assert!(refused.contains("$CATALOG$"), "{refused}");
}

#[test]
fn stamp_refuses_a_template_without_a_driver_ver_placeholder() {
    let template = template().replace(inf::DRIVERVER_PLACEHOLDER, "01/01/2020,1.0.0.0");
    assert!(inf::stamp(&template, "0.1.0", BUILT_ON, "amd64").is_err());
}

#[test]
fn stamp_refuses_rusts_name_for_the_architecture() {
    assert!(inf::stamp(&template(), "0.1.0", BUILT_ON, "x86_64").is_err());
}

#[test]
fn stamp_refuses_a_date_that_does_not_exist() {
    assert!(inf::stamp(&template(), "0.1.0", (2026, 2, 29), "amd64").is_err());
    assert!(inf::stamp(&template(), "0.1.0", (2028, 2, 29), "amd64").is_ok());
}

#[test]
fn stamp_refuses_an_unknown_string_token() {
    let template = template().replace("%DiskName%", "%NoSuchString%");
    let refused = inf::stamp(&template, "0.1.0", BUILT_ON, "amd64").unwrap_err();
    assert!(refused.contains("NoSuchString"), "{refused}");
}

#[test]
fn civil_from_days_knows_the_epoch_leap_days_and_century_years() {
    let known = [
        (0, (1970, 1, 1)),
        (59, (1970, 3, 1)),
        (789, (1972, 2, 29)),
        (10_957, (2000, 1, 1)),
        (11_016, (2000, 2, 29)), // divisible by 400: a leap year
        (11_017, (2000, 3, 1)),
        (20_088, (2024, 12, 31)),
        (47_540, (2100, 2, 28)), // divisible by 100: not one
        (47_541, (2100, 3, 1)),
        (2_932_896, (9999, 12, 31)),
    ];
    for (days, date) in known {
        assert_eq!(inf::civil_from_days(days), date, "day {days}");
    }
}

#[test]
fn consecutive_days_walk_the_calendar_without_a_gap_until_9999() {
    let leap = |y: u64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = |y: u64, m: u32| match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let mut expected = (1970, 1, 1);
    for days in 0..=2_932_896 {
        assert_eq!(inf::civil_from_days(days), expected, "day {days}");
        let (y, m, d) = expected;
        expected = match (d < month_days(y, m), m < 12) {
            (true, _) => (y, m, d + 1),
            (false, true) => (y, m + 1, 1),
            (false, false) => (y + 1, 1, 1),
        };
    }
}

#[test]
fn build_date_is_the_clocks_utc_day() {
    let now = UNIX_EPOCH + Duration::from_secs(789 * 86_400 + 86_399);
    assert_eq!(inf::build_date(None, now), Ok((1972, 2, 29)));
}

#[test]
fn build_date_honours_source_date_epoch_over_the_clock() {
    let now = UNIX_EPOCH + Duration::from_secs(789 * 86_400);
    assert_eq!(inf::build_date(Some("1700000000"), now), Ok((2023, 11, 14)));
}

#[test]
fn build_date_refuses_a_malformed_source_date_epoch() {
    for bad in ["", "-1", "+5", "1.5", "yesterday", "99999999999999999999"] {
        assert!(inf::build_date(Some(bad), UNIX_EPOCH).is_err(), "{bad:?}");
    }
}

#[test]
fn build_date_utc_is_a_date_driver_ver_can_hold() {
    let template = template();
    assert!(inf::stamp(&template, "0.1.0", inf::build_date_utc(), "amd64").is_ok());
}

#[test]
fn reader_strips_comments_outside_quotes_only() {
    let inf = inf::parse("[A]\nk = \"x;y\" ; comment\n; whole line\nbare, \"q\"\"t\" ;c\n").unwrap();
    let a = section(&inf, "a");
    assert_eq!(value(a, "K"), "\"x;y\"");
    assert_eq!(a.lines.len(), 2);
    assert_eq!(fields(&a.lines[1].value), ["bare", "q\"t"]);
}

#[test]
fn reader_merges_sections_named_twice_in_any_case() {
    let inf = inf::parse("[Strings]\na = 1\n[other]\n[STRINGS]\nb = 2\n").unwrap();
    assert_eq!(inf.sections.len(), 2);
    assert_eq!(value(section(&inf, "strings"), "b"), "2");
}

#[test]
fn reader_refuses_what_is_not_an_inf() {
    for bad in ["key = value\n", "[Version\n", "[A]\nk = \"open\n", "[A]\n= v\n"] {
        assert!(inf::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn resolve_substitutes_strings_and_leaves_directory_ids() {
    let inf = inf::parse("[Strings]\nName = \"wsk tls\"\n").unwrap();
    assert_eq!(inf.resolve("%name% at %13%\\x.sys, 100%%").unwrap(), "wsk tls at %13%\\x.sys, 100%");
    assert!(inf.resolve("%Missing%").is_err());
    assert!(inf.resolve("%unclosed").is_err());
}
