//! The daemon's observability edges: the deny/audit event log (followed
//! from bpf-loader, attributed, one JSON line per event) and the `/metrics`
//! endpoint. The formats are pure ([`crate::eventlog`], [`crate::metrics`]);
//! this is the I/O around them.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    io::Write,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use backon::BackoffBuilder as _;
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use proto::transport;
use tokio::{net::TcpListener, sync::Semaphore};

use super::{
    engine::{Feed, Handle},
    feeds,
    links::LoaderLink,
    view,
};
use crate::{
    eventlog::{EventRecord, LineBudget},
    metrics::{self, ContainerState, KernelCounters, Recorder, Scrape},
};

/// Where the event log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventLogTarget {
    /// policyd's stdout: the journal under systemd.
    Stdout,
    /// Appended to a file (for a log shipper that tails files).
    File(PathBuf),
    /// Not written (the events still reach `policyd events` and metrics).
    Off,
}

impl std::str::FromStr for EventLogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "-" | "stdout" => Ok(EventLogTarget::Stdout),
            "off" => Ok(EventLogTarget::Off),
            "" => Err("an empty event log path; give a file, - (stdout) or off".into()),
            path => Ok(EventLogTarget::File(PathBuf::from(path))),
        }
    }
}

/// Event log lines per cgroup and second, across CPUs ([`LineBudget`]):
/// the kernel's default rate on one CPU.
const LOG_LINES_PER_SECOND: u32 = 100;

/// Events asked for per request.
const EVENTS_PER_BATCH: u32 = 1024;
/// The long poll's wait.
const EVENTS_WAIT_MS: u32 = 25_000;

fn open_target(target: &EventLogTarget) -> std::io::Result<Option<Box<dyn Write + Send>>> {
    Ok(match target {
        EventLogTarget::Stdout => Some(Box::new(std::io::stdout())),
        EventLogTarget::File(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        EventLogTarget::Off => None,
    })
}

/// Where the follower goes on from: the loader's sequence numbers restart
/// with the loader.
fn resume_from(cursor: Option<u64>, loader_last_seq: u64) -> u64 {
    match cursor {
        // A first start: what the loader buffered before was logged by
        // the policyd that ran then (`policyd events` still shows it).
        None => loader_last_seq,
        // The loader restarted: its numbering began again.
        Some(c) if loader_last_seq < c => 0,
        Some(c) => c,
    }
}

/// Follows the loader's events for as long as the daemon runs: writes one
/// JSON line per event to `target` and counts it in `recorder`.
pub async fn follow_events(engine: Handle, recorder: Arc<Recorder>, target: EventLogTarget) {
    let mut out = match open_target(&target) {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(error = %e, target = ?target, "cannot open the event log; deny and audit events are only counted and shown by `policyd events`");
            None
        }
    };
    // A connection of its own: clients' event long polls on the shared
    // one must not be able to crowd out the event log.
    let link = LoaderLink::new(engine.loader.path.clone());
    let mut lines = LineBudget::new(LOG_LINES_PER_SECOND);
    let mut cursor: Option<u64> = None;
    // Whether the link's connection was probed (a new one is, before its
    // events are followed).
    let mut probed = false;
    let mut delays = feeds::RETRY.build();
    loop {
        let Ok(c) = link.client().await else {
            tokio::time::sleep(feeds::next_delay(&mut delays)).await;
            continue;
        };
        if !probed {
            // Where to go on from, now that the loader may be a new one.
            let probe = c
                .events(transport::context_with_deadline(10), u64::MAX, 0, 0)
                .await;
            let Ok(probe) = probe else {
                link.failed("events probe failed".into());
                tokio::time::sleep(feeds::next_delay(&mut delays)).await;
                continue;
            };
            // A new connection may be to a new loader (restarted, on maps of
            // a new layout: empty, where the veth backstop counts every veth
            // as no container's until policyd installs the state again). Its
            // generation tells at once, not at the next periodic resync; on
            // the first connection too, which a loader restart during
            // policyd's start can make the first to the new loader.
            engine.tell(Feed::Resync { healthy: true }).await;
            let from = resume_from(cursor, probe.last_seq);
            if cursor.is_none() && from > 0 {
                tracing::info!(
                    after = from,
                    "following the loader's events; the {from} it issued before are not logged again (`policyd events` shows those still buffered)"
                );
            }
            cursor = Some(from);
            probed = true;
            delays = feeds::RETRY.build();
        }
        let after = cursor.unwrap_or(0);
        let ctx = transport::context_with_deadline(u64::from(EVENTS_WAIT_MS / 1000) + 10);
        let batch = match c.events(ctx, after, EVENTS_PER_BATCH, EVENTS_WAIT_MS).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "lost the loader's event stream; reconnecting");
                link.failed(e.to_string());
                probed = false;
                tokio::time::sleep(feeds::next_delay(&mut delays)).await;
                continue;
            }
        };
        if batch.last_seq < after {
            cursor = Some(0);
            continue;
        }
        if batch.missed > 0 {
            tracing::warn!(
                missed = batch.missed,
                "events were dropped from the loader's buffer before policyd read them"
            );
        }
        let view = engine.view();
        let records: Vec<EventRecord> = batch
            .events
            .iter()
            .map(|event| {
                let mut record = EventRecord::new(
                    event,
                    view.container_of(event.cgroup_id),
                    view.policy_name(event.policy_id),
                );
                if view.is_ruleless(event.cgroup_id) {
                    record.judged_as_shared_cgroup();
                }
                recorder.verdict(
                    record.verdict,
                    record.policy.as_deref().unwrap_or(""),
                    record.container_name.as_deref().unwrap_or(""),
                    record.suppressed,
                );
                record
            })
            .collect();
        if let Some(w) = out.as_mut() {
            let now = Instant::now();
            let mut text = String::new();
            for (event, mut record) in batch.events.iter().zip(records) {
                if lines.admit(event, &mut record, now) {
                    text.push_str(&record.to_line());
                    text.push('\n');
                }
            }
            if let Err(e) = w.write_all(text.as_bytes()).and_then(|()| w.flush()) {
                tracing::error!(error = %e, "cannot write the event log; events are only counted from now on");
                out = None;
            }
        }
        if let Some(last) = batch.events.last() {
            cursor = Some(last.seq.max(after));
        }
    }
}

/// Reads what a scrape shows.
pub async fn gather(engine: &Handle, recorder: &Recorder) -> Scrape {
    let counters = view::counters(&engine.loader).await;
    let status = view::status(engine, counters.as_ref()).await;
    let e = engine.view();
    let kernel = counters.map(|c| KernelCounters {
        policy_verdicts: c
            .policies
            .iter()
            .filter_map(|p| {
                let name = if p.policy_id == contain_common::UNKNOWN_POLICY_ID {
                    String::new()
                } else {
                    // Counters of a policy no longer in the file are not
                    // attributed to anything.
                    e.policy_name(p.policy_id)?.to_string()
                };
                Some([
                    (name.clone(), kernel_model::state::Verdict::Allow, p.allowed),
                    (name.clone(), kernel_model::state::Verdict::Deny, p.denied),
                    (name, kernel_model::state::Verdict::Audit, p.audited),
                ])
            })
            .flatten()
            .collect(),
        ring_buffer_full: c.events_dropped_kernel,
        loader_buffer_full: c.events_dropped_loader,
        rate_limited: c.events_rate_limited,
        unstamped_sockets: c.unstamped_sockets,
        unparsed_packets: c.unparsed_packets,
        veth_unowned_frames: c.veth_unowned_frames,
        forged_source_frames: c.forged_source_frames,
        refused_socket_options: c.refused_socket_options,
    });
    let mut containers = std::collections::BTreeMap::new();
    for c in &status.containers {
        *containers
            .entry(ContainerState::from_mode(&c.mode))
            .or_default() += 1;
    }
    let present: BTreeSet<String> = e
        .inventory
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    recorder.retain_containers(&present, Instant::now());
    Scrape {
        kernel,
        maps: e.kernel.as_ref().map(|k| metrics::map_usage(&k.state)),
        containers,
        loader_connected: status.loader.connected,
        inventory_connected: status.inventory.connected,
        policy_loaded: e.loaded.is_some(),
    }
}

/// Scrapes served at once; more wait for the next accept.
const CONCURRENT_SCRAPES: usize = 4;
/// Longest a connection may stay open.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a client may take to send its request's headers: a local user
/// holding the few scrape slots with idle connections would otherwise keep
/// Prometheus out for `CONNECTION_DEADLINE` at a time.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);

fn response(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Serves `GET /metrics` on `listener` until the daemon ends.
pub async fn serve_metrics(listener: TcpListener, engine: Handle, recorder: Arc<Recorder>) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let engine = engine.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let engine = engine.clone();
                let recorder = recorder.clone();
                async move {
                    Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => {
                            let scrape = gather(&engine, &recorder).await;
                            response(
                                200,
                                metrics::CONTENT_TYPE,
                                metrics::render(&scrape, &recorder),
                            )
                        }
                        (&Method::GET, _) => response(
                            404,
                            "text/plain; charset=utf-8",
                            "not found; the metrics are at /metrics\n".into(),
                        ),
                        _ => response(
                            405,
                            "text/plain; charset=utf-8",
                            "only GET is served\n".into(),
                        ),
                    })
                }
            });
            // One request per connection: a scrape every few seconds gains
            // nothing from keeping it, and an idle one holds a slot.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_start_skips_what_an_earlier_policyd_logged() {
        assert_eq!(resume_from(None, 40), 40);
    }

    #[test]
    fn a_restarted_loader_is_read_from_its_first_event() {
        assert_eq!(resume_from(Some(500), 3), 0);
    }

    #[test]
    fn a_reconnect_to_the_same_loader_goes_on_where_it_was() {
        assert_eq!(resume_from(Some(500), 520), 500);
    }

    #[test]
    fn event_log_targets_parse() {
        assert_eq!("-".parse(), Ok(EventLogTarget::Stdout));
        assert_eq!("off".parse(), Ok(EventLogTarget::Off));
        assert_eq!(
            "/var/log/contain.json".parse(),
            Ok(EventLogTarget::File("/var/log/contain.json".into()))
        );
        assert!("".parse::<EventLogTarget>().is_err());
    }
}
