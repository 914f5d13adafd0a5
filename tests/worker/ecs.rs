//! The ECS provider end to end: the real worker binary with `--provider ecs` against a moto
//! server (the ECS API), reached through a fault-injecting proxy, driven by
//! `TenantComputeWorkflow` and the Python caller. Every assertion on resources reads moto's
//! state directly; every count of calls comes from the proxy.
//!
//! What moto does NOT model, so no test here pretends it does:
//! - `clientToken` is ignored, and CreateService with the name of an existing service silently
//!   REPLACES it. "Exactly one service in moto" therefore holds even when a worker creates
//!   twice; the proxy's count of CreateService calls that reached moto is what shows the
//!   worker looked the service up instead of creating it again.
//! - Deployments complete only because the rig starts moto with `MOTO_ECS_SERVICE_RUNNING=1`
//!   (one running task: these tests use one replica). UpdateService does not change
//!   `deployments`. Deleted services stay listed, as INACTIVE.
//! - No task really runs and secrets are never resolved: that a container gets a secret's
//!   value cannot be checked here, only that the reference is passed through and the value
//!   goes nowhere else.
//! - It does validate awsvpc subnets and security groups (fake ids are refused), so the
//!   worker gets moto's default-VPC subnet and security group.

use std::collections::BTreeMap;

use aws_sdk_ecs::{
    error::ProvideErrorMetadata,
    types::{
        AssignPublicIp, AwsVpcConfiguration, LaunchType, NetworkConfiguration, Service,
        ServiceField, TaskDefinition, TaskDefinitionField, TaskDefinitionStatus,
    },
};
use compute_activities::store;
use serde_json::{Value, json};
use temporalio_client::Client;

use crate::rigs::{
    EcsNetwork, Fault, FaultProxy, MotoServer, Outcome, TestWorker, WorkerOpts, client, ecs_client,
    fault_proxy, moto_server, query_status, signals_received, spawn_worker,
    started_activity_attempts as activity_attempts, workflow_show_everything,
};

/// The cluster the rig creates in moto for the worker.
pub(crate) const CLUSTER: &str = "tenants";

/// One test's ECS: moto, the proxy in front of it, a direct client, the network to use.
pub(crate) struct Rig {
    moto: MotoServer,
    pub(crate) proxy: FaultProxy,
    ecs: aws_sdk_ecs::Client,
    net: EcsNetwork,
}

impl Rig {
    pub(crate) async fn start() -> Rig {
        let moto = moto_server();
        let proxy = fault_proxy(&moto.endpoint);
        let ecs = moto.ecs().await;
        ecs.create_cluster()
            .cluster_name(CLUSTER)
            .send()
            .await
            .expect("create the cluster in moto");
        let net = moto.network();
        Rig {
            moto,
            proxy,
            ecs,
            net,
        }
    }

    /// A worker with the ECS provider on `cluster`, talking to moto through the proxy.
    pub(crate) fn worker(&self, name: &str, cluster: &str) -> TestWorker {
        let network = [
            "--ecs-subnets",
            &self.net.subnet,
            "--ecs-security-groups",
            &self.net.security_group,
        ]
        .map(String::from);
        self.worker_with(name, cluster, &network)
    }

    /// A worker with the ECS provider and `extra` arguments (network settings).
    fn worker_with(&self, name: &str, cluster: &str, extra: &[String]) -> TestWorker {
        let mut args = [
            "--provider",
            "ecs",
            "--ecs-cluster",
            cluster,
            "--ecs-observe-interval",
            "300ms",
        ]
        .map(String::from)
        .to_vec();
        args.extend_from_slice(extra);
        spawn_worker(
            name,
            WorkerOpts {
                args,
                env: self.aws_env(),
                ..Default::default()
            },
        )
    }

    /// The arguments of an ECS worker on `cluster` and the rig's network.
    pub(crate) fn ecs_args(&self, cluster: &str, observe_interval: &str) -> Vec<String> {
        [
            "--provider",
            "ecs",
            "--ecs-cluster",
            cluster,
            "--ecs-observe-interval",
            observe_interval,
            "--ecs-subnets",
            &self.net.subnet,
            "--ecs-security-groups",
            &self.net.security_group,
        ]
        .map(String::from)
        .to_vec()
    }

    /// The AWS settings of a worker (or a sweep) talking to moto through the proxy.
    pub(crate) fn aws_env(&self) -> Vec<(&'static str, String)> {
        let endpoint = self.proxy.endpoint.clone();
        vec![
            ("AWS_ENDPOINT_URL_ECS", endpoint.clone()),
            // Every other AWS service too: nothing reaches real AWS, and a call the worker
            // must not make (SSM, Secrets Manager) shows in the proxy's counts.
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// The tenant's service as moto has it (ACTIVE or INACTIVE), with its tags.
    pub(crate) async fn service(&self, tenant: &str) -> Option<Service> {
        let out = self
            .ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(format!("tenant-{tenant}"))
            .include(ServiceField::Tags)
            .send()
            .await
            .expect("DescribeServices on moto");
        out.services().first().cloned()
    }

    /// Every service ARN in the cluster (moto lists INACTIVE ones too).
    pub(crate) async fn service_arns(&self) -> Vec<String> {
        self.ecs
            .list_services()
            .cluster(CLUSTER)
            .send()
            .await
            .expect("ListServices on moto")
            .service_arns()
            .to_vec()
    }

    /// The ARNs of the tenant's task definitions in one status.
    async fn task_definitions(&self, tenant: &str, status: TaskDefinitionStatus) -> Vec<String> {
        self.ecs
            .list_task_definitions()
            .family_prefix(format!("tenant-{tenant}"))
            .status(status)
            .send()
            .await
            .expect("ListTaskDefinitions on moto")
            .task_definition_arns()
            .to_vec()
    }

    async fn task_definition(&self, arn: &str) -> TaskDefinition {
        self.ecs
            .describe_task_definition()
            .task_definition(arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .expect("DescribeTaskDefinition on moto")
            .task_definition()
            .cloned()
            .expect("a task definition")
    }
}

impl Rig {
    /// Runs a `TenantComputeWorkflow` that must succeed; a failure panics with the caller's
    /// and the tracker's `status` (the tracker's last progress says where it is stuck) and
    /// the proxy's counts.
    async fn run_ok(&self, worker: &TestWorker, client: &Client, id: &str, input: Value) -> Value {
        match worker.run_tenant_workflow(client, id, input).await {
            Outcome::Completed(status) => {
                assert_eq!(status["state"], "succeeded", "{id}: {status}");
                status
            }
            failed => {
                let view = query_status(client, id).await;
                let tracker = match view["executionId"].as_str() {
                    Some(e) => query_status(client, &format!("compute-execution-{e}")).await,
                    None => Value::Null,
                };
                panic!(
                    "{id} failed: {failed:?}\ncaller's status: {view}\ntracker's status: \
                     {tracker}\nproxy: {}\nworker log tail:\n{}",
                    self.proxy.stats(),
                    tail(&worker.log(), 15)
                );
            }
        }
    }
}

/// The last `lines` lines the worker itself logged (not the SDK's debug chatter).
fn tail(text: &str, lines: usize) -> String {
    let own: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("\"target\":\"compute")
                || l.contains("\"level\":\"WARN\"")
                || l.contains("\"level\":\"ERROR\"")
        })
        .collect();
    own[own.len().saturating_sub(lines)..].join("\n")
}

/// Polls `done` until it holds, for at most 60 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn service_tags(service: &Service) -> BTreeMap<String, String> {
    service
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub(crate) fn spec(image: &str) -> Value {
    json!({"image": image, "cpu": 0.5, "memory": 1024, "port": 8080, "env": {"MODE": "blue"}})
}

/// A `TenantComputeWorkflow` input with quick retries and a bounded wait.
pub(crate) fn input(operation: &str, request: Value, policy: Value) -> Value {
    let mut p = json!({"initialInterval": "200ms", "maximumInterval": "2s",
                       "callbackTimeout": "20s"});
    p.as_object_mut()
        .unwrap()
        .extend(policy.as_object().cloned().unwrap_or_default());
    json!({"operation": operation, "request": request, "policy": p})
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// The notes of an execution's history in the worker's store.
async fn store_notes(worker: &TestWorker, tenant: &str) -> Vec<String> {
    let store = store::connect(&worker.database_url()).await.unwrap();
    store
        .list_executions(tenant)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|r| r.status.history)
        .filter_map(|h| h.message)
        .collect()
}

/// The moto + proxy rig on its own (no worker, no provider): moto validates the network, the
/// proxy forwards, injects each fault and counts.
#[tokio::test]
async fn ecs_rig_moto_and_fault_proxy_work() {
    let moto = moto_server();
    let proxy = fault_proxy(&moto.endpoint);
    let via_proxy = ecs_client(&proxy.endpoint).await;
    let direct = moto.ecs().await;

    via_proxy
        .create_cluster()
        .cluster_name("rig")
        .send()
        .await
        .expect("CreateCluster through the proxy");
    assert_eq!(proxy.forwarded("CreateCluster"), 1);

    // throttle: HTTP 400 ThrottlingException, for exactly `count` calls.
    proxy.arm("DescribeClusters", 2, Fault::Throttle);
    for _ in 0..2 {
        let err = via_proxy
            .describe_clusters()
            .clusters("rig")
            .send()
            .await
            .expect_err("throttled");
        assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
        assert_eq!(err.message(), Some("Rate exceeded"));
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    }
    let clusters = via_proxy
        .describe_clusters()
        .clusters("rig")
        .send()
        .await
        .expect("the fault is used up");
    assert_eq!(clusters.clusters().len(), 1);

    // unavailable: HTTP 503 ServiceUnavailableException; count -1 lasts until cleared.
    proxy.arm("*", -1, Fault::Unavailable);
    for _ in 0..3 {
        let err = via_proxy
            .list_clusters()
            .send()
            .await
            .expect_err("unavailable");
        assert_eq!(err.code(), Some("ServiceUnavailableException"), "{err:?}");
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    }
    proxy.clear();
    via_proxy.list_clusters().send().await.expect("cleared");

    // drop_after_forward: moto did it, the caller got HTTP 500 InternalFailure.
    proxy.arm("CreateCluster", 1, Fault::DropAfterForward);
    let err = via_proxy
        .create_cluster()
        .cluster_name("dropped")
        .send()
        .await
        .expect_err("dropped after forwarding");
    assert_eq!(err.code(), Some("InternalFailure"), "{err:?}");
    let listed = direct.list_clusters().send().await.unwrap();
    assert!(
        listed
            .cluster_arns()
            .iter()
            .any(|a| a.ends_with("/dropped")),
        "the dropped call took effect: {listed:?}"
    );

    // close: no answer at all (a connection error for the SDK), nothing forwarded.
    proxy.arm("CreateCluster", 1, Fault::Close);
    let err = via_proxy
        .create_cluster()
        .cluster_name("never")
        .send()
        .await
        .expect_err("closed");
    assert!(err.raw_response().is_none(), "{err:?}");
    let listed = direct.list_clusters().send().await.unwrap();
    assert!(!listed.cluster_arns().iter().any(|a| a.ends_with("/never")));

    let stats = proxy.stats();
    assert_eq!(
        stats["faulted"],
        json!({"DescribeClusters": 2, "ListClusters": 3, "CreateCluster": 2}),
        "{stats}"
    );
    assert_eq!(
        stats["forwarded"],
        json!({"CreateCluster": 2, "DescribeClusters": 1, "ListClusters": 1}),
        "{stats}"
    );
    assert!(proxy.log().contains("fault throttle on DescribeClusters"));
    assert!(
        moto.log().contains("\"POST / HTTP/1.1\" 200"),
        "{}",
        moto.log()
    );

    // moto checks awsvpc subnets and security groups: fake ids are refused, so the rig uses
    // the default VPC's, with which a FARGATE service is created.
    let net = moto.network();
    assert!(net.subnet.starts_with("subnet-") && net.security_group.starts_with("sg-"));
    let td = direct
        .register_task_definition()
        .family("rig")
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("nginx:1.27")
                .memory(512)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let td_arn = td.task_definition().unwrap().task_definition_arn().unwrap();
    let network = |subnet: &str, sg: &str| {
        NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .subnets(subnet)
                    .security_groups(sg)
                    .assign_public_ip(AssignPublicIp::Disabled)
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let err = direct
        .create_service()
        .cluster("rig")
        .service_name("fake-net")
        .task_definition(td_arn)
        .desired_count(1)
        .launch_type(LaunchType::Fargate)
        .network_configuration(network("subnet-12345", "sg-12345"))
        .send()
        .await
        .expect_err("moto refuses unknown subnets");
    assert_eq!(err.code(), Some("InvalidParameterException"), "{err:?}");
    let created = direct
        .create_service()
        .cluster("rig")
        .service_name("real-net")
        .task_definition(td_arn)
        .desired_count(1)
        .launch_type(LaunchType::Fargate)
        .network_configuration(network(&net.subnet, &net.security_group))
        .send()
        .await
        .expect("a service on the default VPC");
    // MOTO_ECS_SERVICE_RUNNING=1: the deployment of one task is complete at once.
    let service = created.service().unwrap();
    let primary = &service.deployments()[0];
    assert_eq!(primary.status(), Some("PRIMARY"));
    assert_eq!(
        primary.rollout_state().map(|s| s.as_str()),
        Some("COMPLETED")
    );

    // SSM on the same port: a parameter's ARN is what a spec's valueFrom names.
    let arn = moto.ssm_put_secret("/rig/db-password", "rig-value");
    assert_eq!(
        arn,
        "arn:aws:ssm:us-east-1:123456789012:parameter/rig/db-password"
    );

    // A reset wipes moto.
    moto.reset();
    assert!(
        direct
            .list_clusters()
            .send()
            .await
            .unwrap()
            .cluster_arns()
            .is_empty()
    );
}

/// No faults in the lifecycle: one attempt; a stuck operation ends in 30 s (TIMEOUT) with its
/// progress in the panic instead of the workflow's 120 s limit.
fn lifecycle_policy() -> Value {
    json!({"maxAttempts": 1})
}

/// Provision, provision again, update, delete: moto's state after each step.
#[tokio::test]
async fn ecs_lifecycle_provision_update_delete() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-life", CLUSTER);
    let client = client().await;
    let tenant = "ecs-life";
    let request = json!({"tenantId": tenant, "spec": spec("nginx:1.27"),
                         "metadata": {"owner": "ecs-tests"}, "timeout": "30s"});

    // Provision.
    let status = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-1",
            input("provision", request.clone(), lifecycle_policy()),
        )
        .await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let execution_id = str_of(&status, "/executionId").to_string();
    let service_arn = str_of(&status, "/resourceIds/ecsServiceArn").to_string();
    let td_arn = str_of(&status, "/resourceIds/taskDefinitionArn").to_string();
    assert!(service_arn.ends_with("/tenant-ecs-life"), "{service_arn}");
    assert!(
        td_arn.ends_with(":task-definition/tenant-ecs-life:1"),
        "{td_arn}"
    );

    // The caller got the callback with the ECS resource ids.
    let view = query_status(&client, "ecs-life-1").await;
    let callbacks = view["callbacks"].as_array().unwrap();
    assert_eq!(callbacks.len(), 1, "{view}");
    assert_eq!(callbacks[0]["state"], "succeeded");
    assert_eq!(callbacks[0]["operation"], "provision");
    assert_eq!(callbacks[0]["executionId"], execution_id.as_str());
    assert_eq!(
        callbacks[0]["resourceIds"]["ecsServiceArn"],
        service_arn.as_str()
    );
    assert_eq!(
        callbacks[0]["resourceIds"]["taskDefinitionArn"],
        td_arn.as_str()
    );
    assert!(signals_received("ecs-life-1").contains(&"compute-provisioned".to_string()));

    // moto has the service as specified.
    let service = rig.service(tenant).await.expect("the service exists");
    assert_eq!(service.status(), Some("ACTIVE"));
    assert_eq!(service.service_arn(), Some(service_arn.as_str()));
    assert_eq!(service.task_definition(), Some(td_arn.as_str()));
    assert_eq!(service.desired_count(), 1);
    assert_eq!(service.launch_type(), Some(&LaunchType::Fargate));
    let vpc = service
        .network_configuration()
        .and_then(|n| n.awsvpc_configuration())
        .expect("awsvpc network");
    assert_eq!(vpc.subnets(), std::slice::from_ref(&rig.net.subnet));
    assert_eq!(
        vpc.security_groups(),
        std::slice::from_ref(&rig.net.security_group)
    );
    let tags = service_tags(&service);
    assert_eq!(tags.get("tenant-id").map(String::as_str), Some(tenant));
    assert_eq!(
        tags.get("managed-by").map(String::as_str),
        Some("compute-worker")
    );
    assert_eq!(
        tags.get("execution-id").map(String::as_str),
        Some(execution_id.as_str())
    );
    let td = rig.task_definition(&td_arn).await;
    assert_eq!(td.family(), Some("tenant-ecs-life"));
    assert_eq!(td.cpu(), Some("512"), "0.5 vCPU");
    assert_eq!(td.memory(), Some("1024"));
    let container = &td.container_definitions()[0];
    assert_eq!(container.image(), Some("nginx:1.27"));
    assert!(
        container
            .environment()
            .iter()
            .any(|kv| kv.name() == Some("MODE") && kv.value() == Some("blue")),
        "{container:?}"
    );
    assert!(
        container
            .port_mappings()
            .iter()
            .any(|p| p.container_port() == Some(8080)),
        "{container:?}"
    );
    assert_eq!(rig.proxy.forwarded("CreateService"), 1);

    // The same request again, from a new workflow: the same execution, one service.
    let again = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-2",
            input("provision", request.clone(), lifecycle_policy()),
        )
        .await;
    assert_eq!(again["executionId"], execution_id.as_str());
    assert_eq!(rig.service_arns().await, std::slice::from_ref(&service_arn));

    // A new execution (another key) for a tenant whose service exists: the worker finds it by
    // name and returns it. moto would silently replace the service on a second CreateService,
    // so the proof is that no CreateService reached moto.
    let mut keyed = request.clone();
    keyed["idempotencyKey"] = json!("second-look");
    let second = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-3",
            input("provision", keyed, lifecycle_policy()),
        )
        .await;
    assert_ne!(second["executionId"], execution_id.as_str());
    assert_eq!(second["state"], "succeeded");
    assert_eq!(
        str_of(&second, "/resourceIds/ecsServiceArn"),
        service_arn.as_str()
    );
    assert_eq!(
        rig.proxy.forwarded("CreateService"),
        1,
        "{}",
        rig.proxy.stats()
    );
    assert_eq!(rig.service_arns().await, std::slice::from_ref(&service_arn));

    // Update to a new image tag: a new revision, and the service runs it.
    let update_request = json!({"tenantId": tenant, "spec": spec("nginx:1.28"), "timeout": "30s"});
    let updated = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-4",
            input("update", update_request.clone(), lifecycle_policy()),
        )
        .await;
    assert_eq!(updated["state"], "succeeded", "{updated}");
    let td2_arn = str_of(&updated, "/resourceIds/taskDefinitionArn").to_string();
    assert!(
        td2_arn.ends_with(":task-definition/tenant-ecs-life:2"),
        "{td2_arn}"
    );
    let service = rig.service(tenant).await.unwrap();
    assert_eq!(service.task_definition(), Some(td2_arn.as_str()));
    assert_eq!(
        rig.task_definition(&td2_arn).await.container_definitions()[0].image(),
        Some("nginx:1.28")
    );
    let view = query_status(&client, "ecs-life-4").await;
    assert_eq!(view["callbacks"][0]["operation"], "update", "{view}");
    assert_eq!(view["callbacks"][0]["state"], "succeeded");
    assert_eq!(
        view["callbacks"][0]["resourceIds"]["taskDefinitionArn"],
        td2_arn.as_str()
    );

    // The same spec once more (a new execution): the rendered definition is unchanged, so no
    // new revision.
    let registered = rig.proxy.forwarded("RegisterTaskDefinition");
    let mut same = update_request.clone();
    same["idempotencyKey"] = json!("same-spec");
    let unchanged = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-5",
            input("update", same, lifecycle_policy()),
        )
        .await;
    assert_eq!(unchanged["state"], "succeeded");
    assert_eq!(
        str_of(&unchanged, "/resourceIds/taskDefinitionArn"),
        td2_arn.as_str()
    );
    assert_eq!(
        rig.proxy.forwarded("RegisterTaskDefinition"),
        registered,
        "{}",
        rig.proxy.stats()
    );
    assert_eq!(
        rig.task_definitions(tenant, TaskDefinitionStatus::Active)
            .await
            .len(),
        2
    );

    // Delete: the service goes (INACTIVE in moto), every revision is deregistered.
    let deleted = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-6",
            input(
                "delete",
                json!({"tenantId": tenant, "timeout": "30s"}),
                lifecycle_policy(),
            ),
        )
        .await;
    assert_eq!(deleted["state"], "succeeded", "{deleted}");
    match rig.service(tenant).await {
        None => {}
        Some(s) => assert_eq!(s.status(), Some("INACTIVE"), "{s:?}"),
    }
    assert!(
        rig.task_definitions(tenant, TaskDefinitionStatus::Active)
            .await
            .is_empty()
    );
    let mut inactive = rig
        .task_definitions(tenant, TaskDefinitionStatus::Inactive)
        .await;
    inactive.sort();
    assert_eq!(inactive, [td_arn.clone(), td2_arn.clone()]);
    let view = query_status(&client, "ecs-life-6").await;
    assert_eq!(view["callbacks"][0]["operation"], "delete", "{view}");
    assert_eq!(view["callbacks"][0]["state"], "succeeded");
    assert!(signals_received("ecs-life-6").contains(&"compute-deleted".to_string()));

    // Deleting what is gone succeeds.
    let again = rig
        .run_ok(
            &worker,
            &client,
            "ecs-life-7",
            input(
                "delete",
                json!({"tenantId": tenant, "idempotencyKey": "again", "timeout": "30s"}),
                json!({}),
            ),
        )
        .await;
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(
        rig.proxy.forwarded("DeleteService"),
        1,
        "{}",
        rig.proxy.stats()
    );
}

/// A secret is a reference: moto's task definition gets the ARN; the value (in moto's SSM)
/// reaches no log, history or store, and the worker never reads it.
#[tokio::test]
async fn ecs_secrets_are_references_only() {
    let rig = Rig::start().await;
    let secret = "ecs-s3cr3t-value-nobody-may-see-5d1e";
    let arn = rig.moto.ssm_put_secret("/ecs-vault/db-password", secret);
    let worker = rig.worker("ecs-vault", CLUSTER);
    let client = client().await;
    let request = json!({"tenantId": "ecs-vault", "spec": {
        "image": "nginx:1.27", "cpu": 0.25, "memory": 512,
        "secrets": [{"name": "DB_PASSWORD", "valueFrom": arn}]}});
    let status = worker
        .run_tenant_workflow(
            &client,
            "ecs-vault-1",
            input("provision", request, json!({})),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");

    let td = rig
        .task_definition(str_of(&status, "/resourceIds/taskDefinitionArn"))
        .await;
    let secrets = td.container_definitions()[0].secrets();
    assert_eq!(secrets.len(), 1, "{td:?}");
    assert_eq!(secrets[0].name(), "DB_PASSWORD");
    assert_eq!(secrets[0].value_from(), arn.as_str());

    let tracker = format!("compute-execution-{}", str_of(&status, "/executionId"));
    for wf in ["ecs-vault-1", tracker.as_str()] {
        let shown = workflow_show_everything(wf);
        assert!(shown.contains("ecs-vault"), "{wf} has a readable history");
        assert!(
            !shown.contains(secret),
            "secret value in the history of {wf}"
        );
    }
    assert!(workflow_show_everything("ecs-vault-1").contains(&arn));
    let log = worker.log();
    assert!(log.contains("\"tenant_id\":\"ecs-vault\""), "{log}");
    assert!(!log.contains(secret), "secret value in the worker log");
    let needle = secret.as_bytes();
    for file in ["store.db", "store.db-wal"] {
        let bytes = std::fs::read(worker.dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "secret value in {file}"
        );
    }
    // The worker resolved nothing itself: every AWS call went through the proxy, and none
    // was a read of a parameter or secret.
    let stats = rig.proxy.stats();
    for target in stats["forwarded"].as_object().unwrap().keys() {
        assert!(
            !target.starts_with("GetParameter") && target != "GetSecretValue",
            "the worker called {target}: {stats}"
        );
    }
}

/// A `valueFrom` outside the worker's own account and region (the default scope, from STS
/// at start: moto's account 123456789012, us-east-1) is refused on the first attempt with
/// INVALID_CONFIGURATION naming the field and not the ARN, before anything reaches ECS.
#[tokio::test]
async fn ecs_secret_outside_the_allowed_prefixes_is_refused_on_the_first_attempt() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-scope", CLUSTER);
    let client = client().await;
    let cases = [
        (
            "ecs-scope-account",
            "arn:aws:ssm:us-east-1:210987654321:parameter/other/db-password",
        ),
        (
            "ecs-scope-region",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
        ),
    ];
    for (id, arn) in cases {
        let request = json!({"tenantId": "ecs-scope", "spec": {
            "image": "nginx:1.27", "memory": 512,
            "secrets": [{"name": "DB_PASSWORD", "valueFrom": arn}]}});
        let message = worker
            .run_tenant_workflow(
                &client,
                id,
                input("provision", request, json!({"maxAttempts": 5})),
            )
            .await
            .refused_once(id, "ProvisionTenantCompute");
        assert!(
            message.starts_with("spec.secrets[0].valueFrom"),
            "{id}: {message}"
        );
        assert!(!message.contains(arn), "{id}: repeats the ARN: {message}");
    }
    for target in ["RegisterTaskDefinition", "CreateService"] {
        assert_eq!(rig.proxy.forwarded(target), 0, "{}", rig.proxy.stats());
    }
    assert!(rig.service_arns().await.is_empty());
}

/// Two throttled CreateService calls: classified THROTTLED, retried, and the operation ends
/// well with one service.
#[tokio::test]
async fn ecs_throttling_is_retried() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-throttle", CLUSTER);
    let client = client().await;
    rig.proxy.arm("CreateService", 2, Fault::Throttle);
    let request = json!({"tenantId": "ecs-throttled", "spec": spec("nginx:1.27")});
    let status = worker
        .run_tenant_workflow(
            &client,
            "ecs-throttle-1",
            input("provision", request, json!({"maxAttempts": 5})),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        rig.proxy.faulted("CreateService"),
        2,
        "{}",
        rig.proxy.stats()
    );
    assert_eq!(rig.service_arns().await.len(), 1);
    assert_eq!(
        rig.service("ecs-throttled").await.unwrap().status(),
        Some("ACTIVE")
    );

    // The throttling surfaced as THROTTLED: a later attempt of the start activity, or the
    // store's note of a failed attempt.
    let attempts = activity_attempts("ecs-throttle-1", "ProvisionTenantCompute");
    let notes = store_notes(&worker, "ecs-throttled").await;
    assert!(
        attempts.iter().any(|a| *a > 1) || notes.iter().any(|n| n.contains("failed: THROTTLED")),
        "no sign of a THROTTLED attempt: activity attempts {attempts:?}, store notes {notes:?}, \
         proxy {}",
        rig.proxy.stats()
    );
    let log = worker.log();
    assert!(log.contains("THROTTLED"), "the retriable failure is logged");
}

/// CreateService answers 503 until further notice: the caller's two attempts are spent and
/// the workflow fails with a retriable PROVIDER_TEMPORARILY_UNAVAILABLE.
#[tokio::test]
async fn ecs_persistent_unavailability_fails_retriable() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-unavail", CLUSTER);
    let client = client().await;
    rig.proxy.arm("CreateService", -1, Fault::Unavailable);
    let request = json!({"tenantId": "ecs-unavail", "spec": spec("nginx:1.27")});
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(
            &client,
            "ecs-unavail-1",
            input("provision", request, json!({"maxAttempts": 2})),
        )
        .await
        .failed();
    assert_eq!(code, "PROVIDER_TEMPORARILY_UNAVAILABLE", "{details}");
    assert!(!non_retryable, "a retriable failure: {details}");
    assert_eq!(details["retriable"], true, "{details}");
    assert_eq!(details["classification"], "retriable");
    assert!(
        rig.proxy.faulted("CreateService") >= 2,
        "{}",
        rig.proxy.stats()
    );
    assert_eq!(rig.proxy.forwarded("CreateService"), 0);
    assert!(rig.service("ecs-unavail").await.is_none());
    let view = query_status(&client, "ecs-unavail-1").await;
    assert_eq!(view["attempt"], 2, "{view}");
    let notes = store_notes(&worker, "ecs-unavail").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("failed: PROVIDER_TEMPORARILY_UNAVAILABLE")),
        "{notes:?}"
    );
}

/// A cluster that does not exist is a configuration error: one attempt, non-retryable, and
/// the message names the cluster.
#[tokio::test]
async fn ecs_missing_cluster_is_invalid_configuration() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-nocluster", "missing-cluster");
    let client = client().await;
    let request = json!({"tenantId": "ecs-nocluster", "spec": spec("nginx:1.27")});
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(
            &client,
            "ecs-nocluster-1",
            input("provision", request, json!({"maxAttempts": 5})),
        )
        .await
        .failed();
    assert_eq!(code, "INVALID_CONFIGURATION", "{details}");
    assert!(non_retryable);
    assert_eq!(details["retriable"], false);
    assert!(
        str_of(&details, "/message").contains("missing-cluster"),
        "{details}"
    );
    assert_eq!(
        activity_attempts("ecs-nocluster-1", "ProvisionTenantCompute"),
        [1]
    );
    assert_eq!(query_status(&client, "ecs-nocluster-1").await["attempt"], 1);
    assert_eq!(rig.proxy.forwarded("CreateService"), 0);
    assert!(rig.service_arns().await.is_empty());
}

/// CreateService reaches moto but its answer is lost (a crash between "create sent" and
/// "result stored"): the operation still completes, with one service.
#[tokio::test]
async fn ecs_lost_create_answer_completes_with_one_service() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-drop", CLUSTER);
    let client = client().await;
    rig.proxy.arm("CreateService", 1, Fault::DropAfterForward);
    let request = json!({"tenantId": "ecs-dropped", "spec": spec("nginx:1.27")});
    let status = worker
        .run_tenant_workflow(
            &client,
            "ecs-drop-1",
            input("provision", request, json!({"maxAttempts": 5})),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    let stats = rig.proxy.stats();
    // Shown with --nocapture: how many CreateService calls reached moto (1: the worker looked
    // the service up after the lost answer; 2: it, or its SDK, created again).
    eprintln!("proxy after the lost answer: {stats}");
    assert_eq!(stats["faulted"]["CreateService"], 1, "{stats}");
    // One service named for the tenant, ACTIVE, tagged for this execution. (moto replaces a
    // service on a second CreateService with its name, so this holds whether the worker
    // looked it up after the lost answer or created again; on real ECS a repeated create with
    // the same clientToken returns the first.)
    let arns = rig.service_arns().await;
    assert_eq!(arns.len(), 1, "{arns:?} {stats}");
    let service = rig.service("ecs-dropped").await.unwrap();
    assert_eq!(service.status(), Some("ACTIVE"));
    assert_eq!(
        service.service_arn(),
        Some(str_of(&status, "/resourceIds/ecsServiceArn"))
    );
    let tags = service_tags(&service);
    assert_eq!(
        tags.get("execution-id").map(String::as_str),
        Some(str_of(&status, "/executionId")),
        "{tags:?}"
    );
}

/// The shared observer describes at most 10 services per call, however many are in flight.
#[tokio::test]
async fn ecs_observer_batches_describe_services() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-batch", CLUSTER);
    let client = client().await;
    let ids: Vec<String> = (0..12).map(|i| format!("ecs-batch-{i}")).collect();
    let runs = ids.iter().map(|id| {
        let request = json!({"tenantId": id, "spec": spec("nginx:1.27")});
        worker.run_tenant_workflow(&client, id, input("provision", request, json!({})))
    });
    for outcome in futures::future::join_all(runs).await {
        assert_eq!(outcome.completed()["state"], "succeeded");
    }
    assert_eq!(rig.service_arns().await.len(), 12);
    let stats = rig.proxy.stats();
    let max = rig.proxy.max_batch("DescribeServices");
    assert!((1..=10).contains(&max), "{stats}");
}

/// kill -9 of the worker while its tracker cannot observe ECS: the restarted worker (same
/// `--provider ecs` arguments) finishes the execution, and nothing is created twice.
#[tokio::test]
async fn ecs_worker_killed_mid_operation_loses_nothing() {
    let rig = Rig::start().await;
    let mut worker = rig.worker("ecs-crash", CLUSTER);
    let client = client().await;
    // The provision's own look-up passes; every observation after it fails, so the execution
    // stays running until the fault is cleared.
    rig.proxy
        .arm_after("DescribeServices", 1, -1, Fault::Unavailable);
    let request = json!({"tenantId": "ecs-phoenix", "spec": spec("nginx:1.27")});
    let handle =
        worker.python_calls(json!([{"activity": "ProvisionTenantCompute", "input": request}]));
    let handle = &handle[0]["result"];
    assert_eq!(handle["state"], "running", "{handle}");
    let execution_id = str_of(handle, "/executionId").to_string();

    // Crash once the tracker is observing (and failing to).
    wait_until("an observation failed", || {
        rig.proxy.faulted("DescribeServices") >= 1
    });
    worker.crash_and_restart();
    assert_eq!(worker.log().matches("Worker started.").count(), 2);
    rig.proxy.clear();

    let tracker = format!("compute-execution-{execution_id}");
    let status = crate::rigs::wait_result(&client, &tracker).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        str_of(&status, "/resourceIds/ecsServiceArn"),
        rig.service("ecs-phoenix")
            .await
            .unwrap()
            .service_arn()
            .unwrap()
    );
    assert_eq!(
        rig.proxy.forwarded("CreateService"),
        1,
        "{}",
        rig.proxy.stats()
    );
    assert_eq!(rig.service_arns().await.len(), 1);
    // The same request after the restart attaches to the finished execution.
    let again =
        worker.python_calls(json!([{"activity": "ProvisionTenantCompute", "input": request}]));
    assert_eq!(again[0]["result"]["executionId"], execution_id.as_str());
    assert_eq!(again[0]["result"]["state"], "succeeded");
}

/// No subnets configured: FARGATE services get the default VPC's subnets and security group.
#[cfg(feature = "ecs-default-vpc")]
#[tokio::test]
async fn ecs_default_vpc_is_used_without_configured_subnets() {
    let rig = Rig::start().await;
    let worker = rig.worker_with("ecs-defvpc", CLUSTER, &[]);
    let client = client().await;
    let request = json!({"tenantId": "ecs-defvpc", "spec": spec("nginx:1.27")});
    let status = rig
        .run_ok(
            &worker,
            &client,
            "ecs-defvpc-1",
            input("provision", request, json!({})),
        )
        .await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let service = rig.service("ecs-defvpc").await.expect("the service exists");
    let vpc = service
        .network_configuration()
        .and_then(|n| n.awsvpc_configuration())
        .expect("awsvpc network");
    assert!(
        vpc.subnets().contains(&rig.net.subnet),
        "{:?}",
        vpc.subnets()
    );
    assert!(vpc.subnets().iter().all(|s| s.starts_with("subnet-")));
    assert_eq!(
        vpc.security_groups(),
        std::slice::from_ref(&rig.net.security_group)
    );
    assert!(
        worker
            .log()
            .contains("Using the default VPC for ECS services.")
    );
}

/// `compute-worker sweep` with ECS: a service tagged as the worker's that no tenant in the
/// store accounts for is listed, then removed with `--apply`; the tenant's own stays.
#[tokio::test]
async fn ecs_sweep_removes_a_stray_service_and_keeps_the_tenants() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-sweep", CLUSTER);
    let client = client().await;
    let request =
        json!({"tenantId": "ecs-sweep-kept", "spec": spec("nginx:1.27"), "timeout": "30s"});
    rig.run_ok(
        &worker,
        &client,
        "ecs-sweep-1",
        input("provision", request, lifecycle_policy()),
    )
    .await;
    // A stray: the worker's tags, a tenant the store never heard of.
    let td = rig
        .ecs
        .register_task_definition()
        .family("tenant-ecs-sweep-stray")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("nginx:1.27")
                .memory(512)
                .build(),
        )
        .send()
        .await
        .expect("RegisterTaskDefinition on moto");
    let tag = |k: &str, v: &str| aws_sdk_ecs::types::Tag::builder().key(k).value(v).build();
    rig.ecs
        .create_service()
        .cluster(CLUSTER)
        .service_name("tenant-ecs-sweep-stray")
        .task_definition(
            td.task_definition()
                .and_then(|t| t.task_definition_arn())
                .unwrap(),
        )
        .desired_count(1)
        .launch_type(LaunchType::Ec2)
        .tags(tag("managed-by", "compute-worker"))
        .tags(tag("tenant-id", "ecs-sweep-stray"))
        .tags(tag("execution-id", "lost-execution"))
        .send()
        .await
        .expect("CreateService on moto");

    let args = |apply: bool| {
        let mut a: Vec<String> = ["--provider", "ecs", "--ecs-cluster", CLUSTER]
            .map(String::from)
            .to_vec();
        if apply {
            a.push("--apply".into());
        }
        a
    };
    let env = rig.aws_env();
    let report = crate::sweep::sweep(&worker.database_url(), &args(false), &env);
    let orphans = report["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{report}");
    assert_eq!(orphans[0]["tenantId"], "ecs-sweep-stray");
    assert_eq!(orphans[0]["kind"], "ecs-service");
    assert_eq!(orphans[0]["reason"], "tenant-unknown");
    assert_eq!(orphans[0]["executionId"], "lost-execution");
    let active = |s: Option<Service>| s.is_some_and(|s| s.status() == Some("ACTIVE"));
    assert!(
        active(rig.service("ecs-sweep-stray").await),
        "a dry run removes nothing"
    );

    let report = crate::sweep::sweep(&worker.database_url(), &args(true), &env);
    assert_eq!(report["removals"][0]["removed"], true, "{report}");
    assert!(
        !active(rig.service("ecs-sweep-stray").await),
        "the stray is deleted"
    );
    assert!(
        active(rig.service("ecs-sweep-kept").await),
        "the tenant's own stays"
    );
    let report = crate::sweep::sweep(&worker.database_url(), &args(false), &env);
    assert_eq!(report["orphans"], json!([]), "{report}");
}
