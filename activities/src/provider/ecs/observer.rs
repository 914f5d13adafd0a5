//! The shared observer: one per worker and cluster, it describes every in-flight service in
//! batches of 10 (`DescribeServices`' limit), so a thousand tracked executions cost a hundred
//! calls a cycle, not a thousand.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use aws_sdk_ecs::{Client, types::Service};
use futures::StreamExt;
use tokio::sync::watch;

use super::errors::classify;
use crate::provider::kit::{Look, look_until};

/// How many `DescribeServices` calls a cycle makes at once.
const DESCRIBES_AT_ONCE: usize = 4;

/// What the observer last saw of one service.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    /// The service, or `None` when ECS did not describe it.
    pub(super) service: Option<Service>,
    seen_at: Instant,
}

#[derive(Default)]
struct ObserverState {
    /// Service name -> when an execution last asked about it.
    interest: HashMap<String, Instant>,
    snapshots: HashMap<String, Snapshot>,
    describe_calls: u64,
}

/// One per worker and cluster: describes every in-flight service in batches of 10.
pub struct Observer {
    client: Client,
    cluster: String,
    interval: Duration,
    state: Mutex<ObserverState>,
    tick: watch::Sender<u64>,
}

impl Observer {
    /// Starts the observer's cycle, which ends when the observer is dropped.
    pub(super) fn new(client: Client, cluster: String, interval: Duration) -> Arc<Self> {
        let (tick, _) = watch::channel(0);
        let observer = Arc::new(Observer {
            client,
            cluster,
            interval,
            state: Mutex::new(ObserverState::default()),
            tick,
        });
        let weak = Arc::downgrade(&observer);
        tokio::spawn(async move {
            loop {
                let Some(o) = weak.upgrade() else { return };
                o.cycle().await;
                let interval = o.interval;
                drop(o);
                tokio::time::sleep(interval).await;
            }
        });
        observer
    }

    /// How long a cycle pauses before the next.
    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    /// `DescribeServices` calls made so far (for the benchmark).
    pub fn describe_calls(&self) -> u64 {
        self.state().describe_calls
    }

    /// The state, even after a panic while it was held: no update of it can leave it
    /// inconsistent. Each entry of the maps stands alone (an interest, a cached snapshot:
    /// a lost or stale one is only an observation later or repeated), the call count is a
    /// counter, and every cycle prunes the snapshots to the interest anew. Poisoning would
    /// instead fail every later observation of every execution.
    fn state(&self) -> MutexGuard<'_, ObserverState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn cycle(&self) {
        let names: Vec<String> = {
            let mut st = self.state();
            // Forget services nobody asked about for a while (their executions ended).
            let stale = self.interval * 5 + Duration::from_secs(10);
            st.interest.retain(|_, at| at.elapsed() < stale);
            // Their snapshots go with them: the map holds in-flight services only.
            let st = &mut *st;
            st.snapshots
                .retain(|name, _| st.interest.contains_key(name));
            st.interest.keys().cloned().collect()
        };
        if names.is_empty() {
            return;
        }
        // A few batches at once: a cycle over a thousand services is a hundred calls, and
        // one after another they would take longer than the interval. Bounded, to stay well
        // under the API's request rate.
        futures::stream::iter(names.chunks(10))
            .for_each_concurrent(DESCRIBES_AT_ONCE, |chunk| self.describe(chunk))
            .await;
        self.tick.send_modify(|t| *t += 1);
    }

    /// Describes one batch of services and keeps what ECS said.
    async fn describe(&self, chunk: &[String]) {
        let result = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .set_services(Some(chunk.to_vec()))
            .send()
            .await;
        match result {
            Ok(out) => {
                let now = Instant::now();
                // Built before taking the lock, so the lock guards map updates only.
                let seen: Vec<(String, Snapshot)> = chunk
                    .iter()
                    .map(|name| {
                        let service = out
                            .services()
                            .iter()
                            .find(|s| s.service_name() == Some(name.as_str()))
                            .cloned();
                        tracing::debug!(service = %name, status = ?service.as_ref().and_then(|s| s.status()), running = ?service.as_ref().map(|s| s.running_count()), "Described ECS service.");
                        (
                            name.clone(),
                            Snapshot {
                                service,
                                seen_at: now,
                            },
                        )
                    })
                    .collect();
                let mut st = self.state();
                st.describe_calls += 1;
                st.snapshots.extend(seen);
            }
            Err(e) => {
                self.state().describe_calls += 1;
                let e = classify("DescribeServices", &e, &self.cluster);
                tracing::warn!(code = %e.code, error = %e.message, "Observing ECS services failed; will retry.");
            }
        }
    }

    /// The service as described after `since`, waiting up to `within` for a cycle.
    pub(super) async fn snapshot(
        &self,
        name: &str,
        since: Instant,
        within: Duration,
    ) -> Option<Snapshot> {
        self.state()
            .interest
            .insert(name.to_string(), Instant::now());
        let deadline = tokio::time::Instant::now() + within;
        let look = look_until(&self.tick, deadline, || async move {
            let fresh = self
                .state()
                .snapshots
                .get(name)
                .filter(|s| s.seen_at >= since)
                .cloned();
            Ok(match fresh {
                Some(s) => Look::Done(Some(s)),
                None => Look::NotYet(None),
            })
        })
        .await;
        match look {
            Ok(Look::Done(s)) => s,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn described() -> DescribeServicesOutput {
        DescribeServicesOutput::builder()
            .services(
                Service::builder()
                    .service_name("tenant-acme")
                    .status("ACTIVE")
                    .build(),
            )
            .build()
    }

    #[tokio::test]
    async fn a_poisoned_state_still_observes() {
        let describe = mock!(Client::describe_services).then_output(described);
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe]);
        let observer = Observer::new(client, "prod".into(), Duration::from_millis(10));
        let poisoner = Arc::clone(&observer);
        let panicked = std::thread::spawn(move || {
            // Held (in its `Ok`) while the thread panics: the panic poisons the lock.
            let _held = poisoner.state.lock();
            panic!("a panic while the state is held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(observer.state.is_poisoned());
        let seen = observer
            .snapshot("tenant-acme", Instant::now(), Duration::from_secs(5))
            .await
            .expect("a cycle describes the service");
        assert_eq!(
            seen.service.as_ref().and_then(|s| s.status()),
            Some("ACTIVE")
        );
        assert!(observer.describe_calls() >= 1);
    }

    #[tokio::test]
    async fn no_cycle_in_time_is_no_snapshot() {
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, []);
        let observer = Observer::new(client, "prod".into(), Duration::from_secs(60));
        // The first cycle ran (with no interest) before the look; the next is a minute away.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let seen = observer
            .snapshot("tenant-acme", Instant::now(), Duration::from_millis(50))
            .await;
        assert!(seen.is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
