//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`,
//! and a module's split BTF beside it), for the exec program's walk
//! `linux_binprm` → `file` → `inode` → `super_block` and the veth
//! backstop's `sk_buff` → `net_device` → `veth_priv`, whose layouts differ
//! between kernel versions and builds.
//!
//! Only what that needs: the type section is walked to number the types,
//! structs and unions are kept with their members. A module's split BTF
//! numbers its types on from the kernel's and names them from the kernel's
//! strings and then its own. (aya parses BTF too,
//! but keeps members private; btf-rs is LGPL, which this MIT/Apache
//! project does not link.)

use std::{collections::HashMap, path::Path};

use thiserror::Error;

use crate::kernel::{io_err, KernelError};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    Header,
    #[error("BTF data ends inside type {0}")]
    Truncated(u32),
    #[error("unknown BTF kind {kind} at type {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {member} in struct {ty}")]
    NoMember { ty: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: String,
    type_id: u32,
    /// Bits from the start of the enclosing struct.
    bit_offset: u32,
}

struct Type {
    kind: u32,
    /// What a typedef, qualifier or pointer refers to; a struct's size.
    refers_to: u32,
    members: Vec<Member>,
}

/// The parsed types, by id (1-based: id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The type and string sections of BTF `data`.
fn sections(data: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    if data.get(0..2) != Some(&MAGIC.to_le_bytes()[..]) {
        return Err(BtfError::Header);
    }
    let field = |at| u32_at(data, at).ok_or(BtfError::Header);
    let hdr_len = field(4)? as usize;
    let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
    let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
    let section = |off: usize, len: usize| {
        let start = hdr_len.checked_add(off).ok_or(BtfError::Header)?;
        let end = start.checked_add(len).ok_or(BtfError::Header)?;
        data.get(start..end).ok_or(BtfError::Header)
    };
    Ok((section(type_off, type_len)?, section(str_off, str_len)?))
}

/// The NUL-terminated string at `off` of a string section.
fn string_at(strings: &[u8], off: u32) -> String {
    crate::events::until_nul(strings.get(off as usize..).unwrap_or_default())
}

impl Btf {
    /// The kernel's BTF, with the split BTF of each of `modules` that is
    /// loaded as a module with BTF (one built in has its types in the
    /// kernel's).
    pub fn from_sys_fs(modules: &[&str]) -> Result<Btf, KernelError> {
        let root = Path::new("/sys/kernel/btf");
        let read = |path: &Path| std::fs::read(path).map_err(io_err(path));
        let kernel = read(&root.join("vmlinux"))?;
        let mut btf = Btf::parse(&kernel)?;
        for module in modules {
            let path = root.join(module);
            if path.exists() {
                btf.add_split(&kernel, &read(&path)?)?;
            }
        }
        Ok(btf)
    }

    /// Parses little-endian BTF (what the kernel exposes).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let mut btf = Btf {
            types: vec![Type {
                kind: 0,
                refers_to: 0,
                members: Vec::new(),
            }],
            structs: HashMap::new(),
        };
        let (types_data, strings) = sections(data)?;
        btf.add_types(types_data, |off| string_at(strings, off))?;
        Ok(btf)
    }

    /// Adds a module's split BTF, whose base is `base` (the data this was
    /// parsed from).
    pub fn add_split(&mut self, base: &[u8], split: &[u8]) -> Result<(), BtfError> {
        let (_, base_strings) = sections(base)?;
        let (types_data, strings) = sections(split)?;
        let base_len = base_strings.len() as u32;
        self.add_types(types_data, |off| match off.checked_sub(base_len) {
            Some(own) => string_at(strings, own),
            None => string_at(base_strings, off),
        })
    }

    fn add_types(
        &mut self,
        types_data: &[u8],
        string: impl Fn(u32) -> String,
    ) -> Result<(), BtfError> {
        let mut at = 0usize;
        while at < types_data.len() {
            let id = self.types.len() as u32;
            let word = |i: usize| u32_at(types_data, at + 4 * i).ok_or(BtfError::Truncated(id));
            let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let bitfield_offsets = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 => {
                    for m in 0..vlen {
                        let base = at + 12 * m;
                        let read = |i: usize| {
                            u32_at(types_data, base + 4 * i).ok_or(BtfError::Truncated(id))
                        };
                        let offset = read(2)?;
                        members.push(Member {
                            name: string(read(0)?),
                            type_id: read(1)?,
                            bit_offset: if bitfield_offsets {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,
                15 | 19 => 12 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                kind => return Err(BtfError::UnknownKind { kind, id }),
            };
            at += extra;
            if at > types_data.len() {
                return Err(BtfError::Truncated(id));
            }
            let name = string(name_off);
            if kind == KIND_STRUCT && !name.is_empty() {
                self.structs.entry(name.clone()).or_insert(id);
            }
            self.types.push(Type {
                kind,
                refers_to: size_or_type,
                members,
            });
        }
        Ok(())
    }

    /// The byte offset of `member` in struct `ty`, looking into anonymous
    /// struct and union members as C does.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        self.member_bit_offset(ty, member).map(|bits| bits / 8)
    }

    /// The bit offset of `member` in struct `ty` (a bit field's), looking
    /// into anonymous struct and union members as C does.
    pub fn member_bit_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        self.member(ty, member).map(|(bits, _)| bits)
    }

    /// Whether struct `ty` has `member` (directly or in an anonymous part).
    pub fn has_member(&self, ty: &str, member: &str) -> bool {
        self.member_offset(ty, member).is_ok()
    }

    /// Whether `member` of struct `ty` is a pointer (through typedefs and
    /// qualifiers), not the data itself.
    pub fn member_is_pointer(&self, ty: &str, member: &str) -> Result<bool, BtfError> {
        let (_, type_id) = self.member(ty, member)?;
        let kind = self
            .types
            .get(self.resolve(type_id) as usize)
            .map(|t| t.kind);
        Ok(kind == Some(KIND_PTR))
    }

    /// The size in bytes of struct `ty`.
    pub fn struct_size(&self, ty: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(ty)?;
        Ok(self.types[id as usize].refers_to)
    }

    fn struct_id(&self, ty: &str) -> Result<u32, BtfError> {
        self.structs
            .get(ty)
            .copied()
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))
    }

    /// `member` of struct `ty`: its bit offset and type.
    fn member(&self, ty: &str, member: &str) -> Result<(u32, u32), BtfError> {
        self.find(self.struct_id(ty)?, member, 0)
            .ok_or_else(|| BtfError::NoMember {
                ty: ty.to_owned(),
                member: member.to_owned(),
            })
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        let ty = self.types.get(id as usize)?;
        if let Some(m) = ty.members.iter().find(|m| m.name == member) {
            return Some((m.bit_offset, m.type_id));
        }
        if depth > 4 {
            return None;
        }
        for m in ty.members.iter().filter(|m| m.name.is_empty()) {
            let inner = self.resolve(m.type_id);
            if let Some((bits, type_id)) = self.find(inner, member, depth + 1) {
                return Some((m.bit_offset + bits, type_id));
            }
        }
        None
    }

    /// Through typedefs and qualifiers to a struct or union.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].refers_to;
                }
                _ => return id,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct outer { int a; union { int b; int c; };
    /// const int *p; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0p\0";
        let name = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap_or(0)
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (kind 1), 4 bytes, 32 bits.
        push(&[name("int"), 1 << 24, 4, 32]);
        // 2: anonymous union of b and c at 0.
        push(&[0, (5 << 24) | 2, 4, name("b"), 1, 0, name("c"), 1, 0]);
        // 3: struct outer { a at 0; anon union at 32 bits; p at 64 }.
        push(&[
            name("outer"),
            (4 << 24) | 3,
            16,
            name("a"),
            1,
            0,
            0,
            2,
            32,
            name("p"),
            5,
            64,
        ]);
        // 4: const int; 5: a pointer to it.
        push(&[0, KIND_CONST << 24, 1]);
        push(&[0, KIND_PTR << 24, 4]);
        encode(&types, strings)
    }

    /// BTF data of a type section and a string section.
    fn encode(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(types);
        data.extend_from_slice(strings);
        data
    }

    /// A module's split BTF on [`blob`]: `struct veth_priv { int a;
    /// struct outer *peer; }`, its first member named from the base's
    /// strings, the pointer a type of its own to a type of the base.
    fn split_blob() -> Vec<u8> {
        let base_len = b"\0int\0outer\0a\0b\0c\0p\0".len() as u32;
        let strings = b"\0veth_priv\0peer\0";
        let words: [u32; 12] = [
            // 6: struct veth_priv, 16 bytes: a (base string 11) at 0, peer at 64.
            base_len + 1,
            (4 << 24) | 2,
            16,
            11,
            1,
            0,
            base_len + 11,
            7,
            64,
            // 7: a pointer to struct outer (3).
            0,
            KIND_PTR << 24,
            3,
        ];
        let types: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        encode(&types, strings)
    }

    #[test]
    fn a_modules_split_btf_numbers_and_names_its_types_on_from_the_base() {
        let base = blob();
        let mut btf = Btf::parse(&base).unwrap();
        assert!(matches!(
            btf.member_offset("veth_priv", "peer"),
            Err(BtfError::NoStruct(_))
        ));
        btf.add_split(&base, &split_blob()).unwrap();
        assert_eq!(btf.member_offset("veth_priv", "peer"), Ok(8));
        assert_eq!(btf.member_offset("veth_priv", "a"), Ok(0));
        assert_eq!(btf.member_is_pointer("veth_priv", "peer"), Ok(true));
        assert_eq!(btf.member_offset("outer", "c"), Ok(4));
    }

    #[test]
    fn members_direct_and_in_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "c"), Ok(4));
        assert_eq!(btf.member_is_pointer("outer", "p"), Ok(true));
        assert_eq!(btf.member_is_pointer("outer", "a"), Ok(false));
        assert_eq!(btf.struct_size("outer"), Ok(16));
        assert!(matches!(
            btf.member_offset("outer", "d"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("inner", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Btf::parse(b"nope").err(), Some(BtfError::Header));
        let mut cut = blob();
        cut[12] = 200; // type_len beyond the data
        assert!(Btf::parse(&cut).is_err());
    }

    #[test]
    fn this_kernel_has_the_exec_walk() {
        // Every kernel contain runs on has BTF (the loader needs it).
        let btf = Btf::from_sys_fs(&["veth"]).expect("the kernel's BTF");
        for (ty, member) in [
            ("linux_binprm", "file"),
            ("linux_binprm", "filename"),
            ("file", "f_inode"),
            ("inode", "i_sb"),
            ("inode", "i_ino"),
            ("super_block", "s_dev"),
            ("sk_buff", "dev"),
            ("sk_buff", "ip_summed"),
            ("net_device", "dev_addr"),
        ] {
            assert!(btf.member_offset(ty, member).is_ok(), "{ty}.{member}");
        }
    }
}
