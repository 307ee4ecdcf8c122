//! The policyd tarpc service: reloads go to the engine; status, explain
//! and events are answered from its published view.

use proto::{
    policyd::{
        AttributedEvent, EventBatch, ExplainQuery, Explanation, Policyd, PolicydError, PolicydInfo,
        ReloadReport, Status,
    },
    transport,
};
use tarpc::context::Context;

use super::{engine::Handle, view};

/// Longest an events long poll may wait, so a client cannot park a request
/// forever.
const MAX_EVENTS_WAIT_MS: u32 = 30_000;

#[derive(Clone)]
pub struct PolicydServer {
    pub engine: Handle,
}

impl Policyd for PolicydServer {
    async fn version(self, _: Context) -> PolicydInfo {
        PolicydInfo {
            api_version: proto::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy_file: self.engine.policy_path.display().to_string(),
        }
    }

    async fn reload(
        self,
        _: Context,
        dry_run: bool,
        max_ops: u32,
    ) -> Result<ReloadReport, PolicydError> {
        let mut report = self.engine.reload(dry_run, None).await?;
        report.ops.truncate(max_ops as usize);
        Ok(report)
    }

    async fn status(self, _: Context) -> Result<Status, PolicydError> {
        let counters = view::counters(&self.engine.loader).await;
        Ok(view::status(&self.engine, counters.as_ref()).await)
    }

    async fn explain(self, _: Context, query: ExplainQuery) -> Result<Explanation, PolicydError> {
        view::explain(&self.engine, &query).await
    }

    async fn events(
        self,
        _: Context,
        after: u64,
        max: u32,
        wait_ms: u32,
    ) -> Result<EventBatch, PolicydError> {
        let wait_ms = wait_ms.min(MAX_EVENTS_WAIT_MS);
        let ctx = transport::context_with_deadline(u64::from(wait_ms / 1000) + 10);
        let batch = self
            .engine
            .loader
            .call("events", |c| async move {
                c.events(ctx, after, max, wait_ms).await
            })
            .await?;
        let view = self.engine.view();
        let events = batch
            .events
            .into_iter()
            .map(|event| AttributedEvent {
                container: view.container_of(event.cgroup_id).map(|c| c.name.clone()),
                policy: view.policy_name(event.policy_id).map(str::to_string),
                event,
            })
            .collect();
        Ok(EventBatch {
            events,
            missed: batch.missed,
            last_seq: batch.last_seq,
        })
    }
}
