//! Bad policy text is refused with errors that say what and where, never a
//! panic: arbitrary text, and the samples with random edits (which get much
//! further into validation than random text does). The fuzz targets
//! `policy_toml` and `policy_thesis_json` do the same for longer.

use proptest::prelude::*;

use super::{thesis_json, toml_format, InvalidPolicy, PolicySet};

const SAMPLE_TOML: &str = include_str!("../../samples/policy.toml");
const SAMPLE_JSON: &str = include_str!("../../samples/allowlist.json");

/// Pieces that matter to either syntax, and some that are wide in UTF-8.
const PIECES: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ":",
    "\n",
    "\t",
    "\\",
    "#",
    "//",
    "/",
    "-",
    "*",
    "0",
    "65536",
    "-1",
    "4294967296",
    "::",
    "/33",
    "/0",
    "é",
    "😀",
    "\u{0}",
    "[[policy]]",
    "[[policy.process]]",
    "icmp",
    "tcp",
    "",
];

/// `text` with `span` characters at `at` (both taken modulo its length)
/// replaced by `piece`.
fn edit(text: &str, at: usize, span: usize, piece: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    let end = (at + span).min(chars.len());
    chars[..at]
        .iter()
        .copied()
        .chain(piece.chars())
        .chain(chars[end..].iter().copied())
        .collect()
}

fn edits() -> impl Strategy<Value = Vec<(usize, usize, &'static str)>> {
    prop::collection::vec(
        (any::<usize>(), 0usize..8, prop::sample::select(PIECES)),
        1..4,
    )
}

fn apply(text: &str, edits: &[(usize, usize, &str)]) -> String {
    edits
        .iter()
        .fold(text.to_string(), |text, (at, span, piece)| {
            edit(&text, *at, *span, piece)
        })
}

/// A refusal names at least one error, and every location is in the text.
fn check(text: &str, parsed: Result<PolicySet, InvalidPolicy>) -> Result<(), TestCaseError> {
    if let Err(invalid) = parsed {
        prop_assert!(
            invalid.errors().next().is_some(),
            "refused without an error"
        );
        let lines = text.split('\n').count() as u32;
        for diagnostic in &invalid.diagnostics {
            prop_assert!(!diagnostic.message.is_empty());
            if let Some(location) = &diagnostic.location {
                prop_assert!(
                    (1..=lines).contains(&location.line),
                    "{diagnostic} is outside the {lines} lines"
                );
            }
        }
        // Rendering (the caret under the column) must not panic either.
        let _ = invalid.to_string();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_toml_policy_or_a_located_error(text in any::<String>()) {
        check(&text, toml_format::parse("p.toml", &text))?;
    }

    #[test]
    fn any_text_is_a_thesis_allowlist_or_a_located_error(text in any::<String>()) {
        check(&text, thesis_json::parse("p.json", &text))?;
    }

    #[test]
    fn an_edited_sample_toml_is_a_policy_or_a_located_error(edits in edits()) {
        let text = apply(SAMPLE_TOML, &edits);
        check(&text, toml_format::parse("p.toml", &text))?;
    }

    #[test]
    fn an_edited_sample_allowlist_is_a_policy_or_a_located_error(edits in edits()) {
        let text = apply(SAMPLE_JSON, &edits);
        check(&text, thesis_json::parse("p.json", &text))?;
    }
}
