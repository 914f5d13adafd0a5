//! Telling callers: one delivery attempt to a target (a Temporal signal, a Step Functions
//! task or a Restate awakeable) with its record, and heartbeats.

use super::*;

impl ComputeActivities {
    /// One attempt to deliver a callback, recorded in the store with its outcome.
    pub(super) async fn deliver(
        &self,
        ctx: &ActivityContext,
        input: DeliverInput,
    ) -> Result<DeliveryOutcome, ComputeError> {
        let attempts = ctx.info().attempt;
        let verdict = match &input.target {
            CallbackTarget::Temporal(t) => self.signal(ctx.client(), t, &input.callback).await,
            other => match self.callbacks.deliver(other, &input.callback).await {
                // A token is "invalid" once used: if an earlier attempt's answer was lost,
                // that attempt may be what used it.
                Ok(Verdict::Undeliverable(reason))
                    if attempts > 1 && matches!(other, CallbackTarget::StepFunctions(_)) =>
                {
                    Ok(Verdict::Undeliverable(format!(
                        "{reason}; an earlier attempt whose answer was lost may have completed \
                         the task"
                    )))
                }
                v => v,
            },
        };
        self.record_delivery(&input, &verdict).await;
        let target = input.target.describe();
        match verdict {
            Ok(Verdict::Delivered) => {
                tracing::info!(%target, state = %input.callback.state, attempts, "Callback delivered.");
                Ok(DeliveryOutcome {
                    delivered: true,
                    undeliverable_reason: None,
                    attempts,
                })
            }
            Ok(Verdict::Undeliverable(reason)) => {
                tracing::warn!(%target, %reason, attempts, "The callback target will never accept the callback; recorded as undeliverable.");
                Ok(DeliveryOutcome {
                    delivered: false,
                    undeliverable_reason: Some(reason),
                    attempts,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Counts the attempt in `callback_deliveries`. Best effort: the delivery's outcome
    /// stands whether or not the store takes the record.
    pub(super) async fn record_delivery(
        &self,
        input: &DeliverInput,
        verdict: &Result<Verdict, ComputeError>,
    ) {
        if input.callback.execution_id.is_empty() {
            return;
        }
        let (outcome, error) = match verdict {
            Ok(Verdict::Delivered) => (DeliveryState::Delivered, None),
            Ok(Verdict::Undeliverable(r)) => (DeliveryState::Undeliverable, Some(r.clone())),
            Err(e) => (
                DeliveryState::Pending,
                Some(match &e.provider_code {
                    Some(code) => format!("{} ({code})", e.message),
                    None => e.message.clone(),
                }),
            ),
        };
        let kind = input.target.kind();
        let since_final = (outcome == DeliveryState::Delivered).then(|| {
            (now() - input.callback.finished_at)
                .to_std()
                .unwrap_or_default()
        });
        self.settings
            .metrics
            .delivery(kind, outcome.as_str(), since_final);
        let attempt = DeliveryAttempt {
            execution_id: input.callback.execution_id.clone(),
            target: input.target.describe(),
            kind: kind.to_string(),
            state: input.callback.state,
            sequence: input.callback.sequence,
            outcome,
            error,
            at: now(),
        };
        match tokio::time::timeout(AUDIT_WRITE_TIMEOUT, self.store.record_delivery(attempt)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Could not record the delivery attempt; its outcome stands.")
            }
            Err(_) => tracing::warn!(
                "The store did not take the delivery attempt in time; its outcome stands."
            ),
        }
    }

    /// Whether the store shows `input`'s target told `input`'s state already (by the
    /// observer, or by an earlier attempt whose answer was lost). A store that cannot say is
    /// taken for no: the callback is sent again, at least once.
    pub(super) async fn delivered_before(&self, input: &DeliverInput) -> bool {
        let target = input.target.describe();
        match tokio::time::timeout(
            AUDIT_WRITE_TIMEOUT,
            self.store.list_deliveries(&input.callback.execution_id),
        )
        .await
        {
            Ok(Ok(deliveries)) => deliveries.iter().any(|d| {
                d.outcome == DeliveryState::Delivered && d.reports(&target, &input.callback)
            }),
            _ => false,
        }
    }

    /// Signals a Temporal workflow (one attempt).
    pub(super) async fn signal(
        &self,
        client: temporalio_client::Client,
        t: &TemporalCallback,
        cb: &ComputeCallback,
    ) -> Result<Verdict, ComputeError> {
        let namespace = t
            .namespace
            .clone()
            .unwrap_or_else(|| client.options().namespace.clone());
        // The same request id for the same (execution, state) lets the server drop a
        // duplicate sent by a retried attempt.
        let request_id = format!(
            "{}:{}:{}:{}",
            cb.execution_id, cb.attempt, cb.state, cb.sequence
        );
        match signal_once(
            client,
            namespace,
            t.workflow_id.clone(),
            t.run_id.clone(),
            cb.signal_name(),
            RawValue::from_value(cb, &PayloadConverter::serde_json()),
            request_id,
        )
        .await
        {
            Ok(Signalled::Taken) => Ok(Verdict::Delivered),
            Ok(Signalled::NotFound(why)) => Ok(Verdict::Undeliverable(format!(
                "workflow not found or closed: {why}"
            ))),
            Err(e) => Err(e.context("Temporal did not accept the callback signal")),
        }
    }

    /// Sends one heartbeat to each target that asked for them. A failed heartbeat is not
    /// retried (the next one is due soon); a target that says it never will is reported.
    pub(super) async fn heartbeat(&self, input: &HeartbeatInput) -> HeartbeatOutcome {
        let mut outcome = HeartbeatOutcome::default();
        for target in &input.targets {
            match self.callbacks.heartbeat(target).await {
                Ok(Verdict::Delivered) => outcome.sent += 1,
                Ok(Verdict::Undeliverable(reason)) => {
                    tracing::warn!(target = %target.describe(), %reason, "The target takes no more heartbeats.");
                    outcome.finished.push(target.clone());
                }
                Err(e) => e.log("Sending a heartbeat"),
            }
        }
        outcome
    }
}

/// What one signal to a workflow came to.
pub(super) enum Signalled {
    /// Temporal took it.
    Taken,
    /// The workflow does not exist or is closed (the server's message).
    NotFound(String),
}

/// Why Temporal did not take a signal: retriable, with the client's error as root cause.
pub(super) struct SignalRefused(WorkflowInteractionError);

impl SignalRefused {
    /// The failure, saying what was being sent.
    pub(super) fn context(self, what: &str) -> ComputeError {
        ComputeError::new(ErrorCode::ProviderTemporarilyUnavailable, what)
            .with_provider("temporal", None)
            .with_root_cause(self.0)
    }
}

/// Sends one signal with `request_id` (the server drops a repeat with the same id): the one
/// signalling path of callbacks and of the observer's wake-ups.
pub(super) async fn signal_once(
    client: temporalio_client::Client,
    namespace: String,
    workflow_id: String,
    run_id: Option<String>,
    name: &str,
    payload: RawValue,
    request_id: String,
) -> Result<Signalled, SignalRefused> {
    let handle: WorkflowHandle<_, UntypedWorkflow> = WorkflowHandle::new(
        client,
        WorkflowExecutionInfo::builder()
            .namespace(namespace)
            .workflow_id(workflow_id)
            .maybe_run_id(run_id)
            .build(),
    );
    let options = WorkflowSignalOptions::builder()
        .request_id(request_id)
        .build();
    match handle
        .signal(UntypedSignal::new(name), payload, options)
        .await
    {
        Ok(()) => Ok(Signalled::Taken),
        Err(WorkflowInteractionError::NotFound(status)) => {
            Ok(Signalled::NotFound(status.message().to_string()))
        }
        Err(e) => Err(SignalRefused(e)),
    }
}
