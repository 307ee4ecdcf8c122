//! Whether contain's cgroup programs are attached to a cgroup, read from the
//! kernel alone (no loader, no pins): what a container runtime's unit checks
//! before it starts (`bpf-loader --check-attached`), so that a loader that
//! failed to start keeps the runtime down rather than its containers
//! unfiltered.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya_obj::generated::bpf_attach_type;
use contain_common::program_names;

#[derive(Debug, thiserror::Error)]
pub enum AttachedError {
    #[error("cannot open the cgroup {path}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot query the programs attached to {path} ({attach_type:?})")]
    Query {
        path: PathBuf,
        attach_type: bpf_attach_type,
        source: std::io::Error,
    },
    #[error("cannot list the kernel's BPF programs: {0}")]
    Programs(String),
}

/// The hook each of contain's cgroup programs is attached at.
fn attach_type_of(program: &str) -> Option<bpf_attach_type> {
    use bpf_attach_type::*;
    Some(match program {
        program_names::SOCK_CREATE => BPF_CGROUP_INET_SOCK_CREATE,
        program_names::CONNECT4 => BPF_CGROUP_INET4_CONNECT,
        program_names::CONNECT6 => BPF_CGROUP_INET6_CONNECT,
        program_names::SENDMSG4 => BPF_CGROUP_UDP4_SENDMSG,
        program_names::SENDMSG6 => BPF_CGROUP_UDP6_SENDMSG,
        program_names::EGRESS => BPF_CGROUP_INET_EGRESS,
        program_names::INGRESS => BPF_CGROUP_INET_INGRESS,
        program_names::SETSOCKOPT => BPF_CGROUP_SETSOCKOPT,
        _ => return None,
    })
}

/// The name the kernel keeps of a program called `name`: its first 15
/// bytes (`BPF_OBJ_NAME_LEN` with the terminating NUL).
fn kernel_name(name: &str) -> &str {
    name.get(..15).unwrap_or(name)
}

/// contain's cgroup programs that are not attached to `cgroup` itself (an
/// ancestor's do not count: the loader attaches to the managed parent).
/// Empty when every one is there.
pub fn missing_cgroup_programs(cgroup: &Path) -> Result<Vec<&'static str>, AttachedError> {
    let dir = File::open(cgroup).map_err(|source| AttachedError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let mut names: Option<BTreeMap<u32, String>> = None;
    let mut missing = Vec::new();
    for &program in program_names::CGROUP {
        let Some(attach_type) = attach_type_of(program) else {
            missing.push(program);
            continue;
        };
        let ids = crate::kernel::query_program_ids(dir.as_raw_fd() as u32, attach_type).map_err(
            |source| AttachedError::Query {
                path: cgroup.to_owned(),
                attach_type,
                source,
            },
        )?;
        if ids.is_empty() {
            missing.push(program);
            continue;
        }
        // Only when something is attached: the names of every loaded
        // program, read once.
        let names = match &mut names {
            Some(names) => names,
            None => names.insert(program_names_by_id()?),
        };
        let ours = ids
            .iter()
            .any(|id| names.get(id).map(String::as_str) == Some(kernel_name(program)));
        if !ours {
            missing.push(program);
        }
    }
    Ok(missing)
}

fn program_names_by_id() -> Result<BTreeMap<u32, String>, AttachedError> {
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        // A program unloaded while the list is read is no one's.
        .flatten()
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect();
    if names.is_empty() {
        return Err(AttachedError::Programs(
            "no program could be read (is this root?)".into(),
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cgroup_program_has_its_hook() {
        for &program in program_names::CGROUP {
            assert!(attach_type_of(program).is_some(), "{program}");
        }
    }

    #[test]
    fn names_are_compared_as_the_kernel_keeps_them() {
        assert_eq!(kernel_name("contain_sock_create"), "contain_sock_cr");
        assert_eq!(kernel_name("contain_egress"), "contain_egress");
    }
}
