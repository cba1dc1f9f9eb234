//! `provgate audit`: reads decision logs back (plain, gzip-rotated, or standard input), filters them, and
//! summarises denials or shows one decision in full.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{ImageRecord, Record, VERSION};

/// Why `provgate audit` could not answer (both exit with 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// A log that cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The log as given (`-` for standard input).
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The filters of `provgate audit`, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Records at or after this time: a duration ago (`1h`, `30m`) or an RFC 3339 time.
    pub since: Option<String>,
    /// Records at or before this time, in the same forms as `since`.
    pub until: Option<String>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this decision: `allow`, `warn` or `deny`.
    pub decision: Option<String>,
    /// Only denials (`--decision deny`).
    pub denied: bool,
    /// Only images governed by this policy.
    pub policy: Option<String>,
    /// Only images whose reference matches this glob (`*` stays within a path segment, `**` crosses them).
    pub image: Option<String>,
    /// Only this reason code, of an image or of the whole request.
    pub reason: Option<String>,
    /// Only requests by this user.
    pub user: Option<String>,
}

/// One `provgate audit` invocation.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The logs to read, in order; `-` is standard input.
    pub logs: Vec<String>,
    /// The filters.
    pub query: Query,
    /// `--output json`.
    pub json: bool,
    /// `show UID`: the decision to print in full instead of the summary.
    pub show: Option<String>,
}

/// A record read from a log, with its parsed time.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record as read.
    pub record: Record<'static>,
    /// `record.time`, parsed.
    pub time: DateTime<Utc>,
}

/// What the logs held.
#[derive(Debug, Default)]
pub struct Log {
    /// The records, in the order read.
    pub entries: Vec<Entry>,
    /// Lines that were not records (a truncated last line, other output, another format version).
    pub skipped: usize,
}

/// Reads the logs in `sources` (`-` is `stdin`); gzip-compressed input is recognised by its magic bytes.
pub fn read(sources: &[String], stdin: &mut dyn Read) -> Result<Log, Error> {
    let mut log = Log::default();
    for source in sources {
        let failed = |source_error| Error::Read { path: source.clone(), source: source_error };
        if source == "-" {
            read_stream(BufReader::new(&mut *stdin), &mut log).map_err(failed)?;
        } else {
            let file = std::fs::File::open(source).map_err(failed)?;
            read_stream(BufReader::new(file), &mut log).map_err(failed)?;
        }
    }
    Ok(log)
}

fn read_stream<R: Read>(mut reader: BufReader<R>, log: &mut Log) -> std::io::Result<()> {
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if gzip {
        read_lines(BufReader::new(flate2::read::MultiGzDecoder::new(reader)), log, true)
    } else {
        read_lines(reader, log, false)
    }
}

/// The longest line read as a record (a record of 256 images with their messages is well under 1 MiB). A longer
/// line is not a record: it is skipped without being held in memory whole.
const MAX_LINE: u64 = 4 << 20;

fn read_lines(mut reader: impl BufRead, log: &mut Log, gzip: bool) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE + 1).read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(n) if n as u64 > MAX_LINE && line.last() != Some(&b'\n') => {
                log.skipped += 1;
                skip_line(&mut reader)?;
            }
            Ok(_) => add_line(&line, log),
            // A gzip file cut short (a rotation still being written): what was read is kept, its tail skipped.
            Err(e) if gzip && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    log.skipped += 1;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads past the rest of the current line, a buffer at a time.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

fn add_line(line: &[u8], log: &mut Log) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match parse_line(line) {
        Some(entry) => log.entries.push(entry),
        None => log.skipped += 1,
    }
}

fn parse_line(line: &[u8]) -> Option<Entry> {
    let record: Record<'static> = serde_json::from_slice(line).ok()?;
    if record.v != VERSION {
        return None;
    }
    let time = DateTime::parse_from_rfc3339(&record.time).ok()?.with_timezone(&Utc);
    Some(Entry { record, time })
}

/// The filters, checked and compiled.
#[derive(Debug)]
pub struct Filter {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    namespace: Option<String>,
    decision: Option<String>,
    policy: Option<String>,
    image: Option<globset::GlobMatcher>,
    reason: Option<String>,
    user: Option<String>,
}

fn parse_time(flag: &str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(value).map_err(|e| {
        Error::Usage(format!("{flag} {value:?}: neither a duration such as 1h nor an RFC 3339 time ({e})"))
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| Error::Usage(format!("{flag} {value:?}: too long ago")))?;
    now.checked_sub_signed(ago).ok_or_else(|| Error::Usage(format!("{flag} {value:?}: too long ago")))
}

impl Filter {
    /// Checks and compiles `query`; durations count back from `now`.
    pub fn new(query: &Query, now: DateTime<Utc>) -> Result<Self, Error> {
        let since = query.since.as_deref().map(|v| parse_time("--since", v, now)).transpose()?;
        let until = query.until.as_deref().map(|v| parse_time("--until", v, now)).transpose()?;
        if let Some(d) = &query.decision
            && !["allow", "warn", "deny"].contains(&d.as_str())
        {
            return Err(Error::Usage(format!("--decision {d:?}: one of allow, warn, deny")));
        }
        let decision = match (query.denied, &query.decision) {
            (true, Some(d)) if d != "deny" => {
                return Err(Error::Usage(format!("--denied contradicts --decision {d}")));
            }
            (true, _) => Some("deny".to_owned()),
            (false, d) => d.clone(),
        };
        let image = query
            .image
            .as_deref()
            .map(|g| {
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| Error::Usage(format!("--image {g:?}: {}", e.kind())))
            })
            .transpose()?;
        Ok(Self {
            since,
            until,
            namespace: query.namespace.clone(),
            decision,
            policy: query.policy.clone(),
            image,
            reason: query.reason.clone(),
            user: query.user.clone(),
        })
    }

    /// What the summary counts: denials, unless `--decision warn` (images admitted with a warning) or `--decision
    /// allow` (failures recorded under audit-mode policies in admitted requests) asks for the failures of another
    /// mode.
    pub fn summarised(&self) -> Summarised {
        match self.decision.as_deref() {
            Some("warn") => Summarised::Warned,
            Some("allow") => Summarised::Audited,
            _ => Summarised::Denied,
        }
    }

    fn selects_images(&self) -> bool {
        self.policy.is_some() || self.image.is_some()
    }

    /// Whether `image` passes the image filters (policy, image glob, reason).
    fn keeps_image(&self, image: &ImageRecord) -> bool {
        self.policy.as_ref().is_none_or(|p| image.policies.iter().any(|q| q == p))
            && self.image.as_ref().is_none_or(|g| g.is_match(&*image.reference))
            && self.reason.as_deref().is_none_or(|r| image.reason.as_deref() == Some(r))
    }

    /// Whether the whole-request failure of `record` passes the image filters.
    fn keeps_request_reason(&self, record: &Record) -> bool {
        !self.selects_images()
            && record.reason.is_some()
            && self.reason.as_deref().is_none_or(|r| record.reason.as_deref() == Some(r))
    }

    /// Whether `entry` passes every filter (for the image filters: one of its images, or its whole-request reason).
    pub fn keeps(&self, entry: &Entry) -> bool {
        let record = &entry.record;
        let by_request = self.since.is_none_or(|t| entry.time >= t)
            && self.until.is_none_or(|t| entry.time <= t)
            && self.namespace.as_ref().is_none_or(|n| &record.namespace == n)
            && self.decision.as_ref().is_none_or(|d| &record.decision == d)
            && self.user.as_ref().is_none_or(|u| &record.user == u);
        let image_filters = self.selects_images() || self.reason.is_some();
        by_request
            && (!image_filters
                || record.images.iter().any(|i| self.keeps_image(i))
                || self.keeps_request_reason(record))
    }
}

/// Which failures the summary groups: those of one mode, in the decisions that mode gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summarised {
    /// Images denied (enforce mode), in denied decisions.
    Denied,
    /// Images admitted with a warning (warn mode), in `warn` decisions.
    Warned,
    /// Images whose failures were only recorded (audit mode), in admitted decisions.
    Audited,
}

impl Summarised {
    /// The decision, the image outcome and the policy mode of what is counted.
    fn labels(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Denied => ("deny", "denied", "enforce"),
            Self::Warned => ("warn", "warned", "warn"),
            Self::Audited => ("allow", "audited", "audit"),
        }
    }

    /// What one counted item is called in the table's closing line.
    fn noun(self) -> &'static str {
        match self {
            Self::Denied => "denial",
            Self::Warned => "warning",
            Self::Audited => "audited failure",
        }
    }
}

/// One row of the summary: denials (or warnings, or audited failures: see [`Summarised`]) of one image by one
/// policy for one reason in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The namespace of the request.
    pub namespace: String,
    /// The image as written in the object; empty for a request denied as a whole.
    pub image: String,
    /// The policy that denied the image (recorded in its failures); for records without failures, the policies
    /// that governed it, comma-separated; null when none did.
    pub policy: Option<String>,
    /// The reason code.
    pub reason: String,
    /// How many denials.
    pub count: u64,
    /// The time of the first denial (RFC 3339, as recorded).
    pub first_seen: String,
    /// The time of the last denial.
    pub last_seen: String,
    #[serde(skip)]
    first: DateTime<Utc>,
    #[serde(skip)]
    last: DateTime<Utc>,
}

type Key = (String, String, Option<String>, String);

/// Denials in `entries` (or what [`Filter::summarised`] names) grouped by namespace, image, policy and reason, the
/// most frequent first. Only images that pass `filter`'s image filters are counted.
pub fn summarise<'a>(entries: impl IntoIterator<Item = &'a Entry>, filter: &Filter) -> Vec<Row> {
    let mut groups: BTreeMap<Key, Row> = BTreeMap::new();
    let mut add = |key: Key, entry: &Entry| {
        let row = groups.entry(key.clone()).or_insert_with(|| Row {
            namespace: key.0,
            image: key.1,
            policy: key.2,
            reason: key.3,
            count: 0,
            first_seen: entry.record.time.to_string(),
            last_seen: entry.record.time.to_string(),
            first: entry.time,
            last: entry.time,
        });
        row.count += 1;
        if entry.time < row.first {
            (row.first, row.first_seen) = (entry.time, entry.record.time.to_string());
        }
        if entry.time > row.last {
            (row.last, row.last_seen) = (entry.time, entry.record.time.to_string());
        }
    };
    let (decision, outcome, mode) = filter.summarised().labels();
    for entry in entries {
        let record = &entry.record;
        if record.decision != decision {
            continue;
        }
        if let Some(reason) = &record.reason
            && decision == "deny"
            && filter.keeps_request_reason(record)
        {
            add((record.namespace.to_string(), String::new(), None, reason.to_string()), entry);
        }
        for image in record.images.iter().filter(|i| i.outcome == outcome && filter.keeps_image(i)) {
            let reason = image.reason.as_deref().unwrap_or("unknown").to_owned();
            let policy = failing_policy(image, &reason, mode);
            add((record.namespace.to_string(), image.reference.to_string(), policy, reason), entry);
        }
    }
    let mut rows: Vec<Row> = groups.into_values().collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(b.last.cmp(&a.last)));
    rows
}

/// The policy under which `image` failed for `reason` in `mode` (for a denial, the policy that enforced it), as
/// recorded since records carry `failures`; for older records (or a failure under no policy), the governing
/// policies joined.
fn failing_policy(image: &ImageRecord, reason: &str, mode: &str) -> Option<String> {
    let failed = image.failures.iter().find(|f| f.mode == mode && f.reason == reason);
    match failed {
        Some(f) if f.policy.is_some() => f.policy.as_deref().map(str::to_owned),
        _ => (!image.policies.is_empty()).then(|| image.policies.join(",")),
    }
}

/// The `--output json` document.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The summary rows.
    pub summary: Vec<Row>,
    /// The matching records, as read.
    pub records: Vec<&'a Record<'static>>,
}

/// The summary as a table, followed by a line counting the matching decisions.
pub fn table(rows: &[Row], matched: &[&Entry], counted_as: Summarised) -> String {
    let mut out = String::new();
    let header = ["NAMESPACE", "IMAGE", "POLICY", "REASON", "COUNT", "FIRST SEEN", "LAST SEEN"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.clone(),
                if r.image.is_empty() { "(whole request)".to_owned() } else { r.image.clone() },
                r.policy.clone().unwrap_or_else(|| "-".to_owned()),
                r.reason.clone(),
                r.count.to_string(),
                r.first_seen.clone(),
                r.last_seen.clone(),
            ]
        })
        .collect();
    if !cells.is_empty() {
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut line = |row: &[String]| {
            let mut text = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    text.push_str(cell);
                } else if i == 4 {
                    let _ = write!(text, "{cell:>w$}  ");
                } else {
                    let _ = write!(text, "{cell:<w$}  ");
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&header.map(str::to_owned));
        for row in &cells {
            line(row);
        }
    }
    let count = |d: &str| matched.iter().filter(|e| e.record.decision == d).count();
    let denials: u64 = rows.iter().map(|r| r.count).sum();
    let _ = writeln!(
        out,
        "{} matched ({} allow, {} warn, {} deny); {} in {}",
        counted(matched.len() as u64, "decision"),
        count("allow"),
        count("warn"),
        count("deny"),
        counted(denials, counted_as.noun()),
        counted(rows.len() as u64, "group"),
    );
    out
}

/// `1 denial`, `2 denials`.
fn counted(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// One decision in full: the request, then every image with what verified or failed.
pub fn show(record: &Record) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "decision {}: {} at {} in {} ms", record.uid, record.decision, record.time, record.latency_ms);
    let object = if record.name.is_empty() { "(no name yet)" } else { &record.name };
    let namespace = if record.namespace.is_empty() { "(cluster)" } else { &record.namespace };
    let _ = writeln!(
        out,
        "  request:  {} {} {namespace}/{object} by {}{}",
        record.operation,
        record.kind,
        record.user,
        if record.dry_run { " (dry run)" } else { "" }
    );
    if let Some(reason) = &record.reason {
        let _ = writeln!(out, "  reason:   {reason}");
    }
    if let Some(message) = &record.message {
        let _ = writeln!(out, "  message:  {message}");
    }
    if record.images.is_empty() {
        let _ = writeln!(out, "  images:   none");
    }
    for image in &record.images {
        let _ = writeln!(out, "  image {}", image.reference);
        let _ = writeln!(out, "    field:    {}", image.field);
        let _ = writeln!(out, "    digest:   {}", image.digest.as_deref().unwrap_or("(not resolved)"));
        let policies = if image.policies.is_empty() { "none".to_owned() } else { image.policies.join(", ") };
        let _ = writeln!(out, "    policies: {policies}");
        match &image.reason {
            Some(reason) => {
                let _ = writeln!(out, "    outcome:  {} ({reason})", image.outcome);
            }
            None => {
                let _ = writeln!(out, "    outcome:  {}", image.outcome);
            }
        }
        if image.verified.is_empty() {
            let _ = writeln!(out, "    verified: nothing");
        }
        for (i, what) in image.verified.iter().enumerate() {
            let _ = writeln!(out, "    {} {what}", if i == 0 { "verified:" } else { "         " });
        }
        if let Some(message) = &image.message {
            let _ = writeln!(out, "    failed:   {message}");
        }
    }
    out
}

/// Runs `provgate audit` and returns its exit code: 0, or 2 on a usage error or an unreadable log.
pub fn run(options: &Options, stdin: &mut dyn Read, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match answer(options, stdin, err) {
        Ok(text) => match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(err, "provgate: cannot write the answer: {e}");
                2
            }
        },
        Err(e) => {
            let _ = writeln!(err, "provgate: {e}");
            2
        }
    }
}

/// [`run`] on the process's standard input, output and error.
pub fn run_stdio(options: &Options) -> u8 {
    run(options, &mut std::io::stdin().lock(), &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

fn answer(options: &Options, stdin: &mut dyn Read, err: &mut dyn Write) -> Result<String, Error> {
    if options.logs.is_empty() {
        return Err(Error::Usage("no log to read: name one or more files, or - for standard input".to_owned()));
    }
    let filter = Filter::new(&options.query, Utc::now())?;
    let log = read(&options.logs, stdin)?;
    if log.skipped > 0 {
        let _ = writeln!(
            err,
            "provgate: warning: skipped {} line{} that {} not a decision record (truncated, or other output)",
            log.skipped,
            if log.skipped == 1 { "" } else { "s" },
            if log.skipped == 1 { "is" } else { "are" }
        );
    }
    let matched: Vec<&Entry> = log.entries.iter().filter(|e| filter.keeps(e)).collect();
    if let Some(uid) = &options.show {
        let found: Vec<&Record> = log.entries.iter().map(|e| &e.record).filter(|r| &r.uid == uid).collect();
        if found.is_empty() {
            return Err(Error::Usage(format!("no decision with uid {uid} in {}", options.logs.join(", "))));
        }
        if options.json {
            return Ok(format!("{}\n", serde_json::to_string_pretty(&found).unwrap_or_default()));
        }
        return Ok(found.iter().map(|r| show(r)).collect::<Vec<_>>().join("\n"));
    }
    let summary = summarise(matched.iter().copied(), &filter);
    if options.json {
        let report = Report { summary, records: matched.iter().map(|e| &e.record).collect() };
        return Ok(format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()));
    }
    Ok(table(&summary, &matched, filter.summarised()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::borrow::Cow;
    use std::io::Write as _;

    use super::*;

    fn image(reference: &str, policies: &[&str], outcome: &str, reason: Option<&str>) -> ImageRecord<'static> {
        let owned = |s: &str| Cow::Owned(s.to_owned());
        ImageRecord {
            field: "spec.containers[0].image".into(),
            reference: owned(reference),
            digest: None,
            policies: policies.iter().map(|p| owned(p)).collect(),
            outcome: owned(outcome),
            reason: reason.map(owned),
            message: reason.map(|r| format!("failed: {r}").into()),
            verified: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn record<'a>(
        uid: &'a str,
        time: &'a str,
        namespace: &'a str,
        decision: &'a str,
        images: Vec<ImageRecord<'a>>,
    ) -> Record<'a> {
        Record {
            v: VERSION,
            time: time.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            kind: "Pod".into(),
            name: "web".into(),
            operation: "CREATE".into(),
            user: "alice".into(),
            dry_run: false,
            decision: decision.into(),
            latency_ms: 3,
            reason: None,
            message: None,
            images,
        }
    }

    fn line(r: &Record) -> String {
        format!("{}\n", serde_json::to_string(r).unwrap())
    }

    /// A log of six decisions: four denials of two kinds in team-a, one in team-b, one allow, one whole-request.
    fn sample() -> String {
        let evil = || image("quay.io/evil/miner:1", &[], "denied", Some("no-policy"));
        let unsigned = || image("registry.example.com/team/app:1", &["team"], "denied", Some("signature-missing"));
        let ok = || image("registry.example.com/team/app:2", &["team"], "allowed", None);
        let mut whole = record("u6", "2026-11-30T10:05:00Z", "team-a", "deny", vec![]);
        whole.reason = Some("no-policy-set".into());
        whole.user = "bob".into();
        [
            record("u1", "2026-11-30T10:00:00Z", "team-a", "deny", vec![evil(), ok()]),
            record("u2", "2026-11-30T10:02:00Z", "team-a", "deny", vec![evil()]),
            record("u3", "2026-11-30T10:01:00Z", "team-a", "deny", vec![unsigned()]),
            record("u4", "2026-11-30T10:03:00Z", "team-b", "deny", vec![evil()]),
            record("u5", "2026-11-30T10:04:00Z", "team-a", "allow", vec![ok()]),
            whole,
        ]
        .iter()
        .map(line)
        .collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T10:10:00Z").unwrap().with_timezone(&Utc)
    }

    fn log_of(text: &str) -> Log {
        read(&["-".to_owned()], &mut text.as_bytes()).unwrap()
    }

    fn rows(text: &str, query: &Query) -> Vec<(String, String, Option<String>, String, u64)> {
        let log = log_of(text);
        let filter = Filter::new(query, now()).unwrap();
        let matched: Vec<&Entry> = log.entries.iter().filter(|e| filter.keeps(e)).collect();
        summarise(matched, &filter).into_iter().map(|r| (r.namespace, r.image, r.policy, r.reason, r.count)).collect()
    }

    fn row(
        ns: &str,
        image: &str,
        policy: Option<&str>,
        reason: &str,
        count: u64,
    ) -> (String, String, Option<String>, String, u64) {
        (ns.into(), image.into(), policy.map(str::to_owned), reason.into(), count)
    }

    #[test]
    fn a_denial_is_counted_under_the_policy_that_enforced_it() {
        use crate::audit::FailureRecord;
        let failure = |policy: &'static str, mode: &'static str, reason: &'static str| FailureRecord {
            policy: Some(policy.into()),
            mode: mode.into(),
            reason: reason.into(),
            message: String::new().into(),
        };
        let mut both = image("registry.example.com/team/app:1", &["canary", "strict"], "denied", Some("unmet"));
        both.failures = vec![failure("canary", "warn", "signature-missing"), failure("strict", "enforce", "unmet")];
        let old = image("registry.example.com/team/app:1", &["canary", "strict"], "denied", Some("unmet"));
        let lines = [record("u1", "2026-11-30T10:00:00Z", "team-a", "deny", vec![both]), {
            record("u2", "2026-11-30T10:01:00Z", "team-a", "deny", vec![old])
        }]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect::<String>();
        let app = "registry.example.com/team/app:1";
        assert_eq!(
            rows(&lines, &Query::default()),
            vec![row("team-a", app, Some("canary,strict"), "unmet", 1), row("team-a", app, Some("strict"), "unmet", 1)]
        );
    }

    #[test]
    fn warnings_and_audited_failures_are_summarised_when_their_decision_is_asked_for() {
        use crate::audit::FailureRecord;
        let failed = |outcome: &str, policy: &'static str, mode: &'static str| {
            let mut i = image("registry.example.com/team/app:1", &[policy], outcome, Some("unsigned"));
            let message = "".into();
            i.failures = vec![FailureRecord {
                policy: Some(policy.into()),
                mode: mode.into(),
                reason: "unsigned".into(),
                message,
            }];
            i
        };
        let lines = [
            record("u1", "2026-11-30T10:00:00Z", "team-a", "warn", vec![failed("warned", "canary", "warn")]),
            record("u2", "2026-11-30T10:01:00Z", "team-a", "warn", vec![failed("warned", "canary", "warn")]),
            record("u3", "2026-11-30T10:02:00Z", "team-a", "allow", vec![failed("audited", "watch", "audit")]),
            record("u4", "2026-11-30T10:03:00Z", "team-a", "deny", vec![failed("denied", "strict", "enforce")]),
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect::<String>();
        let app = "registry.example.com/team/app:1";
        let query = |decision: &str| Query { decision: Some(decision.into()), ..Query::default() };
        let by = |decision: &str| rows(&lines, &query(decision));
        assert_eq!(rows(&lines, &Query::default()), vec![row("team-a", app, Some("strict"), "unsigned", 1)]);
        assert_eq!(by("deny"), vec![row("team-a", app, Some("strict"), "unsigned", 1)]);
        assert_eq!(by("warn"), vec![row("team-a", app, Some("canary"), "unsigned", 2)]);
        assert_eq!(by("allow"), vec![row("team-a", app, Some("watch"), "unsigned", 1)]);
        let table = |decision: &str| {
            let options = Options { logs: vec!["-".into()], query: query(decision), ..Options::default() };
            answer(&options, &mut lines.as_bytes(), &mut Vec::new()).unwrap()
        };
        let out = table("warn");
        assert!(out.ends_with("2 decisions matched (0 allow, 2 warn, 0 deny); 2 warnings in 1 group\n"), "{out}");
        let out = table("allow");
        assert!(out.ends_with("1 decision matched (1 allow, 0 warn, 0 deny); 1 audited failure in 1 group\n"), "{out}");
    }

    #[test]
    fn denials_are_grouped_and_sorted_by_count() {
        let got = rows(&sample(), &Query::default());
        assert_eq!(
            got,
            vec![
                row("team-a", "quay.io/evil/miner:1", None, "no-policy", 2),
                row("team-a", "", None, "no-policy-set", 1),
                row("team-b", "quay.io/evil/miner:1", None, "no-policy", 1),
                row("team-a", "registry.example.com/team/app:1", Some("team"), "signature-missing", 1),
            ]
        );
        let log = log_of(&sample());
        let filter = Filter::new(&Query::default(), now()).unwrap();
        let summary = summarise(&log.entries, &filter);
        assert_eq!(summary[0].first_seen, "2026-11-30T10:00:00Z");
        assert_eq!(summary[0].last_seen, "2026-11-30T10:02:00Z");
    }

    #[test]
    fn filters_select_records_and_images() {
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q
        };
        let table: Vec<(Query, Vec<&str>)> = vec![
            (q(|q| q.namespace = Some("team-b".into())), vec!["u4"]),
            (q(|q| q.decision = Some("allow".into())), vec!["u5"]),
            (q(|q| q.denied = true), vec!["u1", "u2", "u3", "u4", "u6"]),
            (q(|q| q.policy = Some("team".into())), vec!["u1", "u3", "u5"]),
            (q(|q| q.image = Some("quay.io/evil/*".into())), vec!["u1", "u2", "u4"]),
            (q(|q| q.image = Some("quay.io/*".into())), vec![]),
            (q(|q| q.reason = Some("signature-missing".into())), vec!["u3"]),
            (q(|q| q.reason = Some("no-policy-set".into())), vec!["u6"]),
            (q(|q| q.user = Some("bob".into())), vec!["u6"]),
            (q(|q| q.since = Some("2026-11-30T10:03:00Z".into())), vec!["u4", "u5", "u6"]),
            (q(|q| q.since = Some("8m".into())), vec!["u2", "u4", "u5", "u6"]),
            (q(|q| q.until = Some("2026-11-30T10:01:00Z".into())), vec!["u1", "u3"]),
            (q(|q| (q.since, q.until) = (Some("9m".into()), Some("7m".into()))), vec!["u2", "u3", "u4"]),
        ];
        let log = log_of(&sample());
        for (query, want) in table {
            let filter = Filter::new(&query, now()).unwrap();
            let got: Vec<&str> = log.entries.iter().filter(|e| filter.keeps(e)).map(|e| &*e.record.uid).collect();
            assert_eq!(got, want, "{query:?}");
        }
        // Image filters also narrow the summary to the images they select.
        let by_policy = rows(&sample(), &q(|q| q.policy = Some("team".into())));
        assert_eq!(
            by_policy,
            vec![row("team-a", "registry.example.com/team/app:1", Some("team"), "signature-missing", 1)]
        );
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q
        };
        for query in [
            q(|q| q.since = Some("yesterday".into())),
            q(|q| q.until = Some("2026-13-01".into())),
            q(|q| q.decision = Some("denied".into())),
            q(|q| (q.denied, q.decision) = (true, Some("allow".into()))),
            q(|q| q.image = Some("a/[b".into())),
        ] {
            assert!(matches!(Filter::new(&query, now()), Err(Error::Usage(_))), "{query:?}");
        }
    }

    #[test]
    fn lines_that_are_not_records_are_counted_and_skipped() {
        let good = sample();
        let table: Vec<(String, usize, usize)> = vec![
            (good.clone(), 6, 0),
            (format!("{good}\n\n"), 6, 0),
            (format!("{good}{}", &good[..40]), 6, 1),
            (format!("starting provgate\n{good}{{\"v\": 1}}\n[1,2]\n"), 6, 3),
            (good.replace("\"v\":1", "\"v\":2"), 0, 6),
            (good.replace("2026-11-30T10:00:00Z", "yesterday"), 5, 1),
            (good.replace("\"v\":1,", ""), 6, 0),
            ("\u{1b}[2m\u{ff}garbage\n".to_owned(), 0, 1),
        ];
        for (text, records, skipped) in table {
            let log = log_of(&text);
            assert_eq!((log.entries.len(), log.skipped), (records, skipped), "{text}");
        }
    }

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_logs_are_read_whole_rotated_and_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, gz, cut) =
            (dir.path().join("audit.jsonl"), dir.path().join("audit.jsonl.1.gz"), dir.path().join("cut.gz"));
        std::fs::write(&plain, sample()).unwrap();
        std::fs::write(&gz, gzip(&sample())).unwrap();
        let bytes = gzip(&sample());
        std::fs::write(&cut, &bytes[..bytes.len() - 12]).unwrap();
        let path = |p: &std::path::Path| p.display().to_string();
        let both = read(&[path(&gz), path(&plain)], &mut std::io::empty()).unwrap();
        assert_eq!((both.entries.len(), both.skipped), (12, 0));
        // Gzip on standard input too.
        let stdin = read(&["-".into()], &mut gzip(&sample()).as_slice()).unwrap();
        assert_eq!(stdin.entries.len(), 6);
        // A gzip file cut inside its trailer keeps every line; only a partial line would be skipped.
        let cut_log = read(&[path(&cut)], &mut std::io::empty()).unwrap();
        assert!(cut_log.entries.len() <= 6 && cut_log.entries.len() + cut_log.skipped >= 5, "{cut_log:?}");
        assert!(matches!(read(&[path(&dir.path().join("missing"))], &mut std::io::empty()), Err(Error::Read { .. })));
    }

    #[test]
    fn run_answers_with_a_table_json_or_one_decision() {
        let run_with = |options: Options, input: &str| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run(&options, &mut input.as_bytes(), &mut out, &mut err);
            (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let stdin = || Options { logs: vec!["-".into()], ..Options::default() };
        let (code, out, err) = run_with(stdin(), &format!("{}partial {{", sample()));
        assert_eq!(code, 0);
        assert!(out.starts_with("NAMESPACE  IMAGE"), "{out}");
        assert!(out.contains("6 decisions matched (1 allow, 0 warn, 5 deny); 5 denials in 4 groups"), "{out}");
        assert_eq!(
            err,
            "provgate: warning: skipped 1 line that is not a decision record (truncated, or other output)\n"
        );

        let (code, out, _) = run_with(Options { json: true, ..stdin() }, &sample());
        assert_eq!(code, 0);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["summary"][0]["count"], 2);
        assert_eq!(json["summary"][0]["firstSeen"], "2026-11-30T10:00:00Z");
        assert_eq!(json["summary"][1]["policy"], serde_json::Value::Null);
        assert_eq!(json["records"].as_array().unwrap().len(), 6);
        assert_eq!(json["records"][0]["v"], 1);

        let (code, out, _) = run_with(Options { show: Some("u3".into()), ..stdin() }, &sample());
        assert_eq!(code, 0);
        assert!(out.contains("decision u3: deny at 2026-11-30T10:01:00Z"), "{out}");
        assert!(out.contains("outcome:  denied (signature-missing)"), "{out}");
        assert!(out.contains("failed:   failed: signature-missing"), "{out}");

        let first = sample().lines().nth(1).unwrap().to_owned();
        let (_, out, _) = run_with(stdin(), &first);
        assert!(out.ends_with("\n1 decision matched (0 allow, 0 warn, 1 deny); 1 denial in 1 group\n"), "{out}");

        assert_eq!(run_with(Options { show: Some("nope".into()), ..stdin() }, &sample()).0, 2);
        assert_eq!(run_with(Options::default(), "").0, 2);
        let bad = Options { query: Query { since: Some("soon".into()), ..Query::default() }, ..stdin() };
        assert_eq!(run_with(bad, &sample()).0, 2);
    }

    #[test]
    fn a_line_longer_than_any_record_is_skipped_without_being_held() {
        let record = sample().lines().next().unwrap().to_owned();
        let mut text = format!("{record}\n");
        text.push_str(&"x".repeat(MAX_LINE as usize + 10));
        text.push('\n');
        text.push_str(&record);
        text.push('\n');
        let mut log = Log::default();
        read_lines(std::io::Cursor::new(text.into_bytes()), &mut log, false).unwrap();
        assert_eq!((log.entries.len(), log.skipped), (2, 1), "the records around the huge line are read");
    }
}
