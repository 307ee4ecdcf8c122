//! What the policy targets share: a policy that parses goes on to be
//! compiled, as `policyd reload` does, and a refused one is rendered, as
//! `policyd check` prints it (carets and all).

use std::sync::LazyLock;

use policyd::{
    compile::compile,
    ids::IdTables,
    inventory::Inventory,
    policy::{InvalidPolicy, PolicySet},
};

/// The sample host's containers, so that selectors match something.
static INVENTORY: LazyLock<Inventory> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../crates/policyd/samples/inventory.json"))
        .expect("the sample inventory parses")
});

/// Whatever the parser said, take it the rest of the way a daemon would.
pub fn follow_through(parsed: Result<PolicySet, InvalidPolicy>) {
    match parsed {
        Ok(policies) => {
            // A compile error (e.g. too many rules) is an answer, not a crash.
            let _ = compile(&policies, &INVENTORY, &mut IdTables::default());
        }
        Err(invalid) => {
            let _ = invalid.to_string();
        }
    }
}
