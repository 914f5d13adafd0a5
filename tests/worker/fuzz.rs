//! Generated input through the real worker and Temporal: refused inputs of every public
//! activity fail on their first attempt with a non-retryable `INVALID_CONFIGURATION` and leave
//! nothing behind, valid ones are served.
//!
//! The inputs come from a seeded generator (`FUZZ_SEED` replays a run; the seed is printed):
//! near-valid requests of each activity with mutated fields (wrong types, huge strings,
//! unicode and control characters, boundary numbers, missing fields, plaintext secret values)
//! or replaced wholesale. Each is classified by the worker's own validation (the generic one
//! and the local provider's) so the test knows what the worker must answer; the thousands of
//! cases per activity are in `activities/tests/fuzz_inputs.rs`, this is the end-to-end check
//! on a sample. The calls come from the Python caller (`temporalio`), by activity name, with a
//! retry policy of five attempts: a refusal must stop after one by itself.

use std::{collections::BTreeSet, path::Path};

use compute_activities::{
    ComputeError,
    provider::{
        ComputeProvider,
        local::{LocalConfig, LocalProvider},
    },
    store, validate,
};
use serde_json::{Value, json};

use crate::{
    rigs::{WorkerOpts, spawn_worker, started_activity_attempts, workflow_history},
    secret_scan::{occurrences, sqlite_dump},
};

/// Refused inputs per activity.
const REFUSED_PER_ACTIVITY: usize = 8;

const ACTIVITIES: [&str; 5] = [
    "ProvisionTenantCompute",
    "UpdateTenantCompute",
    "DeleteTenantCompute",
    "GetComputeExecution",
    "ListTenantComputeExecutions",
];

/// xorshift64*: small, seeded, good enough to pick mutations.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A distinctive secret-looking value.
    pub(crate) fn token(&mut self) -> String {
        let prefix = *self.pick(&["sk_live_", "AKIA", "ghp_", "xoxb-", "hunter2-"]);
        format!("{prefix}{:016x}{:08x}", self.next(), self.next() as u32)
    }
}

/// A value for a mutated field; secret-looking strings it plants are added to `tokens`.
fn nasty(rng: &mut Rng, tokens: &mut Vec<String>) -> Value {
    match rng.below(16) {
        0 | 1 => {
            let t = rng.token();
            tokens.push(t.clone());
            json!(t)
        }
        2 => json!("\u{0}\u{1}\u{1b}[31mred\r\nX-Injected: 1"),
        3 => json!("é".repeat(1 + rng.below(2000))),
        4 => json!("A".repeat(1000 + rng.below(4000))),
        5 => rng
            .pick(&[
                json!(i64::MIN),
                json!(-1),
                json!(0),
                json!(u64::MAX),
                json!(1e308),
                json!(-0.0),
                json!(0.5),
                json!(1e20),
                json!(65_536),
            ])
            .clone(),
        6 => Value::Null,
        7 => json!([]),
        8 => json!({}),
        9 => {
            let t = rng.token();
            tokens.push(t.clone());
            json!({"value": t})
        }
        10 => json!(true),
        11 => json!(["x", 1, null, {"k": []}]),
        12 => json!("👩‍💻\u{202e}\u{feff}ʕ•ᴥ•ʔ"),
        13 => json!(""),
        14 => json!("Not_A_Label"),
        _ => json!("-starts-with-a-dash"),
    }
}

/// A well-formed input of each activity (for the local provider).
fn base(activity: &str, n: usize) -> Value {
    match activity {
        "ProvisionTenantCompute" | "UpdateTenantCompute" => json!({
            "tenantId": format!("fz-{n}"),
            "spec": {"command": ["sleep"], "args": ["300"], "env": {"MODE": "fuzz"},
                     "config": {"LEVEL": "3"},
                     "secrets": [{"name": "DB_PASSWORD", "valueFrom": "env:PATH"}]},
            "metadata": {"labels": {"team": "fuzz"}, "owner": "fuzzer", "environment": "test"},
            "idempotencyKey": format!("fz-key-{n}"),
            "timeout": "60s"
        }),
        "DeleteTenantCompute" => json!({"tenantId": format!("fz-{n}"), "timeout": 60}),
        "GetComputeExecution" => json!({"executionId": format!("0000{n:04x}-aaaa")}),
        _ => json!({"tenantId": format!("fz-{n}")}),
    }
}

/// The fields a mutation may touch, per activity.
fn paths(activity: &str) -> &'static [&'static str] {
    match activity {
        "ProvisionTenantCompute" | "UpdateTenantCompute" => &[
            "",
            "/tenantId",
            "/spec",
            "/spec/image",
            "/spec/command",
            "/spec/command/0",
            "/spec/args/0",
            "/spec/cpu",
            "/spec/memory",
            "/spec/replicas",
            "/spec/port",
            "/spec/env",
            "/spec/env/MODE",
            "/spec/config/LEVEL",
            "/spec/secrets",
            "/spec/secrets/0",
            "/spec/secrets/0/name",
            "/spec/secrets/0/valueFrom",
            "/metadata/labels",
            "/metadata/owner",
            "/idempotencyKey",
            "/callback",
            "/timeout",
        ],
        "DeleteTenantCompute" => &["", "/tenantId", "/idempotencyKey", "/callback", "/timeout"],
        "GetComputeExecution" => &["", "/executionId", "/includeAttempts"],
        _ => &["", "/tenantId"],
    }
}

/// Replaces (or creates, under an existing object or array) the value at a JSON pointer.
fn set(root: &mut Value, pointer: &str, value: Value) {
    if pointer.is_empty() {
        *root = value;
        return;
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match root.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last.to_string(), value);
        }
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => a[i] = value,
            _ => a.push(value),
        },
        _ => {}
    }
}

fn remove(root: &mut Value, pointer: &str) {
    if let Some((parent, last)) = pointer.rsplit_once('/')
        && let Some(Value::Object(m)) = root.pointer_mut(parent)
    {
        m.remove(last);
    }
}

/// A near-valid input with one to three mutations.
fn mutated(activity: &str, n: usize, rng: &mut Rng, tokens: &mut Vec<String>) -> Value {
    let mut v = base(activity, n);
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            0..=5 => {
                let p = *rng.pick(paths(activity));
                let value = nasty(rng, tokens);
                set(&mut v, p, value);
            }
            6 | 7 => {
                let p = *rng.pick(paths(activity));
                remove(&mut v, p);
            }
            // A plaintext secret value where only references are accepted.
            _ => {
                let t = rng.token();
                tokens.push(t.clone());
                let decoy = if rng.below(2) == 0 {
                    json!({"name": "API_TOKEN", "value": t})
                } else {
                    json!(t)
                };
                set(&mut v, "/spec/secrets/1", decoy);
            }
        }
    }
    v
}

/// What the worker (local provider) must answer: `Err` with the refusal, or `Ok` to serve it.
// The crate's own error type, as its validation returns it.
#[allow(clippy::result_large_err)]
fn verdict(activity: &str, input: &Value, local: &LocalProvider) -> Result<(), ComputeError> {
    match activity {
        "ProvisionTenantCompute" | "UpdateTenantCompute" => {
            validate::compute_request(input).and_then(|r| local.validate(&r.tenant_id, &r.spec))
        }
        "DeleteTenantCompute" => validate::delete_request(input).map(drop),
        "GetComputeExecution" => {
            validate::execution_id(input).and_then(|_| validate::include_attempts(input).map(drop))
        }
        _ => validate::tenant_only(input).map(drop),
    }
}

/// The tenant an input names, when it is a valid tenant id.
fn named_tenant(input: &Value) -> Option<String> {
    input
        .get("tenantId")
        .and_then(Value::as_str)
        .filter(|t| validate::is_dns1123_label(t))
        .map(str::to_string)
}

/// Runs the calls through the Python caller in batches that fit one command-line argument.
fn call_in_batches(worker: &crate::rigs::TestWorker, calls: &[Value]) -> Vec<Value> {
    let mut results = Vec::new();
    let mut batch: Vec<Value> = Vec::new();
    let mut size = 0;
    for call in calls {
        let len = call.to_string().len();
        if size + len > 60_000 && !batch.is_empty() {
            results.extend(worker.python_calls(Value::Array(std::mem::take(&mut batch))));
            size = 0;
        }
        size += len;
        batch.push(call.clone());
    }
    if !batch.is_empty() {
        results.extend(worker.python_calls(Value::Array(batch)));
    }
    results
}

/// Every file under `dir`, by path, with its bytes.
pub(crate) fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[tokio::test]
async fn fuzz_refused_inputs_fail_once_and_leave_nothing() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("fuzz: FUZZ_SEED={seed}");
    let mut rng = Rng::new(seed);
    let scratch = tempfile::tempdir().unwrap();
    let local = LocalProvider::new(LocalConfig {
        state_dir: scratch.path().join("local"),
        // A variable this process and the worker both have: the local provider's validation
        // refuses an allowed but unset one, and the verdict here must be the worker's.
        secret_env_allow: vec!["PATH".into()],
        ..LocalConfig::default()
    })
    .unwrap();

    // Refused inputs: generated until each activity has its share.
    let mut tokens = Vec::new();
    let mut refused: Vec<(&str, Value, ComputeError)> = Vec::new();
    for n in 0.. {
        assert!(n < 100_000, "the generator found too few refused inputs");
        let activity = ACTIVITIES[n % ACTIVITIES.len()];
        if refused.iter().filter(|(a, ..)| *a == activity).count() >= REFUSED_PER_ACTIVITY {
            if refused.len() == REFUSED_PER_ACTIVITY * ACTIVITIES.len() {
                break;
            }
            continue;
        }
        let mut planted = Vec::new();
        let input = mutated(activity, n, &mut rng, &mut planted);
        if let Err(e) = verdict(activity, &input, &local) {
            tokens.extend(planted);
            refused.push((activity, input, e));
        }
    }
    // Valid inputs, served.
    let marker = format!("fz-ok-{}", seed % 100_000);
    let mut provision = base("ProvisionTenantCompute", 0);
    provision["tenantId"] = json!(marker);
    provision["spec"]["args"] = json!(["301"]);
    let valid = vec![
        ("ProvisionTenantCompute", provision),
        (
            "GetComputeExecution",
            json!({"executionId": "feedface-0000"}),
        ),
        ("ListTenantComputeExecutions", json!({"tenantId": marker})),
        (
            "DeleteTenantCompute",
            json!({"tenantId": format!("{marker}-gone")}),
        ),
    ];
    for (activity, input) in &valid {
        assert!(verdict(activity, input, &local).is_ok(), "{input}");
    }
    let valid_tenants: BTreeSet<String> = [marker.clone(), format!("{marker}-gone")].into();

    let worker = spawn_worker(
        "fuzz",
        WorkerOpts {
            args: vec!["--local-secret-env-allow".into(), "PATH".into()],
            ..Default::default()
        },
    );
    let calls: Vec<Value> = refused
        .iter()
        .map(|(a, input, _)| json!({"activity": a, "input": input}))
        .chain(
            valid
                .iter()
                .map(|(a, input)| json!({"activity": a, "input": input})),
        )
        .collect();
    let results = call_in_batches(&worker, &calls);
    assert_eq!(results.len(), calls.len());

    let store = store::connect(&worker.database_url()).await.unwrap();
    for ((activity, input, expected), r) in refused.iter().zip(&results) {
        let shown = || {
            let s = input.to_string();
            format!("{activity} {}: {r}", &s[..s.floor_char_boundary(300)])
        };
        let e = &r["error"];
        assert_eq!(e["type"], "INVALID_CONFIGURATION", "{}", shown());
        assert_eq!(e["nonRetryable"], true, "{}", shown());
        assert_eq!(e["message"], expected.message.as_str(), "{}", shown());
        // Python's RetryState.NON_RETRYABLE_FAILURE (2), however str() renders it.
        let retry_state = e["retryState"].as_str().unwrap_or_default();
        assert!(
            retry_state == "2" || retry_state.ends_with("NON_RETRYABLE_FAILURE"),
            "{}",
            shown()
        );
        let wf = r["workflowId"].as_str().unwrap();
        assert_eq!(
            started_activity_attempts(wf, activity),
            vec![1],
            "exactly one attempt: {}",
            shown()
        );
        // The failure the worker wrote into the caller's history repeats no planted value.
        let failed: Vec<String> = workflow_history(wf)["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|ev| ev.get("activityTaskFailedEventAttributes").is_some())
            .map(Value::to_string)
            .collect();
        assert_eq!(failed.len(), 1, "{}", shown());
        for t in &tokens {
            assert!(!failed[0].contains(t.as_str()), "{t} in {}", failed[0]);
            assert!(!r.to_string().contains(t.as_str()), "{t} in {r}");
        }
        if let Some(tenant) = named_tenant(input)
            && !valid_tenants.contains(&tenant)
        {
            assert!(
                store.list_executions(&tenant).await.unwrap().is_empty(),
                "an execution was recorded for a refused input: {}",
                shown()
            );
            assert!(store.get_tenant(&tenant).await.unwrap().is_none());
            assert!(!worker.local_dir().join(&tenant).exists(), "{}", shown());
        }
    }

    // The valid ones were served.
    let served = &results[refused.len()..];
    let provisioned = &served[0]["result"];
    assert_eq!(provisioned["tenantId"], marker.as_str(), "{}", served[0]);
    assert!(
        provisioned["executionId"].as_str().is_some(),
        "{}",
        served[0]
    );
    assert_eq!(served[1]["error"]["type"], "NOT_FOUND", "{}", served[1]);
    assert!(served[2]["result"].is_array(), "{}", served[2]);
    assert_eq!(
        served[3]["result"]["tenantId"],
        format!("{marker}-gone"),
        "{}",
        served[3]
    );

    // Nothing else anywhere: the store's executions and tenants are the valid ones', the local
    // provider's directory holds only theirs, and no planted value reached the log, the store
    // or a file.
    let db = worker.dir.path().join("store.db");
    let dump = sqlite_dump(&db);
    let in_store: BTreeSet<String> = dump
        .lines()
        .filter(|l| l.starts_with("executions|") || l.starts_with("tenants|"))
        .filter_map(|l| {
            l.split('|')
                .find_map(|c| c.strip_prefix("tenant_id="))
                .map(str::to_string)
        })
        .collect();
    assert!(
        in_store.is_subset(&valid_tenants),
        "the store has tenants no valid input named: {in_store:?}"
    );
    let dirs: BTreeSet<String> = std::fs::read_dir(worker.local_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        dirs.is_subset(&valid_tenants),
        "the local provider has directories no valid input named: {dirs:?}"
    );
    let log = worker.log();
    let mut files = files_under(worker.dir.path());
    files.retain(|(p, _)| p.file_name().is_some_and(|n| n != "worker.log"));
    let needles: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut hits = occurrences(log.as_bytes(), &needles) + occurrences(dump.as_bytes(), &needles);
    for (path, bytes) in &files {
        let h = occurrences(bytes, &needles);
        assert_eq!(h, 0, "a planted value in {}", path.display());
        hits += h;
    }
    assert_eq!(hits, 0, "planted values reached the log or the store");
    println!(
        "fuzz: {} refused inputs ({} per activity) failed once with INVALID_CONFIGURATION and left \
         nothing; {} valid ones served; {} planted secret-looking values, 0 found in {} bytes of \
         log, {} bytes of store dump and {} files",
        refused.len(),
        REFUSED_PER_ACTIVITY,
        valid.len(),
        tokens.len(),
        log.len(),
        dump.len(),
        files.len()
    );
}
