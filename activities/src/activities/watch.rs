//! Watching an execution: its status from the store, and the watch that observes the
//! provider until the execution changes or ends.

use super::*;

/// The least time between two progress writes of one execution.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

impl ComputeActivities {
    pub(super) async fn get_status(
        &self,
        execution_id: &str,
    ) -> Result<ExecutionStatus, ComputeError> {
        match self.store.get_execution(execution_id).await {
            Ok(Some(r)) => Ok(r.status),
            Ok(None) => Err(ComputeError::new(
                ErrorCode::NotFound,
                format!("execution {execution_id} does not exist"),
            )),
            Err(e) => Err(store_err(e)),
        }
    }

    pub(super) async fn watch(
        &self,
        ctx: &ActivityContext,
        attempt: &Attempt,
        input: WatchInput,
    ) -> Result<ExecutionStatus, ComputeError> {
        let bell = self.cancel_bell.bell(&input.execution_id);
        let watched = self
            .watch_until_change(Pulse::Activity(ctx), Some(attempt), input.clone(), &bell)
            .await;
        self.cancel_bell.forget(&input.execution_id);
        watched
    }

    /// Observes the execution until it is final (or, in an activity, until its progress has
    /// changed for long enough to be worth reporting to the tracker), undoing it when an
    /// operator cancelled it, and putting the tenant back when it failed.
    pub(super) async fn watch_until_change(
        &self,
        pulse: Pulse<'_>,
        attempt: Option<&Attempt>,
        input: WatchInput,
        bell: &tokio::sync::Notify,
    ) -> Result<ExecutionStatus, ComputeError> {
        let started = tokio::time::Instant::now();
        // What the store holds, and when it was last written: progress writes are coalesced
        // (at most one per PROGRESS_WRITE_INTERVAL per execution), so a provider that reports
        // on every event does not write on every event. The newest progress is written at the
        // next look after the interval.
        let mut stored_progress = input.known_progress.clone();
        let mut written_at: Option<tokio::time::Instant> = None;
        let reports_progress = matches!(pulse, Pulse::Activity(_));
        let release = self.settings.release.clone();
        let released = || {
            // Retriable, so the tracker's retry policy resumes the watch on another worker:
            // a shutdown must never fail a tracker.
            ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                "the worker is shutting down; the watch resumes on another worker",
            )
        };
        loop {
            if release.is_cancelled() {
                return Err(released());
            }
            if pulse.is_cancelled() {
                // Cancelled by the server (the worker is going away or the tracker is gone):
                // retriable for the same reason.
                return Err(ComputeError::new(
                    ErrorCode::ProviderTemporarilyUnavailable,
                    "the watch was cancelled; it resumes on the next attempt",
                ));
            }
            let record = match self.store.get_execution(&input.execution_id).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Err(ComputeError::new(
                        ErrorCode::NotFound,
                        format!("execution {} does not exist", input.execution_id),
                    ));
                }
                Err(e) => return Err(store_err(e)),
            };
            if let Some(attempt) = attempt {
                attempt.about_status(&record.status);
            }
            let span = Span::current();
            span.record("tenant_id", record.status.tenant_id.as_str());
            span.record("operation", record.status.operation.as_str());
            if record.status.state.is_final() {
                return Ok(record.status);
            }
            if record.cancel_requested.is_some() {
                // Durable: a crash in the middle runs the undo again on the next attempt, and
                // every step of it is idempotent.
                tracing::info!("Cancel requested: undoing the execution.");
                // Boxed, as every rare path here: thousands of watches wait at once, and a future
                // holds its largest branch inline.
                let (error, tenant) = Box::pin(self.undo(pulse, &record)).await;
                error.log("The cancelled operation");
                let outcome = self
                    .store
                    .transition(Transition {
                        error: Some(error),
                        tenant,
                        ..Transition::to(&record.status.execution_id, ExecutionState::Cancelled)
                    })
                    .await
                    .map_err(store_err)?;
                return Ok(outcome.record.status);
            }
            let status = record.status.clone();
            let op = OperationContext {
                execution_id: status.execution_id.clone(),
                tenant_id: status.tenant_id.clone(),
                operation: status.operation,
                metadata: Default::default(),
            };
            let observed = tokio::select! {
                o = self.provider.observe(&op, &status.resource_ids) => o,
                _ = release.cancelled() => return Err(released()),
                // An operator cancelled: look at the store again at once.
                _ = bell.notified() => continue,
            };
            let observation = match observed {
                Ok(o) => o,
                Err(e) if e.retriable => {
                    // A flaky observation is not the operation failing: keep watching; the
                    // tracker's timeout bounds how long.
                    e.log("Observing the provider");
                    pulse.beat(status.state.as_str().to_string()).await;
                    // At least a short pause: a provider that waits inside `observe` has a
                    // zero interval, and a failing observation must not spin.
                    tokio::select! {
                        _ = tokio::time::sleep(self.provider.poll_interval().max(OBSERVE_ERROR_PAUSE)) => {}
                        _ = release.cancelled() => return Err(released()),
                    }
                    continue;
                }
                Err(e) => Observation::Failed(e),
            };
            let transition = match observation {
                Observation::Succeeded(ids) => Transition {
                    resource_ids: Some(ids),
                    ..Transition::to(&status.execution_id, ExecutionState::Succeeded)
                },
                Observation::Failed(e) => {
                    let mut e = e
                        .with_provider_default(self.provider.name())
                        .with_execution_id(&status.execution_id);
                    e.log("The operation");
                    // A failed update (or provision over a good spec) goes back to the last
                    // good spec before the failure is recorded, so the record never says the
                    // tenant runs something it does not.
                    let tenant =
                        Box::pin(self.put_back(pulse, &record, &status.resource_ids, true))
                            .await
                            .apply(&mut e);
                    Transition {
                        error: Some(e),
                        tenant,
                        ..Transition::to(&status.execution_id, ExecutionState::Failed)
                    }
                }
                Observation::InProgress(progress) => {
                    pulse.beat(progress.message.clone()).await;
                    let due = written_at.is_none_or(|at| at.elapsed() >= PROGRESS_WRITE_INTERVAL);
                    if stored_progress.as_ref() != Some(&progress) && due {
                        let updated = self
                            .store
                            .transition(Transition {
                                progress: Some(progress.clone()),
                                ..Transition::to(&status.execution_id, status.state)
                            })
                            .await
                            .map_err(store_err)?;
                        stored_progress = Some(progress.clone());
                        written_at = Some(tokio::time::Instant::now());
                        if reports_progress
                            && started.elapsed() >= self.settings.progress_report_interval
                        {
                            return Ok(updated.record.status);
                        }
                    }
                    // A progress not written yet is written at the next look after the
                    // interval, however long the provider waits before it answers.
                    let pause = if stored_progress.as_ref() != Some(&progress) {
                        self.provider.poll_interval().min(PROGRESS_WRITE_INTERVAL)
                    } else {
                        self.provider.poll_interval()
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = pulse.cancelled() => {}
                        _ = bell.notified() => {}
                        _ = release.cancelled() => return Err(released()),
                    }
                    continue;
                }
            };
            let outcome = self.store.transition(transition).await.map_err(store_err)?;
            crate::faults::crash_point(crate::faults::AFTER_TERMINAL_STATE);
            tracing::info!(state = %outcome.record.status.state, "Operation reached a final state.");
            return Ok(outcome.record.status);
        }
    }
}
