//! Serves the in-memory loader on a socket, to run `policyd daemon`
//! unprivileged against it (demos, measurements):
//!
//! ```sh
//! cargo run -p test-kit --example memory_loader -- /tmp/contain/loader.sock
//! policyd daemon --policy p.toml --inventory inv.json \
//!     --loader-socket /tmp/contain/loader.sock --socket /tmp/contain/policyd.sock
//! ```

use test_kit::memory_loader::MemoryLoader;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let socket = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/contain/loader.sock".into());
    let loader = MemoryLoader::default();
    loader.serve(std::path::Path::new(&socket))?;
    eprintln!("in-memory loader on {socket}");
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        let (generation, state, applies) = loader.snapshot();
        eprintln!(
            "generation {generation}, {} entries, {applies} applies",
            state.entry_count()
        );
    }
}
