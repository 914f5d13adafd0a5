//! The activities' signatures (name, input, output) as the workflows call them.
//!
//! The worker implements them in `compute-activities`; the workflows schedule them through
//! these definitions, so they need none of the implementation's dependencies. The worker's
//! tests check that each one matches the implementation's name and output type.

use temporalio_common::{ActivityDefinition, data_converters::RawValue};

use crate::{
    messages::{DeliveryOutcome, HeartbeatOutcome},
    names,
    types::{CallbackTarget, ExecutionHandle, ExecutionStatus, TenantCompute, TenantPage},
};

macro_rules! signatures {
    ($($(#[$doc:meta])* $ty:ident = $name:path => $out:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $ty;

        impl ActivityDefinition for $ty {
            // Every activity takes raw JSON and validates it itself: the SDK would retry a
            // payload it cannot deserialize forever.
            type Input = RawValue;
            type Output = $out;

            fn name(&self) -> &str {
                $name
            }
        }
    )*};
}

signatures! {
    /// `ProvisionTenantCompute`: `ComputeRequest` -> `ExecutionHandle`.
    Provision = names::PROVISION_ACTIVITY => ExecutionHandle;
    /// `UpdateTenantCompute`: `ComputeRequest` -> `ExecutionHandle`.
    Update = names::UPDATE_ACTIVITY => ExecutionHandle;
    /// `DeleteTenantCompute`: `DeleteRequest` -> `ExecutionHandle`.
    Delete = names::DELETE_ACTIVITY => ExecutionHandle;
    /// `GetComputeExecution`: `{executionId}` -> `ExecutionStatus`.
    GetExecution = names::GET_EXECUTION_ACTIVITY => ExecutionStatus;
    /// `ListTenantComputeExecutions`: `{tenantId}` -> `[ExecutionStatus]`.
    ListExecutions = names::LIST_EXECUTIONS_ACTIVITY => Vec<ExecutionStatus>;
    /// `GetTenantCompute`: `{tenantId}` -> `TenantCompute`.
    GetTenant = names::GET_TENANT_ACTIVITY => TenantCompute;
    /// `ListTenantCompute`: `{state?, pageSize?, pageToken?}` -> `TenantPage`.
    ListTenants = names::LIST_TENANTS_ACTIVITY => TenantPage;
    /// `CancelComputeExecution`: `{executionId, reason?}` -> `ExecutionStatus`.
    CancelExecution = names::CANCEL_EXECUTION_ACTIVITY => ExecutionStatus;
    /// `WatchComputeExecution` (tracker): `WatchInput` -> `ExecutionStatus`.
    WatchExecution = names::WATCH_EXECUTION_ACTIVITY => ExecutionStatus;
    /// `MarkComputeExecutionTimedOut` (tracker): `{executionId}` -> `ExecutionStatus`.
    MarkTimedOut = names::MARK_TIMED_OUT_ACTIVITY => ExecutionStatus;
    /// `DeliverComputeCallback` (tracker): `DeliverInput` -> `DeliveryOutcome`.
    DeliverCallback = names::DELIVER_CALLBACK_ACTIVITY => DeliveryOutcome;
    /// `HeartbeatComputeCallbacks`: `HeartbeatInput` -> `HeartbeatOutcome`.
    HeartbeatCallbacks = names::HEARTBEAT_CALLBACKS_ACTIVITY => HeartbeatOutcome;
    /// `CheckComputeCallback` (`TenantComputeWorkflow`): a request -> its callback target.
    CheckCallback = names::CHECK_CALLBACK_ACTIVITY => Option<CallbackTarget>;
    /// `MarkTenantRequiresIntervention` (`TenantComputeWorkflow`): `InterventionInput` -> ().
    MarkTenantIntervention = names::MARK_TENANT_INTERVENTION_ACTIVITY => ();
}
