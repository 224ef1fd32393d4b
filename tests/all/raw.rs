//! Raw components for attacks the SDK cannot express: a core module written in WAT, with the
//! world's exports generated from `wit/policy.wit` (each export's core signature computed by
//! `wit-parser`, the canonical-ABI name mangling of the legacy sync ABI), turned into a
//! component by `wit-component`, exactly as `cargo xtask build-plugins` does for Rust plugins.
//!
//! Every export is `unreachable` unless the attack gives it a body; `cabi_realloc` is a bump
//! allocator from 64 KiB up, so the host can pass strings in.

use std::collections::BTreeMap;

use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::{
    LiftLowerAbi, ManglingAndAbi, Resolve, WasmExport, WasmExportKind, WorldItem, abi::WasmType,
};

fn types(desc: &str, tys: &[WasmType]) -> String {
    if tys.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = tys
        .iter()
        .map(|t| match t {
            WasmType::I32 | WasmType::Pointer | WasmType::Length => "i32",
            WasmType::I64 | WasmType::PointerOrI64 => "i64",
            WasmType::F32 => "f32",
            WasmType::F64 => "f64",
        })
        .collect();
    format!(" ({desc} {})", names.join(" "))
}

/// A component implementing the `policy` world. `items` are extra module fields (memories,
/// data segments, globals; it must define the exported memory, see [`memory`]); `bodies`
/// maps an export's WIT name (`describe`, `on-send`, ...) to its core body.
pub fn component(items: &str, bodies: &BTreeMap<&str, String>) -> Vec<u8> {
    component_of(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/policy.wit"),
        items,
        bodies,
    )
}

/// [`component`] against another version of the world (a `.wit` file).
pub fn component_of(wit: &str, items: &str, bodies: &BTreeMap<&str, String>) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let pkg = resolve.push_file(wit).expect("the WIT file parses");
    let world = resolve.select_world(&[pkg], Some("policy")).expect("world");
    let mangling = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);

    let mut wat = String::from("(module\n");
    // Extra imports go first in a module; an attack passes them as `(import ...)` items.
    for line in items
        .lines()
        .filter(|l| l.trim_start().starts_with("(import"))
    {
        wat.push_str(line);
        wat.push('\n');
    }
    for (_, item) in resolve.worlds[world].exports.iter() {
        let WorldItem::Function(func) = item else {
            continue;
        };
        let sig = resolve.wasm_signature(mangling.export_variant(), func);
        let name = resolve.wasm_export_name(
            mangling,
            WasmExport::Func {
                interface: None,
                func,
                kind: WasmExportKind::Normal,
            },
        );
        let body = bodies
            .get(func.name.as_str())
            .cloned()
            .unwrap_or_else(|| "unreachable".into());
        wat.push_str(&format!(
            "(func (export {name:?}){}{} {body})\n",
            types("param", &sig.params),
            types("result", &sig.results)
        ));
        let post = resolve.wasm_export_name(
            mangling,
            WasmExport::Func {
                interface: None,
                func,
                kind: WasmExportKind::PostReturn,
            },
        );
        wat.push_str(&format!(
            "(func (export {post:?}){})\n",
            types("param", &sig.results)
        ));
    }
    wat.push_str(
        r#"(global $bump (mut i32) (i32.const 0x10000))
(func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
  (local $p i32)
  global.get $bump
  local.get 2 i32.add i32.const 1 i32.sub
  local.get 2 i32.const 1 i32.sub i32.const -1 i32.xor i32.and
  local.set $p
  local.get $p local.get 3 i32.add global.set $bump
  local.get $p)
"#,
    );
    for line in items
        .lines()
        .filter(|l| !l.trim_start().starts_with("(import"))
    {
        wat.push_str(line);
        wat.push('\n');
    }
    wat.push_str(")\n");
    let mut module = wat::parse_str(&wat).expect("attack module is valid WAT");
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8, false)
        .expect("embed the world");
    ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("component")
}

/// The exported memory, `pages` of 64 KiB.
pub fn memory(pages: u32) -> String {
    format!("(memory (export \"memory\") {pages})\n")
}

/// Little-endian bytes of `words`, as a WAT data string.
pub fn words(words: &[u32]) -> String {
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("\\{b:02x}"))
        .collect()
}

/// A module whose `describe` reports a name and version of the given lengths (the bytes are
/// `a`s and `1`s, or zeros past the data) and whose `init` accepts any config: the
/// record sits at 0x100, the name at 0x1000, the version at 0x20000.
pub fn describing(name: &str, version_len: u32, pages: u32) -> Vec<u8> {
    let record = words(&[
        0x1000,
        name.len() as u32,
        0x20000,
        version_len,
        0x400,
        1, // one hook: on-send (enum index 0, the zero byte at 0x400)
    ]);
    let items = format!(
        "{}(data (i32.const 0x100) \"{record}\")\n(data (i32.const 0x1000) {name:?})\n\
         (data (i32.const 0x20000) \"1.0.0\")\n",
        memory(pages)
    );
    let mut bodies = BTreeMap::new();
    bodies.insert("describe", "i32.const 0x100".to_owned());
    // `result<_, config-error>` is returned through a pointer: a zero discriminant is `ok`.
    bodies.insert("init", "i32.const 0x500".to_owned());
    component(&items, &bodies)
}
