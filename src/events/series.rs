//! Event series bookkeeping, pure: the bounded map of (object, reason, image, code) series with their counts, what
//! is due for an API write, and the token bucket that bounds those writes. No I/O; time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::{EventReason, Target};

/// A series ends when it has not been seen for this long; the next occurrence starts a new Event (client-go's
/// and kube-runtime's isomorphic-event window).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// Series tracked at once. Each holds at most one note (≤ 1 KiB) and its key, so the map stays near 2 MiB.
pub const MAX_SERIES: usize = 1024;

/// What makes two occurrences one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub target: Target,
    pub reason: EventReason,
    /// The image judged (empty when the whole request was denied before images were judged).
    pub image: String,
    /// The reason code of the failure.
    pub code: &'static str,
}

/// The Event a series has in the API, once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The Event's name (the API server generates it).
    pub name: String,
    /// The count the API holds.
    pub count: u32,
}

/// One series: its note (from its first occurrence, as Event notes cannot change), its count and times.
#[derive(Debug, Clone)]
pub struct Series {
    pub note: String,
    pub count: u32,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    last_seen_at: Instant,
    /// None until the Event is created.
    pub published: Option<Published>,
}

impl Series {
    /// Whether the API is behind: the Event is not created yet, or its count is lower.
    pub fn is_due(&self) -> bool {
        self.published.as_ref().is_none_or(|p| p.count < self.count)
    }
}

/// What observing one occurrence did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A new series (its Event is to be created).
    New,
    /// Counted in a live series (its count is patched on the next flush).
    Repeat,
    /// Dropped: the map holds [`MAX_SERIES`] live series.
    Full,
}

/// Every live series, at most `max` of them.
#[derive(Debug)]
pub struct SeriesMap {
    series: HashMap<SeriesKey, Series>,
    max: usize,
}

impl Default for SeriesMap {
    fn default() -> Self {
        Self::with_capacity(MAX_SERIES)
    }
}

impl SeriesMap {
    /// A map holding at most `max` series.
    pub fn with_capacity(max: usize) -> Self {
        Self { series: HashMap::new(), max }
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub fn get(&self, key: &SeriesKey) -> Option<&Series> {
        self.series.get(key)
    }

    /// Counts one occurrence at `now` (`wall` is the same moment on the wall clock, for the Event's times).
    pub fn observe(&mut self, key: SeriesKey, note: String, now: Instant, wall: SystemTime) -> Observed {
        if let Some(series) = self.series.get_mut(&key)
            && now.saturating_duration_since(series.last_seen_at) < SERIES_TTL
        {
            series.count = series.count.saturating_add(1);
            series.last_seen = wall;
            series.last_seen_at = now;
            return Observed::Repeat;
        }
        if !self.series.contains_key(&key) && self.series.len() >= self.max {
            self.prune(now);
            if self.series.len() >= self.max {
                return Observed::Full;
            }
        }
        let series = Series { note, count: 1, first_seen: wall, last_seen: wall, last_seen_at: now, published: None };
        self.series.insert(key, series);
        Observed::New
    }

    /// Forgets series not seen for [`SERIES_TTL`] (a count not yet written then is lost: Events are best effort).
    pub fn prune(&mut self, now: Instant) {
        self.series.retain(|_, s| now.saturating_duration_since(s.last_seen_at) < SERIES_TTL);
    }

    /// The series whose Event is behind, oldest first.
    pub fn due(&self) -> Vec<SeriesKey> {
        let mut due: Vec<(&SeriesKey, &Series)> = self.series.iter().filter(|(_, s)| s.is_due()).collect();
        due.sort_by_key(|(_, s)| s.last_seen_at);
        due.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// Records that the API now holds `published` for the series.
    pub fn published(&mut self, key: &SeriesKey, published: Published) {
        if let Some(series) = self.series.get_mut(key) {
            series.published = Some(published);
        }
    }

    /// Forgets one series (its Event could not be written, or is gone from the API).
    pub fn forget(&mut self, key: &SeriesKey) {
        self.series.remove(key);
    }
}

/// A token bucket: `burst` writes at once, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        let burst = f64::from(burst);
        Self { burst, per_second: f64::from(per_second), tokens: burst, last: now }
    }

    /// Takes one token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, image: &str) -> SeriesKey {
        SeriesKey {
            target: Target {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: name.into(),
                namespace: "team-a".into(),
                uid: Some(format!("uid-{name}")),
            },
            reason: EventReason::Denied,
            image: image.into(),
            code: "no-signatures",
        }
    }

    #[test]
    fn repeats_within_the_window_count_in_one_series() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut map = SeriesMap::default();
        assert_eq!(map.observe(key("web", "a"), "first".into(), t0, wall), Observed::New);
        for i in 1..=4 {
            let at = t0 + Duration::from_secs(60 * i);
            assert_eq!(map.observe(key("web", "a"), "later".into(), at, wall), Observed::Repeat);
        }
        let series = map.get(&key("web", "a")).unwrap();
        assert_eq!((series.count, series.note.as_str()), (5, "first"), "the note is the first occurrence's");
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn another_object_image_reason_or_code_is_another_series() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut map = SeriesMap::default();
        let warned = SeriesKey { reason: EventReason::Warned, ..key("web", "a") };
        let other_code = SeriesKey { code: "registry-error", ..key("web", "a") };
        let mut other_uid = key("web", "a");
        other_uid.target.uid = Some("uid-recreated".into());
        for k in [key("web", "a"), key("web", "b"), key("db", "a"), warned, other_code, other_uid] {
            assert_eq!(map.observe(k, String::new(), t0, wall), Observed::New);
        }
        assert_eq!(map.len(), 6);
    }

    #[test]
    fn a_series_ends_after_its_window_and_the_next_occurrence_starts_a_new_event() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut map = SeriesMap::default();
        map.observe(key("web", "a"), "first".into(), t0, wall);
        map.published(&key("web", "a"), Published { name: "web.x".into(), count: 1 });
        let later = t0 + SERIES_TTL;
        assert_eq!(map.observe(key("web", "a"), "second".into(), later, wall), Observed::New);
        let series = map.get(&key("web", "a")).unwrap();
        assert_eq!((series.count, series.note.as_str(), &series.published), (1, "second", &None));
    }

    #[test]
    fn the_map_is_bounded_and_frees_room_only_from_ended_series() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut map = SeriesMap::with_capacity(3);
        for name in ["a", "b", "c"] {
            assert_eq!(map.observe(key(name, "i"), String::new(), t0, wall), Observed::New);
        }
        // A flood of new objects cannot grow it, nor push out live series.
        let soon = t0 + Duration::from_secs(10);
        for n in 0..100 {
            assert_eq!(map.observe(key(&format!("x{n}"), "i"), String::new(), soon, wall), Observed::Full);
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.observe(key("a", "i"), String::new(), soon, wall), Observed::Repeat, "live series still count");
        // Once b and c have ended (a was seen at `soon`), there is room again.
        let after = t0 + SERIES_TTL + Duration::from_secs(1);
        assert_eq!(map.observe(key("new", "i"), String::new(), after, wall), Observed::New);
        assert_eq!(map.len(), 2, "b and c were pruned; a and new remain");
        map.prune(soon + SERIES_TTL);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn due_lists_uncreated_and_behind_series_only() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut map = SeriesMap::default();
        map.observe(key("created", "i"), String::new(), t0, wall);
        map.observe(key("pending", "i"), String::new(), t0 + Duration::from_secs(1), wall);
        map.observe(key("behind", "i"), String::new(), t0, wall);
        map.published(&key("created", "i"), Published { name: "c".into(), count: 1 });
        map.published(&key("behind", "i"), Published { name: "b".into(), count: 1 });
        map.observe(key("behind", "i"), String::new(), t0 + Duration::from_secs(2), wall);
        assert_eq!(map.due(), vec![key("pending", "i"), key("behind", "i")], "oldest first");
        map.published(&key("behind", "i"), Published { name: "b".into(), count: 2 });
        map.forget(&key("pending", "i"));
        assert!(map.due().is_empty());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(50, 10, t0);
        assert_eq!((0..100).filter(|_| bucket.take(t0)).count(), 50, "the burst");
        let one_second = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| bucket.take(one_second)).count(), 10, "then 10 per second");
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| bucket.take(much_later)).count(), 50, "never more than the burst");
        assert!(!bucket.take(t0), "a clock that goes back gives nothing");
    }
}
