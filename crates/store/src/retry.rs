//! Bounded exponential backoff with jitter.

use std::time::Duration;

/// How often and how patiently to retry a transient failure.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max_delay: Duration,
    /// How many attempts in all; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// For operator actions and recovery: a few attempts, then the error goes back to the caller.
    pub const OPERATOR: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_secs(1),
        max_attempts: Some(10),
    };

    /// For the saga log: steno's `record_event` and `saga_update` cannot fail, so they retry forever.
    pub const FOREVER: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
        max_attempts: None,
    };

    /// The delay before attempt `attempt` (1-based: the delay before the second attempt is `delay(1)`), or
    /// `None` when the budget is spent.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self
            .initial
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        // Full jitter in [base/2, base]: concurrent retriers of one serialization conflict spread out.
        let half = base / 2;
        Some(half + half.mul_f64(jitter()))
    }
}

/// Runs `attempt` until it succeeds, fails with a permanent error, or spends `policy`'s budget on transient
/// ones (serialization failures, lost connections), logging each retry. For operator actions and recovery,
/// which a caller can always run again; steno's own writes use the store's retry-forever loop instead.
pub async fn retry_transient<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, crate::error::DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::error::DbError>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let delay = error
                    .is_transient()
                    .then(|| policy.delay(attempts))
                    .flatten();
                let Some(delay) = delay else {
                    return Err(error);
                };
                tracing::warn!(%error, attempts, ?delay, "{what}: transient failure, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A number in [0, 1), different on every call, with no RNG dependency.
fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn delays_grow_and_stop() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_attempts: Some(5),
        };
        let first = policy.delay(1).unwrap();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        let fourth = policy.delay(4).unwrap();
        assert!(fourth >= Duration::from_millis(40) && fourth <= Duration::from_millis(80));
        assert!(policy.delay(5).is_none());
        assert!(RetryPolicy::FOREVER.delay(1000).unwrap() <= Duration::from_secs(5));
    }
}
