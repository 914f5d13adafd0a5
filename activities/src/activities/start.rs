//! Starting an operation: validating the request, beginning (or attaching to) its execution
//! in the store, asking the provider, and starting its tracker.

use super::*;

/// The request as the store keeps it: a Step Functions task token completes the caller's
/// task, so only its digest is kept (the tracker holds the token in its own state, from the
/// `attach-callback` signal).
pub(super) fn store_safe_request(request: &Value) -> Value {
    let mut request = request.clone();
    if let Some(sfn) = request
        .pointer_mut("/callback/stepFunctions")
        .and_then(Value::as_object_mut)
        && let Some(Value::String(token)) = sfn.remove("taskToken")
    {
        sfn.insert(
            "taskTokenDigest".into(),
            Value::String(crate::contract::token_digest(&token)),
        );
    }
    request
}
pub(super) fn handle_of(record: &ExecutionRecord, attached: bool) -> ExecutionHandle {
    let s = &record.status;
    ExecutionHandle {
        execution_id: s.execution_id.clone(),
        tenant_id: s.tenant_id.clone(),
        operation: s.operation,
        state: s.state,
        attempt: s.attempt,
        resource_ids: s.resource_ids.clone(),
        tracker_workflow_id: names::tracker_workflow_id(&s.execution_id),
        attached,
        error: if s.state.is_final() {
            s.error.clone()
        } else {
            None
        },
    }
}

/// The default callback target: the workflow that called the activity.
pub(super) fn default_target(ctx: &ActivityContext) -> Option<CallbackTarget> {
    let info = ctx.info();
    info.workflow_id.clone().map(|workflow_id| {
        CallbackTarget::Temporal(TemporalCallback {
            workflow_id,
            run_id: None,
            namespace: None,
        })
    })
}
/// A request reduced to what the start path needs.
pub(super) struct StartRequest {
    tenant_id: String,
    metadata: Metadata,
    spec: Option<ComputeSpec>,
    idempotency_key: Option<String>,
    callback: Option<CallbackTarget>,
    timeout: Option<String>,
    validated: Value,
}
impl ComputeActivities {
    pub(super) fn parse_start(
        &self,
        operation: Operation,
        input: &Value,
    ) -> Result<StartRequest, ComputeError> {
        let req = self.parse_start_shape(operation, input)?;
        if let Some(target) = &req.callback {
            self.callbacks.check_target(target)?;
        }
        Ok(req)
    }

    pub(super) fn parse_start_shape(
        &self,
        operation: Operation,
        input: &Value,
    ) -> Result<StartRequest, ComputeError> {
        // Plain data: serializing it cannot fail.
        fn to_value<T: Serialize>(v: &T) -> Value {
            serde_json::to_value(v).unwrap_or(Value::Null)
        }
        match operation {
            Operation::Provision | Operation::Update => {
                let r = validate::compute_request(input)?;
                self.provider.validate(&r.tenant_id, &r.spec)?;
                self.provider.validate_metadata(&r.metadata)?;
                Ok(StartRequest {
                    validated: to_value(&r),
                    tenant_id: r.tenant_id,
                    metadata: r.metadata,
                    spec: Some(r.spec),
                    idempotency_key: r.idempotency_key,
                    callback: r.callback,
                    timeout: r.timeout,
                })
            }
            Operation::Delete => {
                let r = validate::delete_request(input)?;
                Ok(StartRequest {
                    validated: to_value(&r),
                    tenant_id: r.tenant_id,
                    metadata: Metadata::default(),
                    spec: None,
                    idempotency_key: r.idempotency_key,
                    callback: r.callback,
                    timeout: r.timeout,
                })
            }
        }
    }

    /// The start path shared by provision, update and delete.
    pub(super) async fn start(
        &self,
        ctx: &ActivityContext,
        attempt: &Attempt,
        operation: Operation,
        input: &RawValue,
    ) -> Result<ExecutionHandle, ComputeError> {
        // The refused input is never logged: only the field-naming message is.
        let req = input::decode(input, "input")
            .and_then(|input| self.parse_start(operation, &input))
            .map_err(|e| fail(e, "Validating the request"))?;
        attempt.about_tenant(&req.tenant_id, Some(operation.as_str()));
        let span = op_span(operation.as_str(), &req.tenant_id);
        self.start_valid(ctx, attempt, operation, req)
            .instrument(span)
            .await
    }

    pub(super) async fn start_valid(
        &self,
        ctx: &ActivityContext,
        attempt: &Attempt,
        operation: Operation,
        req: StartRequest,
    ) -> Result<ExecutionHandle, ComputeError> {
        let timeout = match &req.timeout {
            Some(t) => humantime::parse_duration(t).unwrap_or(self.settings.default_timeout),
            None => self.settings.default_timeout,
        };
        let target = req.callback.clone().or_else(|| default_target(ctx));
        let begin = self
            .store
            .begin_execution(NewExecution {
                tenant_id: req.tenant_id.clone(),
                operation,
                idempotency_key: req.idempotency_key.clone(),
                spec_hash: store::spec_hash(req.spec.as_ref()),
                spec: req.spec.clone(),
                request: store_safe_request(&req.validated),
                timeout,
                provider: Some(self.provider.name().to_string()),
            })
            .await
            .map_err(|e| fail(store_err(e), "Recording the execution"))?;

        let mut record = begin.record;
        let execution_id = record.status.execution_id.clone();
        Span::current().record("execution_id", execution_id.as_str());
        attempt.about_execution(&execution_id);
        tracing::info!(
            created = begin.created,
            reopened = begin.reopened,
            execution_attempt = record.status.attempt,
            state = %record.status.state,
            attempt = ctx.info().attempt,
            "Operation requested."
        );
        let attached = !begin.created && !begin.reopened;

        if record.status.state.is_final() {
            tracing::info!(state = %record.status.state, "Attached after the end: returning the final state.");
            // A caller waits for its signal whatever its handle says: one never told (a late
            // attacher, or this caller's retry after a crash between the final state and the
            // signal) is told now, by its tracker when the target is down.
            if self.tell_inline(ctx, &record, target.as_ref()).await {
                return Ok(handle_of(&record, true));
            }
        } else {
            if record.status.state == ExecutionState::Pending {
                record = self
                    .apply(ctx, record, &req, begin.previous_tenant.as_ref())
                    .await
                    .map_err(|e| e.with_execution_id(&execution_id))?;
                record = self.first_look(record, &req).await;
            }
            // Done already (an instant provider): the caller is told from here, and no
            // tracker is started: a retry of this activity tells it again if a crash came
            // between the final state and the signal (above).
            if record.status.state.is_final()
                && self.tell_inline(ctx, &record, target.as_ref()).await
            {
                return Ok(handle_of(&record, attached));
            }
        }

        // The provider has it: from here on the worker's observer watches it (this worker's,
        // or whichever takes it over), whatever becomes of this activity.
        // Watched from now, before the tracker exists: a wake-up that finds no tracker is
        // fine, as a tracker reads the store when it starts.
        if !record.status.state.is_final()
            && self.claim_here(&execution_id).await.map_err(|e| {
                fail(
                    e.with_execution_id(&execution_id),
                    "Putting the execution under observation",
                )
            })?
        {
            self.adopt(&execution_id, target.as_ref());
        }
        crate::faults::crash_point(crate::faults::BEFORE_TRACKER_START);
        self.ensure_tracker(ctx, &record, target)
            .await
            .map_err(|e| fail(e.with_execution_id(&execution_id), "Starting the tracker"))?;
        // The tracker may have finished in between (a late attacher): report what is true now.
        if let Ok(Some(now)) = self.store.get_execution(&execution_id).await {
            record = now;
        }
        Ok(handle_of(&record, attached))
    }

    /// Hands a pending execution to the provider and records that it runs. A provision of a
    /// tenant that already runs a different last good spec is applied as an update from it
    /// (the same on every provider); one of the same spec returns what runs. A non-retriable
    /// failure of an update puts the tenant back on its last good spec.
    async fn apply(
        &self,
        ctx: &ActivityContext,
        record: ExecutionRecord,
        req: &StartRequest,
        previous: Option<&TenantRecord>,
    ) -> Result<ExecutionRecord, ComputeError> {
        let status = &record.status;
        let execution_id = status.execution_id.clone();
        let operation = status.operation;
        let op = OperationContext {
            execution_id: execution_id.clone(),
            tenant_id: status.tenant_id.clone(),
            operation,
            metadata: req.metadata.clone(),
        };
        // A re-sent request may differ from the one recorded: the recorded one is carried out.
        let spec = record
            .spec()
            .or_else(|| req.spec.clone())
            .unwrap_or_default();
        let current = previous
            .map(|t| CurrentState {
                spec: t.spec.clone(),
                resource_ids: t.resource_ids.clone(),
            })
            .unwrap_or_default();
        let result = match operation {
            Operation::Provision => match &current.spec {
                Some(good)
                    if previous.is_some_and(|t| t.state != TenantState::Deleted)
                        && store::spec_hash(Some(good)) != record.spec_hash =>
                {
                    tracing::info!(
                        "The tenant runs another spec: provisioning applies this one as an update."
                    );
                    self.provider.update(&op, &current, &spec).await
                }
                _ => self.provider.provision(&op, &spec).await,
            },
            Operation::Update => self.provider.update(&op, &current, &spec).await,
            Operation::Delete => self.provider.delete(&op, &current).await,
        };
        crate::faults::crash_point(crate::faults::AFTER_PROVIDER_CALL);
        let ids = match result {
            Ok(ids) => ids,
            Err(e) => {
                let mut e = e
                    .with_provider_default(self.provider.name())
                    .with_execution_id(&execution_id);
                let state = if e.retriable {
                    ExecutionState::Pending
                } else {
                    ExecutionState::Failed
                };
                let tenant = if state == ExecutionState::Failed {
                    self.put_back(
                        Pulse::Activity(ctx),
                        &record,
                        &ResourceIds::default(),
                        false,
                    )
                    .await
                    .apply(&mut e)
                } else {
                    None
                };
                let note = format!("attempt {} failed: {}", ctx.info().attempt, e.code);
                if let Err(se) = self
                    .store
                    .transition(Transition {
                        error: Some(e.clone()),
                        message: Some(note),
                        tenant,
                        ..Transition::to(&execution_id, state)
                    })
                    .await
                {
                    // The provider's error is what the caller needs; the store's goes to
                    // the log, and a retry records it again.
                    tracing::warn!(error = %se, "Could not record the failed attempt.");
                }
                return Err(fail(e, "The provider call"));
            }
        };
        let outcome = self
            .store
            .transition(Transition {
                resource_ids: Some(ids.clone()),
                ..Transition::to(&execution_id, ExecutionState::Running)
            })
            .await
            .map_err(|e| fail(store_err(e), "Recording the running state"))?;
        if !outcome.applied && outcome.record.status.state == ExecutionState::Cancelled {
            // An operator cancelled while the provider call was under way: undo it here, as the
            // tracker would have.
            tracing::info!("Cancelled while the provider took it: undoing it.");
            let undone = ExecutionRecord {
                status: ExecutionStatus {
                    resource_ids: ids,
                    ..outcome.record.status.clone()
                },
                ..outcome.record.clone()
            };
            let (error, _) = self.undo(Pulse::Activity(ctx), &undone).await;
            let note = match &error.rollback_error {
                Some(why) => format!("undoing what the provider did failed: {why}"),
                None => "undid what the provider did after the cancel".to_string(),
            };
            let _ = self
                .store
                .transition(Transition {
                    message: Some(note),
                    ..Transition::to(&execution_id, ExecutionState::Cancelled)
                })
                .await;
        }
        Ok(outcome.record)
    }

    /// The start path's own first observation, for a provider that answers it at once
    /// ([`ComputeProvider::observes_at_once`]): an operation already done is recorded as
    /// succeeded here, saving the tracker's round trips. Anything else (in progress, failed,
    /// an error) is left to the tracker, the one place that watches, reverts and undoes.
    async fn first_look(&self, record: ExecutionRecord, req: &StartRequest) -> ExecutionRecord {
        let status = &record.status;
        if status.state != ExecutionState::Running
            || record.cancel_requested.is_some()
            || !self.provider.observes_at_once()
        {
            return record;
        }
        let op = OperationContext {
            execution_id: status.execution_id.clone(),
            tenant_id: status.tenant_id.clone(),
            operation: status.operation,
            metadata: req.metadata.clone(),
        };
        let ids = match self.provider.observe(&op, &status.resource_ids).await {
            Ok(Observation::Succeeded(ids)) => ids,
            _ => return record,
        };
        match self
            .store
            .transition(Transition {
                resource_ids: Some(ids),
                ..Transition::to(&status.execution_id, ExecutionState::Succeeded)
            })
            .await
        {
            Ok(outcome) => {
                crate::faults::crash_point(crate::faults::AFTER_TERMINAL_STATE);
                tracing::info!(state = %outcome.record.status.state, "Operation reached a final state at its first look.");
                outcome.record
            }
            Err(e) => {
                // The tracker observes it again and records it.
                tracing::warn!(error = %e, "Could not record the final state at the first look; the tracker will.");
                record
            }
        }
    }

    /// Tells `target` the final state of `record` from this activity, unless the store shows
    /// it was told already. True when nothing is left to do (told now or before, or told it
    /// never will be); false when the target did not take it, so the tracker must deliver it
    /// with its retries.
    async fn tell_inline(
        &self,
        ctx: &ActivityContext,
        record: &ExecutionRecord,
        target: Option<&CallbackTarget>,
    ) -> bool {
        let status = &record.status;
        let Some(target) = target else { return true };
        let described = target.describe();
        let Ok(deliveries) = self.store.list_deliveries(&status.execution_id).await else {
            return false;
        };
        let mine: Vec<_> = deliveries
            .iter()
            .filter(|d| d.target == described)
            .collect();
        if mine
            .iter()
            .any(|d| d.state == status.state && d.outcome != DeliveryState::Pending)
        {
            return true;
        }
        // The tracker's numbering: one more than the states this target was told before.
        let told: std::collections::HashSet<ExecutionState> = mine
            .iter()
            .map(|d| d.state)
            .filter(|s| *s != status.state)
            .collect();
        let input = DeliverInput {
            target: target.clone(),
            callback: ComputeCallback::from_status(status, told.len() as u32 + 1),
        };
        match self.deliver(ctx, input).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e.message, "The caller did not take the callback; its tracker delivers it.");
                false
            }
        }
    }

    /// Starts the execution's tracker if it is not running, and adds the caller's target,
    /// atomically (signal-with-start). A closed tracker is started again only for a re-opened
    /// execution (a final one never gets here).
    pub(super) async fn ensure_tracker(
        &self,
        ctx: &ActivityContext,
        record: &ExecutionRecord,
        target: Option<CallbackTarget>,
    ) -> Result<(), ComputeError> {
        let s = &record.status;
        let conv = PayloadConverter::serde_json();
        let input = TrackerInput {
            execution_id: s.execution_id.clone(),
            tenant_id: s.tenant_id.clone(),
            operation: s.operation,
            timeout_ms: s.timeout_ms,
            max_history_events: self.settings.tracker_max_history_events,
            carried: None,
            observed: true,
        };
        let options = WorkflowStartOptions::new(
            self.settings.task_queue.clone(),
            names::tracker_workflow_id(&s.execution_id),
        )
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .search_attributes(SearchAttributes::new([
            TENANT_ID_KEY.value_set(s.tenant_id.clone())
        ]))
        .build();
        let result = ctx
            .client()
            .signal_with_start_workflow(
                UntypedWorkflow::new(names::TRACKER_WORKFLOW),
                RawValue::from_value(&input, &conv),
                UntypedSignal::new(names::SIGNAL_ATTACH_CALLBACK),
                RawValue::from_value(&AttachCallback { target }, &conv),
                options,
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            // The tracker already finished: the store holds the final state.
            Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(e) => Err(ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                "could not start the execution's tracker on Temporal",
            )
            .with_provider("temporal", None)
            .with_root_cause(e)),
        }
    }
}
