//! The worker's observer: every execution this worker put under observation (or took over
//! from a worker that went away) is watched by a task in this process until it is final, and
//! then its tracker is woken. No activity slot, no heartbeat and no workflow task is spent
//! per execution while it runs, so the number in flight is bounded by memory, not by slots.
//!
//! Durability comes from the store, not from Temporal: an execution is `observing` from the
//! moment the provider took it until its tracker was woken after the final state, and its
//! `observer` is the worker watching it. Each observer keeps one row alive in `observers`
//! (one write per renewal, however many executions it watches); when a worker stops it
//! removes its row, and when one is killed its row expires, and in both cases another
//! worker's observer takes its executions over at its next scan. A wake-up lost to a crash
//! after the final state is sent again by whoever takes the execution over; and a tracker
//! also looks at the store on a long durable timer, the last line if every worker is gone.

use std::collections::{HashMap, HashSet};

use crate::messages::MAX_CALLBACK_TARGETS;

use temporalio_client::Client;

use super::*;

/// How long an observer counts as alive after its last renewal.
const LEASE: Duration = Duration::from_secs(10);
/// How often an observer renews its lease (on its own timer: nothing else delays it).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// An observer whose last renewal is older than this stops its tasks: past `LEASE` another
/// worker may take them over, and two observers must not undo or revert one execution. The
/// margin covers the time a renewal takes and a few seconds of clock difference.
const LEASE_SAFE: Duration = Duration::from_secs(7);
/// How often an observer looks for executions whose observer is gone.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// How often it checks its tasks against what the store says it observes (every this many
/// scans): it adopts what has no task (a start whose task never ran) and stops what another
/// worker took over.
const RECONCILE_EVERY: u32 = 10;
/// The most executions one scan takes over.
const CLAIM_BATCH: u32 = 1_000;
/// How long a stopping worker waits for its tasks to end before it gives up its lease.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Backoff bounds for a step that keeps failing (a store or Temporal that is down).
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MOST: Duration = Duration::from_secs(30);
/// How long the observer spends telling callers directly once an execution is final; what
/// it has not done by then the tracker does, with its retries.
const DIRECT_DELIVERY_LIMIT: Duration = Duration::from_secs(5);

/// One execution this observer has a task for.
struct Watched {
    /// Stops the task.
    token: CancellationToken,
    /// The Temporal workflows that asked for this execution through this worker's start
    /// activity: told by the observer itself when the final state is in the store, a round
    /// trip through the tracker sooner. Others (attached later, other kinds, executions
    /// taken over) are the tracker's alone.
    callers: Vec<TemporalCallback>,
}

/// One observer per worker (see the module's documentation).
pub(super) struct Observing {
    /// Its name in the store's `observers` table: unique per process.
    id: String,
    /// To wake trackers.
    client: Client,
    /// The executions it has a task for. Only a task's own guard removes its entry, so an
    /// execution never has two tasks here.
    running: Mutex<HashMap<String, Watched>>,
    /// When the lease was last renewed.
    renewed: Mutex<Option<Instant>>,
    /// `compute_executions_in_flight` follows `running`.
    metrics: crate::metrics::Metrics,
}

impl Observing {
    pub(super) fn new(client: Client, metrics: crate::metrics::Metrics) -> Self {
        let seed = format!(
            "{}:{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        Observing {
            id: format!(
                "observer-{}-{}",
                std::process::id(),
                compute_contract::digest::sha256_hex(seed, 12)
            ),
            client,
            running: Mutex::default(),
            renewed: Mutex::default(),
            metrics,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn renewed(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.renewed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the lease surely holds (no other worker can have taken anything over).
    fn lease_held(&self) -> bool {
        self.renewed().is_some_and(|at| at.elapsed() < LEASE_SAFE)
    }

    /// Stops the tasks of these executions (all, with `None`).
    fn stop(&self, which: Option<&HashSet<String>>) {
        for (id, watched) in self.running().iter() {
            if which.is_none_or(|w| w.contains(id)) {
                watched.token.cancel();
            }
        }
    }
}

/// Removes a task's entry when the task ends, however it ends (a panic included).
struct TaskGuard {
    observing: Arc<Observing>,
    execution_id: String,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut running = self.observing.running();
        running.remove(&self.execution_id);
        self.observing.metrics.set_in_flight(running.len());
    }
}

fn epoch_ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// Sleeps `pause` unless the worker is released first (false then).
async fn pause_unless_released(release: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = release.cancelled() => false,
    }
}

fn next_backoff(pause: Duration) -> Duration {
    (pause * 2).min(RETRY_MOST)
}

impl ComputeActivities {
    /// Gives these activities the worker's observer, which wakes trackers through `client`.
    /// Without one (tests of the activities alone) an execution is put under observation in
    /// the store, and a worker with an observer takes it over.
    pub fn with_observer(self, client: Client) -> Self {
        ComputeActivities {
            observing: Some(Arc::new(Observing::new(
                client,
                self.settings.metrics.clone(),
            ))),
            ..self
        }
    }

    /// The observer's name in the store (none without an observer).
    pub fn observer_id(&self) -> Option<&str> {
        self.observing.as_deref().map(|o| o.id.as_str())
    }

    /// Renews the observer's lease once. The worker does it before it polls, so that no
    /// execution is claimed by an observer the others do not see alive yet.
    pub async fn renew_observer_lease(&self) -> Result<(), ComputeError> {
        let Some(obs) = &self.observing else {
            return Ok(());
        };
        // Taken before the write: the lease is counted from no later than it was granted.
        let at = Instant::now();
        let until = Utc::now() + LEASE;
        self.store
            .observer_alive(&obs.id, epoch_ms(until))
            .await
            .map_err(store_err)?;
        *obs.renewed() = Some(at);
        Ok(())
    }

    /// Runs the observer until the worker is released: keeps its lease alive (and stops its
    /// tasks if it cannot), takes over the executions of observers that are gone, and on
    /// release lets its tasks end, then gives up its lease so that another worker takes its
    /// executions over at once. Without an observer it returns.
    pub async fn run_observer(&self) {
        let Some(obs) = self.observing.clone() else {
            return;
        };
        tracing::info!(observer = %obs.id, "The observer runs.");
        tokio::join!(self.keep_lease(&obs), self.take_over(&obs));
        let drained = tokio::time::timeout(DRAIN_LIMIT, async {
            while !obs.running().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = obs.running().len(),
                "Some observations did not end in time; giving up the lease anyway."
            );
        }
        if let Err(e) = self.store.observer_gone(&obs.id).await {
            tracing::warn!(error = %e, "Could not give up the observer's lease: its executions are taken over when it expires.");
        }
        tracing::info!(observer = %obs.id, "The observer stopped.");
    }

    async fn keep_lease(&self, obs: &Observing) {
        let release = &self.settings.release;
        loop {
            if let Err(e) = self.renew_observer_lease().await {
                tracing::warn!(error = %e.message, "Could not renew the observer's lease; retrying.");
                if !obs.lease_held() && !obs.running().is_empty() {
                    tracing::error!(
                        "The observer's lease may have passed to another worker: stopping its observations here (they resume when it is renewed)."
                    );
                    obs.stop(None);
                }
            }
            if !pause_unless_released(release, RENEW_EVERY).await {
                return;
            }
        }
    }

    async fn take_over(&self, obs: &Observing) {
        let release = &self.settings.release;
        let mut pause = SCAN_EVERY;
        let mut scans = 0u32;
        loop {
            if obs.lease_held() {
                let reconcile = scans.is_multiple_of(RECONCILE_EVERY);
                scans = scans.wrapping_add(1);
                let scanned = match self.scan(obs, reconcile).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not look for executions to take over; retrying.");
                        Err(())
                    }
                };
                pause = if scanned.is_ok() {
                    SCAN_EVERY
                } else {
                    next_backoff(pause)
                };
            }
            if !pause_unless_released(release, pause).await {
                return;
            }
        }
    }

    /// Takes over what other observers left, and with `reconcile` squares this observer's
    /// tasks with what the store says it observes.
    async fn scan(&self, obs: &Observing, reconcile: bool) -> Result<(), StoreError> {
        let ids = self
            .store
            .claim_orphans(&obs.id, epoch_ms(Utc::now()), CLAIM_BATCH)
            .await?;
        if !ids.is_empty() {
            tracing::info!(
                count = ids.len(),
                "Took over executions whose observer is gone."
            );
        }
        for id in ids {
            self.adopt(&id, None);
        }
        if reconcile {
            let mine: HashSet<String> =
                self.store.observed_by(&obs.id).await?.into_iter().collect();
            let gone: HashSet<String> = obs
                .running()
                .keys()
                .filter(|id| !mine.contains(*id))
                .cloned()
                .collect();
            if !gone.is_empty() {
                // Another worker took them over (this one's lease lapsed meanwhile), or they
                // ended: either way they are not this worker's to watch.
                obs.stop(Some(&gone));
            }
            for id in &mine {
                self.adopt(id, None);
            }
        }
        Ok(())
    }

    /// Puts an execution under observation by this worker, unless another live observer
    /// has it; true when this worker's observer has it (and should [`Self::adopt`] it). Called
    /// by the start path once the provider took the operation; its error is the store's.
    pub(super) async fn claim_here(&self, execution_id: &str) -> Result<bool, ComputeError> {
        // The activities alone (no worker) record it for a worker's observer to take over.
        let observer = self.observer_id().unwrap_or_default();
        self.store
            .claim_observation(execution_id, observer, epoch_ms(Utc::now()))
            .await
            .map(|mine| mine && self.observing.is_some())
            .map_err(store_err)
    }

    /// Starts this worker's task for an execution it observes, unless one runs or the lease
    /// does not surely hold (the next reconcile adopts it then). `caller` (the start
    /// activity's callback target) is told by the observer itself when it is a Temporal
    /// workflow.
    pub(super) fn adopt(&self, execution_id: &str, caller: Option<&CallbackTarget>) {
        let Some(obs) = &self.observing else { return };
        if self.settings.release.is_cancelled() || !obs.lease_held() {
            return;
        }
        let caller = match caller {
            Some(CallbackTarget::Temporal(t)) => Some(t.clone()),
            _ => None,
        };
        // The task's own release: the worker's, or this task's stop.
        let token = self.settings.release.child_token();
        {
            let mut running = obs.running();
            if let Some(watched) = running.get_mut(execution_id) {
                // A second caller through this worker (the same idempotency key).
                if let Some(t) = caller
                    && !watched.callers.contains(&t)
                    && watched.callers.len() < MAX_CALLBACK_TARGETS
                {
                    watched.callers.push(t);
                }
                return;
            }
            running.insert(
                execution_id.to_string(),
                Watched {
                    token: token.clone(),
                    callers: caller.into_iter().collect(),
                },
            );
            obs.metrics.set_in_flight(running.len());
        }
        let mut this = self.clone();
        this.settings.release = token;
        let guard = TaskGuard {
            observing: Arc::clone(obs),
            execution_id: execution_id.to_string(),
        };
        let execution_id = execution_id.to_string();
        let span = tracing::info_span!("observe", execution_id = %execution_id, tenant_id = Empty, operation = Empty);
        tokio::spawn(
            async move {
                let _guard = guard;
                this.observe_to_end(&execution_id).await;
            }
            .instrument(span),
        );
    }

    /// Watches one execution to its final state, wakes its tracker, and ends the
    /// observation. Returns early only when the worker is released (the lease then passes
    /// the execution to another worker).
    async fn observe_to_end(&self, execution_id: &str) {
        let Some(obs) = self.observing.clone() else {
            return;
        };
        let release = self.settings.release.clone();
        tracing::info!("Observing the execution.");
        let bell = self.cancel_bell.bell(execution_id);
        let mut pause = RETRY_FIRST;
        let status = loop {
            let input = WatchInput {
                execution_id: execution_id.to_string(),
                known_progress: None,
            };
            match self
                .watch_until_change(Pulse::Observer, None, input, &bell)
                .await
            {
                Ok(status) if status.state.is_final() => break Some(status),
                Ok(_) => pause = RETRY_FIRST,
                Err(_) if release.is_cancelled() => break None,
                Err(e) if e.code == ErrorCode::NotFound => {
                    // Gone from the store (pruned by an operator): nothing to watch or tell.
                    tracing::warn!("The execution under observation is not in the store any more.");
                    let _ = self.store.end_observation(execution_id, &obs.id).await;
                    break None;
                }
                Err(e) => {
                    // The watch itself keeps going through a flaky provider; what ends here
                    // is the store (or an undo) failing. Nothing is lost: look again.
                    e.log("Observing the execution");
                    pause = next_backoff(pause);
                }
            }
            if !pause_unless_released(&release, pause).await {
                break None;
            }
        };
        self.cancel_bell.forget(execution_id);
        let Some(status) = status else { return };
        self.tell_callers(&obs, &status).await;
        // The tracker is woken until Temporal takes the signal: a wake-up is never dropped
        // while this worker runs (and a worker that takes over sends it again).
        let mut pause = RETRY_FIRST;
        loop {
            match Box::pin(self.wake_tracker(&obs.client, &status)).await {
                Ok(()) => break,
                Err(e) => {
                    e.log("Waking the tracker");
                    pause = next_backoff(pause);
                    if !pause_unless_released(&release, pause).await {
                        return;
                    }
                }
            }
        }
        if let Err(e) = self.store.end_observation(execution_id, &obs.id).await {
            // Still ours in the store: whoever takes it over wakes the tracker again, which
            // reads the store and finds nothing new to do.
            tracing::warn!(error = %e, "Could not end the observation in the store.");
        }
    }

    /// Tells the callers this observer knows (see [`Watched::callers`]) the final `status`,
    /// now in the store, and records each delivery, so that the tracker, woken next, does
    /// not send them again. Best effort within [`DIRECT_DELIVERY_LIMIT`]: a caller not told
    /// here (Temporal refused, the store could not say what was sent) is the tracker's, which
    /// retries; a caller told here and by the tracker too gets one signal, as both send it
    /// with one request id.
    async fn tell_callers(&self, obs: &Observing, status: &ExecutionStatus) {
        let callers = obs
            .running()
            .get(&status.execution_id)
            .map(|w| w.callers.clone())
            .unwrap_or_default();
        if callers.is_empty() {
            return;
        }
        let tell = async {
            let deliveries = match self.store.list_deliveries(&status.execution_id).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "Could not read the deliveries; the tracker tells the callers.");
                    return;
                }
            };
            let told: Vec<ExecutionState> = deliveries
                .iter()
                .filter(|d| d.outcome != DeliveryState::Pending)
                .map(|d| d.state)
                .collect();
            let callback = ComputeCallback::from_status(
                status,
                ComputeCallback::sequence_for(&told, status.state),
            );
            let sends = callers.into_iter().filter_map(|t| {
                let target = CallbackTarget::Temporal(t.clone());
                let described = target.describe();
                let done = deliveries
                    .iter()
                    .any(|d| d.outcome != DeliveryState::Pending && d.reports(&described, &callback));
                (!done).then(|| {
                    let callback = callback.clone();
                    async move {
                        let verdict = self.signal(obs.client.clone(), &t, &callback).await;
                        if matches!(verdict, Ok(Verdict::Delivered)) {
                            tracing::info!(target = %described, state = %callback.state, "Callback delivered by the observer.");
                        }
                        let input = DeliverInput { target, callback };
                        self.record_delivery(&input, &verdict).await;
                    }
                })
            });
            futures::future::join_all(sends).await;
        };
        if tokio::time::timeout(DIRECT_DELIVERY_LIMIT, tell)
            .await
            .is_err()
        {
            tracing::warn!("Telling the callers took too long; the tracker tells the rest.");
        }
    }

    /// Signals the tracker that its execution changed. A tracker that is not running yet
    /// reads the store when it starts, and one that finished has nothing left to hear.
    async fn wake_tracker(
        &self,
        client: &Client,
        status: &ExecutionStatus,
    ) -> Result<(), ComputeError> {
        let payload = RawValue::from_value(
            &serde_json::json!({ "state": status.state }),
            &PayloadConverter::serde_json(),
        );
        let request_id = format!(
            "{}:{}:{}:changed",
            status.execution_id, status.attempt, status.state
        );
        match super::deliver::signal_once(
            client.clone(),
            client.options().namespace.clone(),
            names::tracker_workflow_id(&status.execution_id),
            None,
            names::SIGNAL_EXECUTION_CHANGED,
            payload,
            request_id,
        )
        .await
        {
            Ok(_) => {
                tracing::info!(state = %status.state, "Woke the tracker.");
                Ok(())
            }
            Err(e) => Err(e.context("Temporal did not take the tracker's wake-up signal")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        provider::simulated::{SimulatedConfig, SimulatedProvider},
        store::sqlite::SqliteStore,
    };

    /// An operation in flight costs its observation's future and little else: that future
    /// must stay small (thousands are held at once), so the rare paths it can take (an
    /// undo, a revert settling) are boxed rather than held inline.
    #[tokio::test]
    async fn an_observation_in_flight_is_small() {
        let store = Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap());
        let provider = Arc::new(
            SimulatedProvider::new(SimulatedConfig {
                delay_ms: 1,
                failure_rate: 0.0,
            })
            .unwrap(),
        );
        let activities = ComputeActivities::new(store, provider, ActivitySettings::default());
        let observe = activities.observe_to_end("x");
        let bell = tokio::sync::Notify::new();
        let input = WatchInput {
            execution_id: "x".into(),
            known_progress: None,
        };
        let watch = activities.watch_until_change(Pulse::Observer, None, input, &bell);
        let (observe, watch) = (
            std::mem::size_of_val(&observe),
            std::mem::size_of_val(&watch),
        );
        eprintln!("observe_to_end: {observe} bytes, watch_until_change: {watch} bytes");
        // Measured at 6.9 KB and 4.1 KB in a debug build (with the undo, the revert and the
        // wake-up boxed; 9.4 KB and 6.7 KB without).
        assert!(
            observe <= 8 * 1024,
            "{observe} bytes per observation in flight"
        );
    }
}
