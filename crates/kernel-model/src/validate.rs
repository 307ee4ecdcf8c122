//! What the loader accepts: a diff whose every entry the kernel's maps can
//! hold, and that deletes only what is there. The real loader and the
//! in-memory one both call [`validate`], so a daemon test cannot pass a
//! diff the kernel side would refuse.

use thiserror::Error;

use crate::{
    repr::{self, EncodeError},
    state::{Entry, EntryKey, KernelState, MapOp},
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidDiff {
    #[error("{entry:?} cannot be written to the kernel's maps: {source}")]
    Unencodable {
        entry: Box<Entry>,
        source: EncodeError,
    },
    #[error("veth entry {ifindex} -> cgroup {cgroup_id}: ifindex and cgroup id must be non-zero")]
    VethZero { ifindex: u32, cgroup_id: u64 },
    #[error(
        "deletes {0:?}, which is not in the maps (the diff was computed against another state)"
    )]
    DeletesMissing(EntryKey),
    #[error("touches {0:?} twice; a diff changes each entry once (its operations are reordered before they reach the kernel)")]
    Repeated(EntryKey),
}

/// Checks `ops` against the state they are to be applied to.
pub fn validate(current: &KernelState, ops: &[MapOp]) -> Result<(), InvalidDiff> {
    let mut touched = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        let key = match op {
            MapOp::Upsert { entry } => entry.key(),
            MapOp::Delete { key } => *key,
        };
        if !touched.insert(key) {
            return Err(InvalidDiff::Repeated(key));
        }
        match op {
            MapOp::Upsert { entry } => check_entry(entry).map_err(|source| match source {
                Invalid::Encode(source) => InvalidDiff::Unencodable {
                    entry: Box::new(*entry),
                    source,
                },
                Invalid::Veth { ifindex, cgroup_id } => {
                    InvalidDiff::VethZero { ifindex, cgroup_id }
                }
            })?,
            MapOp::Delete { key } => {
                if current.get(key).is_none() {
                    return Err(InvalidDiff::DeletesMissing(*key));
                }
            }
        }
    }
    Ok(())
}

enum Invalid {
    Encode(EncodeError),
    Veth { ifindex: u32, cgroup_id: u64 },
}

fn check_entry(entry: &Entry) -> Result<(), Invalid> {
    match entry {
        Entry::Cgroup { value, .. } => repr::cgroup_value(value).map(drop),
        Entry::Process { key, .. } => repr::check_process_key(key),
        Entry::Dest { key, .. } => repr::dest_key(key).map(drop),
        Entry::Port { key, .. } => repr::port_key(key).map(drop),
        &Entry::Veth { ifindex, cgroup_id } => {
            if ifindex == 0 || cgroup_id == 0 {
                return Err(Invalid::Veth { ifindex, cgroup_id });
            }
            Ok(())
        }
        Entry::VethSource { key } => repr::veth_source_key(key).map(drop),
    }
    .map_err(Invalid::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CgroupEntry, DestPrefix};

    fn cgroup(policy_id: u32) -> Entry {
        Entry::Cgroup {
            id: 7,
            value: CgroupEntry {
                policy_id,
                audit: false,
                unrestricted: false,
                forwarded_dns: false,
            },
        }
    }

    #[test]
    fn refuses_what_the_kernel_cannot_hold() {
        let empty = KernelState::default();
        assert_eq!(
            validate(&empty, &[MapOp::Upsert { entry: cgroup(3) }]),
            Ok(())
        );
        assert!(matches!(
            validate(
                &empty,
                &[MapOp::Upsert {
                    entry: cgroup(contain_common::MAX_POLICIES)
                }]
            ),
            Err(InvalidDiff::Unencodable { .. })
        ));
        let wide = Entry::Dest {
            key: DestPrefix {
                policy_id: 1,
                class: 0,
                addr: [0xff; 16],
                prefix_len: 8,
            },
            ruleset: 1,
        };
        assert!(validate(&empty, &[MapOp::Upsert { entry: wide }]).is_err());
        let veth = Entry::Veth {
            ifindex: 0,
            cgroup_id: 7,
        };
        assert!(matches!(
            validate(&empty, &[MapOp::Upsert { entry: veth }]),
            Err(InvalidDiff::VethZero { .. })
        ));
    }

    #[test]
    fn refuses_touching_an_entry_twice() {
        // Upserts go before deletes in the kernel: "delete, then upsert"
        // would end deleted there and present in a loader that kept order.
        let mut s = KernelState::default();
        s.upsert(cgroup(3));
        let ops = [
            MapOp::Delete {
                key: EntryKey::Cgroup { id: 7 },
            },
            MapOp::Upsert { entry: cgroup(4) },
        ];
        assert_eq!(
            validate(&s, &ops),
            Err(InvalidDiff::Repeated(EntryKey::Cgroup { id: 7 }))
        );
    }

    #[test]
    fn refuses_deleting_what_is_not_there() {
        let mut s = KernelState::default();
        let delete = MapOp::Delete {
            key: EntryKey::Cgroup { id: 7 },
        };
        assert_eq!(
            validate(&s, &[delete]),
            Err(InvalidDiff::DeletesMissing(EntryKey::Cgroup { id: 7 }))
        );
        s.upsert(cgroup(3));
        assert_eq!(validate(&s, &[delete]), Ok(()));
    }
}
