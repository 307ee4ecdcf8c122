//! The policyd tarpc service, on top of the engine.

use proto::{
    policyd::{
        AttributedEvent, EventBatch, ExplainQuery, Explanation, Policyd, PolicydError, PolicydInfo,
        ReloadReport, Status,
    },
    transport,
};
use tarpc::context::Context;

use super::Shared;

/// Longest an events long poll may wait, so a client cannot park a request
/// forever.
const MAX_EVENTS_WAIT_MS: u32 = 30_000;

#[derive(Clone)]
pub struct PolicydServer {
    pub engine: Shared,
}

impl Policyd for PolicydServer {
    async fn version(self, _: Context) -> PolicydInfo {
        let e = self.engine.lock().await;
        PolicydInfo {
            api_version: proto::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy_file: e.policy_path.display().to_string(),
        }
    }

    async fn reload(
        self,
        _: Context,
        dry_run: bool,
        max_ops: u32,
    ) -> Result<ReloadReport, PolicydError> {
        let mut report = self.engine.lock().await.reload(dry_run).await?;
        report.ops.truncate(max_ops as usize);
        Ok(report)
    }

    async fn status(self, _: Context) -> Result<Status, PolicydError> {
        Ok(self.engine.lock().await.status().await)
    }

    async fn explain(self, _: Context, query: ExplainQuery) -> Result<Explanation, PolicydError> {
        self.engine.lock().await.explain(&query).await
    }

    async fn events(
        self,
        _: Context,
        after: u64,
        max: u32,
        wait_ms: u32,
    ) -> Result<EventBatch, PolicydError> {
        // Take the client and let go of the engine: a long poll must not
        // hold up reloads.
        let client = self.engine.lock().await.loader.client().await?;
        let wait_ms = wait_ms.min(MAX_EVENTS_WAIT_MS);
        let ctx = transport::context_with_deadline(u64::from(wait_ms / 1000) + 10);
        let batch = match client.events(ctx, after, max, wait_ms).await {
            Ok(b) => b,
            Err(e) => {
                return Err(self
                    .engine
                    .lock()
                    .await
                    .loader
                    .failed(format!("events request failed: {e}")))
            }
        };
        let e = self.engine.lock().await;
        let events = batch
            .events
            .into_iter()
            .map(|event| {
                let (container, policy) = e.attribute(event.cgroup_id, event.policy_id);
                AttributedEvent {
                    event,
                    container,
                    policy,
                }
            })
            .collect();
        Ok(EventBatch {
            events,
            missed: batch.missed,
            last_seq: batch.last_seq,
        })
    }
}
