//! The published contract as JSON Schema (draft 2020-12), generated from the types callers
//! exchange with the worker: what `compute-worker schema` prints and `contract/schema/` holds
//! (a test fails when the committed files are stale).
//!
//! The requests, handles, statuses and callbacks are the worker's own types. The small query
//! inputs and the workflow's input and policy are validated by hand (see
//! [`crate::validate`]), so their wire shape is written down here for the schema only; the
//! golden payloads of `contract/examples/` tie both together: each one is valid against its
//! schema and accepted by the worker's own validation.

use std::collections::BTreeMap;

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::Value;

use crate::{
    names,
    types::{
        ComputeCallback, ComputeRequest, DeleteRequest, ExecutionHandle, ExecutionStatus,
        TenantCompute, TenantPage, TenantState,
    },
};

/// Input of `GetComputeExecution`.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ExecutionQuery {
    /// The execution.
    execution_id: String,
    /// List the execution's activity attempts in the answer (`attempts`).
    #[serde(default)]
    include_attempts: bool,
}

/// Input of `GetTenantCompute` and `ListTenantComputeExecutions`.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct TenantQuery {
    /// The tenant.
    tenant_id: String,
}

/// Input of `ListTenantCompute`.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct TenantListQuery {
    /// Only tenants in this state.
    #[serde(default)]
    state: Option<TenantState>,
    /// At most this many tenants (1 to 1,000; 100 when absent).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    page_size: Option<u32>,
    /// The previous page's `nextPageToken`.
    #[serde(default)]
    page_token: Option<String>,
}

/// Input of `CancelComputeExecution`.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct CancelRequest {
    /// The execution to cancel.
    execution_id: String,
    /// Why, for the execution's history.
    #[serde(default)]
    reason: Option<String>,
}

/// What `TenantComputeWorkflow` does when an operation ends with a code.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OnError {
    /// Run the operation again, up to `maxAttempts`; for `TIMEOUT`, keep waiting.
    Retry,
    /// Undo, then fail.
    Rollback,
    /// Mark the tenant `requires_manual_intervention`, then fail.
    Abort,
}

/// The caller's retry and error-handling policy (every field optional).
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Policy {
    /// Attempts in all (default 3).
    #[serde(default)]
    #[schemars(range(min = 1))]
    max_attempts: Option<u32>,
    /// First retry delay, a duration such as `"1s"`.
    #[serde(default)]
    initial_interval: Option<String>,
    /// Growth factor of the delay.
    #[serde(default)]
    backoff_coefficient: Option<f64>,
    /// Longest delay, such as `"1m"`.
    #[serde(default)]
    maximum_interval: Option<String>,
    /// How long to wait for the callback before reading the store (default `"5m"`).
    #[serde(default)]
    callback_timeout: Option<String>,
    /// Per error code (`WORKLOAD_FAILED`, ...): what to do.
    #[serde(default)]
    on_error: Option<BTreeMap<String, OnError>>,
}

/// The request of one operation: a provision or update request, or a delete request.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)] // never built: it describes JSON
pub enum OperationRequest {
    /// `provision`, `update`.
    Compute(ComputeRequest),
    /// `delete`.
    Delete(DeleteRequest),
}

/// Input of `TenantComputeWorkflow`.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct TenantComputeWorkflowInput {
    /// The operation.
    operation: crate::types::Operation,
    /// Its request.
    request: OperationRequest,
    /// The policy; defaults when absent.
    #[serde(default)]
    policy: Option<Policy>,
}

fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>())
        .expect("a schema is JSON by construction")
}

/// Every published schema, by file name (`ProvisionTenantCompute.input.schema.json`, ...).
pub fn documents() -> BTreeMap<String, Value> {
    let activity = |name: &str, input: Value, output: Value| {
        [
            (format!("{name}.input.schema.json"), input),
            (format!("{name}.output.schema.json"), output),
        ]
    };
    let mut docs = BTreeMap::new();
    for (file, schema) in [
        activity(
            names::PROVISION_ACTIVITY,
            schema_of::<ComputeRequest>(),
            schema_of::<ExecutionHandle>(),
        ),
        activity(
            names::UPDATE_ACTIVITY,
            schema_of::<ComputeRequest>(),
            schema_of::<ExecutionHandle>(),
        ),
        activity(
            names::DELETE_ACTIVITY,
            schema_of::<DeleteRequest>(),
            schema_of::<ExecutionHandle>(),
        ),
        activity(
            names::GET_EXECUTION_ACTIVITY,
            schema_of::<ExecutionQuery>(),
            schema_of::<ExecutionStatus>(),
        ),
        activity(
            names::LIST_EXECUTIONS_ACTIVITY,
            schema_of::<TenantQuery>(),
            schema_of::<Vec<ExecutionStatus>>(),
        ),
        activity(
            names::GET_TENANT_ACTIVITY,
            schema_of::<TenantQuery>(),
            schema_of::<TenantCompute>(),
        ),
        activity(
            names::LIST_TENANTS_ACTIVITY,
            schema_of::<TenantListQuery>(),
            schema_of::<TenantPage>(),
        ),
        activity(
            names::CANCEL_EXECUTION_ACTIVITY,
            schema_of::<CancelRequest>(),
            schema_of::<ExecutionStatus>(),
        ),
    ]
    .into_iter()
    .flatten()
    {
        docs.insert(file, schema);
    }
    docs.insert(
        format!("{}.input.schema.json", names::TENANT_COMPUTE_WORKFLOW),
        schema_of::<TenantComputeWorkflowInput>(),
    );
    docs.insert(
        "ComputeCallback.schema.json".into(),
        schema_of::<ComputeCallback>(),
    );
    docs.insert(
        "ExecutionStatus.schema.json".into(),
        schema_of::<ExecutionStatus>(),
    );
    docs
}

/// A document as committed: pretty JSON, keys sorted at every level (whichever order the
/// build's serde_json keeps maps in), with a final newline.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(schema)).expect("JSON by construction");
    text.push('\n');
    text
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schemas_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        let docs = documents();
        let stale: Vec<&String> = docs
            .iter()
            .filter(|(file, schema)| {
                std::fs::read_to_string(dir.join(file)).ok().as_deref() != Some(&render(schema))
            })
            .map(|(file, _)| file)
            .collect();
        let extra: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| !docs.contains_key(name))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            stale.is_empty() && extra.is_empty(),
            "contract/schema/ is not what the types generate (stale or missing: {stale:?}, \
             not generated: {extra:?}): run `cargo run -- schema --out contract/schema`"
        );
    }

    #[test]
    fn schemas_are_draft_2020_12_with_the_wire_names() {
        let docs = documents();
        assert_eq!(docs.len(), 19);
        for (file, schema) in &docs {
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{file}"
            );
        }
        let request = &docs["ProvisionTenantCompute.input.schema.json"];
        assert_eq!(request["required"], serde_json::json!(["tenantId", "spec"]));
        let callback = &docs["ComputeCallback.schema.json"];
        assert!(
            callback["properties"]["finishedAt"].is_object(),
            "{callback}"
        );
        let status = &docs["ExecutionStatus.schema.json"];
        let outcome = &status["$defs"]["AttemptOutcome"]["enum"];
        assert!(
            outcome
                .as_array()
                .unwrap()
                .contains(&"WORKLOAD_FAILED".into())
        );
    }
}
