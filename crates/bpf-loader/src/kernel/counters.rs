//! Counters and the exe paths the kernel saw, read from their maps.

use contain_common::{self as kern, map_names};
use proto::loader::{Counters, PolicyCounters as PolicyCountersDto};

use super::{map_err, Kernel, KernelError};

impl Kernel {
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let m = &self.maps;
        let mut policies = Vec::new();
        for policy_id in 0..kern::MAX_POLICIES {
            let per_cpu = m
                .counters
                .get(&policy_id, 0)
                .map_err(map_err(map_names::COUNTERS))?;
            let mut sum = PolicyCountersDto {
                policy_id,
                ..Default::default()
            };
            for c in per_cpu.iter() {
                sum.allowed += c.allowed;
                sum.denied += c.denied;
                sum.audited += c.audited;
            }
            if sum.allowed + sum.denied + sum.audited > 0 {
                policies.push(sum);
            }
        }
        let stat = |index: u32| -> Result<u64, KernelError> {
            Ok(m.stats
                .get(&index, 0)
                .map_err(map_err(map_names::STATS))?
                .iter()
                .sum())
        };
        Ok(Counters {
            policies,
            events_dropped_kernel: stat(kern::stat::EVENTS_DROPPED)?,
            events_dropped_loader: 0,
            events_rate_limited: stat(kern::stat::EVENTS_RATE_LIMITED)?,
            unstamped_sockets: stat(kern::stat::UNSTAMPED_SOCKETS)?,
            unparsed_packets: stat(kern::stat::UNPARSED)?,
            veth_unowned_frames: stat(kern::stat::VETH_UNOWNED)?,
            forged_source_frames: stat(kern::stat::FORGED_SOURCE)?,
            refused_socket_options: m
                .refused_sockopts
                .get(&0, 0)
                .map_err(map_err(map_names::REFUSED_SOCKOPTS))?
                .iter()
                .sum(),
        })
    }

    /// The path an exe hash stands for, if the kernel saw that exec.
    pub fn exe_path(&self, hash: u64) -> Option<String> {
        let path = self.maps.exe_paths.get(&hash, 0).ok()?;
        Some(crate::events::until_nul(&path.path))
    }
}
