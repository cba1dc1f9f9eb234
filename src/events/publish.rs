//! The publisher: the one task that writes notices as events.k8s.io/v1 Events through the Kubernetes API, one
//! Event per series (created on its first occurrence, its `series.count` patched as it repeats), every write
//! within one token bucket.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use prometheus_client::metrics::counter::Counter;
use std::time::Instant;
use tokio::sync::mpsc;

use super::series::{Observed, Published, SeriesKey, SeriesMap, TokenBucket};
use super::{Events, Notice, QUEUE, Target};

/// The Events' `reportingController`.
pub const REPORTING_CONTROLLER: &str = "provgate.dev/admission";
/// API writes (creates and patches) in a burst, and per second after it, across all Events.
pub const WRITE_BURST: u32 = 50;
pub const WRITES_PER_SECOND: u32 = 10;
/// How often repeated occurrences are written as counts.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How long one API write may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the publisher writing through `client`; returns the handler's handle and the task.
pub fn start(client: kube::Client) -> (Events, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let dropped = Counter::default();
    let publisher = Publisher {
        client,
        instance: reporting_instance(),
        series: SeriesMap::default(),
        bucket: TokenBucket::new(WRITE_BURST, WRITES_PER_SECOND, Instant::now()),
        dropped: dropped.clone(),
    };
    (Events::new(sender, dropped), tokio::spawn(publisher.run(receiver)))
}

/// This replica's name in `reportingInstance`: `POD_NAME`, else `HOSTNAME` (a Pod's name), else `provgate`.
fn reporting_instance() -> String {
    let name = ["POD_NAME", "HOSTNAME"].into_iter().find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()));
    let mut name = name.unwrap_or_else(|| "provgate".to_owned());
    name.truncate(128);
    name
}

struct Publisher {
    client: kube::Client,
    instance: String,
    series: SeriesMap,
    bucket: TokenBucket,
    dropped: Counter,
}

impl Publisher {
    async fn run(mut self, mut notices: mpsc::Receiver<Notice>) {
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Some(notice) => self.take(notice).await,
                    None => return,
                },
                _ = ticks.tick() => self.flush().await,
            }
        }
    }

    /// Counts a notice's occurrences; a new series's Event is created at once when the budget allows.
    async fn take(&mut self, notice: Notice) {
        for occurrence in notice.occurrences {
            let key = SeriesKey {
                target: notice.target.clone(),
                reason: occurrence.reason,
                image: occurrence.image,
                code: occurrence.code,
            };
            let now = Instant::now();
            match self.series.observe(key.clone(), occurrence.note, now, SystemTime::now()) {
                Observed::New if self.bucket.take(now) => self.write(&key).await,
                Observed::New | Observed::Repeat => {}
                Observed::Full => {
                    self.dropped.inc();
                    tracing::debug!(object = %key.target.name, "too many live Event series; this occurrence is dropped");
                }
            }
        }
    }

    /// Ends old series and writes the ones the API is behind on, oldest first, while the budget allows.
    async fn flush(&mut self) {
        self.series.prune(Instant::now());
        for key in self.series.due() {
            if !self.bucket.take(Instant::now()) {
                return;
            }
            self.write(&key).await;
        }
    }

    /// Creates the series's Event, or patches its count; a failed write forgets the series (best effort).
    async fn write(&mut self, key: &SeriesKey) {
        let Some(series) = self.series.get(key) else { return };
        let count = series.count;
        let api: Api<Event> = Api::namespaced(self.client.clone(), &key.target.namespace);
        let written = match &series.published {
            None => {
                let event = self.event(key, &series.note, count, series.first_seen, series.last_seen);
                let created = tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &event)).await;
                flatten(created).map(|e| e.metadata.name.unwrap_or_default())
            }
            Some(published) => {
                let patch = serde_json::json!({ "series": event_series(count, series.last_seen) });
                let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
                let patched = api.patch(&published.name, &params, &patch);
                flatten(tokio::time::timeout(CALL_TIMEOUT, patched).await).map(|_| published.name.clone())
            }
        };
        match written {
            Ok(name) => self.series.published(key, Published { name, count }),
            Err(error) => {
                tracing::warn!(%error, namespace = %key.target.namespace, object = %key.target.name, reason = key.reason.as_str(), "Event not written");
                self.series.forget(key);
            }
        }
    }

    fn event(&self, key: &SeriesKey, note: &str, count: u32, first: SystemTime, last: SystemTime) -> Event {
        let Target { api_version, kind, name, namespace, uid } = &key.target;
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(name, first)),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(timestamp(first))),
            series: (count > 1).then(|| event_series(count, last)),
            reason: Some(key.reason.as_str().to_owned()),
            type_: Some("Warning".to_owned()),
            action: Some("Admit".to_owned()),
            note: Some(note.to_owned()),
            regarding: Some(ObjectReference {
                api_version: Some(api_version.clone()),
                kind: Some(kind.clone()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                uid: uid.clone(),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// `OBJECT.NANOS` (hex), as client-go and kube-runtime name Events, within the 253 bytes of a DNS subdomain. The
/// API server's strict Event validation refuses a `generateName` ending in `.`, so the name is made here.
fn event_name(object: &str, first: SystemTime) -> String {
    let nanos = first.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let suffix = format!(".{nanos:x}");
    let cut = object.get(..object.len().min(253 - suffix.len())).unwrap_or(object);
    let prefix = cut.trim_end_matches(['.', '-']);
    format!("{prefix}{suffix}")
}

fn event_series(count: u32, last: SystemTime) -> EventSeries {
    EventSeries { count: i32::try_from(count).unwrap_or(i32::MAX), last_observed_time: MicroTime(timestamp(last)) }
}

fn timestamp(at: SystemTime) -> Timestamp {
    Timestamp::try_from(at).unwrap_or_else(|_| Timestamp::now())
}

/// Why a write failed, as one message.
fn flatten<T>(result: Result<Result<T, kube::Error>, tokio::time::error::Elapsed>) -> Result<T, String> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {CALL_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_dns_subdomains_of_the_object_and_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(0xabc);
        assert_eq!(event_name("web", at), "web.abc");
        // 2027: 16 hex digits of nanoseconds, so 236 bytes of the object's name fit; a cut never ends in . or -.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let long = format!("{}.-{}", "a".repeat(234), "b".repeat(17));
        assert_eq!(event_name(&long, at), format!("{}.18fae27693b40000", "a".repeat(234)));
    }
}
