//! Reading the policy maps back into the model's state.

use contain_common::{self as kern, map_names};
use kernel_model::{
    repr::{self, LpmKey},
    state::{Entry, KernelState},
};

use super::{map_err, Kernel, KernelError};

impl Kernel {
    /// Reads the policy maps back from the kernel (what [`Kernel::state`]
    /// mirrors).
    pub fn read_state(&self) -> Result<KernelState, KernelError> {
        let m = &self.maps;
        let mut state = KernelState::default();
        for item in m.cgroups.iter() {
            let (id, value) = item.map_err(map_err(map_names::CGROUPS))?;
            state.upsert(Entry::Cgroup {
                id,
                value: repr::cgroup_entry(&value),
            });
        }
        for item in m.processes.iter() {
            let (key, class) = item.map_err(map_err(map_names::PROCESSES))?;
            match repr::process_key_back(&key, &class) {
                Ok(key) => state.upsert(Entry::Process {
                    key,
                    class: class.class,
                }),
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable process entry"),
            }
        }
        for item in m.dests.iter() {
            let (key, value) = item.map_err(map_err(map_names::DESTS))?;
            state.upsert(Entry::Dest {
                key: repr::dest_key_back(&unlpm(&key)),
                ruleset: value.ruleset,
            });
        }
        for item in m.hosts.iter() {
            let (data, value) = item.map_err(map_err(map_names::HOSTS))?;
            let key = LpmKey {
                prefix_len: kern::DEST_KEY_FIXED_BITS + 128,
                data,
            };
            state.upsert(Entry::Dest {
                key: repr::dest_key_back(&key),
                ruleset: value.ruleset,
            });
        }
        for item in m.exact_ports.iter() {
            let (key, value) = item.map_err(map_err(map_names::EXACT_PORTS))?;
            let key = LpmKey {
                prefix_len: kern::PORT_KEY_FIXED_BITS + 16,
                data: key,
            };
            state.upsert(Entry::Port {
                key: repr::port_key_back(&key),
                rule_id: value.rule_id,
            });
        }
        for item in m.ports.iter() {
            let (key, value) = item.map_err(map_err(map_names::PORTS))?;
            state.upsert(Entry::Port {
                key: repr::port_key_back(&unlpm(&key)),
                rule_id: value.rule_id,
            });
        }
        for item in m.veths.iter() {
            let (ifindex, owner) = item.map_err(map_err(map_names::VETHS))?;
            state.upsert(Entry::Veth {
                ifindex,
                cgroup_id: owner.cgroup_id,
            });
        }
        for item in m.veth_sources.keys() {
            let key = item.map_err(map_err(map_names::VETH_SOURCES))?;
            state.upsert(Entry::VethSource {
                key: repr::veth_source_back(&key),
            });
        }
        let config = m.config.get(&0, 0).unwrap_or_default();
        state.unknown_verdict = repr::verdict_back(config.unknown_verdict);
        Ok(state)
    }
}

/// Aya's trie key as the model's.
fn unlpm<K: aya::Pod>(k: &aya::maps::lpm_trie::Key<K>) -> LpmKey<K> {
    LpmKey {
        prefix_len: k.prefix_len(),
        data: k.data(),
    }
}
