//! Writes decision records off the admission path: a bounded queue, one writer thread with a buffered writer that
//! takes records in batches, and files rotated by size. Admission never waits for it; what does not fit in the queue
//! is dropped and counted.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::Record;
use crate::config::AuditConfig;

/// The decision log's counters (`provgate_audit_records_written_total`, `provgate_audit_records_dropped_total`).
#[derive(Clone, Default, Debug)]
pub struct AuditMetrics {
    /// Records written and flushed.
    pub written: Counter,
    /// Records lost: the queue was full, or writing them failed.
    pub dropped: Counter,
}

/// At most one log line per this interval for each kind of trouble (a full queue, a failing write).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Records written before the writer flushes even when more are waiting.
const BATCH: u64 = 1024;

/// The writer's buffer.
const BUFFER_BYTES: usize = 64 * 1024;

/// How long the writer rests after each batch, so that under load it wakes a few hundred times a second and takes
/// records in batches rather than being woken (a futex wake and a context switch on the admission path) for each.
/// A record reaches the file at most this much later; the queue holds `audit.queueSize` records meanwhile.
const LINGER: Duration = Duration::from_millis(2);

/// The handle admission writes through: cheap to clone, never waits.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
}

/// What the handles and the writer thread share.
struct Shared {
    metrics: AuditMetrics,
    queue_size: usize,
    queue_bytes: usize,
    /// Bytes of the records in the queue.
    queued_bytes: AtomicUsize,
    /// Records ever accepted into the queue.
    accepted: AtomicU64,
    /// Records the writer has finished with (written and flushed, or lost), ever.
    settled: Mutex<u64>,
    settled_changed: Condvar,
    /// Rate limit of the "queue full" log line.
    full: Throttle,
}

impl Shared {
    fn settle(&self, records: u64) {
        *self.settled.lock().unwrap_or_else(PoisonError::into_inner) += records;
        self.settled_changed.notify_all();
    }
}

/// About what a record takes besides its images, and what each image adds (a signed, allowed image's line).
const LINE_BYTES: usize = 512;
const IMAGE_BYTES: usize = 448;

impl AuditLog {
    /// Opens the log `config` names (standard output when none), creating the file, and starts the writer thread.
    pub fn open(config: &AuditConfig, metrics: AuditMetrics) -> std::io::Result<Self> {
        let mut sink = Sink::new(config);
        if sink.file.is_some() {
            sink.ensure_open()?;
        }
        let (queue, records) = std::sync::mpsc::sync_channel(config.queue_size);
        let shared = Arc::new(Shared {
            metrics,
            queue_size: config.queue_size,
            queue_bytes: config.queue_bytes,
            queued_bytes: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            settled: Mutex::new(0),
            settled_changed: Condvar::new(),
            full: Throttle::new(LOG_EVERY),
        });
        let writer = Writer { sink, shared: shared.clone(), pending: 0, errors: Throttle::new(LOG_EVERY) };
        std::thread::Builder::new().name("provgate-audit".into()).spawn(move || writer.run(&records))?;
        Ok(Self { queue, shared })
    }

    /// Queues `record` for the writer without waiting. When the queue holds `audit.queueSize` records or
    /// `audit.queueBytes` bytes, the record is dropped, counted, and logged (one line per 10 s at most).
    pub fn submit(&self, record: &Record) {
        let line = match line(record) {
            Ok(line) => line,
            Err(e) => {
                self.shared.metrics.dropped.inc();
                return tracing::error!(error = %e, uid = %record.uid, "audit record not serialisable; dropped");
            }
        };
        // What the line holds of memory, not only its text, counts against `audit.queueBytes`.
        let len = line.capacity();
        let held = self.shared.queued_bytes.fetch_add(len, Ordering::SeqCst);
        if held.saturating_add(len) > self.shared.queue_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            return self.dropped(false);
        }
        match self.queue.try_send(line) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                self.dropped(matches!(e, TrySendError::Disconnected(_)));
            }
        }
    }

    fn dropped(&self, writer_gone: bool) {
        self.shared.metrics.dropped.inc();
        let Some(dropped) = self.shared.full.hit() else { return };
        let (size, bytes) = (self.shared.queue_size, self.shared.queue_bytes);
        if writer_gone {
            tracing::error!(dropped, "the audit writer has stopped; decision records are dropped (please report this)");
        } else {
            tracing::warn!(
                dropped,
                queue_size = size,
                queue_bytes = bytes,
                "audit queue full (audit.queueSize, audit.queueBytes): decision records dropped, admission goes on; \
                 the audit log's destination does not keep up"
            );
        }
    }

    /// Waits, blocking the thread, until every record queued before the call is written and flushed (or lost), for
    /// at most `timeout`; whether it got there.
    pub fn settle(&self, timeout: Duration) -> bool {
        let target = self.shared.accepted.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut settled = self.shared.settled.lock().unwrap_or_else(PoisonError::into_inner);
        while *settled < target {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            settled = self.shared.settled_changed.wait_timeout(settled, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    /// [`AuditLog::settle`] without blocking the async runtime (for shutdown).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.settle(timeout)).await.unwrap_or(false)
    }
}

/// The writer thread: takes records off the queue, writes them, flushes whenever the queue is empty.
struct Writer {
    sink: Sink,
    shared: Arc<Shared>,
    /// Records written into the buffer since the last flush.
    pending: u64,
    errors: Throttle,
}

impl Writer {
    fn run(mut self, records: &Receiver<Vec<u8>>) {
        while let Ok(first) = records.recv() {
            let mut taken: u64 = 0;
            let mut next = Some(first);
            while let Some(line) = next.take() {
                self.shared.queued_bytes.fetch_sub(line.capacity(), Ordering::SeqCst);
                self.write(&line);
                taken += 1;
                if taken < BATCH {
                    next = records.try_recv().ok();
                }
            }
            self.flush();
            self.shared.settle(taken);
            std::thread::sleep(LINGER);
        }
        self.flush();
    }

    fn write(&mut self, line: &[u8]) {
        if self.sink.rotation_due(line.len()) {
            self.flush();
            if let Err(e) = self.sink.rotate() {
                self.failed("rotating the audit log failed; writing on to the current file", &e, 0);
            }
        }
        match self.sink.write(line) {
            Ok(()) => self.pending += 1,
            Err(e) => {
                let lost = self.pending + 1;
                self.pending = 0;
                self.sink.discard();
                self.failed("writing the audit log failed; records dropped", &e, lost);
            }
        }
    }

    fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        let records = std::mem::take(&mut self.pending);
        match self.sink.flush() {
            Ok(()) => {
                self.shared.metrics.written.inc_by(records);
            }
            Err(e) => {
                self.sink.discard();
                self.failed("writing the audit log failed; records dropped", &e, records);
            }
        }
    }

    /// Counts `lost` records as dropped and logs `what` (one line per 10 s at most).
    fn failed(&self, what: &str, error: &std::io::Error, lost: u64) {
        self.shared.metrics.dropped.inc_by(lost);
        if let Some(times) = self.errors.hit() {
            let log = self.sink.file.as_ref().map(|f| f.path.display().to_string()).unwrap_or("stdout".into());
            tracing::error!(%error, log, times, dropped = lost, "{what}");
        }
    }
}

/// Where records are written: standard output, or a file rotated by size.
struct Sink {
    writer: Option<Out>,
    file: Option<Rotation>,
    /// Bytes in the current file.
    size: u64,
}

type Out = BufWriter<Box<dyn Write + Send>>;

/// A file's rotation: `audit.log` → `audit.log.1` → … → `audit.log.KEEP`, the oldest removed.
struct Rotation {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    /// After a failed rotation, when to try again.
    retry_at: Option<Instant>,
}

impl Sink {
    fn new(config: &AuditConfig) -> Self {
        let file = config.log.as_ref().map(|path| Rotation {
            path: path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            retry_at: None,
        });
        Self { writer: None, file, size: 0 }
    }

    /// The open destination, opened now (appending to the file) if it is not.
    fn ensure_open(&mut self) -> std::io::Result<&mut Out> {
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => {
                let out: Box<dyn Write + Send> = match &self.file {
                    None => Box::new(std::io::stdout()),
                    Some(rotation) => {
                        let file = OpenOptions::new().create(true).append(true).open(&rotation.path)?;
                        self.size = file.metadata()?.len();
                        Box::new(file)
                    }
                };
                BufWriter::with_capacity(BUFFER_BYTES, out)
            }
        };
        Ok(self.writer.insert(writer))
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.ensure_open()?.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }

    /// Forgets the buffer and the open file after an error (the next write opens the file again).
    fn discard(&mut self) {
        if let Some(writer) = self.writer.take() {
            drop(writer.into_parts());
        }
    }

    /// Whether the current file must be rotated before `len` more bytes (a record longer than `maxBytes` goes
    /// alone into a file of its own).
    fn rotation_due(&self, len: usize) -> bool {
        self.file.as_ref().is_some_and(|r| {
            self.size > 0
                && self.size.saturating_add(len as u64) > r.max_bytes
                && r.retry_at.is_none_or(|t| Instant::now() >= t)
        })
    }

    /// Renames the current file to `.1` (older ones one up, the oldest removed) and starts a new one. The buffer
    /// must be flushed.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Some(rotation) = &mut self.file else { return Ok(()) };
        self.writer = None;
        let result = rotation.shift();
        rotation.retry_at = result.is_err().then(|| Instant::now() + LOG_EVERY);
        result?;
        self.ensure_open().map(|_| ())
    }
}

impl Rotation {
    /// `path.N`.
    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn shift(&self) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            rename_if_there(&self.numbered(n), &self.numbered(n + 1))?;
        }
        rename_if_there(&self.path, &self.numbered(1))
    }
}

fn rename_if_there(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Lets one log line through per interval and counts the events in between.
struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// Counts one event; when a line is due, the events since the last line (this one included).
    fn hit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1 += 1;
        let now = Instant::now();
        if state.0.is_some_and(|last| now.duration_since(last) < self.every) {
            return None;
        }
        state.0 = Some(now);
        Some(std::mem::take(&mut state.1))
    }
}

/// `record` as one line of JSON, newline included. The keys are written as literals and the values by sonic-rs:
/// with its SIMD string escaping a line costs half the instructions serde_json's byte-at-a-time escaping does (the
/// record's text is mostly references and digests), and a derived serialisation would escape every key as it
/// escapes any string, about a hundred instructions a key, eight keys an image. Readers use serde_json; the two
/// write the same bytes (tested), so a field added to [`Record`] or [`ImageRecord`] must be added here.
fn line(record: &Record) -> Result<Vec<u8>, sonic_rs::Error> {
    // Sized for a typical record, so that writing it seldom grows the buffer.
    let mut line = Vec::with_capacity(LINE_BYTES + IMAGE_BYTES * record.images.len());
    let out = &mut line;
    field(out, b"{\"v\":", &record.v)?;
    field(out, b",\"time\":", &record.time)?;
    field(out, b",\"uid\":", &record.uid)?;
    field(out, b",\"namespace\":", &record.namespace)?;
    field(out, b",\"kind\":", &record.kind)?;
    field(out, b",\"name\":", &record.name)?;
    field(out, b",\"operation\":", &record.operation)?;
    field(out, b",\"user\":", &record.user)?;
    field(out, b",\"dryRun\":", &record.dry_run)?;
    field(out, b",\"decision\":", &record.decision)?;
    field(out, b",\"latencyMs\":", &record.latency_ms)?;
    if let Some(reason) = &record.reason {
        field(out, b",\"reason\":", reason)?;
    }
    if let Some(message) = &record.message {
        field(out, b",\"message\":", message)?;
    }
    out.extend_from_slice(b",\"images\":[");
    for (i, image) in record.images.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        field(out, b"{\"field\":", &image.field)?;
        field(out, b",\"ref\":", &image.reference)?;
        field(out, b",\"digest\":", &image.digest)?;
        field(out, b",\"policies\":", &image.policies)?;
        field(out, b",\"outcome\":", &image.outcome)?;
        field(out, b",\"reason\":", &image.reason)?;
        field(out, b",\"message\":", &image.message)?;
        if !image.verified.is_empty() {
            field(out, b",\"verified\":", &image.verified)?;
        }
        if !image.failures.is_empty() {
            field(out, b",\"failures\":", &image.failures)?;
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}\n");
    Ok(line)
}

/// `key` (a literal such as `,"name":`) and `value` as JSON.
fn field(out: &mut Vec<u8>, key: &[u8], value: &impl serde::Serialize) -> Result<(), sonic_rs::Error> {
    out.extend_from_slice(key);
    sonic_rs::to_writer(out, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Decision;
    use std::borrow::Cow;

    fn record(uid: &str) -> Record<'static> {
        static ALLOWED: std::sync::LazyLock<Decision> = std::sync::LazyLock::new(Decision::allow_without_images);
        let mut record = super::super::record("", None, &ALLOWED, Duration::ZERO, "2026-11-30T00:00:00Z".into());
        record.uid = uid.to_owned().into();
        record
    }

    fn config(log: &Path) -> AuditConfig {
        AuditConfig { log: Some(log.to_owned()), ..AuditConfig::default() }
    }

    fn uids(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|l| serde_json::from_str::<Record>(l).unwrap().uid.into_owned()).collect()
    }

    #[test]
    fn records_are_written_in_order_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "").unwrap();
        let metrics = AuditMetrics::default();
        let log = AuditLog::open(&config(&path), metrics.clone()).unwrap();
        let sent: Vec<String> = (0..100).map(|i| format!("u-{i:03}")).collect();
        for uid in &sent {
            log.submit(&record(uid));
        }
        assert!(log.settle(Duration::from_secs(10)));
        assert_eq!(uids(&path), sent);
        assert_eq!((metrics.written.get(), metrics.dropped.get()), (100, 0));
    }

    #[test]
    fn files_rotate_by_size_and_the_oldest_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let line = serde_json::to_vec(&record("u-000")).unwrap().len() as u64 + 1;
        // Two records fit in a file; a third rotates it. An existing file counts with its size.
        std::fs::write(&path, vec![b'\n'; usize::try_from(line).unwrap()]).unwrap();
        let config = AuditConfig { max_bytes: 2 * line + 1, keep: 2, ..config(&path) };
        let log = AuditLog::open(&config, AuditMetrics::default()).unwrap();
        for i in 0..7 {
            log.submit(&record(&format!("u-{i:03}")));
        }
        assert!(log.settle(Duration::from_secs(10)));
        assert_eq!(uids(&path), ["u-005", "u-006"]);
        assert_eq!(uids(&dir.path().join("audit.log.1")), ["u-003", "u-004"]);
        assert_eq!(uids(&dir.path().join("audit.log.2")), ["u-001", "u-002"]);
        assert!(!dir.path().join("audit.log.3").exists(), "only keep: 2 rotations are kept");
    }

    #[test]
    fn a_failing_write_drops_and_counts_and_never_blocks() {
        let metrics = AuditMetrics::default();
        // Every write to /dev/full fails with "no space left on device".
        let log = AuditLog::open(&config(Path::new("/dev/full")), metrics.clone()).unwrap();
        for i in 0..5 {
            log.submit(&record(&format!("u-{i}")));
        }
        assert!(log.settle(Duration::from_secs(10)));
        assert_eq!((metrics.written.get(), metrics.dropped.get()), (0, 5));
    }

    #[test]
    fn a_log_that_cannot_be_opened_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let error = AuditLog::open(&config(dir.path()), AuditMetrics::default()).err().unwrap();
        assert_eq!(error.kind(), std::io::ErrorKind::IsADirectory, "{error}");
    }

    #[test]
    fn records_beyond_the_queue_bytes_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let metrics = AuditMetrics::default();
        let log = AuditLog::open(&AuditConfig { queue_bytes: 64, ..config(&path) }, metrics.clone()).unwrap();
        log.submit(&record("too-large-for-the-queue"));
        assert!(log.settle(Duration::from_secs(10)));
        assert_eq!((metrics.written.get(), metrics.dropped.get()), (0, 1));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn the_queue_counts_the_memory_a_line_holds_and_gives_it_back_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let metrics = AuditMetrics::default();
        // Room for this line's text, not for the buffer it is written into: the buffer is what memory holds.
        let text = serde_json::to_vec(&record("u-0")).unwrap().len() + 1;
        assert!(text < LINE_BYTES);
        let log = AuditLog::open(&AuditConfig { queue_bytes: text, ..config(&path) }, metrics.clone()).unwrap();
        log.submit(&record("u-0"));
        assert!(log.settle(Duration::from_secs(10)));
        assert_eq!((metrics.written.get(), metrics.dropped.get()), (0, 1));
        // With room for many, every line is written and the count comes back to nothing.
        let log =
            AuditLog::open(&AuditConfig { queue_bytes: 100 * LINE_BYTES, ..config(&path) }, metrics.clone()).unwrap();
        for i in 0..50 {
            log.submit(&record(&format!("u-{i}")));
        }
        assert!(log.settle(Duration::from_secs(10)));
        assert_eq!(metrics.written.get(), 50);
        assert_eq!(log.shared.queued_bytes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_throttle_lets_one_line_through_and_counts_the_rest() {
        let quiet = Throttle::new(Duration::from_secs(3600));
        assert_eq!(quiet.hit(), Some(1));
        assert_eq!((quiet.hit(), quiet.hit(), quiet.hit()), (None, None, None));
        let open = Throttle::new(Duration::ZERO);
        assert_eq!((open.hit(), open.hit()), (Some(1), Some(1)));
    }

    #[test]
    fn a_line_is_the_json_serde_json_writes_whatever_the_strings_hold() {
        // Every byte JSON must escape, at every offset a 16- or 32-byte SIMD block can put it, and text that needs
        // none: a request's fields are the Pod author's.
        let controls: String = (0u8..0x20).map(char::from).collect();
        let nasty = [
            String::new(),
            "plain".to_owned(),
            format!("\"quoted\" and \\back\\slashed {controls} \u{7f} é 雪 \u{2028}\u{2029} 🦀 </script>"),
        ];
        let mut texts: Vec<String> = nasty.to_vec();
        // Longer than the buffer a line is sized for, escapes spread through it.
        texts.push(format!("{}\"", "ab\\c\u{1}défg雪".repeat(20_000)));
        for pad in 0..40 {
            for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é'] {
                texts.push(format!("{}{special}{}", "a".repeat(pad), "b".repeat(40 - pad)));
            }
        }
        for (i, text) in texts.iter().enumerate() {
            let mut record = record(text);
            record.namespace = text.clone().into();
            record.message = Some(text.clone().into());
            // A request denied as a whole has a reason too; most have none.
            record.reason = (i % 2 == 0).then(|| text.clone().into());
            let t = || Cow::Owned(text.clone());
            let failure = crate::audit::FailureRecord { policy: Some(t()), mode: t(), reason: t(), message: t() };
            record.images.push(crate::audit::ImageRecord {
                field: t(),
                reference: t(),
                digest: None,
                policies: vec![t(), t()],
                outcome: t(),
                reason: Some(t()),
                message: None,
                verified: vec![t()],
                failures: vec![failure],
            });
            // And an image with only what every record holds.
            record.images.push(crate::audit::ImageRecord {
                field: t(),
                reference: t(),
                digest: Some(t()),
                policies: vec![],
                outcome: t(),
                reason: None,
                message: Some(t()),
                verified: vec![],
                failures: vec![],
            });
            let written = line(&record).unwrap();
            let (body, newline) = written.split_at(written.len() - 1);
            assert_eq!(newline, b"\n");
            assert!(!body.iter().any(|b| *b < 0x20), "a raw control byte in {text:?}");
            assert_eq!(body, serde_json::to_vec(&record).unwrap().as_slice(), "{text:?}");
            assert_eq!(serde_json::from_slice::<Record>(body).unwrap(), record, "{text:?}");
        }
    }

    #[test]
    fn a_line_of_many_images_in_every_shape_is_the_json_serde_json_writes() {
        // A Pod author's object may name hundreds of images, repeated and each in its own state: every optional
        // part present or absent, in every combination, one after another in one line.
        let mut record = record("u-many");
        record.reason = Some("too-many-images".into());
        for i in 0..256usize {
            let text = |what: &str| Cow::Owned(format!("{what}-{i}-\"{}\"\\\n", "é".repeat(i % 7)));
            let failure = crate::audit::FailureRecord {
                policy: (i % 3 == 0).then(|| text("policy")),
                mode: text("mode"),
                reason: text("reason"),
                message: text("message"),
            };
            record.images.push(crate::audit::ImageRecord {
                field: text("field"),
                reference: text("ref"),
                digest: (i % 2 == 0).then(|| text("digest")),
                policies: (0..i % 4).map(|_| text("policy")).collect(),
                outcome: text("outcome"),
                reason: (i % 5 == 0).then(|| text("reason")),
                message: (i % 6 == 0).then(|| text("message")),
                verified: (0..i % 3).map(|_| text("verified")).collect(),
                failures: (0..i % 2).map(|_| failure.clone()).collect(),
            });
        }
        let written = line(&record).unwrap();
        let body = written.strip_suffix(b"\n").unwrap();
        assert_eq!(body, serde_json::to_vec(&record).unwrap().as_slice());
        assert_eq!(serde_json::from_slice::<Record>(body).unwrap(), record);
    }
}
