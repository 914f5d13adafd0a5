//! Secret scan: a full scenario per provider whose secrets are references to values the test
//! knows, plus refused requests carrying plaintext decoys; afterwards the worker's log (at
//! debug), a dump of its SQL store (every column of every row of every table, and the raw
//! database files), `temporal workflow show` of every workflow on its task queue (the detailed
//! view, the JSON history and every payload decoded) and of the decoy callers, and the local
//! provider's directory are searched for every known value and every decoy: zero hits.
//!
//! - Local: `env:VAR` (in the worker's environment) and `file:/path` references; the workload
//!   proves it received the values by writing their SHA-256 (computed by the workload, never
//!   by the worker) into its working directory.
//! - ECS on moto: an SSM SecureString parameter and a Secrets Manager secret, referenced by
//!   ARN; the task definitions in moto carry the ARNs.
//! - Kubernetes (the shared 1.20 rig): a Secret referenced by `secretKeyRef`; the Deployment
//!   carries the reference (no kubelet: the value is never read by anyone).
//!
//! A decoy sits only where a secret value is refused: `spec.secrets[i].value`, a bare string
//! item, and (local and Kubernetes) a plaintext `valueFrom`. The Python caller sends them by
//! activity name, on its own task queue: its history necessarily holds what it sent (the
//! workflow's input and the activity's scheduled input), so that is cut from its history
//! before the scan; everything the worker wrote there (the failure) is scanned. Positive
//! controls show each source is the real one: the references are found where the values are
//! not.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use serde_json::{Value, json};

use crate::{
    fuzz::{Rng, files_under},
    rigs::{
        MotoServer, TestWorker, WorkerOpts, cli, client, create_namespace, http, kube_client,
        kube_rig, mark_ready, moto_server, spawn_worker, worker_log_tail, workflow_show_everything,
    },
};

/// The worker's log level in these tests: everything at debug, our crates at trace, and the
/// SQL driver's statements too.
const LOG_LEVEL: &str = "debug,compute_worker=trace,compute_activities=trace,\
                         compute_workflows=trace,h2=info,hyper=info,tower=info";

/// How many times `needles` occur in `haystack`, all together.
pub(crate) fn occurrences(haystack: &[u8], needles: &[&str]) -> usize {
    needles
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            haystack
                .windows(n.len())
                .filter(|w| *w == n.as_bytes())
                .count()
        })
        .sum()
}

/// Every row of every table of a SQLite database as text, one line per row:
/// `table|column=value|column=value...` (read with Python's sqlite3, read-only; newlines in
/// values written `\n`, blobs decoded as UTF-8 with replacement characters).
pub(crate) fn sqlite_dump(db: &Path) -> String {
    const DUMP: &str = r#"
import sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
def text(v):
    v = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return v.replace("\n", "\\n")
for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
    cols = [r[1] for r in c.execute('PRAGMA table_info("%s")' % t)]
    for row in c.execute('SELECT * FROM "%s"' % t):
        print(t + "|" + "|".join(k + "=" + text(v) for k, v in zip(cols, row)))
"#;
    let out = Command::new("python3")
        .args(["-c", DUMP])
        .arg(db)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "dumping {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the dump is text")
}

/// The ids of every workflow on a task queue (the worker's TenantComputeWorkflows and
/// trackers).
fn workflows_on(task_queue: &str) -> BTreeSet<String> {
    let listed = cli(&[
        "workflow",
        "list",
        "--query",
        &format!("TaskQueue='{task_queue}'"),
        "-o",
        "json",
    ])
    .unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap_or(Value::Null);
    listed
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w["execution"]["workflowId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A decoy caller's history without what the caller itself sent (its workflow's input and
/// the activity's scheduled input), with every remaining payload decoded.
fn caller_history_without_its_input(workflow_id: &str) -> String {
    let json = cli(&["workflow", "show", "-w", workflow_id, "-o", "json"]).unwrap();
    let mut history: Value = serde_json::from_str(&json).unwrap();
    for event in history["events"].as_array_mut().unwrap() {
        for attrs in [
            "workflowExecutionStartedEventAttributes",
            "activityTaskScheduledEventAttributes",
        ] {
            if let Some(a) = event.get_mut(attrs).and_then(Value::as_object_mut) {
                a.remove("input");
            }
        }
    }
    let mut decoded = String::new();
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "data"
                        && let Some(bytes) = v.as_str().and_then(base64_decode)
                    {
                        out.push_str(&String::from_utf8_lossy(&bytes));
                        out.push('\n');
                    }
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&history, &mut decoded);
    format!("{history}\n{decoded}")
}

/// One scanned source: its name, the bytes read, the hits.
struct Source {
    name: String,
    bytes: usize,
    hits: Vec<String>,
}

/// What one scenario scans for and where.
struct Scan<'a> {
    label: &'a str,
    worker: &'a TestWorker,
    /// (what it is, the value): known secret values and decoys.
    needles: Vec<(&'a str, String)>,
    /// Workflows to show in full beside those listed on the worker's task queue.
    workflows: Vec<String>,
    /// The Python callers that sent decoys.
    decoy_callers: Vec<String>,
    /// Text the store and the histories must contain (a reference, the tenant), and whether
    /// the log must too: proof each source is the real one.
    controls: Vec<(&'a str, String, bool)>,
}

impl Scan<'_> {
    fn check(&self, source: &str, bytes: &[u8]) -> Source {
        let hits = self
            .needles
            .iter()
            .filter(|(_, n)| occurrences(bytes, &[n.as_str()]) > 0)
            .map(|(what, n)| format!("{what} ({n})"))
            .collect();
        Source {
            name: source.to_string(),
            bytes: bytes.len(),
            hits,
        }
    }

    /// Scans every source, prints the counts, and fails on any hit.
    fn run(&self) {
        let dir = self.worker.dir.path();
        let mut sources = Vec::new();

        let log = self.worker.log();
        for (what, control, in_log) in &self.controls {
            assert!(
                !in_log || log.contains(control.as_str()),
                "the log names {what}"
            );
        }
        assert!(
            log.contains("\"level\":\"DEBUG\""),
            "the worker logs at debug"
        );
        sources.push(self.check("worker log (debug)", log.as_bytes()));

        let dump = sqlite_dump(&dir.join("store.db"));
        for (what, control, _) in &self.controls {
            assert!(dump.contains(control.as_str()), "the store dump has {what}");
        }
        let tables: BTreeSet<&str> = dump.lines().filter_map(|l| l.split('|').next()).collect();
        sources.push(self.check(
            &format!(
                "store dump ({} rows, {} tables)",
                dump.lines().count(),
                tables.len()
            ),
            dump.as_bytes(),
        ));
        let mut raw = Vec::new();
        for file in ["store.db", "store.db-wal", "store.db-shm"] {
            raw.extend(std::fs::read(dir.join(file)).unwrap_or_default());
        }
        sources.push(self.check("store files (db, wal, shm)", &raw));

        let mut ids = workflows_on(&self.worker.task_queue);
        assert!(
            self.workflows.iter().all(|w| ids.contains(w)),
            "every workflow of the scenario is listed on the task queue: {ids:?}"
        );
        ids.extend(self.workflows.iter().cloned());
        let mut shown = String::new();
        for id in &ids {
            shown.push_str(&workflow_show_everything(id));
        }
        for (what, control, _) in &self.controls {
            assert!(
                shown.contains(control.as_str()),
                "the histories have {what}"
            );
        }
        sources.push(self.check(
            &format!("temporal workflow show of {} workflows", ids.len()),
            shown.as_bytes(),
        ));

        // Control: the callers' full histories hold every decoy (what they sent), so the
        // search finds a decoy wherever one is.
        let full: String = self
            .decoy_callers
            .iter()
            .map(|id| workflow_show_everything(id))
            .collect();
        for (what, n) in &self.needles {
            if *what == "a decoy" {
                assert!(
                    occurrences(full.as_bytes(), &[n.as_str()]) > 0,
                    "the decoy {n} was sent (it is in its caller's input)"
                );
            }
        }
        let mut callers = String::new();
        for id in &self.decoy_callers {
            let h = caller_history_without_its_input(id);
            assert!(
                h.contains("INVALID_CONFIGURATION"),
                "the decoy caller {id}'s history has the worker's refusal"
            );
            callers.push_str(&h);
        }
        sources.push(self.check(
            &format!(
                "temporal workflow show of {} decoy callers (less their input)",
                self.decoy_callers.len()
            ),
            callers.as_bytes(),
        ));

        let files = files_under(&dir.join("local"));
        let mut local = Vec::new();
        for (_, bytes) in &files {
            local.extend_from_slice(bytes);
        }
        sources.push(self.check(
            &format!("local provider directory ({} files)", files.len()),
            &local,
        ));

        println!(
            "secret scan, {}: {} values looked for ({})",
            self.label,
            self.needles.len(),
            self.needles
                .iter()
                .map(|(w, _)| *w)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in &sources {
            println!(
                "  {:<62} {:>9} bytes  hits = {}",
                s.name,
                s.bytes,
                s.hits.len()
            );
        }
        let hits: Vec<String> = sources
            .iter()
            .flat_map(|s| s.hits.iter().map(move |h| format!("{}: {h}", s.name)))
            .collect();
        assert!(
            hits.is_empty(),
            "{}: secret values or decoys found:\n{}\nworker log tail:\n{}",
            self.label,
            hits.join("\n"),
            worker_log_tail(&log, 20)
        );
    }
}

/// A value nobody else could produce.
fn known(rng: &mut Rng, what: &str) -> String {
    format!("{what}-{:016x}{:016x}", rng.next(), rng.next())
}

fn rng() -> Rng {
    Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id()),
    )
}

/// A `TenantComputeWorkflow` input with quick retries.
fn tenant_workflow(operation: &str, request: Value) -> Value {
    json!({"operation": operation, "request": request,
           "policy": {"initialInterval": "200ms", "maximumInterval": "2s",
                      "callbackTimeout": "20s"}})
}

/// Runs a `TenantComputeWorkflow` that must succeed.
async fn run_ok(
    worker: &TestWorker,
    client: &temporalio_client::Client,
    id: &str,
    input: Value,
) -> Value {
    match worker.run_tenant_workflow(client, id, input).await {
        crate::rigs::Outcome::Completed(v) if v["state"] == "succeeded" => v,
        other => panic!(
            "{id} did not succeed: {other:?}\nworker log tail:\n{}",
            worker_log_tail(&worker.log(), 20)
        ),
    }
}

/// Sends each decoy request (all must be refused) and returns the callers' workflow ids.
fn send_decoys(worker: &TestWorker, calls: Value) -> Vec<String> {
    let results = worker.python_calls(calls.clone());
    calls
        .as_array()
        .unwrap()
        .iter()
        .zip(&results)
        .map(|(call, r)| {
            assert_eq!(r["error"]["type"], "INVALID_CONFIGURATION", "{call} -> {r}");
            assert_eq!(r["error"]["nonRetryable"], true, "{r}");
            r["workflowId"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The SHA-256 of `value`, in `sha256sum`'s format (the workload computes it the same way).
fn sha256sum(value: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the workload wrote `file` (its proof of the value it got) and returns it.
fn proof(worker: &TestWorker, tenant: &str, file: &str, previous: Option<&str>) -> String {
    let path = worker.local_dir().join(tenant).join("work").join(file);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && text.ends_with('\n')
            && Some(text.as_str()) != previous
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the workload did not write {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The local provider: `env:` and `file:` references, provision, update, look-ups, delete.
#[tokio::test]
async fn secret_scan_local_provider() {
    let mut rng = rng();
    let env_value = known(&mut rng, "scan-env-secret");
    let file_value = known(&mut rng, "scan-file-secret");
    let vault = tempfile::tempdir().unwrap();
    let secret_file = vault.path().join("api-token");
    std::fs::write(&secret_file, &file_value).unwrap();
    let file_ref = format!("file:{}", secret_file.display());
    let decoys: Vec<String> = (0..4)
        .map(|i| known(&mut rng, &format!("decoy{i}")))
        .collect();

    let worker = spawn_worker(
        "scan-local",
        WorkerOpts {
            env: vec![
                ("SCAN_DB_PASSWORD", env_value.clone()),
                ("RUST_LOG", LOG_LEVEL.to_string()),
            ],
            args: vec![
                "--local-secret-env-allow".into(),
                "SCAN_DB_PASSWORD".into(),
                "--local-secret-dir".into(),
                vault.path().display().to_string(),
            ],
            ..Default::default()
        },
    );
    let client = client().await;
    let tenant = "scan-local";
    // The workload proves it got each value by writing its hash; it prints nothing.
    let script = "printf %s \"$DB_PASSWORD\" | sha256sum > proof-db; \
                  printf %s \"$API_TOKEN\" | sha256sum > proof-api; exec sleep 300";
    let request = |marker: &str, db: &str, api: &str| {
        json!({"tenantId": tenant, "spec": {
            "command": ["sh", "-c", script, marker],
            "env": {"MODE": "scan"}, "config": {"LEVEL": "3"},
            "secrets": [{"name": "DB_PASSWORD", "valueFrom": db},
                        {"name": "API_TOKEN", "valueFrom": api}]},
            "metadata": {"owner": "scanner"}})
    };
    let provisioned = run_ok(
        &worker,
        &client,
        "scan-local-1",
        tenant_workflow(
            "provision",
            request("first", "env:SCAN_DB_PASSWORD", &file_ref),
        ),
    )
    .await;
    let db_proof = proof(&worker, tenant, "proof-db", None);
    let api_proof = proof(&worker, tenant, "proof-api", None);
    assert_eq!(
        db_proof,
        sha256sum(&env_value),
        "the workload got DB_PASSWORD"
    );
    assert_eq!(
        api_proof,
        sha256sum(&file_value),
        "the workload got API_TOKEN"
    );

    // Update: the references swap; the new process gets the values the other way round.
    let updated = run_ok(
        &worker,
        &client,
        "scan-local-2",
        tenant_workflow(
            "update",
            request("second", &file_ref, "env:SCAN_DB_PASSWORD"),
        ),
    )
    .await;
    assert_eq!(
        proof(&worker, tenant, "proof-db", Some(&db_proof)),
        sha256sum(&file_value)
    );
    assert_eq!(
        proof(&worker, tenant, "proof-api", Some(&api_proof)),
        sha256sum(&env_value)
    );

    // Look-ups by name, and refused requests carrying plaintext decoys.
    let looked_up = worker.python_calls(json!([
        {"activity": "GetComputeExecution",
         "input": {"executionId": updated["executionId"], "includeAttempts": true}},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    assert_eq!(
        looked_up[0]["result"]["state"], "succeeded",
        "{looked_up:?}"
    );
    assert_eq!(looked_up[1]["result"].as_array().unwrap().len(), 2);
    let ok_spec = |secrets: Value| json!({"tenantId": tenant, "spec": {"command": ["sleep", "300"], "secrets": secrets}});
    let decoy_callers = send_decoys(
        &worker,
        json!([
            {"activity": "ProvisionTenantCompute",
             "input": ok_spec(json!([{"name": "DB_PASSWORD", "value": decoys[0]}]))},
            {"activity": "UpdateTenantCompute", "input": ok_spec(json!([decoys[1]]))},
            {"activity": "ProvisionTenantCompute",
             "input": ok_spec(json!([{"name": "DB_PASSWORD", "valueFrom": decoys[2]}]))},
            {"activity": "UpdateTenantCompute",
             "input": ok_spec(json!([{"name": "DB_PASSWORD", "valueFrom": "env:SCAN_DB_PASSWORD",
                                      "value": decoys[3]}]))},
        ]),
    );

    run_ok(
        &worker,
        &client,
        "scan-local-3",
        tenant_workflow("delete", json!({"tenantId": tenant})),
    )
    .await;

    let trackers = [&provisioned, &updated]
        .iter()
        .map(|s| format!("compute-execution-{}", s["executionId"].as_str().unwrap()))
        .collect::<Vec<_>>();
    let mut needles = vec![
        ("the env: secret's value", env_value.clone()),
        ("the file: secret's value", file_value.clone()),
    ];
    needles.extend(decoys.iter().map(|d| ("a decoy", d.clone())));
    Scan {
        label: "local provider",
        worker: &worker,
        needles,
        workflows: ["scan-local-1", "scan-local-2", "scan-local-3"]
            .map(String::from)
            .into_iter()
            .chain(trackers)
            .collect(),
        decoy_callers,
        controls: vec![
            (
                "the env: reference",
                "env:SCAN_DB_PASSWORD".to_string(),
                false,
            ),
            ("the tenant", tenant.to_string(), true),
        ],
    }
    .run();
}

/// A JSON-protocol call to moto (Secrets Manager and the like).
fn moto_json(moto: &MotoServer, service: &str, target: &str, input: &Value) -> Value {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    );
    let (status, body) = http(
        &moto.endpoint,
        "POST",
        "/",
        &[
            ("Authorization", &auth),
            ("X-Amz-Target", target),
            ("Content-Type", "application/x-amz-json-1.1"),
        ],
        input.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "moto {target}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// ECS on moto: an SSM parameter and a Secrets Manager secret referenced by ARN.
#[tokio::test]
async fn secret_scan_ecs_provider() {
    let mut rng = rng();
    let ssm_value = known(&mut rng, "scan-ssm-secret");
    let sm_value = known(&mut rng, "scan-secretsmanager-secret");
    let decoys: Vec<String> = (0..2)
        .map(|i| known(&mut rng, &format!("decoy{i}")))
        .collect();

    let moto = moto_server();
    let ecs = moto.ecs().await;
    ecs.create_cluster()
        .cluster_name("scan")
        .send()
        .await
        .expect("create the cluster in moto");
    let net = moto.network();
    let ssm_arn = moto.ssm_put_secret("/scan/db-password", &ssm_value);
    let sm_arn = moto_json(
        &moto,
        "secretsmanager",
        "secretsmanager.CreateSecret",
        &json!({"Name": "scan/api-token", "SecretString": sm_value}),
    )["ARN"]
        .as_str()
        .expect("the secret's ARN")
        .to_string();
    let read_back = moto_json(
        &moto,
        "secretsmanager",
        "secretsmanager.GetSecretValue",
        &json!({"SecretId": sm_arn}),
    );
    assert_eq!(read_back["SecretString"], sm_value.as_str());

    let worker = spawn_worker(
        "scan-ecs",
        WorkerOpts {
            args: [
                "--provider",
                "ecs",
                "--ecs-cluster",
                "scan",
                "--ecs-observe-interval",
                "300ms",
                "--ecs-subnets",
                &net.subnet,
                "--ecs-security-groups",
                &net.security_group,
            ]
            .map(String::from)
            .to_vec(),
            env: vec![
                ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "test".into()),
                ("AWS_SECRET_ACCESS_KEY", "test".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
                ("RUST_LOG", LOG_LEVEL.to_string()),
            ],
            ..Default::default()
        },
    );
    let client = client().await;
    let tenant = "scan-ecs";
    let request = |image: &str| {
        json!({"tenantId": tenant, "spec": {
            "image": image, "cpu": 0.25, "memory": 512, "env": {"MODE": "scan"},
            "secrets": [{"name": "DB_PASSWORD", "valueFrom": ssm_arn},
                        {"name": "API_TOKEN", "valueFrom": sm_arn}]}})
    };
    let provisioned = run_ok(
        &worker,
        &client,
        "scan-ecs-1",
        tenant_workflow("provision", request("nginx:1.27")),
    )
    .await;
    let updated = run_ok(
        &worker,
        &client,
        "scan-ecs-2",
        tenant_workflow("update", request("nginx:1.28")),
    )
    .await;
    // moto's task definition carries the references (the scenario is real).
    let td = ecs
        .describe_task_definition()
        .task_definition(
            updated["resourceIds"]["taskDefinitionArn"]
                .as_str()
                .expect("a task definition"),
        )
        .send()
        .await
        .expect("DescribeTaskDefinition")
        .task_definition()
        .cloned()
        .unwrap();
    let refs: Vec<&str> = td.container_definitions()[0]
        .secrets()
        .iter()
        .map(|s| s.value_from())
        .collect();
    assert_eq!(refs, [ssm_arn.as_str(), sm_arn.as_str()]);
    assert_eq!(td.container_definitions()[0].image(), Some("nginx:1.28"));

    let looked_up = worker.python_calls(json!([
        {"activity": "GetComputeExecution",
         "input": {"executionId": updated["executionId"], "includeAttempts": true}},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    assert_eq!(
        looked_up[0]["result"]["state"], "succeeded",
        "{looked_up:?}"
    );
    // For ECS any other `valueFrom` is a reference (an ARN or parameter name), so the decoys
    // are secret values only.
    let spec = |secrets: Value| json!({"tenantId": tenant, "spec": {"image": "nginx:1.27", "secrets": secrets}});
    let decoy_callers = send_decoys(
        &worker,
        json!([
            {"activity": "ProvisionTenantCompute",
             "input": spec(json!([{"name": "DB_PASSWORD", "value": decoys[0]}]))},
            {"activity": "UpdateTenantCompute", "input": spec(json!([decoys[1]]))},
        ]),
    );
    run_ok(
        &worker,
        &client,
        "scan-ecs-3",
        tenant_workflow("delete", json!({"tenantId": tenant})),
    )
    .await;

    let trackers = [&provisioned, &updated]
        .iter()
        .map(|s| format!("compute-execution-{}", s["executionId"].as_str().unwrap()))
        .collect::<Vec<_>>();
    let mut needles = vec![
        ("the SSM parameter's value", ssm_value.clone()),
        ("the Secrets Manager secret's value", sm_value.clone()),
    ];
    needles.extend(decoys.iter().map(|d| ("a decoy", d.clone())));
    Scan {
        label: "ECS provider (moto)",
        worker: &worker,
        needles,
        workflows: ["scan-ecs-1", "scan-ecs-2", "scan-ecs-3"]
            .map(String::from)
            .into_iter()
            .chain(trackers)
            .collect(),
        decoy_callers,
        controls: vec![
            ("the SSM parameter's ARN", ssm_arn.clone(), false),
            ("the tenant", tenant.to_string(), true),
        ],
    }
    .run();
}

/// Kubernetes (the shared rig): a Secret referenced by `secretKeyRef`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_scan_kubernetes_provider() {
    let mut rng = rng();
    let k8s_value = known(&mut rng, "scan-k8s-secret");
    let decoys: Vec<String> = (0..3)
        .map(|i| known(&mut rng, &format!("decoy{i}")))
        .collect();

    let rig = kube_rig();
    let kube = kube_client(&rig.kubeconfig).await;
    let ns = format!("scan-{}", std::process::id());
    create_namespace(&kube, &ns).await;
    Api::<Secret>::namespaced(kube.clone(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("tenant-scan-k8s-api".into()),
                    ..Default::default()
                },
                string_data: Some([("token".to_string(), k8s_value.clone())].into()),
                ..Default::default()
            },
        )
        .await
        .expect("create the Secret");

    let worker = spawn_worker(
        "scan-k8s",
        WorkerOpts {
            args: ["--provider", "kubernetes", "--k8s-namespace", &ns]
                .map(String::from)
                .to_vec(),
            env: vec![
                ("KUBECONFIG", rig.kubeconfig.display().to_string()),
                ("RUST_LOG", LOG_LEVEL.to_string()),
            ],
            ..Default::default()
        },
    );
    let client = client().await;
    let tenant = "scan-k8s";
    // Plays the kubelet: every pod of the tenant becomes Running and Ready.
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let kubelet = tokio::spawn(async move {
        loop {
            let list = pods
                .list(&ListParams::default().labels(&format!("compute-worker/tenant={tenant}")))
                .await;
            for pod in list.map(|l| l.items).unwrap_or_default() {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if pod.metadata.deletion_timestamp.is_none() && !ready {
                    let _ = mark_ready(&pods, &pod).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let request = |image: &str| {
        json!({"tenantId": tenant, "spec": {
            "image": image, "env": {"MODE": "scan"},
            "secrets": [{"name": "API_TOKEN",
                         "secretKeyRef": {"name": "tenant-scan-k8s-api", "key": "token"}}]}})
    };
    let provisioned = run_ok(
        &worker,
        &client,
        "scan-k8s-1",
        tenant_workflow("provision", request("nginx:1.27")),
    )
    .await;
    let updated = run_ok(
        &worker,
        &client,
        "scan-k8s-2",
        tenant_workflow("update", request("nginx:1.28")),
    )
    .await;
    let dep = Api::<Deployment>::namespaced(kube.clone(), &ns)
        .get(&format!("tenant-{tenant}"))
        .await
        .expect("the Deployment");
    let env =
        serde_json::to_value(&dep.spec.unwrap().template.spec.unwrap().containers[0].env).unwrap();
    let api_token = env
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "API_TOKEN"))
        .unwrap_or_else(|| panic!("API_TOKEN in the Deployment: {env}"));
    assert_eq!(
        api_token["valueFrom"]["secretKeyRef"]["name"], "tenant-scan-k8s-api",
        "the Deployment references the Secret: {env}"
    );
    assert_eq!(api_token["valueFrom"]["secretKeyRef"]["key"], "token");
    assert!(api_token.get("value").is_none(), "{env}");

    let looked_up = worker.python_calls(json!([
        {"activity": "GetComputeExecution",
         "input": {"executionId": updated["executionId"], "includeAttempts": true}},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    assert_eq!(
        looked_up[0]["result"]["state"], "succeeded",
        "{looked_up:?}"
    );
    let spec = |secrets: Value| json!({"tenantId": tenant, "spec": {"image": "nginx:1.27", "secrets": secrets}});
    let decoy_callers = send_decoys(
        &worker,
        json!([
            {"activity": "ProvisionTenantCompute",
             "input": spec(json!([{"name": "API_TOKEN", "value": decoys[0]}]))},
            {"activity": "UpdateTenantCompute", "input": spec(json!([decoys[1]]))},
            {"activity": "UpdateTenantCompute",
             "input": spec(json!([{"name": "API_TOKEN", "valueFrom": decoys[2]}]))},
        ]),
    );
    run_ok(
        &worker,
        &client,
        "scan-k8s-3",
        tenant_workflow("delete", json!({"tenantId": tenant})),
    )
    .await;
    kubelet.abort();

    let trackers = [&provisioned, &updated]
        .iter()
        .map(|s| format!("compute-execution-{}", s["executionId"].as_str().unwrap()))
        .collect::<Vec<_>>();
    let mut needles = vec![("the Kubernetes Secret's value", k8s_value.clone())];
    needles.extend(decoys.iter().map(|d| ("a decoy", d.clone())));
    Scan {
        label: "Kubernetes provider (1.20 rig)",
        worker: &worker,
        needles,
        workflows: ["scan-k8s-1", "scan-k8s-2", "scan-k8s-3"]
            .map(String::from)
            .into_iter()
            .chain(trackers)
            .collect(),
        decoy_callers,
        controls: vec![
            (
                "the Secret's name",
                "tenant-scan-k8s-api".to_string(),
                false,
            ),
            ("the tenant", tenant.to_string(), true),
        ],
    }
    .run();
    let _ = Api::<Namespace>::all(kube)
        .delete(&ns, &DeleteParams::default())
        .await;
}
