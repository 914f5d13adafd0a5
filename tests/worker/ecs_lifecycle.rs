//! The tenant lifecycle on the ECS provider (issue 13), mirroring tests/worker/lifecycle.rs:
//! the real worker with `--provider ecs` against a moto server of its own, reached through the
//! fault proxy. Every assertion on resources reads moto's state directly (DescribeServices,
//! ListTaskDefinitions); every count of the worker's calls comes from the proxy.
//!
//! moto never starts a deployment on UpdateService and never runs a service's tasks, so these
//! tests play ECS's deployment controller, and say so where they do:
//! - moto here runs with `MOTO_ECS_SERVICE_RUNNING=1` and `MOTO_ECS_SERVICE_FAILED_TASKS=1`:
//!   a service created with one desired task gets one COMPLETED deployment (every operation
//!   of one replica succeeds, as on the shared ECS rig), one with more desired tasks gets an
//!   IN_PROGRESS deployment with one running and one failed task.
//! - [`Rig::deploy`] is "ECS starts a new PRIMARY deployment of this task definition": it
//!   replaces the service (moto's CreateService with an existing name does) with one whose
//!   only deployment is of that revision. A deployment of two tasks stays IN_PROGRESS, which
//!   holds an update in flight ("waiting for the new deployment") until the test deploys
//!   again; the replacement drops the service's tags, which no assertion here reads.
//! - Tasks exist only as the test runs them (RunTask) and stops them (StopTask with a
//!   reason); moto's ListTasks ignores `serviceName`, so every task of the cluster counts as
//!   the service's: each test has its own moto.
//! - moto serialises a task's containers with `cpu` and `memory` as JSON numbers where the
//!   ECS API has strings, which the AWS SDK (the worker's and the test's) refuses
//!   ("expected string") for every RunTask, DescribeTasks and StopTask answer: without help
//!   no task is ever visible to the worker. [`WIRE_FIX`], a small proxy between the fault
//!   proxy and moto, turns those two numbers into strings and changes nothing else.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, LaunchType, NetworkConfiguration, Service,
    TaskDefinitionStatus,
};
use serde_json::{Value, json};

use crate::{
    ecs::{input, spec},
    lifecycle::{result, tenant_cli, tenant_compute, wait_for_execution_of},
    rigs::{
        EcsNetwork, FaultProxy, TestWorker, WorkerOpts, aws_authorization, client, ecs_client,
        fault_proxy, http, query_status, signals_received, spawn_worker,
    },
};

const CLUSTER: &str = "tenants";

/// What a crashing container's task says when it stops.
const CRASHED: &str = "Essential container in task exited";

/// The wire fix in front of moto (stdlib Python): forwards every request to moto (argv[1])
/// and, in JSON answers, writes a task container's numeric `cpu` / `memory` as the strings
/// the ECS API returns. Listens on argv[2].
const WIRE_FIX: &str = r#"
import http.client, json, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
UP = urllib.parse.urlsplit(sys.argv[1])
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
def fix(doc):
    if not isinstance(doc, dict):
        return
    for task in (doc.get("tasks") or []) + [doc.get("task") or {}]:
        for c in task.get("containers") or []:
            for k in ("cpu", "memory", "memoryReservation"):
                if isinstance(c.get(k), int):
                    c[k] = str(c[k])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        conn = http.client.HTTPConnection(UP.hostname, UP.port, timeout=60)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in HOP:
                conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Connection", "close")
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if "json" in (r.getheader("Content-Type") or ""):
            try:
                doc = json.loads(data)
                fix(doc)
                data = json.dumps(doc).encode()
            except ValueError:
                pass
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_POST = do_PUT = do_DELETE = handle_any
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
"#;

/// A moto server of one test, with the deployment counts above, behind [`WIRE_FIX`]; both
/// killed on drop.
struct Moto {
    /// moto itself.
    endpoint: String,
    /// The wire fix in front of it: what every client (the fault proxy, the test) talks to.
    fixed: String,
    child: Child,
    fix: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        for child in self.fix.iter_mut().chain([&mut self.child]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command that dies with the test binary even when that is killed (setpriv), if it can.
fn dying_with_us(program: &std::ffi::OsStr) -> Command {
    if std::path::Path::new("/usr/bin/setpriv").exists() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// `$MOTO_SERVER_BIN`, or `moto_server` beside Python's scripts, or on `$PATH`.
fn moto_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOTO_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 is required by the tests");
    let beside = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("moto_server");
    if beside.exists() {
        beside
    } else {
        PathBuf::from("moto_server")
    }
}

fn start_moto() -> Moto {
    let bin = moto_server_bin();
    for _ in 0..3 {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = dying_with_us(bin.as_os_str())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ECS_SERVICE_RUNNING", "1")
            .env("MOTO_ECS_SERVICE_FAILED_TASKS", "1")
            .env_remove("MOTO_CALL_RESET_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server (pip install 'moto[server]')");
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            fixed: String::new(),
            child,
            fix: None,
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(
                http(&moto.endpoint, "GET", "/moto-api/", &[], b""),
                Ok((200, _))
            ) {
                moto.start_wire_fix();
                return moto;
            }
            if matches!(moto.child.try_wait(), Ok(Some(_))) {
                break; // the port was taken: try another
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not answer within 30 s:\n{}",
                std::fs::read_to_string(moto.dir.path().join("moto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("moto_server exited at start on three ports");
}

impl Moto {
    /// Starts [`WIRE_FIX`] in front of moto and waits until moto answers through it.
    fn start_wire_fix(&mut self) {
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(self.dir.path().join("wire-fix.log")).unwrap();
            let mut child = dying_with_us("python3".as_ref())
                .args(["-c", WIRE_FIX, &self.endpoint, &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("python3");
            let fixed = format!("http://127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !matches!(http(&fixed, "GET", "/moto-api/", &[], b""), Ok((200, _))) {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the wire fix did not answer within 30 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                self.fixed = fixed;
                self.fix = Some(child);
                return;
            }
        }
        panic!(
            "the wire fix exited at start on three ports:\n{}",
            std::fs::read_to_string(self.dir.path().join("wire-fix.log")).unwrap_or_default()
        );
    }
}

/// The first `<tag>value</tag>` of an XML document.
fn xml_first(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_string())
}

/// One test's ECS: its moto, the fault proxy in front of it, a direct client, the network.
struct Rig {
    moto: Moto,
    proxy: FaultProxy,
    ecs: aws_sdk_ecs::Client,
    net: EcsNetwork,
}

impl Rig {
    async fn start() -> Rig {
        let moto = start_moto();
        let proxy = fault_proxy(&moto.fixed);
        let ecs = ecs_client(&moto.fixed).await;
        ecs.create_cluster()
            .cluster_name(CLUSTER)
            .send()
            .await
            .expect("create the cluster in moto");
        let net = EcsNetwork {
            subnet: xml_first(
                &ec2_query(
                    &moto.endpoint,
                    "Action=DescribeSubnets&Version=2016-11-15\
                     &Filter.1.Name=default-for-az&Filter.1.Value.1=true",
                ),
                "subnetId",
            )
            .expect("moto has a default subnet"),
            security_group: xml_first(
                &ec2_query(
                    &moto.endpoint,
                    "Action=DescribeSecurityGroups&Version=2016-11-15\
                     &Filter.1.Name=group-name&Filter.1.Value.1=default",
                ),
                "groupId",
            )
            .expect("moto has a default security group"),
        };
        Rig {
            moto,
            proxy,
            ecs,
            net,
        }
    }

    /// A worker with the ECS provider on the rig's cluster and network, through the proxy.
    fn worker(&self, name: &str) -> TestWorker {
        let (subnet, sg) = (self.net.subnet.clone(), self.net.security_group.clone());
        self.worker_on(name, &subnet, &sg)
    }

    /// A worker whose services get `subnet` and `security_group`.
    fn worker_on(&self, name: &str, subnet: &str, security_group: &str) -> TestWorker {
        let args = [
            "--provider",
            "ecs",
            "--ecs-cluster",
            CLUSTER,
            "--ecs-observe-interval",
            "300ms",
            "--ecs-subnets",
            subnet,
            "--ecs-security-groups",
            security_group,
        ]
        .map(String::from)
        .to_vec();
        let endpoint = self.proxy.endpoint.clone();
        spawn_worker(
            name,
            WorkerOpts {
                args,
                env: vec![
                    ("AWS_ENDPOINT_URL_ECS", endpoint.clone()),
                    ("AWS_ENDPOINT_URL", endpoint),
                    ("AWS_REGION", "us-east-1".into()),
                    ("AWS_ACCESS_KEY_ID", "test".into()),
                    ("AWS_SECRET_ACCESS_KEY", "test".into()),
                    ("AWS_EC2_METADATA_DISABLED", "true".into()),
                ],
                ..Default::default()
            },
        )
    }

    fn network(&self) -> NetworkConfiguration {
        NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .subnets(&self.net.subnet)
                    .security_groups(&self.net.security_group)
                    .assign_public_ip(AssignPublicIp::Disabled)
                    .build()
                    .unwrap(),
            )
            .build()
    }

    /// The tenant's service as moto has it (ACTIVE or INACTIVE).
    async fn service(&self, tenant: &str) -> Option<Service> {
        self.ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(format!("tenant-{tenant}"))
            .send()
            .await
            .expect("DescribeServices on moto")
            .services()
            .first()
            .cloned()
    }

    /// The task definition the tenant's service runs, as moto has it.
    async fn service_td(&self, tenant: &str) -> Option<String> {
        self.service(tenant)
            .await
            .and_then(|s| s.task_definition().map(str::to_string))
    }

    /// The ARNs of the tenant's task definitions in one status, sorted.
    async fn task_definitions(&self, tenant: &str, status: TaskDefinitionStatus) -> Vec<String> {
        let mut arns = self
            .ecs
            .list_task_definitions()
            .family_prefix(format!("tenant-{tenant}"))
            .status(status)
            .send()
            .await
            .expect("ListTaskDefinitions on moto")
            .task_definition_arns()
            .to_vec();
        arns.sort();
        arns
    }

    /// Plays ECS's deployment controller: a new PRIMARY deployment of `td` with `desired`
    /// tasks (moto: the service replaced by one of that revision; one task runs, so more than
    /// one desired stays IN_PROGRESS).
    async fn deploy(&self, tenant: &str, td: &str, desired: i32) {
        self.ecs
            .create_service()
            .cluster(CLUSTER)
            .service_name(format!("tenant-{tenant}"))
            .task_definition(td)
            .desired_count(desired)
            .launch_type(LaunchType::Fargate)
            .network_configuration(self.network())
            .send()
            .await
            .expect("a new deployment (CreateService over the service) on moto");
    }

    /// Runs one task of `td` in the cluster (as the service's scheduler would); its ARN.
    async fn run_task(&self, tenant: &str, td: &str) -> String {
        let out = self
            .ecs
            .run_task()
            .cluster(CLUSTER)
            .task_definition(td)
            .launch_type(LaunchType::Fargate)
            .network_configuration(self.network())
            .group(format!("service:tenant-{tenant}"))
            .send()
            .await
            .expect("RunTask on moto");
        out.tasks()[0].task_arn().unwrap().to_string()
    }

    /// Stops a task with the reason ECS would give.
    async fn stop_task(&self, arn: &str, reason: &str) {
        self.ecs
            .stop_task()
            .cluster(CLUSTER)
            .task(arn)
            .reason(reason)
            .send()
            .await
            .expect("StopTask on moto");
    }

    /// Running tasks stay RUNNING however often they are described (moto otherwise moves
    /// them one step toward STOPPED on every DescribeTasks).
    fn tasks_stay_running(&self) {
        let body = json!({"model_name": "ecs::task",
                          "transition": {"progression": "manual", "times": 1_000_000}});
        let (status, text) = http(
            &self.moto.endpoint,
            "POST",
            "/moto-api/state-manager/set-transition",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert!(
            (200..300).contains(&status),
            "set-transition: {status} {text}"
        );
    }

    /// Waits (up to 60 s) until the tenant's service runs a task definition `matches`
    /// accepts; that task definition, or an error saying what moto has.
    async fn wait_service_td(
        &self,
        tenant: &str,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let td = self.service_td(tenant).await;
            if let Some(td) = td.as_deref().filter(|td| matches(td)) {
                return Ok(td.to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "timed out waiting for {what}: the service runs {td:?}; proxy {}",
                    self.proxy.stats()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A query-protocol (EC2) call to moto: the XML answer.
fn ec2_query(endpoint: &str, form: &str) -> String {
    let auth = aws_authorization("ec2");
    let (status, body) = http(
        endpoint,
        "POST",
        "/",
        &[
            ("Authorization", &auth),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ],
        form.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "moto ec2 {form}: {body}");
    body
}

/// `spec(image)` with `replicas`.
fn spec_of(image: &str, replicas: u32) -> Value {
    let mut s = spec(image);
    s["replicas"] = json!(replicas);
    s
}

/// One attempt, a callback wait long enough for a revert, a bounded operation.
fn policy() -> Value {
    json!({"maxAttempts": 1, "callbackTimeout": "60s"})
}

fn request(tenant: &str, spec: Value) -> Value {
    json!({"tenantId": tenant, "spec": spec, "timeout": "60s"})
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// Provisions `tenant` with one replica of `image`: the task definition it runs.
async fn provisioned(
    worker: &TestWorker,
    client: &temporalio_client::Client,
    id: &str,
    tenant: &str,
    image: &str,
) -> String {
    let status = worker
        .run_tenant_workflow(
            client,
            id,
            input("provision", request(tenant, spec_of(image, 1)), policy()),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    str_of(&status, "/resourceIds/taskDefinitionArn").to_string()
}

/// An update whose new deployment fails (its only task crashes) after ECS accepted it: the
/// worker points the service back at the previous revision, the tenant keeps its last good
/// spec and ids and is marked until `tenant clear`.
#[tokio::test]
async fn ecs_a_failed_update_rolls_back_to_the_previous_task_definition() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-lc-revert");
    let client = client().await;
    let tenant = "ecs-lc-revert";
    let td1 = provisioned(&worker, &client, "ecs-lc-revert-1", tenant, "nginx:1.27").await;
    // The service is still rolling (two tasks wanted, one runs): the update waits for it.
    rig.deploy(tenant, &td1, 2).await;

    let update = input(
        "update",
        request(tenant, spec_of("nginx:1.28", 1)),
        policy(),
    );
    let ecs = async {
        // ECS took the update: the service names the new revision. Its deployment starts,
        // and its one task crashes.
        let td2 = rig
            .wait_service_td(tenant, "the update's UpdateService", |td| td != td1)
            .await?;
        let task = rig.run_task(tenant, &td2).await;
        rig.stop_task(&task, CRASHED).await;
        rig.deploy(tenant, &td2, 2).await;
        // The worker points the service back at the previous revision: that deployment
        // completes.
        rig.wait_service_td(tenant, "the revert's UpdateService", |td| td == td1)
            .await?;
        rig.deploy(tenant, &td1, 1).await;
        Ok::<_, String>((td2, task))
    };
    let (outcome, played) = tokio::join!(
        worker.run_tenant_workflow(&client, "ecs-lc-revert-2", update),
        ecs
    );
    let (code, non_retryable, details) = outcome.failed();
    let (td2, task) = played.unwrap();
    assert_eq!(code, "WORKLOAD_FAILED", "{details}");
    assert!(non_retryable, "{details}");
    assert!(str_of(&details, "/message").contains(CRASHED), "{details}");
    assert_eq!(details["rolledBack"], true, "{details}");
    assert!(details.get("rollbackError").is_none(), "{details}");
    let failed_execution = str_of(&details, "/executionId").to_string();
    assert!(
        td2.ends_with(&format!("/tenant-{tenant}:2")),
        "{td2} ({task})"
    );

    // ECS runs the previous revision again, with the previous spec's one task.
    let service = rig.service(tenant).await.unwrap();
    assert_eq!(service.task_definition(), Some(td1.as_str()), "{service:?}");
    assert_eq!(service.desired_count(), 1);
    assert_eq!(service.status(), Some("ACTIVE"));
    let stats = rig.proxy.stats();
    assert_eq!(
        stats["forwarded"]["UpdateService"], 2,
        "update, revert: {stats}"
    );
    assert_eq!(stats["forwarded"]["RegisterTaskDefinition"], 2, "{stats}");

    // The operations port counted both operations, and the revert, as they happened.
    worker.assert_counted_failed_update("ecs", "WORKLOAD_FAILED");
    let view = query_status(&client, "ecs-lc-revert-2").await;
    assert_eq!(
        view["requiresIntervention"]["code"], "WORKLOAD_FAILED",
        "{view}"
    );

    // GetTenantCompute by name: running the last good spec on the previous revision, marked.
    let got = tenant_compute(&worker, tenant);
    assert_eq!(got["state"], "running", "{got}");
    assert_eq!(got["spec"]["image"], "nginx:1.27", "{got}");
    assert_eq!(got["revision"], 1, "{got}");
    assert_eq!(
        got["resourceIds"]["taskDefinitionArn"],
        td1.as_str(),
        "{got}"
    );
    assert_eq!(
        got["resourceIds"]["ecsServiceArn"],
        service.service_arn().unwrap(),
        "{got}"
    );
    assert_eq!(got["lastExecutionId"], failed_execution.as_str());
    assert_eq!(got["activeExecutionIds"], json!([]));
    let mark = &got["requiresIntervention"];
    assert_eq!(mark["code"], "WORKLOAD_FAILED", "{got}");
    assert_eq!(mark["executionId"], failed_execution.as_str());

    // The operator sees the mark and clears it.
    let db = worker.database_url();
    let shown: Value = serde_json::from_str(&tenant_cli(&db, &["show", tenant, "--json"])).unwrap();
    assert_eq!(
        shown["tenant"]["requiresIntervention"]["code"], "WORKLOAD_FAILED",
        "{shown}"
    );
    assert_eq!(
        shown["tenant"]["resourceIds"]["taskDefinitionArn"],
        td1.as_str()
    );
    assert_eq!(shown["executions"].as_array().unwrap().len(), 2, "{shown}");
    let cleared = tenant_cli(&db, &["clear", tenant]);
    assert!(cleared.contains("cleared"), "{cleared}");
    let got = tenant_compute(&worker, tenant);
    assert_eq!(got["requiresIntervention"], Value::Null, "{got}");
    assert_eq!(got["state"], "running", "{got}");
    let shown: Value = serde_json::from_str(&tenant_cli(&db, &["show", tenant, "--json"])).unwrap();
    assert_eq!(shown["tenant"]["requiresIntervention"], Value::Null);
}

/// A provision in flight (its deployment never completes), cancelled from Python: the service
/// goes, its revisions are deregistered, the tenant is `deleted`, the waiting caller hears
/// `compute-failed` with CANCELLED.
#[tokio::test]
async fn ecs_a_cancelled_provision_leaves_nothing() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-lc-cancel");
    let tenant = "ecs-lc-cancel";
    // Two tasks wanted, one runs: the deployment stays IN_PROGRESS.
    let caller = worker.python_calls_in_background(json!([{
        "activity": "ProvisionTenantCompute",
        "input": request(tenant, spec_of("nginx:1.27", 2)),
        "waitSignal": true,
    }]));
    let started = wait_for_execution_of(&worker, tenant, "provision", "running").await;
    rig.wait_service_td(tenant, "the provision's service", |_| true)
        .await
        .unwrap();
    let calls = worker.python_calls(json!([
        {"activity": "CancelComputeExecution",
         "input": {"executionId": started, "reason": "wrong tenant"}},
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
    ]));
    let cancelled = result(&calls, 0);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"]["code"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["error"]["rolledBack"], true, "{cancelled}");
    assert!(
        str_of(cancelled, "/error/message").contains("wrong tenant"),
        "{cancelled}"
    );
    let got = result(&calls, 1);
    assert_eq!(got["state"], "deleted", "{got}");
    assert_eq!(got["spec"], Value::Null, "{got}");
    assert_eq!(got["requiresIntervention"], Value::Null, "{got}");

    // Nothing is left in ECS: the service is deleted (INACTIVE in moto), no revision ACTIVE.
    let service = rig.service(tenant).await;
    assert!(
        service
            .as_ref()
            .is_none_or(|s| s.status() == Some("INACTIVE")),
        "{service:?}"
    );
    assert_eq!(
        rig.task_definitions(tenant, TaskDefinitionStatus::Active)
            .await,
        Vec::<String>::new()
    );
    assert_eq!(
        rig.proxy.forwarded("DeleteService"),
        1,
        "{}",
        rig.proxy.stats()
    );

    let heard = caller.join().unwrap();
    let signal = &heard[0]["signals"][0];
    assert_eq!(signal["signal"], "compute-failed", "{}", heard[0]);
    assert_eq!(signal["callback"]["state"], "cancelled");
    assert_eq!(signal["callback"]["error"]["code"], "CANCELLED");
}

/// An update in flight (held by a deployment that does not complete), cancelled from Python:
/// the service is pointed back at the previous revision, the tenant runs its old spec, the
/// waiting caller hears CANCELLED.
#[tokio::test]
async fn ecs_a_cancelled_update_puts_the_previous_task_definition_back() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-lc-cancel-up");
    let client = client().await;
    let tenant = "ecs-lc-cancel-up";
    let td1 = provisioned(&worker, &client, "ecs-lc-cancel-up-1", tenant, "nginx:1.27").await;
    rig.deploy(tenant, &td1, 2).await;
    let caller = worker.python_calls_in_background(json!([{
        "activity": "UpdateTenantCompute",
        "input": request(tenant, spec_of("nginx:1.28", 1)),
        "waitSignal": true,
    }]));
    let update = wait_for_execution_of(&worker, tenant, "update", "running").await;
    let td2 = rig
        .wait_service_td(tenant, "the update's UpdateService", |td| td != td1)
        .await
        .unwrap();
    let cancel = worker.python_calls_in_background(json!([
        {"activity": "CancelComputeExecution", "input": {"executionId": update}},
    ]));
    // The revert's deployment completes.
    rig.wait_service_td(tenant, "the revert's UpdateService", |td| td == td1)
        .await
        .unwrap();
    rig.deploy(tenant, &td1, 1).await;
    let calls = cancel.join().unwrap();
    let status = result(&calls, 0);
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["error"]["code"], "CANCELLED", "{status}");
    assert_eq!(status["error"]["rolledBack"], true, "{status}");
    assert!(status["error"].get("rollbackError").is_none(), "{status}");

    assert_eq!(rig.service_td(tenant).await.as_deref(), Some(td1.as_str()));
    let got = tenant_compute(&worker, tenant);
    assert_eq!(got["state"], "running", "{got}");
    assert_eq!(got["spec"]["image"], "nginx:1.27", "{got}");
    assert_eq!(
        got["resourceIds"]["taskDefinitionArn"],
        td1.as_str(),
        "{got}"
    );
    assert_eq!(got["revision"], 1, "{got}");
    assert_eq!(got["requiresIntervention"], Value::Null, "{got}");
    assert_ne!(td1, td2);

    let heard = caller.join().unwrap();
    let signal = &heard[0]["signals"][0];
    assert_eq!(signal["signal"], "compute-failed", "{}", heard[0]);
    assert_eq!(
        signal["callback"]["error"]["code"], "CANCELLED",
        "{}",
        heard[0]
    );
}

/// A provision of a running tenant with another spec rolls a new revision onto the service
/// (an update, still a provision with `compute-provisioned`); an update of a tenant with no
/// compute (never provisioned, or deleted) is NOT_FOUND on the first attempt, with nothing
/// recorded and nothing sent to ECS.
#[tokio::test]
async fn ecs_requests_mean_the_same_whatever_the_tenant_ran() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-lc-meaning");
    let client = client().await;
    let tenant = "ecs-lc-meaning";
    let refused = |calls: &[Value]| {
        let error = &calls[0]["error"];
        assert_eq!(error["type"], "NOT_FOUND", "{}", calls[0]);
        assert_eq!(error["nonRetryable"], true, "{}", calls[0]);
        // Temporal's RetryState 2: RETRY_STATE_NON_RETRYABLE_FAILURE (one attempt).
        assert_eq!(error["retryState"], "2", "{}", calls[0]);
    };
    let calls = worker.python_calls(json!([
        {"activity": "UpdateTenantCompute", "input": request(tenant, spec_of("nginx:1.27", 1))},
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    refused(&calls);
    assert_eq!(result(&calls, 1)["state"], "absent");
    assert_eq!(result(&calls, 2), &json!([]), "nothing recorded");
    for target in [
        "DescribeServices",
        "RegisterTaskDefinition",
        "UpdateService",
    ] {
        assert_eq!(rig.proxy.forwarded(target), 0, "{}", rig.proxy.stats());
    }

    // Provision, then provision another spec: a new revision on the same service.
    let td1 = provisioned(&worker, &client, "ecs-lc-meaning-1", tenant, "nginx:1.27").await;
    let mut other = spec_of("nginx:1.28", 1);
    other["env"]["MODE"] = json!("green");
    let status = worker
        .run_tenant_workflow(
            &client,
            "ecs-lc-meaning-2",
            input("provision", request(tenant, other), policy()),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    let td2 = str_of(&status, "/resourceIds/taskDefinitionArn").to_string();
    assert!(td2.ends_with(&format!("/tenant-{tenant}:2")), "{td2}");
    assert_eq!(rig.service_td(tenant).await.as_deref(), Some(td2.as_str()));
    assert_eq!(
        rig.task_definitions(tenant, TaskDefinitionStatus::Active)
            .await,
        [td1.clone(), td2.clone()]
    );
    let stats = rig.proxy.stats();
    assert_eq!(
        stats["forwarded"]["CreateService"], 1,
        "one service: {stats}"
    );
    assert_eq!(
        stats["forwarded"]["UpdateService"], 1,
        "applied as an update: {stats}"
    );
    let view = query_status(&client, "ecs-lc-meaning-2").await;
    assert_eq!(view["callbacks"][0]["operation"], "provision", "{view}");
    assert!(signals_received("ecs-lc-meaning-2").contains(&"compute-provisioned".to_string()));
    let got = tenant_compute(&worker, tenant);
    assert_eq!(
        (&got["state"], &got["revision"], &got["spec"]["image"]),
        (&json!("running"), &json!(2), &json!("nginx:1.28")),
        "{got}"
    );
    assert_eq!(got["resourceIds"]["taskDefinitionArn"], td2.as_str());

    // Deleted, the tenant has nothing to update again.
    worker
        .run_tenant_workflow(
            &client,
            "ecs-lc-meaning-3",
            input(
                "delete",
                json!({"tenantId": tenant, "timeout": "60s"}),
                policy(),
            ),
        )
        .await
        .completed();
    let before = rig.proxy.stats();
    let calls = worker.python_calls(json!([
        {"activity": "UpdateTenantCompute", "input": request(tenant, spec_of("nginx:1.29", 1))},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    refused(&calls);
    assert_eq!(
        result(&calls, 1).as_array().unwrap().len(),
        3,
        "{}",
        calls[1]
    );
    let after = rig.proxy.stats();
    for target in ["RegisterTaskDefinition", "UpdateService", "CreateService"] {
        assert_eq!(
            after["forwarded"][target], before["forwarded"][target],
            "{target}: {after}"
        );
    }
}

/// An update whose deployment runs one of its two tasks while the other stopped: a
/// PARTIAL_FAILURE listing the parts; the tenant is put back and needs an operator. The same
/// request again re-opens the execution and re-applies only the rollout: the revision the
/// first attempt registered is reused (no RegisterTaskDefinition), and it succeeds.
#[tokio::test]
async fn ecs_a_partial_rollout_is_a_partial_failure_and_its_retry_registers_nothing() {
    let rig = Rig::start().await;
    let worker = rig.worker("ecs-lc-partial");
    let client = client().await;
    let tenant = "ecs-lc-partial";
    let td1 = provisioned(&worker, &client, "ecs-lc-partial-1", tenant, "nginx:1.27").await;
    rig.tasks_stay_running();
    rig.deploy(tenant, &td1, 2).await;

    let update = input(
        "update",
        request(tenant, spec_of("nginx:1.28", 2)),
        policy(),
    );
    let ecs = async {
        let td2 = rig
            .wait_service_td(tenant, "the update's UpdateService", |td| td != td1)
            .await?;
        // The new deployment: one task runs, the other crashed.
        let up = rig.run_task(tenant, &td2).await;
        let down = rig.run_task(tenant, &td2).await;
        rig.stop_task(&down, CRASHED).await;
        rig.deploy(tenant, &td2, 2).await;
        rig.wait_service_td(tenant, "the revert's UpdateService", |td| td == td1)
            .await?;
        rig.deploy(tenant, &td1, 1).await;
        Ok::<_, String>((td2, up, down))
    };
    let (outcome, played) = tokio::join!(
        worker.run_tenant_workflow(&client, "ecs-lc-partial-2", update.clone()),
        ecs
    );
    let (code, _, details) = outcome.failed();
    let (td2, up, down) = played.unwrap();
    assert_eq!(code, "PARTIAL_FAILURE", "{details}");
    assert_eq!(details["retriable"], false, "{details}");
    assert_eq!(
        details["classification"], "requires_manual_intervention",
        "{details}"
    );
    let service_arn = rig
        .service(tenant)
        .await
        .unwrap()
        .service_arn()
        .unwrap()
        .to_string();
    assert_eq!(
        details["partial"]["succeeded"],
        json!([
            format!("task-definition {td2}"),
            format!("service {service_arn}"),
            format!("task {up}")
        ]),
        "{details}"
    );
    assert_eq!(
        details["partial"]["failed"],
        json!([format!("task {down}: {CRASHED}")]),
        "{details}"
    );
    assert_eq!(details["rolledBack"], true, "{details}");
    let execution_id = str_of(&details, "/executionId").to_string();
    // ECS runs the previous revision again.
    assert_eq!(rig.service_td(tenant).await.as_deref(), Some(td1.as_str()));
    let got = tenant_compute(&worker, tenant);
    eprintln!("after the partial failure: {got}");
    assert_eq!(got["state"], "requires_manual_intervention", "{got}");
    assert_eq!(got["spec"]["image"], "nginx:1.27", "{got}");
    // What the record says runs now, checked at the end (the retry is shown either way).
    let after_put_back = got.clone();
    assert_eq!(
        got["requiresIntervention"]["code"], "PARTIAL_FAILURE",
        "{got}"
    );
    let registered = rig.proxy.forwarded("RegisterTaskDefinition");
    assert_eq!(registered, 2, "{}", rig.proxy.stats());

    // The same request again (a new caller): the same execution, attempt 2, no new revision.
    let status = worker
        .run_tenant_workflow(&client, "ecs-lc-partial-3", update)
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["executionId"], execution_id.as_str(), "{status}");
    assert_eq!(status["attempt"], 2, "{status}");
    assert_eq!(status["resourceIds"]["taskDefinitionArn"], td2.as_str());
    assert_eq!(
        rig.proxy.forwarded("RegisterTaskDefinition"),
        registered,
        "{}",
        rig.proxy.stats()
    );
    assert_eq!(
        rig.task_definitions(tenant, TaskDefinitionStatus::Active)
            .await,
        [td1.clone(), td2.clone()]
    );
    let service = rig.service(tenant).await.unwrap();
    assert_eq!(service.task_definition(), Some(td2.as_str()));
    assert_eq!(service.desired_count(), 2);
    let got = tenant_compute(&worker, tenant);
    assert_eq!(got["state"], "running", "{got}");
    assert_eq!(got["revision"], 2, "{got}");
    assert_eq!(got["requiresIntervention"], Value::Null, "{got}");
    let calls = worker.python_calls(json!([
        {"activity": "GetComputeExecution", "input": {"executionId": execution_id}},
    ]));
    let notes: Vec<&str> = result(&calls, 0)["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["message"].as_str())
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with("attempt 2:")),
        "{notes:?}"
    );

    // After the put-back the record must name what ECS ran then: the previous revision.
    assert_eq!(
        after_put_back["resourceIds"]["taskDefinitionArn"],
        td1.as_str(),
        "the tenant record after the PARTIAL_FAILURE's put-back names the failed revision \
         while ECS runs {td1}: {after_put_back}"
    );
}

/// CreateService refused for good (moto refuses subnets it does not know): the revision the
/// provision registered is deregistered, so none of the tenant's family stays ACTIVE.
#[tokio::test]
async fn ecs_a_refused_create_service_leaves_no_active_task_definition() {
    let rig = Rig::start().await;
    let worker = rig.worker_on("ecs-lc-refused", "subnet-12345", "sg-12345");
    let client = client().await;
    let tenant = "ecs-lc-refused";
    let outcome = worker
        .run_tenant_workflow(
            &client,
            "ecs-lc-refused-1",
            input(
                "provision",
                request(tenant, spec_of("nginx:1.27", 1)),
                json!({"maxAttempts": 3}),
            ),
        )
        .await;
    let (code, non_retryable, details) = outcome.failed();
    assert!(non_retryable, "{code}: {details}");
    assert_eq!(details["retriable"], false, "{details}");
    assert_eq!(
        details["providerCode"], "InvalidParameterException",
        "{details}"
    );
    let stats = rig.proxy.stats();
    assert_eq!(stats["forwarded"]["RegisterTaskDefinition"], 1, "{stats}");
    assert_eq!(
        stats["forwarded"]["CreateService"], 1,
        "one attempt: {stats}"
    );
    assert_eq!(stats["forwarded"]["DeregisterTaskDefinition"], 1, "{stats}");

    assert!(rig.service(tenant).await.is_none());
    assert_eq!(
        rig.task_definitions(tenant, TaskDefinitionStatus::Active)
            .await,
        Vec::<String>::new()
    );
    let inactive = rig
        .task_definitions(tenant, TaskDefinitionStatus::Inactive)
        .await;
    assert_eq!(inactive.len(), 1, "{inactive:?}");
    assert!(
        worker
            .log()
            .contains("Deregistered the task definition of a failed CreateService.")
    );
    let got = tenant_compute(&worker, tenant);
    assert_eq!(got["state"], "failed", "{got}");
    assert_eq!(got["spec"], Value::Null, "{got}");
    assert_eq!(got["requiresIntervention"]["code"], code.as_str(), "{got}");
}
