//! What the resolver reads that others write — /proc files of processes a
//! container runs (and of its network namespace: `if_inet6`, `fib_trie`),
//! the mount table, Docker's replies and `config.v2.json`,
//! containerd's event envelopes — is parsed or refused, never a panic. The
//! fuzz target `resolver_inputs` does the same for longer.

use containerd_client::types::Envelope;
use proptest::prelude::*;
use prost::Message;

use crate::{
    addresses::{namespace_addresses, parse_fib_trie, parse_if_inet6},
    cgroup::{parse_mountinfo, parse_proc_cgroup, Cgroup2Mount},
    containerd::{decode_envelope, DEFAULT_NAMESPACES},
    docker::{parse_api_list, parse_config_v2},
    process::parse_stat_starttime,
};

/// Lines shaped like the real files, with any of their fields replaced.
fn proc_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("24 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw".to_string()),
            Just("0::/contain.slice/docker-1.scope (deleted)".to_string()),
            Just("42 (a) b) S 1 2 3".to_string()),
            Just("fe80000000000000c0cda9fffe4b1c63 02 40 20 80     eth0".to_string()),
            Just("Local:".to_string()),
            Just("  +-- 198.18.4.0/22 3 0 4".to_string()),
            Just("     |-- 198.18.5.2".to_string()),
            Just("        /32 host LOCAL".to_string()),
            r"[0-9a-z:/()\\ -]{0,40}",
            any::<String>(),
        ],
        0..6,
    )
    .prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn proc_and_mountinfo_text_is_parsed_or_skipped(text in proc_like()) {
        if let Some(mount) = parse_mountinfo(&text) {
            let _ = mount.dir_of("/contain.slice/docker-1.scope");
        }
        if let Some(path) = parse_proc_cgroup(text.as_bytes()) {
            prop_assert!(path.starts_with('/'));
            let _ = Cgroup2Mount::at("/sys/fs/cgroup").dir_of(&path);
        }
        let _ = proto::cgroups::parse_pids(&text);
        let _ = parse_stat_starttime(&text);
        let _ = parse_if_inet6(&text);
        let _ = parse_fib_trie(&text);
        if let Ok(addresses) = namespace_addresses(&text, Some(&text)) {
            prop_assert!(addresses.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(addresses.iter().all(|a| !a.is_loopback()));
        }
    }

    #[test]
    fn docker_replies_are_parsed_or_refused(
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = parse_api_list(&body);
        let _ = parse_config_v2(&body);
    }

    #[test]
    fn containerd_envelopes_are_decoded_or_ignored(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        if let Ok(envelope) = Envelope::decode(bytes.as_slice()) {
            let namespaces: Vec<String> = DEFAULT_NAMESPACES.iter().map(|s| s.to_string()).collect();
            let _ = decode_envelope(&envelope, &namespaces);
        }
    }
}
