//! The offsets the programs are loaded with: tracepoint record fields from
//! tracefs, kernel struct members from BTF.

use super::{io_err, KernelError};
use crate::{btf, fs, tracefs};

pub(super) struct TraceOffsets {
    pub(super) newtask_pid: u32,
    pub(super) newtask_clone_flags: u32,
}

impl TraceOffsets {
    pub(super) fn read() -> Result<TraceOffsets, KernelError> {
        let root = fs::tracefs()?;
        let field = |event: &str, field: &'static str| -> Result<u32, KernelError> {
            let path = root.join("events").join(event).join("format");
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            tracefs::field_offset(&text, field).ok_or(KernelError::TraceFormat { path, field })
        };
        Ok(TraceOffsets {
            newtask_pid: field("task/task_newtask", "pid")?,
            newtask_clone_flags: field("task/task_newtask", "clone_flags")?,
        })
    }
}

/// Where the exec program finds the executed file's identity, from the
/// kernel's BTF. The inode change time moved between kernels: a
/// `timespec64 i_ctime` (6.1), `__i_ctime` (6.6), then `i_ctime_sec` and
/// `i_ctime_nsec` (6.11).
pub(super) struct ExecOffsets {
    pub(super) bprm_file: u32,
    pub(super) bprm_filename: u32,
    pub(super) file_inode: u32,
    pub(super) inode_sb: u32,
    pub(super) inode_ino: u32,
    pub(super) inode_ctime_sec: u32,
    pub(super) inode_ctime_nsec: u32,
    pub(super) sb_dev: u32,
}

impl ExecOffsets {
    pub(super) fn read(btf: &btf::Btf) -> Result<ExecOffsets, btf::BtfError> {
        let (inode_ctime_sec, inode_ctime_nsec) = if btf.has_member("inode", "i_ctime_sec") {
            (
                btf.member_offset("inode", "i_ctime_sec")?,
                btf.member_offset("inode", "i_ctime_nsec")?,
            )
        } else {
            let ctime = btf
                .member_offset("inode", "__i_ctime")
                .or_else(|_| btf.member_offset("inode", "i_ctime"))?;
            (
                ctime + btf.member_offset("timespec64", "tv_sec")?,
                ctime + btf.member_offset("timespec64", "tv_nsec")?,
            )
        };
        Ok(ExecOffsets {
            bprm_file: btf.member_offset("linux_binprm", "file")?,
            bprm_filename: btf.member_offset("linux_binprm", "filename")?,
            file_inode: btf.member_offset("file", "f_inode")?,
            inode_sb: btf.member_offset("inode", "i_sb")?,
            inode_ino: btf.member_offset("inode", "i_ino")?,
            inode_ctime_sec,
            inode_ctime_nsec,
            sb_dev: btf.member_offset("super_block", "s_dev")?,
        })
    }
}

/// Where the veth backstop, and the ingress program noting UDP peers, read
/// what the kernel knows of a packet, from the kernel's BTF.
pub(super) struct VethOffsets {
    /// The bit offset of `sk_buff`'s `ip_summed`.
    pub(super) skb_ip_summed_bit: u32,
    /// `sk_buff`'s `dev`.
    pub(super) skb_dev: u32,
    /// From a veth's `net_device` to `struct veth_priv`'s `peer`.
    pub(super) veth_peer: u32,
    pub(super) dev_addr: u32,
    /// `net_device`'s `dev_addr` is a pointer from 5.17, the bytes before.
    pub(super) dev_addr_is_pointer: u32,
    /// `net_device`'s `type`: the ingress program notes a UDP datagram's
    /// sender only when it came in on an Ethernet device.
    pub(super) dev_type: u32,
    /// `sk_buff`'s `cb`, and there `frag_max_size` of the IPv4 and IPv6
    /// records: nor when it was put together from fragments.
    pub(super) skb_cb: u32,
    pub(super) ipcb_frag_max_size: u32,
    pub(super) ip6cb_frag_max_size: u32,
    /// Whether `veth_priv.peer` came from BTF, not from the assumption.
    pub(super) veth_peer_from_btf: bool,
}

/// `NETDEV_ALIGN`: a device's private part starts at this alignment
/// after its `struct net_device` (before 6.11's `priv` member).
const NETDEV_ALIGN: u32 = 32;

impl VethOffsets {
    pub(super) fn read(btf: &btf::Btf) -> Result<VethOffsets, btf::BtfError> {
        // `netdev_priv()`: the `priv` array that ends `struct net_device`
        // (6.11 on), or the struct's size aligned to `NETDEV_ALIGN`.
        let private = match btf.member_offset("net_device", "priv") {
            Ok(at) => at,
            Err(_) => btf
                .struct_size("net_device")?
                .next_multiple_of(NETDEV_ALIGN),
        };
        // `struct veth_priv` is in the kernel's BTF when veth is built in,
        // in the module's split BTF when it is a loaded module
        // (`Btf::from_sys_fs` reads it). A module not loaded yet, or built
        // without BTF, has neither: `peer` has been the struct's first
        // member since veth was written.
        let (peer, veth_peer_from_btf) = match btf.member_offset("veth_priv", "peer") {
            Err(btf::BtfError::NoStruct(_)) => (0, false),
            at => (at?, true),
        };
        Ok(VethOffsets {
            skb_ip_summed_bit: btf.member_bit_offset("sk_buff", "ip_summed")?,
            skb_dev: btf.member_offset("sk_buff", "dev")?,
            veth_peer: private + peer,
            dev_addr: btf.member_offset("net_device", "dev_addr")?,
            dev_addr_is_pointer: btf.member_is_pointer("net_device", "dev_addr")?.into(),
            dev_type: btf.member_offset("net_device", "type")?,
            skb_cb: btf.member_offset("sk_buff", "cb")?,
            ipcb_frag_max_size: btf.member_offset("inet_skb_parm", "frag_max_size")?,
            ip6cb_frag_max_size: btf.member_offset("inet6_skb_parm", "frag_max_size")?,
            veth_peer_from_btf,
        })
    }
}
