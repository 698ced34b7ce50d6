//! Linking wsktls.sys and checking what came out.

use std::path::Path;
use std::process::Command;

use crate::tools::{self, Tools};

/// The modules a kernel driver may import from, and the .def file for each we link with.
const IMPORT_LIBS: [(&str, &str); 3] =
    [("ntoskrnl.exe", "ntoskrnl.def"), ("NETIO.SYS", "netio.def"), ("ksecdd.sys", "ksecdd.def")];

/// What the checks allow: ntoskrnl, the HAL, WSK's provider, and CNG (ksecdd/cng).
pub const ALLOWED_MODULES: [&str; 5] = ["ntoskrnl.exe", "hal.dll", "netio.sys", "ksecdd.sys", "cng.sys"];

/// Links the image. `plant_user_import` adds an import of kernel32.dll on purpose, so the
/// import check can be seen to fail.
pub fn link(
    tools: &Tools,
    root: &Path,
    out: &Path,
    staticlib: &Path,
    image: &Path,
    plant_user_import: bool,
) -> Result<(), String> {
    let libs = out.join("lib");
    std::fs::create_dir_all(&libs).map_err(|e| format!("{}: {e}", libs.display()))?;
    let mut link = Command::new(&tools.lld_link);
    for (_, def) in IMPORT_LIBS {
        link.arg(import_lib(tools, &root.join("src").join("nt").join(def), &libs)?);
    }
    if plant_user_import {
        let def = libs.join("kernel32.def");
        std::fs::write(&def, "LIBRARY kernel32.dll\nEXPORTS\n    GetTickCount\n")
            .map_err(|e| e.to_string())?;
        link.arg(import_lib(tools, &def, &libs)?).arg("/INCLUDE:__imp_GetTickCount");
    }
    link.arg(staticlib)
        .arg(format!("/OUT:{}", image.display()))
        .arg(format!("/MAP:{}", image.with_extension("map").display()))
        .args(["/DRIVER", "/SUBSYSTEM:NATIVE,10.0", "/ENTRY:DriverEntry", "/NODEFAULTLIB", "/MACHINE:X64"])
        .args(["/OPT:REF", "/OPT:ICF", "/RELEASE", "/INTEGRITYCHECK", "/DYNAMICBASE", "/NXCOMPAT"]);
    tools::run(&mut link, "lld-link")
}

/// An import library made from a .def file.
fn import_lib(tools: &Tools, def: &Path, dir: &Path) -> Result<std::path::PathBuf, String> {
    let stem = def.file_stem().and_then(|s| s.to_str()).ok_or("a .def file without a name")?;
    let lib = dir.join(format!("{stem}.lib"));
    let mut cmd = Command::new(&tools.dlltool);
    cmd.args(["-m", "i386:x86-64", "-d"]).arg(def).arg("-l").arg(&lib);
    tools::run(&mut cmd, &format!("llvm-dlltool {}", def.display()))?;
    Ok(lib)
}

/// What the checks found in an image that passed them.
pub struct Report {
    pub size: u64,
    pub imports: usize,
    pub modules: Vec<String>,
}

/// Checks `image`, writing every import to imports.txt in `out`.
pub fn check(tools: &Tools, image: &Path, out: &Path) -> Result<Report, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let read = |flag: &str| {
        let mut cmd = Command::new(&tools.readobj);
        cmd.arg(flag).arg(image);
        tools::output(&mut cmd, &format!("llvm-readobj {flag}"))
    };
    let imports = parse_imports(&read("--coff-imports")?);
    let listing: String = imports.iter().map(|(m, s)| format!("{m}!{s}\n")).collect();
    std::fs::write(out.join("imports.txt"), listing).map_err(|e| format!("imports.txt: {e}"))?;
    check_imports(&imports)?;
    check_headers(&read("--file-headers")?)?;
    check_no_exports(&read("--coff-exports")?)?;
    check_sections(&read("--sections")?)?;
    let map_path = image.with_extension("map");
    let map = std::fs::read_to_string(&map_path).map_err(|e| format!("{}: {e}", map_path.display()))?;
    check_entry_point(&read("--file-headers")?, &map)?;
    let size = std::fs::metadata(image).map_err(|e| e.to_string())?.len();
    let mut modules: Vec<String> = imports.iter().map(|(m, _)| m.clone()).collect();
    modules.dedup();
    Ok(Report { size, imports: imports.len(), modules })
}

/// (module, symbol) for every import, from `llvm-readobj --coff-imports`.
pub fn parse_imports(text: &str) -> Vec<(String, String)> {
    let mut module = String::new();
    let mut imports = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Name: ") {
            module = name.to_string();
        } else if let Some(symbol) = line.strip_prefix("Symbol: ") {
            let symbol = symbol.split_whitespace().next().unwrap_or("").to_string();
            imports.push((module.clone(), symbol));
        }
    }
    imports
}

/// Every import comes from a kernel module on the allowlist.
pub fn check_imports(imports: &[(String, String)]) -> Result<(), String> {
    let bad: Vec<String> = imports
        .iter()
        .filter(|(m, _)| !ALLOWED_MODULES.contains(&m.to_ascii_lowercase().as_str()))
        .map(|(m, s)| format!("{m}!{s}"))
        .collect();
    if imports.is_empty() {
        return Err("the image imports nothing: not the driver".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("imports outside the allowlist ({}): {}", ALLOWED_MODULES.join(", "), bad.join(", ")))
    }
}

/// The value of `key:` in llvm-readobj's output (first occurrence).
fn field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines().map(str::trim).find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// NATIVE subsystem; an executable image, not a DLL.
pub fn check_headers(text: &str) -> Result<(), String> {
    let subsystem = field(text, "Subsystem").unwrap_or("");
    if !subsystem.contains("IMAGE_SUBSYSTEM_NATIVE") {
        return Err(format!("subsystem is {subsystem:?}, not NATIVE"));
    }
    if text.contains("IMAGE_FILE_DLL") {
        return Err("the image is marked as a DLL".into());
    }
    if !text.contains("IMAGE_FILE_EXECUTABLE_IMAGE") {
        return Err("the image is not marked executable".into());
    }
    Ok(())
}

/// No export table: consumers reach wsktls through its device interface.
pub fn check_no_exports(text: &str) -> Result<(), String> {
    let exports: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("Name: ")).collect();
    if exports.is_empty() { Ok(()) } else { Err(format!("unexpected exports: {}", exports.join(", "))) }
}

/// No pageable or discardable code: every code section stays resident (wsktls runs at
/// DISPATCH_LEVEL in its completion routines).
pub fn check_sections(text: &str) -> Result<(), String> {
    let mut name = "";
    let mut bad = Vec::new();
    let mut code = false;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Name: ") {
            name = n.split_whitespace().next().unwrap_or("");
            code = false;
        }
        if line.contains("IMAGE_SCN_CNT_CODE") || line.contains("IMAGE_SCN_MEM_EXECUTE") {
            code = true;
        }
        if code
            && (name.to_ascii_uppercase().starts_with("PAGE") || line.contains("IMAGE_SCN_MEM_DISCARDABLE"))
        {
            bad.push(name.to_string());
        }
    }
    bad.dedup();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("pageable or discardable code sections: {}", bad.join(", ")))
    }
}

/// The header's entry point is DriverEntry's address (from the linker's map).
pub fn check_entry_point(headers: &str, map: &str) -> Result<(), String> {
    let entry = field(headers, "AddressOfEntryPoint").ok_or("no AddressOfEntryPoint")?;
    let entry =
        u64::from_str_radix(entry.trim_start_matches("0x"), 16).map_err(|e| format!("entry point: {e}"))?;
    let base = field(headers, "ImageBase").ok_or("no ImageBase")?;
    let base =
        u64::from_str_radix(base.trim_start_matches("0x"), 16).map_err(|e| format!("image base: {e}"))?;
    // MSVC-style map lines: ` 0001:00000000  DriverEntry  0000000140001000  object`,
    // the third column being the address (Rva+Base).
    let driver_entry = map
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "DriverEntry")?;
            u64::from_str_radix(words.next()?, 16).ok()
        })
        .ok_or("DriverEntry is not in the map")?;
    if driver_entry == base + entry || driver_entry == entry {
        Ok(())
    } else {
        Err(format!("the entry point {:#x} is not DriverEntry ({driver_entry:#x})", base + entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMPORTS: &str = "File: wsktls.sys\nImport {\n  Name: ntoskrnl.exe\n  ImportLookupTableRVA: 0x1\n  \
        Symbol: DbgPrintEx (0)\n  Symbol: IoAllocateIrp (0)\n}\nImport {\n  Name: NETIO.SYS\n  \
        Symbol: WskRegister (0)\n}\nImport {\n  Name: ksecdd.sys\n  Symbol: BCryptGenRandom (0)\n}\n";

    #[test]
    fn kernel_imports_pass_and_are_listed_module_by_module() {
        let imports = parse_imports(IMPORTS);
        assert_eq!(imports.len(), 4);
        assert_eq!(imports[2], ("NETIO.SYS".to_string(), "WskRegister".to_string()));
        assert_eq!(check_imports(&imports), Ok(()));
    }

    #[test]
    fn a_user_mode_import_fails_the_check_and_is_named() {
        for module in ["kernel32.dll", "bcrypt.dll", "advapi32.dll", "VCRUNTIME140.dll"] {
            let text = format!("{IMPORTS}Import {{\n  Name: {module}\n  Symbol: Anything (0)\n}}\n");
            let err = check_imports(&parse_imports(&text)).unwrap_err();
            assert!(err.contains(&format!("{module}!Anything")), "{err}");
        }
        assert!(check_imports(&[]).is_err(), "an image that imports nothing is not the driver");
    }

    #[test]
    fn headers_must_say_native_and_not_dll() {
        let good = "Characteristics [ (0x22)\n IMAGE_FILE_EXECUTABLE_IMAGE (0x2)\n]\nSubsystem: IMAGE_SUBSYSTEM_NATIVE (0x1)\n";
        assert_eq!(check_headers(good), Ok(()));
        assert!(check_headers(&good.replace("NATIVE (0x1)", "WINDOWS_GUI (0x2)")).is_err());
        assert!(check_headers(&format!("{good} IMAGE_FILE_DLL (0x2000)\n")).is_err());
    }

    #[test]
    fn pageable_or_discardable_code_fails_the_check() {
        let good = "Name: .text (2E)\n IMAGE_SCN_CNT_CODE (0x20)\nName: .reloc (2E)\n IMAGE_SCN_MEM_DISCARDABLE (0x2000000)\n";
        assert_eq!(check_sections(good), Ok(()));
        let paged = "Name: PAGE (50)\n IMAGE_SCN_CNT_CODE (0x20)\n IMAGE_SCN_MEM_EXECUTE (0x20000000)\n";
        assert!(check_sections(paged).unwrap_err().contains("PAGE"));
        let init =
            "Name: INIT (49)\n IMAGE_SCN_MEM_EXECUTE (0x20000000)\n IMAGE_SCN_MEM_DISCARDABLE (0x2000000)\n";
        assert!(check_sections(init).is_err());
    }

    #[test]
    fn exports_fail_the_check() {
        assert_eq!(check_no_exports("File: wsktls.sys\nFormat: COFF-x86-64\n"), Ok(()));
        assert!(check_no_exports("Export {\n  Ordinal: 1\n  Name: DriverEntry\n}\n").is_err());
    }

    #[test]
    fn the_entry_point_must_be_driver_entry() {
        let headers = "AddressOfEntryPoint: 0x1000\nImageBase: 0x140000000\n";
        let map = " 0001:00000000       DriverEntry                0000000140001000     wsktls.o\n";
        assert_eq!(check_entry_point(headers, map), Ok(()));
        assert!(check_entry_point(&headers.replace("0x1000", "0x2000"), map).is_err());
        assert!(check_entry_point(headers, " 0001:00000000  Other  0000000140001000 x.o\n").is_err());
    }
}
