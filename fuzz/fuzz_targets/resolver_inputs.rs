//! What the resolver reads that others write: /proc files of processes a
//! container runs (and of its network namespace), the mount table, Docker's API replies and
//! `config.v2.json`, containerd's event envelopes. The first byte picks the
//! parser, the rest is its input.
#![no_main]

use containerd_client::types::Envelope;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use resolver::{
    addresses::{namespace_addresses, parse_fib_trie, parse_if_inet6},
    cgroup::{parse_mountinfo, parse_proc_cgroup, Cgroup2Mount},
    containerd::{decode_envelope, DEFAULT_NAMESPACES},
    docker::{parse_api_list, parse_config_v2},
    process::parse_stat_starttime,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    // The /proc and mountinfo readers take text (read_to_string).
    let text = std::str::from_utf8(input).ok();
    match (which % 9, text) {
        (0, Some(text)) => {
            if let Some(mount) = parse_mountinfo(text) {
                let _ = mount.dir_of("/system.slice/docker-0.scope");
            }
        }
        (1, Some(text)) => {
            if let Some(path) = parse_proc_cgroup(text.as_bytes()) {
                let _ = Cgroup2Mount::at("/sys/fs/cgroup").dir_of(&path);
            }
        }
        (2, Some(text)) => {
            let _ = proto::cgroups::parse_pids(text);
        }
        (3, Some(text)) => {
            let _ = parse_stat_starttime(text);
        }
        (4, _) => {
            let _ = parse_api_list(input);
        }
        (5, _) => {
            let _ = parse_config_v2(input);
        }
        (6, _) => {
            if let Ok(envelope) = Envelope::decode(input) {
                let namespaces: Vec<String> =
                    DEFAULT_NAMESPACES.iter().map(|s| s.to_string()).collect();
                let _ = decode_envelope(&envelope, &namespaces);
            }
        }
        (7, Some(text)) => {
            let _ = parse_if_inet6(text);
            let _ = namespace_addresses("", Some(text));
        }
        (8, Some(text)) => {
            let _ = parse_fib_trie(text);
            let _ = namespace_addresses(text, None);
        }
        _ => {}
    }
});
