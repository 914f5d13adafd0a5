//! Callbacks to other workflow engines, against real servers: Step Functions task tokens on
//! moto with its state-machine interpreter on (behind the fault proxy, so the target can be
//! made to fail), and Restate awakeables on a real restate-server with a tiny TypeScript
//! service (`tests/restate/`) whose handler creates the awakeable and waits on it.
//!
//! What the servers do not tell (see shared/test-rig.md): Restate's ingress answers 202 to
//! every completion, so a test reads the handler's result; moto drops `SendTaskFailure`'s
//! `cause` and never answers `TaskTimedOut` (the unit tests map those with mocks).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::rigs::{
    Fault, FaultProxy, MotoServer, Restate, TestWorker, WorkerOpts, aws_authorization, cli, client,
    fault_proxy, http, moto_server, query_status, run_python_caller, spawn_worker, wait_result,
};

// ---------------------------------------------------------------------------------------------
// Step Functions on moto.

/// moto with the Step Functions interpreter on, an SQS queue the state machines hand their
/// tokens to, and the fault proxy in front (the worker talks to the proxy).
struct Sfn {
    moto: MotoServer,
    proxy: FaultProxy,
    queue_url: String,
}

impl Sfn {
    fn start() -> Self {
        let moto = moto_server();
        let (status, body) = http(
            &moto.endpoint,
            "POST",
            "/moto-api/config",
            &[("Content-Type", "application/json")],
            json!({"stepfunctions": {"execute_state_machine": true}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(
            status < 300,
            "switching moto's interpreter on: {status} {body}"
        );
        let proxy = fault_proxy(&moto.endpoint);
        let mut sfn = Sfn {
            moto,
            proxy,
            queue_url: String::new(),
        };
        sfn.queue_url = sfn.call(
            "sqs",
            "AmazonSQS.CreateQueue",
            &json!({"QueueName": "tokens"}),
        )["QueueUrl"]
            .as_str()
            .unwrap()
            .to_string();
        sfn
    }

    /// A JSON-protocol call straight to moto: the answer, or the error body.
    fn call_raw(&self, service: &str, target: &str, input: &Value) -> (u16, Value) {
        let auth = aws_authorization(service);
        let (status, body) = http(
            &self.moto.endpoint,
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                ("X-Amz-Target", target),
                ("Content-Type", "application/x-amz-json-1.0"),
            ],
            input.to_string().as_bytes(),
        )
        .unwrap();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    fn call(&self, service: &str, target: &str, input: &Value) -> Value {
        let (status, body) = self.call_raw(service, target, input);
        if status != 200 {
            let log = self.moto.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{target}: {status} {body}\nmoto's log, latest first:\n{}",
                tail.join("\n")
            );
        }
        body
    }

    /// A state machine whose one task hands its token to the queue and waits for it.
    fn state_machine(&self, name: &str, heartbeat_seconds: Option<u32>) -> String {
        let mut task = json!({
            "Type": "Task",
            "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {
                "QueueUrl": self.queue_url,
                "MessageBody": {"token.$": "$$.Task.Token", "input.$": "$"},
            },
            "End": true,
        });
        if let Some(h) = heartbeat_seconds {
            task["HeartbeatSeconds"] = json!(h);
        }
        let definition = json!({"StartAt": "Compute", "States": {"Compute": task}});
        self.call(
            "states",
            "AWSStepFunctions.CreateStateMachine",
            &json!({
                "name": name,
                "definition": definition.to_string(),
                "roleArn": "arn:aws:iam::123456789012:role/states",
            }),
        )["stateMachineArn"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Starts an execution and returns (its ARN, the task token it published).
    fn start_execution(&self, machine: &str, name: &str) -> (String, String) {
        let arn = self.call(
            "states",
            "AWSStepFunctions.StartExecution",
            &json!({"stateMachineArn": machine, "name": name, "input": "{}"}),
        )["executionArn"]
            .as_str()
            .unwrap()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.call(
                "sqs",
                "AmazonSQS.ReceiveMessage",
                &json!({"QueueUrl": self.queue_url, "MaxNumberOfMessages": 1, "WaitTimeSeconds": 1}),
            );
            if let Some(m) = got["Messages"].as_array().and_then(|m| m.first()) {
                let body: Value = serde_json::from_str(m["Body"].as_str().unwrap()).unwrap();
                self.call(
                    "sqs",
                    "AmazonSQS.DeleteMessage",
                    &json!({"QueueUrl": self.queue_url, "ReceiptHandle": m["ReceiptHandle"]}),
                );
                return (arn, body["token"].as_str().unwrap().to_string());
            }
            assert!(Instant::now() < deadline, "no task token reached the queue");
        }
    }

    /// Waits until the execution is no longer RUNNING and returns DescribeExecution's answer.
    fn wait_execution(&self, arn: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.call(
                "states",
                "AWSStepFunctions.DescribeExecution",
                &json!({"executionArn": arn}),
            );
            if d["status"] != "RUNNING" {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "the execution is still RUNNING: {d}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `error` the execution failed with (DescribeExecution, else its history).
    fn failure_error(&self, arn: &str, described: &Value) -> String {
        if let Some(e) = described["error"].as_str() {
            return e.to_string();
        }
        let history = self.call(
            "states",
            "AWSStepFunctions.GetExecutionHistory",
            &json!({"executionArn": arn}),
        );
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| {
                e["executionFailedEventDetails"]["error"]
                    .as_str()
                    .or(e["taskFailedEventDetails"]["error"].as_str())
            })
            .unwrap_or_else(|| panic!("no failure error in {history}"))
            .to_string()
    }

    /// A worker whose Step Functions client talks to the proxy.
    fn worker(&self, name: &str, settle: &str) -> TestWorker {
        spawn_worker(
            name,
            WorkerOpts {
                settle,
                env: self.env(),
                ..Default::default()
            },
        )
    }

    /// The worker's AWS settings: Step Functions through the proxy.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_SFN", self.proxy.endpoint.clone()),
            ("AWS_ENDPOINT_URL", self.proxy.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

fn tenant_workflow(tenant: &str, command: &[&str], callback: Value) -> Value {
    json!({
        "operation": "provision",
        "request": {"tenantId": tenant, "spec": {"command": command}, "callback": callback},
        "policy": {"maxAttempts": 1, "callbackTimeout": "20s"},
    })
}

/// Starts `TenantComputeWorkflow` as an operator would, with the `temporal` CLI.
fn start_with_cli(worker: &TestWorker, id: &str, input: &Value) {
    cli(&[
        "workflow",
        "start",
        "--type",
        "TenantComputeWorkflow",
        "--task-queue",
        &worker.task_queue,
        "--workflow-id",
        id,
        "--input",
        &input.to_string(),
    ])
    .unwrap();
}

/// `GetComputeExecution` from a Python caller: the execution's status, with its callbacks.
fn execution(worker: &TestWorker, execution_id: &str) -> Value {
    let r = run_python_caller(
        &worker.task_queue,
        &json!([{"activity": "GetComputeExecution", "input": {"executionId": execution_id}}]),
    );
    r[0]["result"].clone()
}

/// Polls `GetComputeExecution` until `done(callbacks)` holds.
fn wait_callbacks(
    worker: &TestWorker,
    execution_id: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = execution(worker, execution_id);
        if let Some(cbs) = status["callbacks"].as_array()
            && done(cbs)
        {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "callbacks never got there: {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test]
async fn step_functions_tasks_are_completed_with_the_outcome() {
    let sfn = Sfn::start();
    let worker = sfn.worker("sfn", "300ms");
    let client = client().await;
    // One execution per moto server: after the first, moto fails every StartExecution (it
    // cannot deep-copy the interpreter's thread lock), so each test runs one.
    let machine = sfn.state_machine("compute", None);

    // Success: the task succeeds with the ComputeCallback as its output.
    let (arn, token) = sfn.start_execution(&machine, "ok");
    let status = worker
        .run_tenant_workflow(
            &client,
            "sfn-ok",
            tenant_workflow(
                "sfn-ok",
                &["sleep", "3101"],
                json!({"stepFunctions": {"taskToken": token}}),
            ),
        )
        .await
        .completed();
    let described = sfn.wait_execution(&arn);
    assert_eq!(described["status"], "SUCCEEDED", "{described}");
    let output: Value = serde_json::from_str(described["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["executionId"], status["executionId"]);
    assert_eq!(output["state"], "succeeded");
    assert_eq!(output["tenantId"], "sfn-ok");
    assert!(output["resourceIds"]["pid"].as_u64().is_some(), "{output}");
    let view = query_status(&client, "sfn-ok").await;
    assert_eq!(view["callbackDelivery"]["delivered"], true, "{view}");
    assert_eq!(view["callbackDelivery"]["attempts"], 1, "{view}");
    // The token never reaches a log or the status: only its digest does.
    assert!(!worker.log().contains(&token), "the task token was logged");
    assert!(!view.to_string().contains(&token), "{view}");
    let recorded = execution(&worker, status["executionId"].as_str().unwrap());
    let cbs = recorded["callbacks"].as_array().unwrap();
    let sfn_cb = cbs.iter().find(|c| c["kind"] == "stepFunctions").unwrap();
    assert_eq!(sfn_cb["outcome"], "delivered", "{recorded}");
    assert_eq!(sfn_cb["attempts"], 1);
    assert!(
        sfn_cb["target"]
            .as_str()
            .unwrap()
            .starts_with("stepFunctions:token-")
    );

    // The same token again (used) and a made-up one: undeliverable after one attempt each,
    // while the operations themselves succeed.
    for (tenant, bad) in [
        ("sfn-used", token.as_str()),
        ("sfn-bogus", "bm90LWEtdG9rZW4="),
    ] {
        let results = run_python_caller(
            &worker.task_queue,
            &json!([{
                "activity": "ProvisionTenantCompute",
                "input": {"tenantId": tenant, "spec": {"command": ["sleep", "3102"]},
                          "callback": {"stepFunctions": {"taskToken": bad}}},
            }]),
        );
        let id = results[0]["result"]["executionId"]
            .as_str()
            .unwrap()
            .to_string();
        let status = wait_callbacks(&worker, &id, |cbs| {
            cbs.iter().any(|c| c["outcome"] != "pending")
        });
        assert_eq!(status["state"], "succeeded", "{status}");
        let cb = &status["callbacks"][0];
        assert_eq!(cb["outcome"], "undeliverable", "{status}");
        assert_eq!(cb["attempts"], 1, "{status}");
        assert!(
            cb["lastError"].as_str().unwrap().contains("InvalidToken"),
            "{status}"
        );
    }
    // One completion per operation reached moto.
    let stats = sfn.proxy.stats();
    assert_eq!(stats["forwarded"]["SendTaskSuccess"], 3, "{stats}");
    // The store keeps a token only as its digest: the request of the execution that carried
    // one names no token.
    let dump = crate::secret_scan::sqlite_dump(&worker.dir.path().join("store.db"));
    assert!(dump.contains("taskTokenDigest"), "positive control: {dump}");
    assert!(
        !dump.contains(&token),
        "a task token is stored in plaintext"
    );
    assert!(
        !dump.contains("bm90LWEtdG9rZW4="),
        "a task token is stored in plaintext"
    );
}

#[tokio::test]
async fn step_functions_tasks_fail_with_the_code() {
    let sfn = Sfn::start();
    let worker = sfn.worker("sfn-fail", "300ms");
    let machine = sfn.state_machine("compute", None);
    // A failing workload, started from the CLI: the task fails with Compute.<CODE>.
    let (arn, token) = sfn.start_execution(&machine, "fails");
    let input = tenant_workflow(
        "sfn-fail",
        &["sh", "-c", "exit 3"],
        json!({"stepFunctions": {"taskToken": token}}),
    );
    start_with_cli(&worker, "sfn-fail", &input);
    let described = sfn.wait_execution(&arn);
    assert_eq!(described["status"], "FAILED", "{described}");
    assert_eq!(
        sfn.failure_error(&arn, &described),
        "Compute.WORKLOAD_FAILED"
    );

    let stats = sfn.proxy.stats();
    assert_eq!(stats["forwarded"]["SendTaskFailure"], 1, "{stats}");
}

#[tokio::test]
async fn step_functions_heartbeats_and_retries_until_accepted() {
    let sfn = Sfn::start();
    let worker = sfn.worker("sfn-retry", "4s");
    let client = client().await;
    let machine = sfn.state_machine("heartbeats", Some(2));

    // Step Functions is down for the first two completions: the third lands, once.
    sfn.proxy.arm("SendTaskSuccess", 2, Fault::Unavailable);
    let (arn, token) = sfn.start_execution(&machine, "hb");
    let status = worker
        .run_tenant_workflow(
            &client,
            "sfn-hb",
            tenant_workflow(
                "sfn-hb",
                &["sleep", "3103"],
                json!({"stepFunctions": {"taskToken": token, "heartbeatSeconds": 2}}),
            ),
        )
        .await
        .completed();
    let described = sfn.wait_execution(&arn);
    assert_eq!(described["status"], "SUCCEEDED", "{described}");
    let view = query_status(&client, "sfn-hb").await;
    assert!(
        view["heartbeatsSent"].as_u64().unwrap() >= 2,
        "a 4 s operation under a 2 s heartbeat: {view}"
    );
    assert_eq!(view["callbackDelivery"]["attempts"], 3, "{view}");
    let stats = sfn.proxy.stats();
    assert_eq!(stats["faulted"]["SendTaskSuccess"], 2, "{stats}");
    assert_eq!(stats["forwarded"]["SendTaskSuccess"], 1, "{stats}");
    assert!(
        stats["forwarded"]["SendTaskHeartbeat"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    let recorded = execution(&worker, status["executionId"].as_str().unwrap());
    let cb = recorded["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "stepFunctions")
        .cloned()
        .unwrap();
    assert_eq!(cb["attempts"], 3, "{recorded}");
    assert_eq!(cb["outcome"], "delivered", "{recorded}");
}

// ---------------------------------------------------------------------------------------------
// Restate.

#[tokio::test]
async fn restate_awakeables_are_resolved_and_rejected() {
    let restate = Restate::start();
    let worker = spawn_worker(
        "restate",
        WorkerOpts {
            args: vec!["--restate-ingress-url".into(), restate.ingress.clone()],
            ..Default::default()
        },
    );
    let client = client().await;

    // Success: the handler gets the ComputeCallback.
    let (invocation, id) = restate.wait_handler("ok");
    let status = worker
        .run_tenant_workflow(
            &client,
            "restate-ok",
            tenant_workflow(
                "restate-ok",
                &["sleep", "3201"],
                json!({"restate": {"awakeableId": id}}),
            ),
        )
        .await
        .completed();
    let got = restate.result(&invocation);
    assert_eq!(
        got["resolved"]["executionId"], status["executionId"],
        "{got}"
    );
    assert_eq!(got["resolved"]["state"], "succeeded");

    // Failure: rejected with the code.
    let (invocation, id) = restate.wait_handler("fails");
    let input = tenant_workflow(
        "restate-fail",
        &["sh", "-c", "exit 4"],
        json!({"restate": {"awakeableId": id, "ingressUrl": format!("{}/", restate.ingress)}}),
    );
    start_with_cli(&worker, "restate-fail", &input);
    let got = restate.result(&invocation);
    let reason = got["rejected"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(reason.contains("WORKLOAD_FAILED"), "{reason}");

    // An ingress that is not configured is refused before anything starts.
    let (_, id) = restate.wait_handler("elsewhere");
    let outcome = worker
        .run_tenant_workflow(
            &client,
            "restate-elsewhere",
            tenant_workflow(
                "restate-elsewhere",
                &["sleep", "3202"],
                json!({"restate": {"awakeableId": id, "ingressUrl": "http://169.254.169.254"}}),
            ),
        )
        .await;
    let (code, non_retryable, details) = outcome.failed();
    assert_eq!(code, "INVALID_CONFIGURATION", "{details}");
    assert!(non_retryable);
    assert!(
        details["message"]
            .as_str()
            .unwrap()
            .contains("callback.restate.ingressUrl"),
        "{details}"
    );
    assert!(
        !worker.log().contains("restate-elsewhere-provision"),
        "nothing was started for a refused callback"
    );
}

#[tokio::test]
async fn restate_down_while_the_operation_runs_still_gets_the_callback_once() {
    let mut restate = Restate::start();
    let worker = spawn_worker(
        "restate-down",
        WorkerOpts {
            settle: "1s",
            args: vec!["--restate-ingress-url".into(), restate.ingress.clone()],
            ..Default::default()
        },
    );
    let (invocation, id) = restate.wait_handler("down");
    // A direct activity call from another language, with the awakeable as its callback.
    let results = run_python_caller(
        &worker.task_queue,
        &json!([{
            "activity": "ProvisionTenantCompute",
            "input": {"tenantId": "restate-down", "spec": {"command": ["sleep", "3203"]},
                      "callback": {"restate": {"awakeableId": id}}},
        }]),
    );
    let execution_id = results[0]["result"]["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    restate.stop_server();
    // The operation ends while Restate is down: the delivery is retried, and recorded.
    let status = wait_callbacks(&worker, &execution_id, |cbs| {
        cbs.iter()
            .any(|c| c["outcome"] == "pending" && c["attempts"].as_u64() >= Some(2))
    });
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(
        status["callbacks"][0]["lastError"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{status}"
    );
    restate.start_server();
    let got = restate.result(&invocation);
    assert_eq!(
        got["resolved"]["executionId"],
        execution_id.as_str(),
        "{got}"
    );
    let status = wait_callbacks(&worker, &execution_id, |cbs| {
        cbs.iter().any(|c| c["outcome"] == "delivered")
    });
    let cb = &status["callbacks"][0];
    assert_eq!(cb["kind"], "restate");
    assert!(cb["attempts"].as_u64().unwrap() >= 3, "{status}");
    // The tracker delivered once and stopped: its status query says so.
    let client = client().await;
    let tracker = format!("compute-execution-{execution_id}");
    let result = wait_result(&client, &tracker).await;
    assert_eq!(result["state"], "succeeded");
    let view = query_status(&client, &tracker).await;
    let deliveries = view["callbacks"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{view}");
    assert_eq!(deliveries[0]["delivered"], true, "{view}");
}
