//! The activity definitions (a module of its own because the macro generates one
//! undocumented constant per activity). Each body runs inside [`ComputeActivities::audited`].

#![allow(missing_docs)]

use super::*;

#[activities]
impl ComputeActivities {
    /// `ProvisionTenantCompute`: `ComputeRequest` -> `ExecutionHandle`.
    #[activity(name = names::PROVISION_ACTIVITY)]
    pub async fn provision_tenant_compute(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionHandle, ActivityError> {
        self.audited(&ctx, async |attempt| {
            self.start(&ctx, attempt, Operation::Provision, &input)
                .await
        })
        .await
    }

    /// `UpdateTenantCompute`: `ComputeRequest` -> `ExecutionHandle`.
    #[activity(name = names::UPDATE_ACTIVITY)]
    pub async fn update_tenant_compute(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionHandle, ActivityError> {
        self.audited(&ctx, async |attempt| {
            self.start(&ctx, attempt, Operation::Update, &input).await
        })
        .await
    }

    /// `DeleteTenantCompute`: `DeleteRequest` -> `ExecutionHandle`.
    #[activity(name = names::DELETE_ACTIVITY)]
    pub async fn delete_tenant_compute(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionHandle, ActivityError> {
        self.audited(&ctx, async |attempt| {
            self.start(&ctx, attempt, Operation::Delete, &input).await
        })
        .await
    }

    /// `GetComputeExecution`: `{executionId, includeAttempts?}` -> `ExecutionStatus`, from
    /// the store; with `includeAttempts`, the status lists the execution's attempts (the
    /// latest [`MAX_ATTEMPTS_IN_STATUS`]).
    #[activity(name = names::GET_EXECUTION_ACTIVITY)]
    pub async fn get_compute_execution(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionStatus, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let (id, include_attempts) = input::decode(&input, "input")
                .and_then(|input| {
                    Ok((
                        validate::execution_id(&input)?,
                        validate::include_attempts(&input)?,
                    ))
                })
                .map_err(|e| fail(e, "Validating the request"))?;
            attempt.about_execution(&id);
            let mut status = self
                .get_status(&id)
                .await
                .map_err(|e| fail(e, "Reading the execution"))?;
            attempt.about_status(&status);
            status.callbacks = self
                .store
                .list_deliveries(&id)
                .await
                .map_err(|e| fail(store_err(e), "Reading the execution's callbacks"))?;
            if include_attempts {
                let mut attempts = self
                    .store
                    .list_attempts(&id)
                    .await
                    .map_err(|e| fail(store_err(e), "Reading the execution's attempts"))?;
                attempts.drain(..attempts.len().saturating_sub(MAX_ATTEMPTS_IN_STATUS));
                status.attempts = attempts;
            }
            Ok(status)
        })
        .await
    }

    /// `ListTenantComputeExecutions`: `{tenantId}` -> `[ExecutionStatus]`, oldest first.
    #[activity(name = names::LIST_EXECUTIONS_ACTIVITY)]
    pub async fn list_tenant_compute_executions(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<Vec<ExecutionStatus>, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let tenant = input::decode(&input, "input")
                .and_then(|input| validate::tenant_only(&input))
                .map_err(|e| fail(e, "Validating the request"))?;
            attempt.about_tenant(&tenant, None);
            self.store
                .list_executions(&tenant)
                .await
                .map(|rs| rs.into_iter().map(|r| r.status).collect())
                .map_err(|e| fail(store_err(e), "Listing executions"))
        })
        .await
    }

    /// `GetTenantCompute`: `{tenantId}` -> `TenantCompute` (an unknown tenant is `absent`).
    #[activity(name = names::GET_TENANT_ACTIVITY)]
    pub async fn get_tenant_compute(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<TenantCompute, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let tenant = input::decode(&input, "input")
                .and_then(|input| validate::tenant_only(&input))
                .map_err(|e| fail(e, "Validating the request"))?;
            attempt.about_tenant(&tenant, None);
            self.tenant_compute(&tenant)
                .await
                .map_err(|e| fail(e, "Reading the tenant"))
        })
        .await
    }

    /// `ListTenantCompute`: `{state?, pageSize?, pageToken?}` -> `{tenants, nextPageToken}`.
    #[activity(name = names::LIST_TENANTS_ACTIVITY)]
    pub async fn list_tenant_compute(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<TenantPage, ActivityError> {
        self.audited(&ctx, async |_attempt| {
            let query = input::decode(&input, "input")
                .and_then(|input| validate::tenant_list_query(&input))
                .map_err(|e| fail(e, "Validating the request"))?;
            self.tenant_page(&query)
                .await
                .map_err(|e| fail(e, "Listing tenants"))
        })
        .await
    }

    /// `CancelComputeExecution`: `{executionId, reason?}` -> the `ExecutionStatus` after the
    /// request. A running provision is undone and a running update reverted (by the tracker;
    /// this waits a while for it), a pending execution is cancelled at once, a running delete
    /// is refused with `CONFLICT`, and a finished execution is answered unchanged.
    #[activity(name = names::CANCEL_EXECUTION_ACTIVITY)]
    pub async fn cancel_compute_execution(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionStatus, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let (id, reason) = input::decode(&input, "input")
                .and_then(|input| validate::cancel_request(&input))
                .map_err(|e| fail(e, "Validating the request"))?;
            attempt.about_execution(&id);
            let span = tracing::info_span!("cancel", execution_id = %id, tenant_id = Empty, operation = Empty);
            async {
                self.cancel(&ctx, &id, reason)
                    .await
                    .map_err(|e| fail(e, "Cancelling the execution"))
            }
            .instrument(span)
            .await
        })
        .await
    }

    /// Internal (tracker): observes the provider until the execution is final, or its
    /// progress changed and the tracker should hear of it. Heartbeats while it waits.
    #[activity(name = names::WATCH_EXECUTION_ACTIVITY)]
    pub async fn watch_compute_execution(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionStatus, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let input = WatchInput::from_raw(&input)
                .map_err(|e| fail(e, "Validating the watch's input"))?;
            attempt.about_execution(&input.execution_id);
            let span = tracing::info_span!("watch", execution_id = %input.execution_id, tenant_id = Empty, operation = Empty);
            async {
                self.watch(&ctx, attempt, input)
                    .await
                    .map_err(|e| fail(e, "Watching the execution"))
            }
            .instrument(span)
            .await
        })
        .await
    }

    /// Internal (tracker): records that the execution passed its timeout (unless it is
    /// already final) and returns its status.
    #[activity(name = names::MARK_TIMED_OUT_ACTIVITY)]
    pub async fn mark_compute_execution_timed_out(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<ExecutionStatus, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let execution_id = input::decode_as::<String>(&input, "input")
                .and_then(|id| validate::check_execution_id("input", &id).map(|()| id))
                .map_err(|e| fail(e, "Validating the input"))?;
            attempt.about_execution(&execution_id);
            let status = self
                .get_status(&execution_id)
                .await
                .map_err(|e| fail(e, "Reading the execution"))?;
            attempt.about_status(&status);
            let span = op_span(status.operation.as_str(), &status.tenant_id);
            span.record("execution_id", execution_id.as_str());
            async {
                let error = ComputeError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the operation did not finish within {}; it is still being watched and its outcome will be recorded",
                        humantime::format_duration(Duration::from_millis(status.timeout_ms))
                    ),
                );
                error.log("The operation");
                self.store
                    .transition(Transition {
                        error: Some(error),
                        ..Transition::to(&execution_id, ExecutionState::TimedOut)
                    })
                    .await
                    .map(|o| o.record.status)
                    .map_err(|e| fail(store_err(e), "Recording the timeout"))
            }
            .instrument(span)
            .await
        })
        .await
    }

    /// Internal (tracker): delivers one callback to one target. Retried (by the tracker's
    /// retry policy) until the target accepts it or says it never will.
    #[activity(name = names::DELIVER_CALLBACK_ACTIVITY)]
    pub async fn deliver_compute_callback(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<DeliveryOutcome, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let input = DeliverInput::from_raw(&input)
                .and_then(|i| self.callbacks.check_target(&i.target).map(|()| i))
                .map_err(|e| fail(e, "Validating the delivery"))?;
            let cb = &input.callback;
            attempt.about_tenant(&cb.tenant_id, Some(cb.operation.as_str()));
            attempt.about_execution(&cb.execution_id);
            let span = op_span(cb.operation.as_str(), &cb.tenant_id);
            span.record("execution_id", cb.execution_id.as_str());
            async {
                // The observer tells the caller that started the operation itself, as soon as
                // the final state is in the store: the tracker's delivery is then the backstop,
                // and must not send it again (nor call a caller closed since undeliverable).
                if self.delivered_before(&input).await {
                    tracing::info!(target = %input.target.describe(), state = %input.callback.state, "Callback delivered before; not sent again.");
                    return Ok(DeliveryOutcome {
                        delivered: true,
                        undeliverable_reason: None,
                        attempts: ctx.info().attempt,
                    });
                }
                self.deliver(&ctx, input)
                    .await
                    .map_err(|e| fail(e, "Delivering the callback"))
            }
            .instrument(span)
            .await
        })
        .await
    }

    /// Internal (tracker, `TenantComputeWorkflow`): tells the targets that asked for
    /// heartbeats (Step Functions' `HeartbeatSeconds`) that the execution still runs.
    #[activity(name = names::HEARTBEAT_CALLBACKS_ACTIVITY)]
    pub async fn heartbeat_compute_callbacks(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<HeartbeatOutcome, ActivityError> {
        self.audited(&ctx, async |attempt| {
            let input = HeartbeatInput::from_raw(&input)
                .and_then(|i| {
                    i.targets
                        .iter()
                        .try_for_each(|t| self.callbacks.check_target(t))
                        .map(|()| i)
                })
                .map_err(|e| fail(e, "Validating the heartbeat's input"))?;
            attempt.about_tenant(&input.tenant_id, Some(input.operation.as_str()));
            if !input.execution_id.is_empty() {
                attempt.about_execution(&input.execution_id);
            }
            let span = op_span(input.operation.as_str(), &input.tenant_id);
            span.record("execution_id", input.execution_id.as_str());
            Ok(self.heartbeat(&input).instrument(span).await)
        })
        .await
    }

    /// Internal (`TenantComputeWorkflow`): validates a request's `callback` (its shape
    /// and, for Restate, that the ingress is configured here) before the operation
    /// starts; `null` when the request has none.
    #[activity(name = names::CHECK_CALLBACK_ACTIVITY)]
    pub async fn check_compute_callback(
        self: Arc<Self>,
        ctx: ActivityContext,
        request: RawValue,
    ) -> Result<Option<CallbackTarget>, ActivityError> {
        self.audited(&ctx, async |_attempt| {
            let target = input::decode(&request, "request")
                .and_then(|request| validate::callback_of(&request))
                .map_err(|e| fail(e, "Validating the callback"))?;
            if let Some(t) = &target {
                self.callbacks
                    .check_target(t)
                    .map_err(|e| fail(e, "Validating the callback"))?;
            }
            Ok(target)
        })
        .await
    }

    /// Internal (`TenantComputeWorkflow`, policy `abort`): marks the tenant
    /// `requires_manual_intervention`.
    #[activity(name = names::MARK_TENANT_INTERVENTION_ACTIVITY)]
    pub async fn mark_tenant_requires_intervention(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: RawValue,
    ) -> Result<(), ActivityError> {
        self.audited(&ctx, async |attempt| {
            let input =
                InterventionInput::from_raw(&input).map_err(|e| fail(e, "Validating the input"))?;
            attempt.about_tenant(&input.tenant_id, Some("abort"));
            attempt.about_execution(&input.execution_id);
            let span = op_span("abort", &input.tenant_id);
            span.record("execution_id", input.execution_id.as_str());
            async {
                tracing::error!(reason = %input.reason, "Tenant marked for manual intervention.");
                self.mark_for_intervention(&input)
                    .await
                    .map_err(|e| fail(e, "Marking the tenant"))
            }
            .instrument(span)
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use compute_contract::activity;
    use temporalio_common::ActivityDefinition;

    use super::*;

    /// The workflows schedule activities through the contract's signatures: each must name
    /// the implementation and carry its input and output types.
    fn same<I, S>(implementation: I, signature: S)
    where
        I: ActivityDefinition,
        S: ActivityDefinition<Input = I::Input, Output = I::Output>,
    {
        assert_eq!(implementation.name(), signature.name());
    }

    #[test]
    fn the_contracts_signatures_are_the_implementations() {
        same(
            ComputeActivities::provision_tenant_compute,
            activity::Provision,
        );
        same(ComputeActivities::update_tenant_compute, activity::Update);
        same(ComputeActivities::delete_tenant_compute, activity::Delete);
        same(
            ComputeActivities::get_compute_execution,
            activity::GetExecution,
        );
        same(
            ComputeActivities::list_tenant_compute_executions,
            activity::ListExecutions,
        );
        same(ComputeActivities::get_tenant_compute, activity::GetTenant);
        same(
            ComputeActivities::list_tenant_compute,
            activity::ListTenants,
        );
        same(
            ComputeActivities::cancel_compute_execution,
            activity::CancelExecution,
        );
        same(
            ComputeActivities::watch_compute_execution,
            activity::WatchExecution,
        );
        same(
            ComputeActivities::mark_compute_execution_timed_out,
            activity::MarkTimedOut,
        );
        same(
            ComputeActivities::deliver_compute_callback,
            activity::DeliverCallback,
        );
        same(
            ComputeActivities::heartbeat_compute_callbacks,
            activity::HeartbeatCallbacks,
        );
        same(
            ComputeActivities::check_compute_callback,
            activity::CheckCallback,
        );
        same(
            ComputeActivities::mark_tenant_requires_intervention,
            activity::MarkTenantIntervention,
        );
    }
}
