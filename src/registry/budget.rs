//! Byte budgets: what one image and one review may read from registries, and the process-wide pool of bytes held by
//! the reviews in progress, which a read waits for (within its deadline) when it is full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::RegistryError;
use super::config::RegistryConfig;

/// Which budget a charge ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Image,
    Review,
    /// One read capped below the image's budget by its caller ([`Budget::capped`]).
    Read,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Review => "review",
            Self::Read => READ_SCOPE,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Image => "maxImageBytes",
            Self::Review => "maxReviewBytes",
            Self::Read => "maxBytes of the read",
        }
    }
}

/// The scope of an `OverBudget` error from a [`Budget::capped`] read.
pub(crate) const READ_SCOPE: &str = "read";

/// The process-wide pool: one permit per byte read and still held by a review in progress.
#[derive(Clone)]
pub(crate) struct Pool {
    sem: Arc<Semaphore>,
    limit: u64,
}

impl Pool {
    pub fn new(limit: u64) -> Self {
        let permits = usize::try_from(limit).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { sem: Arc::new(Semaphore::new(permits)), limit }
    }

    /// Bytes free in the pool right now.
    #[cfg(test)]
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64
    }
}

/// The bytes one review may read from registries. Cheap to clone: clones share the count. The gatherer makes one
/// per review with [`super::Registry::budget`] and passes it to every registry call of that review; the registry
/// makes a child per image digest. Bytes read are drawn from the process-wide pool and given back when the last clone
/// of the review's budget is dropped.
#[derive(Clone)]
pub struct Budget(Arc<Node>);

struct Node {
    scope: Scope,
    limit: u64,
    used: AtomicU64,
    parent: Option<Budget>,
    pool: Pool,
    /// Pool permits for the bytes read under this review (image budgets hand theirs to the review).
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("scope", &self.0.scope)
            .field("used", &self.used())
            .field("limit", &self.0.limit)
            .finish()
    }
}

impl Budget {
    /// A review's budget (`registries.maxReviewBytes`) drawing on `pool`.
    pub(crate) fn review(cfg: &RegistryConfig, pool: &Pool) -> Self {
        Self::node(Scope::Review, cfg.max_review_bytes, None, pool.clone())
    }

    /// The budget of one image digest within this review (`registries.maxImageBytes`).
    pub(crate) fn image(&self, cfg: &RegistryConfig) -> Self {
        Self::node(Scope::Image, cfg.max_image_bytes, Some(self.clone()), self.0.pool.clone())
    }

    /// A budget for one read of at most `limit` bytes within this one: going past it is an `OverBudget` error of
    /// scope [`READ_SCOPE`], which the caller turns into its own `TooLarge`.
    pub(crate) fn capped(&self, limit: u64) -> Self {
        Self::node(Scope::Read, limit, Some(self.clone()), self.0.pool.clone())
    }

    fn node(scope: Scope, limit: u64, parent: Option<Budget>, pool: Pool) -> Self {
        Self(Arc::new(Node { scope, limit, used: AtomicU64::new(0), parent, pool, held: Mutex::new(None) }))
    }

    /// Bytes charged to this budget so far.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::SeqCst)
    }

    /// The most bytes this budget and the ones it belongs to still allow.
    pub(crate) fn remaining(&self) -> u64 {
        self.chain().map(|b| b.0.limit.saturating_sub(b.used())).min().unwrap_or(0)
    }

    fn chain(&self) -> impl Iterator<Item = &Budget> {
        std::iter::successors(Some(self), |b| b.0.parent.as_ref())
    }

    fn root(&self) -> &Budget {
        self.chain().last().unwrap_or(self)
    }

    /// Charges `n` bytes to this budget and every one above it, or none of them.
    fn charge(&self, n: u64) -> Result<(), Scope> {
        let mut done: Vec<&Budget> = Vec::new();
        for b in self.chain() {
            let ok = b.0.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                u.checked_add(n).filter(|total| *total <= b.0.limit)
            });
            if ok.is_err() {
                for d in done {
                    d.0.used.fetch_sub(n, Ordering::SeqCst);
                }
                return Err(b.0.scope);
            }
            done.push(b);
        }
        Ok(())
    }

    fn refund(&self, n: u64) {
        for b in self.chain() {
            b.0.used.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// The error for going past the tightest budget of the chain.
    pub(crate) fn exceeded(&self, registry: &str, what: &str) -> RegistryError {
        let tightest = self.chain().min_by_key(|b| b.0.limit.saturating_sub(b.used())).unwrap_or(self);
        over(tightest.0.scope, tightest.0.limit, registry, what)
    }

    fn limit_of(&self, scope: Scope) -> u64 {
        self.chain().find(|b| b.0.scope == scope).map_or(0, |b| b.0.limit)
    }

    /// Charges bytes held as derived data (not read from a registry, so not drawn from the pool).
    pub(crate) fn charge_derived(&self, n: u64, registry: &str, what: &str) -> Result<(), RegistryError> {
        self.charge(n).map_err(|scope| over(scope, self.limit_of(scope), registry, what))
    }

    /// Checks, without charging, that `n` more bytes would fit.
    pub(crate) fn check(&self, n: u64, registry: &str, what: &str) -> Result<(), RegistryError> {
        match self.chain().find(|b| b.used().saturating_add(n) > b.0.limit) {
            Some(b) => Err(over(b.0.scope, b.0.limit, registry, what)),
            None => Ok(()),
        }
    }

    /// Charges `n` bytes about to be read and takes them from the pool, waiting for room until `deadline`.
    pub(crate) async fn reserve(
        &self,
        n: u64,
        registry: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<Reservation, RegistryError> {
        self.charge(n).map_err(|scope| over(scope, self.limit_of(scope), registry, what))?;
        let mut reservation = Reservation { budget: self.clone(), charged: n, permit: None };
        let busy =
            || RegistryError::Busy { registry: registry.to_owned(), what: what.to_owned(), limit: self.0.pool.limit };
        let permits = u32::try_from(n).map_err(|_| busy())?;
        let acquire = self.0.pool.sem.clone().acquire_many_owned(permits);
        let permit = tokio::time::timeout_at(deadline, acquire).await.map_err(|_| busy())?.map_err(|_| busy())?;
        reservation.permit = Some(permit);
        Ok(reservation)
    }
}

fn over(scope: Scope, limit: u64, registry: &str, what: &str) -> RegistryError {
    RegistryError::OverBudget {
        registry: registry.to_owned(),
        what: what.to_owned(),
        scope: scope.name(),
        key: scope.key(),
        limit,
    }
}

/// Bytes charged and taken from the pool for one read. [`Reservation::settle`] keeps what was read and gives back the
/// rest; dropped unsettled, it gives back everything.
pub(crate) struct Reservation {
    budget: Budget,
    charged: u64,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Keeps `used` bytes (at most what was reserved) for the rest of the review.
    pub fn settle(mut self, used: u64) {
        let used = used.min(self.charged);
        self.budget.refund(self.charged - used);
        self.charged = 0;
        let Some(mut permit) = self.permit.take() else { return };
        let keep = usize::try_from(used).ok().and_then(|n| permit.split(n));
        if let (Some(keep), Ok(mut held)) = (keep, self.budget.root().0.held.lock()) {
            match held.as_mut() {
                Some(h) => h.merge(keep),
                None => *held = Some(keep),
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.budget.refund(self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(image: u64, review: u64) -> RegistryConfig {
        RegistryConfig { max_image_bytes: image, max_review_bytes: review, ..RegistryConfig::default() }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(200)
    }

    #[tokio::test]
    async fn images_and_reviews_are_charged_together_and_refunded_on_failure() {
        let pool = Pool::new(1000);
        let review = Budget::review(&cfg(100, 150), &pool);
        let (a, b) = (review.image(&cfg(100, 150)), review.image(&cfg(100, 150)));
        a.reserve(80, "r", "x", soon()).await.unwrap().settle(80);
        let err = a.reserve(30, "r", "x", soon()).await.err().unwrap();
        assert!(matches!(err, RegistryError::OverBudget { scope: "image", limit: 100, .. }), "{err}");
        assert!(err.to_string().contains("registries.maxImageBytes"), "{err}");
        let err = b.reserve(90, "r", "x", soon()).await.err().unwrap();
        assert!(matches!(err, RegistryError::OverBudget { scope: "review", limit: 150, .. }), "{err}");
        assert_eq!((a.used(), b.used(), review.used()), (80, 0, 80), "failed charges leave nothing behind");
        assert_eq!(b.remaining(), 70);
        // A read that turned out shorter keeps only what it read; an unsettled one gives everything back.
        b.reserve(50, "r", "x", soon()).await.unwrap().settle(20);
        drop(b.reserve(40, "r", "x", soon()).await.unwrap());
        assert_eq!((b.used(), review.used(), pool.available()), (20, 100, 900));
        assert!(b.check(50, "r", "x").is_ok() && b.check(51, "r", "x").is_err());
        b.charge_derived(50, "r", "x").unwrap();
        assert_eq!(pool.available(), 900, "derived bytes are not drawn from the pool");
        drop((a, b));
        assert_eq!(pool.available(), 900, "the review still holds its bytes");
        drop(review);
        assert_eq!(pool.available(), 1000, "given back when the review ends");
    }

    #[tokio::test]
    async fn a_full_pool_makes_reads_wait_until_their_deadline() {
        let pool = Pool::new(100);
        let first = Budget::review(&cfg(100, 100), &pool);
        first.reserve(70, "r", "x", soon()).await.unwrap().settle(70);
        let second = Budget::review(&cfg(100, 100), &pool);
        let started = Instant::now();
        let err = second.reserve(40, "r", "blob x", soon()).await.err().unwrap();
        assert!(matches!(err, RegistryError::Busy { limit: 100, .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(second.used(), 0);
        let waiting = tokio::spawn({
            let second = second.clone();
            async move { second.reserve(40, "r", "x", Instant::now() + Duration::from_secs(5)).await.map(|r| r.settle(40)) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(pool.available(), 60);
    }
}
