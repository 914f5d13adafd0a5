//! The golden payloads of `contract/examples/`: each one is valid against its published JSON
//! Schema (`contract/schema/`) and accepted by the worker's own decoding and validation, so
//! the schema, the examples and the code agree. Callers in other languages test against the
//! same files.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use compute_contract::{
    schema,
    types::{ComputeCallback, ExecutionHandle, ExecutionStatus},
    validate,
};
use serde_json::Value;

fn contract_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contract")
}

fn example(name: &str) -> Value {
    let path = contract_dir().join("examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The example is valid against the schema (the generated one, which another test keeps
/// equal to the published file).
fn assert_valid(example_name: &str, schema_file: &str) -> Value {
    let docs = schema::documents();
    let schema = docs
        .get(schema_file)
        .unwrap_or_else(|| panic!("no schema {schema_file}"));
    let validator = jsonschema::draft202012::new(schema)
        .unwrap_or_else(|e| panic!("{schema_file} is a valid draft 2020-12 schema: {e}"));
    let instance = example(example_name);
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{example_name} against {schema_file}: {errors:#?}"
    );
    instance
}

#[test]
fn every_example_is_valid_against_its_schema_and_accepted_by_the_worker() {
    let v = assert_valid(
        "provision-request.json",
        "ProvisionTenantCompute.input.schema.json",
    );
    validate::compute_request(&v).expect("a valid provision request");
    let v = assert_valid(
        "update-request.json",
        "UpdateTenantCompute.input.schema.json",
    );
    validate::compute_request(&v).expect("a valid update request");
    let v = assert_valid(
        "delete-request.json",
        "DeleteTenantCompute.input.schema.json",
    );
    validate::delete_request(&v).expect("a valid delete request");
    let v = assert_valid(
        "get-execution.json",
        "GetComputeExecution.input.schema.json",
    );
    validate::execution_id(&v).expect("an execution id");
    assert!(validate::include_attempts(&v).unwrap());
    let v = assert_valid("list-tenants.json", "ListTenantCompute.input.schema.json");
    validate::tenant_list_query(&v).expect("a tenant query");
    let v = assert_valid(
        "cancel-execution.json",
        "CancelComputeExecution.input.schema.json",
    );
    validate::cancel_request(&v).expect("a cancel request");
    let v = assert_valid(
        "tenant-workflow-input.json",
        "TenantComputeWorkflow.input.schema.json",
    );
    compute_workflows::policy::parse_input(&v).expect("a valid workflow input");

    let v = assert_valid(
        "execution-handle.json",
        "ProvisionTenantCompute.output.schema.json",
    );
    let _: ExecutionHandle = serde_json::from_value(v).expect("an ExecutionHandle");
    let v = assert_valid("execution-status.json", "ExecutionStatus.schema.json");
    let status: ExecutionStatus = serde_json::from_value(v.clone()).expect("an ExecutionStatus");
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        v,
        "the status round-trips"
    );
    let v = assert_valid("compute-callback.json", "ComputeCallback.schema.json");
    let callback: ComputeCallback = serde_json::from_value(v.clone()).expect("a ComputeCallback");
    assert_eq!(
        serde_json::to_value(&callback).unwrap(),
        v,
        "the callback round-trips"
    );
}

#[test]
fn the_schemas_refuse_what_the_worker_refuses() {
    let docs = schema::documents();
    let validator =
        jsonschema::draft202012::new(&docs["ProvisionTenantCompute.input.schema.json"]).unwrap();
    let mut no_tenant = example("provision-request.json");
    no_tenant.as_object_mut().unwrap().remove("tenantId");
    assert!(!validator.is_valid(&no_tenant));
    assert!(validate::compute_request(&no_tenant).is_err());
    let mut bad_spec = example("provision-request.json");
    bad_spec["spec"]["replicas"] = "two".into();
    assert!(!validator.is_valid(&bad_spec));
    assert!(validate::compute_request(&bad_spec).is_err());
    let workflow =
        jsonschema::draft202012::new(&docs["TenantComputeWorkflow.input.schema.json"]).unwrap();
    let mut bad_operation = example("tenant-workflow-input.json");
    bad_operation["operation"] = "resize".into();
    assert!(!workflow.is_valid(&bad_operation));
    assert!(compute_workflows::policy::parse_input(&bad_operation).is_err());
}

/// `v` read as the compute.v1 message `P` (proto3 JSON, as a Go or Java caller's SDK writes
/// and reads it: an unknown field is an error) and written back as proto3 JSON.
fn via_proto<P: serde::Serialize + serde::de::DeserializeOwned>(name: &str, v: &Value) -> Value {
    let message: P = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{name} does not read as its compute.v1 message: {e}"));
    serde_json::to_value(&message).unwrap()
}

#[test]
fn every_example_round_trips_through_the_compute_v1_messages() {
    use compute_contract::proto;
    use compute_workflows::policy::parse_input;

    for name in ["provision-request.json", "update-request.json"] {
        let golden = example(name);
        let back = via_proto::<proto::ComputeRequest>(name, &golden);
        assert_eq!(
            validate::compute_request(&back).unwrap(),
            validate::compute_request(&golden).unwrap(),
            "{name}: {back}"
        );
    }
    let golden = example("delete-request.json");
    let back = via_proto::<proto::DeleteRequest>("delete-request.json", &golden);
    assert_eq!(
        validate::delete_request(&back).unwrap(),
        validate::delete_request(&golden).unwrap()
    );
    let golden = example("get-execution.json");
    let back = via_proto::<proto::ExecutionQuery>("get-execution.json", &golden);
    assert_eq!(
        validate::execution_id(&back).unwrap(),
        validate::execution_id(&golden).unwrap()
    );
    assert!(validate::include_attempts(&back).unwrap());
    let golden = example("list-tenants.json");
    let back = via_proto::<proto::TenantListQuery>("list-tenants.json", &golden);
    assert_eq!(
        format!("{:?}", validate::tenant_list_query(&back).unwrap()),
        format!("{:?}", validate::tenant_list_query(&golden).unwrap())
    );
    let golden = example("cancel-execution.json");
    let back = via_proto::<proto::CancelRequest>("cancel-execution.json", &golden);
    assert_eq!(
        validate::cancel_request(&back).unwrap(),
        validate::cancel_request(&golden).unwrap()
    );
    let golden = example("tenant-workflow-input.json");
    let back =
        via_proto::<proto::TenantComputeWorkflowInput>("tenant-workflow-input.json", &golden);
    assert_eq!(parse_input(&back).unwrap(), parse_input(&golden).unwrap());

    // Answers: every value of the contract's JSON is kept by the message, under the same
    // name and JSON type (proto3 JSON leaves out default values only).
    for (name, back) in [
        (
            "execution-handle.json",
            via_proto::<proto::ExecutionHandle>(
                "execution-handle.json",
                &example("execution-handle.json"),
            ),
        ),
        (
            "execution-status.json",
            via_proto::<proto::ExecutionStatus>(
                "execution-status.json",
                &example("execution-status.json"),
            ),
        ),
        (
            "compute-callback.json",
            via_proto::<proto::ComputeCallback>(
                "compute-callback.json",
                &example("compute-callback.json"),
            ),
        ),
    ] {
        assert_eq!(back, without_defaults(&example(name)), "{name}");
    }
}

/// `v` without the values proto3 JSON leaves out (`false`, `0`, `""`, `[]`, `{}`).
fn without_defaults(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_defaults(v)))
                .filter(|(_, v)| !is_default(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_defaults).collect()),
        other => other.clone(),
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Null => true,
    }
}
