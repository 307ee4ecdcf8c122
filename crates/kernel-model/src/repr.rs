//! Between the model's plain entries and the kernel's `#[repr(C)]` keys and
//! values, both ways. Every entry the loader writes goes through here, so
//! what cannot be encoded is what the loader refuses.

use contain_common as kern;
use thiserror::Error;

use crate::state::{
    CgroupEntry, DestPrefix, FileId, KernelState, PortPrefix, ProcessKey, ProcessMatch, Verdict,
    VethSource,
};

/// A key of an LPM trie as the kernel takes it: how many leading bits of
/// `data` must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmKey<K> {
    pub prefix_len: u32,
    pub data: K,
}

/// An entry the kernel's maps cannot hold as given.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("policy id {0} is out of range (1..{max})", max = kern::MAX_POLICIES)]
    PolicyId(u32),
    #[error("prefix length {0} is longer than 128 bits")]
    PrefixLen(u8),
    #[error("port prefix of {0} bits is longer than 16")]
    PortBits(u8),
    #[error("address has bits set beyond its /{0} prefix; send the network address")]
    NotCanonical(u8),
    #[error("port {port:#06x} has bits set beyond its {bits}-bit prefix")]
    PortNotCanonical { port: u16, bits: u8 },
    #[error("unknown process kind {0} in the kernel map")]
    ProcessKind(u32),
    #[error("veth source address on interface index 0 (no interface has it)")]
    VethIfindex,
}

fn check_policy(policy_id: u32) -> Result<(), EncodeError> {
    if policy_id == kern::UNKNOWN_POLICY_ID || policy_id >= kern::MAX_POLICIES {
        return Err(EncodeError::PolicyId(policy_id));
    }
    Ok(())
}

pub fn veth_source_key(k: &VethSource) -> Result<kern::VethAddrKey, EncodeError> {
    if k.ifindex == 0 {
        return Err(EncodeError::VethIfindex);
    }
    Ok(kern::VethAddrKey {
        ifindex: k.ifindex,
        _pad: 0,
        addr: k.addr,
    })
}

pub fn veth_source_back(k: &kern::VethAddrKey) -> VethSource {
    VethSource {
        ifindex: k.ifindex,
        addr: k.addr,
    }
}

pub fn cgroup_value(v: &CgroupEntry) -> Result<kern::CgroupPolicy, EncodeError> {
    // A container no policy selects is unrestricted and has no policy, and
    // a ruleless entry has no rules: both count under policy 0, with the
    // unknown cgroups.
    if v.policy_id != kern::UNKNOWN_POLICY_ID {
        check_policy(v.policy_id)?;
    }
    let mut flags = 0;
    if v.audit {
        flags |= kern::CGROUP_AUDIT;
    }
    if v.unrestricted {
        flags |= kern::CGROUP_UNRESTRICTED;
    }
    if v.forwarded_dns {
        flags |= kern::CGROUP_FORWARDED_DNS;
    }
    Ok(kern::CgroupPolicy {
        policy_id: v.policy_id,
        flags,
    })
}

pub fn cgroup_entry(v: &kern::CgroupPolicy) -> CgroupEntry {
    CgroupEntry {
        policy_id: v.policy_id,
        audit: v.flags & kern::CGROUP_AUDIT != 0,
        unrestricted: v.flags & kern::CGROUP_UNRESTRICTED != 0,
        forwarded_dns: v.flags & kern::CGROUP_FORWARDED_DNS != 0,
    }
}

/// Whether a process entry can be keyed (its file's hash needs the
/// loader's key, its policy id does not).
pub fn check_process_key(k: &ProcessKey) -> Result<(), EncodeError> {
    check_policy(k.policy_id)
}

/// The kernel's key of a process class entry. A file is keyed by its exe
/// id, the hash under the loader's per-boot `exe_key` that the exec program
/// computes too.
pub fn process_key(k: &ProcessKey, exe_key: [u64; 2]) -> Result<kern::ProcessKey, EncodeError> {
    check_policy(k.policy_id)?;
    let (kind, ident) = match k.process {
        ProcessMatch::File(f) => (kern::PROCESS_BY_FILE, kern::file_id(exe_key, &stamp(&f))),
        ProcessMatch::Comm(h) => (kern::PROCESS_BY_COMM, h),
    };
    Ok(kern::ProcessKey {
        policy_id: k.policy_id,
        kind,
        ident,
    })
}

/// The kernel's value of a process class entry: the class, and the file
/// its key stands for (which the hash alone does not give back).
pub fn process_value(k: &ProcessKey, class: u32) -> kern::ProcessClass {
    kern::ProcessClass {
        class,
        _pad: 0,
        file: match k.process {
            ProcessMatch::File(f) => stamp(&f),
            ProcessMatch::Comm(_) => kern::FileStamp::default(),
        },
    }
}

pub fn process_key_back(
    k: &kern::ProcessKey,
    v: &kern::ProcessClass,
) -> Result<ProcessKey, EncodeError> {
    let process = match k.kind {
        kern::PROCESS_BY_FILE => ProcessMatch::File(FileId {
            dev: v.file.dev,
            ino: v.file.ino,
            ctime_sec: v.file.ctime_sec,
            ctime_nsec: v.file.ctime_nsec,
        }),
        kern::PROCESS_BY_COMM => ProcessMatch::Comm(k.ident),
        other => return Err(EncodeError::ProcessKind(other)),
    };
    Ok(ProcessKey {
        policy_id: k.policy_id,
        process,
    })
}

fn stamp(f: &FileId) -> kern::FileStamp {
    kern::FileStamp {
        ino: f.ino,
        ctime_sec: f.ctime_sec,
        dev: f.dev,
        ctime_nsec: f.ctime_nsec,
    }
}

/// Zero the bits of `bytes` past the first `bits`.
fn masked<const N: usize>(bytes: [u8; N], bits: usize) -> [u8; N] {
    let mut out = bytes;
    for (i, b) in out.iter_mut().enumerate() {
        let start = i * 8;
        if start >= bits {
            *b = 0;
        } else if start + 8 > bits {
            *b &= 0xffu8 << (8 - (bits - start));
        }
    }
    out
}

/// Whether a destination entry goes to the exact-host hash map rather
/// than the prefix trie.
pub fn dest_is_host(k: &DestPrefix) -> bool {
    kern::dest_is_host(k.prefix_len.into())
}

/// Whether a port entry goes to the exact-port hash map rather than the
/// prefix trie.
pub fn port_is_exact(k: &PortPrefix) -> bool {
    kern::port_is_exact(k.port_bits.into())
}

pub fn dest_key(k: &DestPrefix) -> Result<LpmKey<kern::DestKey>, EncodeError> {
    check_policy(k.policy_id)?;
    if k.prefix_len > 128 {
        return Err(EncodeError::PrefixLen(k.prefix_len));
    }
    // The kernel's trie treats keys equal on their prefix as one entry;
    // only canonical keys keep this side's view identical to the kernel's.
    if masked(k.addr, k.prefix_len as usize) != k.addr {
        return Err(EncodeError::NotCanonical(k.prefix_len));
    }
    Ok(LpmKey {
        prefix_len: kern::DEST_KEY_FIXED_BITS + k.prefix_len as u32,
        data: kern::DestKey {
            policy_id: k.policy_id,
            class: k.class,
            addr: k.addr,
        },
    })
}

/// A destination entry read back: from the trie with its key's length, or
/// from the host map as `DEST_KEY_FIXED_BITS + 128`.
pub fn dest_key_back(k: &LpmKey<kern::DestKey>) -> DestPrefix {
    DestPrefix {
        policy_id: k.data.policy_id,
        class: k.data.class,
        addr: k.data.addr,
        prefix_len: k.prefix_len.saturating_sub(kern::DEST_KEY_FIXED_BITS) as u8,
    }
}

pub fn port_key(k: &PortPrefix) -> Result<LpmKey<kern::PortKey>, EncodeError> {
    if k.port_bits > 16 {
        return Err(EncodeError::PortBits(k.port_bits));
    }
    let port = k.port.to_be_bytes();
    if masked(port, k.port_bits as usize) != port {
        return Err(EncodeError::PortNotCanonical {
            port: k.port,
            bits: k.port_bits,
        });
    }
    Ok(LpmKey {
        prefix_len: kern::PORT_KEY_FIXED_BITS + k.port_bits as u32,
        data: kern::PortKey {
            ruleset: k.ruleset,
            proto: k.proto,
            port,
            _pad: 0,
        },
    })
}

/// A port entry read back: from the trie with its key's length, or from
/// the exact map as `PORT_KEY_FIXED_BITS + 16`.
pub fn port_key_back(k: &LpmKey<kern::PortKey>) -> PortPrefix {
    PortPrefix {
        ruleset: k.data.ruleset,
        proto: k.data.proto,
        port: u16::from_be_bytes(k.data.port),
        port_bits: k.prefix_len.saturating_sub(kern::PORT_KEY_FIXED_BITS) as u8,
    }
}

/// `Config::process_classes` for a kernel state: 1 while it holds any
/// process entry (the decision looks process classes up only then).
pub fn process_classes(state: &KernelState) -> u8 {
    u8::from(!state.processes.is_empty())
}

pub fn verdict(v: Verdict) -> kern::Verdict {
    match v {
        Verdict::Deny => kern::Verdict::Deny,
        Verdict::Allow => kern::Verdict::Allow,
        Verdict::Audit => kern::Verdict::Audit,
    }
}

pub fn verdict_back(v: u8) -> Verdict {
    match kern::Verdict::from_u8(v) {
        Some(kern::Verdict::Allow) => Verdict::Allow,
        Some(kern::Verdict::Audit) => Verdict::Audit,
        _ => Verdict::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        kern::v4_mapped(a)
    }

    #[test]
    fn ipv4_cidr_becomes_mapped_prefix() {
        let k = DestPrefix {
            policy_id: 3,
            class: 1,
            addr: v4([10, 0, 0, 0]),
            prefix_len: 96 + 8,
        };
        let enc = dest_key(&k).unwrap();
        assert_eq!(enc.prefix_len, 64 + 104);
        assert_eq!(enc.data.addr[10..12], [0xff, 0xff]);
        assert_eq!(dest_key_back(&enc), k);
    }

    #[test]
    fn non_canonical_prefixes_are_refused() {
        let k = DestPrefix {
            policy_id: 3,
            class: 0,
            addr: v4([10, 1, 0, 0]),
            prefix_len: 96 + 8,
        };
        assert!(matches!(dest_key(&k), Err(EncodeError::NotCanonical(104))));
        let p = PortPrefix {
            ruleset: 1,
            proto: 6,
            port: 1025,
            port_bits: 6,
        };
        assert!(port_key(&p).is_err());
    }

    #[test]
    fn port_prefix_is_big_endian() {
        // 1024..=2047 is 0b00000100_00000000 with a 6-bit prefix.
        let p = PortPrefix {
            ruleset: 9,
            proto: 6,
            port: 1024,
            port_bits: 6,
        };
        let enc = port_key(&p).unwrap();
        assert_eq!(enc.data.port, [0x04, 0x00]);
        assert_eq!(enc.prefix_len, 40 + 6);
        assert_eq!(port_key_back(&enc), p);
    }

    #[test]
    fn policy_zero_and_too_large_are_refused() {
        let k = |policy_id| ProcessKey {
            policy_id,
            process: ProcessMatch::Comm(1),
        };
        let key = [1, 2];
        assert!(process_key(&k(0), key).is_err());
        assert!(process_key(&k(kern::MAX_POLICIES), key).is_err());
        let ok = process_key(&k(7), key).unwrap();
        assert_eq!(
            process_key_back(&ok, &process_value(&k(7), 3)).unwrap(),
            k(7)
        );
    }

    #[test]
    fn file_entries_are_keyed_by_the_kernels_exe_id_and_read_back_whole() {
        let file = FileId {
            dev: (8 << 20) | 1,
            ino: 42,
            ctime_sec: 1_700_000_000,
            ctime_nsec: 5,
        };
        let k = ProcessKey {
            policy_id: 3,
            process: ProcessMatch::File(file),
        };
        let key = [7, 9];
        let encoded = process_key(&k, key).unwrap();
        assert_eq!(encoded.kind, kern::PROCESS_BY_FILE);
        assert_eq!(encoded.ident, kern::file_id(key, &stamp(&file)));
        // Another boot's key gives another id: nothing to precompute.
        assert_ne!(process_key(&k, [7, 10]).unwrap().ident, encoded.ident);
        let value = process_value(&k, 4);
        assert_eq!(value.class, 4);
        assert_eq!(process_key_back(&encoded, &value).unwrap(), k);
    }

    #[test]
    fn unrestricted_and_ruleless_cgroups_need_no_policy() {
        let free = CgroupEntry {
            policy_id: 0,
            audit: false,
            unrestricted: true,
            forwarded_dns: false,
        };
        assert_eq!(cgroup_entry(&cgroup_value(&free).unwrap()), free);
        for audit in [false, true] {
            let ruleless = CgroupEntry::ruleless(audit);
            assert!(ruleless.is_ruleless());
            assert_eq!(cgroup_entry(&cgroup_value(&ruleless).unwrap()), ruleless);
        }
        let beyond = CgroupEntry::enforced(kern::MAX_POLICIES);
        assert!(cgroup_value(&beyond).is_err());
    }

    #[test]
    fn cgroup_flags_round_trip() {
        for flags in 0..8u8 {
            let e = CgroupEntry {
                policy_id: 5,
                audit: flags & 1 != 0,
                unrestricted: flags & 2 != 0,
                forwarded_dns: flags & 4 != 0,
            };
            assert_eq!(cgroup_entry(&cgroup_value(&e).unwrap()), e);
        }
    }

    #[test]
    fn masking_keeps_prefix_bits() {
        assert_eq!(masked([0xff, 0xff], 12), [0xff, 0xf0]);
        assert_eq!(masked([0xff, 0xff], 0), [0, 0]);
        assert_eq!(masked([0xff, 0xff], 16), [0xff, 0xff]);
    }
}
