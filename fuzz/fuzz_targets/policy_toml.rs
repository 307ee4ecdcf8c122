//! The TOML policy file (`policyd check`, `reload`): any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // policyd reads the file with read_to_string: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    contain_fuzz::follow_through(policyd::policy::toml_format::parse("fuzz.toml", text));
});
