//! What every provider needs and none should write again: gone-is-ok for deletes, and the
//! "look, then wait for a change until a deadline" loop of an observation.

use tokio::{sync::watch, time::Instant};

use crate::error::{ErrorCode, Result};

/// A delete (or a look-up before one) that found nothing: what is gone is deleted.
pub(crate) fn ok_if_gone<T>(result: Result<T>) -> Result<()> {
    match result {
        Err(e) if e.code != ErrorCode::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What one look of [`look_until`] found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Look<R> {
    /// The answer: stop looking.
    Done(R),
    /// Nothing final yet; what there is so far.
    NotYet(R),
}

/// Looks, and after every change announced on `changes` looks again, until a look is
/// [`Look::Done`] or `deadline` passes (then the last [`Look::NotYet`] is returned). It
/// subscribes before each look, so a change between the look and the wait is not lost.
///
/// `look` is a closure returning a future (not an async closure): the futures of async
/// closures are not provably `Send` inside `#[async_trait]` methods.
pub(crate) async fn look_until<T, R, F, Fut>(
    changes: &watch::Sender<T>,
    deadline: Instant,
    mut look: F,
) -> Result<Look<R>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Look<R>>>,
{
    loop {
        let mut rx = changes.subscribe();
        rx.borrow_and_update();
        match look().await? {
            Look::NotYet(r) => match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(Look::NotYet(r)),
            },
            done => return Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::*;
    use crate::error::ComputeError;

    #[test]
    fn only_not_found_is_gone() {
        assert!(ok_if_gone(Ok(1)).is_ok());
        assert!(ok_if_gone::<()>(Err(ComputeError::new(ErrorCode::NotFound, "x"))).is_ok());
        assert!(ok_if_gone::<()>(Err(ComputeError::internal("x"))).is_err());
    }

    #[tokio::test]
    async fn looks_again_on_every_change_until_done_or_the_deadline() {
        let (tx, _rx) = watch::channel(0u32);
        let looks = AtomicU32::new(0);
        let got = look_until(&tx, Instant::now() + Duration::from_secs(5), || async {
            let n = looks.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                tx.send_modify(|c| *c += 1);
                Ok(Look::NotYet(n))
            } else {
                Ok(Look::Done(n))
            }
        })
        .await
        .unwrap();
        assert_eq!(got, Look::Done(3));
        let quiet = look_until(&tx, Instant::now() + Duration::from_millis(20), || async {
            Ok(Look::NotYet(7))
        })
        .await
        .unwrap();
        assert_eq!(quiet, Look::NotYet(7));
    }
}
