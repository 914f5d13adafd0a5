//! What the provider's unit tests share: a provider on kube's mock service that answers a
//! script, one on a client that must never be called, and the operation and spec the tests
//! start from.

// Test support (compiled only under cfg(test)): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use http::{Method, Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use super::{KubernetesConfig, KubernetesProvider};
use crate::{
    contract::{ComputeSpec, Metadata, Operation, SecretKeyRef, SecretRef},
    provider::OperationContext,
};

/// One scripted exchange: the request we expect, and the answer to give.
pub(super) struct Exchange {
    pub(super) method: Method,
    pub(super) path: &'static str,
    pub(super) status: u16,
    pub(super) body: Value,
}

pub(super) fn api_status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message, "details": details})
}

/// A provider whose client talks to kube's mock service, answering `script` in order and
/// asserting each request's method and path; returns the request bodies seen.
pub(super) fn mock_provider(
    script: Vec<Exchange>,
) -> (KubernetesProvider, tokio::task::JoinHandle<Vec<Value>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for ex in script {
            let (request, send) = handle.next_request().await.expect("no request came");
            assert_eq!(request.method(), ex.method, "{}", request.uri());
            assert_eq!(request.uri().path(), ex.path);
            let bytes = request.into_body().collect_bytes().await.unwrap();
            bodies.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
            send.send_response(
                Response::builder()
                    .status(ex.status)
                    .body(Body::from(serde_json::to_vec(&ex.body).unwrap()))
                    .unwrap(),
            );
        }
        bodies
    });
    let client = Client::new(service, "default");
    (
        KubernetesProvider::with_client(client, KubernetesConfig::default()),
        server,
    )
}

pub(super) fn op(operation: Operation) -> OperationContext {
    OperationContext {
        execution_id: "exec-1".into(),
        tenant_id: "acme".into(),
        operation,
        metadata: Metadata {
            labels: BTreeMap::from([("team".into(), "payments".into())]),
            owner: Some("Payments Team <p@example.com>".into()),
            environment: Some("prod".into()),
        },
    }
}

pub(super) fn spec() -> ComputeSpec {
    ComputeSpec {
        image: Some("nginx:1.25".into()),
        replicas: Some(2),
        port: Some(8080),
        cpu: Some(0.25),
        memory: Some(512),
        env: BTreeMap::from([("MODE".into(), "fast".into())]),
        secrets: vec![SecretRef {
            name: "API_TOKEN".into(),
            value_from: None,
            secret_key_ref: Some(SecretKeyRef {
                name: "tenant-acme-api".into(),
                key: "token".into(),
            }),
        }],
        ..Default::default()
    }
}

pub(super) const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/tenant-acme";
pub(super) const SERVICE: &str = "/api/v1/namespaces/default/services/tenant-acme";

/// A provider on a client that must never be called (validation and rendering only).
pub(super) fn offline(config: KubernetesConfig) -> KubernetesProvider {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    KubernetesProvider::with_client(Client::new(service, "default"), config)
}
