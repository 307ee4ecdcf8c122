//! Writes a synthetic policy and inventory of a chosen size (for trying
//! `policyd check`, `reload` and `status` at scale):
//!
//! ```sh
//! cargo run -p test-kit --example synthetic -- 10000 10 50 /tmp/contain
//! # → /tmp/contain/policy.toml (10 000 rules, 10 policies),
//! #   /tmp/contain/inventory.json (50 containers)
//! ```

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (rules, policies, containers) = (number(0, 10_000), number(1, 10), number(2, 50));
    let dir = PathBuf::from(args.get(3).map(String::as_str).unwrap_or("."));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("policy.toml"),
        test_kit::synthetic::policy_text(rules, policies),
    )?;
    std::fs::write(
        dir.join("inventory.json"),
        serde_json::to_string_pretty(&test_kit::synthetic::inventory(containers))?,
    )?;
    eprintln!(
        "wrote {rules} rules in {policies} policies and {containers} containers to {}",
        dir.display()
    );
    Ok(())
}
