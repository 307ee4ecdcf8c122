//! The thesis' JSON allow-list (`policyd check`, `reload` of a `.json`
//! file): any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // policyd reads the file with read_to_string: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    contain_fuzz::follow_through(policyd::policy::thesis_json::parse("fuzz.json", text));
});
