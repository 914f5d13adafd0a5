//! Property-based fuzzing of every public activity's raw JSON input.
//!
//! Each public activity (`ProvisionTenantCompute`, `UpdateTenantCompute`,
//! `DeleteTenantCompute`, `GetComputeExecution`, `ListTenantComputeExecutions`) takes raw JSON.
//! For thousands of generated inputs per activity (a mix of fully random JSON and near-valid
//! requests with mutated fields: wrong types, huge strings, unicode, control characters,
//! secret-looking values, negative and huge numbers, missing and extra fields), these hold:
//!
//! - Validation (the generic validation and each provider's own: local, ECS, Kubernetes) never
//!   panics and either accepts the input or refuses it with a non-retriable
//!   `INVALID_CONFIGURATION` whose message is short, free of control characters, and never
//!   repeats a value of the input (every string value of 12 characters or more is looked for:
//!   that covers the generated secret-looking values and any refused value).
//! - A request carrying a secret value (`spec.secrets[i].value`, or a bare string) is refused.
//! - Fields the contract does not know are ignored, and a value in one never reaches the
//!   validated request (what the store keeps).
//! - Through the real activity (the SDK's test `ActivityEnvironment`, a recording provider and
//!   a recording in-memory SQLite store): a refused input fails with a non-retryable
//!   `INVALID_CONFIGURATION` application failure carrying the validator's message, the
//!   provider is never called, the store records nothing but the attempt in the audit trail
//!   (no execution, no transition, no tenant), and nothing the activity logs (at TRACE)
//!   repeats a value of the input. Accepted look-ups go to the store and answer from it
//!   (`NOT_FOUND`, an empty list) without writing anything but the attempt.
//!
//! Accepted provision, update and delete inputs are not run through the activity: past
//! validation it records the execution and starts its tracker with a Temporal client, which
//! the test environment has not; the integration test `tests/worker/fuzz.rs` covers them.
//!
//! `FUZZ_CASES` sets the number of cases per activity (default 5000).

// A test crate: its helpers are `pub` for nothing, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]
#![allow(missing_docs)]
#![allow(clippy::result_large_err)]

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use compute_activities::{
    ComputeActivities, ComputeError, ErrorCode,
    activities::ActivitySettings,
    contract::{AttemptOutcome, AttemptRecord, ComputeSpec, ResourceIds, TenantState},
    input::raw,
    provider::{
        ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext,
        ecs::EcsProvider,
        kubernetes::KubernetesProvider,
        local::{LocalConfig, LocalProvider},
    },
    store::{
        self, BeginOutcome, ExecutionRecord, ExecutionStore, NewExecution, TenantRecord,
        Transition, TransitionOutcome,
    },
    validate,
};
use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{Map, Number, Value, json};
use temporalio_sdk::{
    activities::ActivityError,
    testing::{ActivityEnvironment, ActivityEnvironmentError},
};

/// Strings of at least this many characters are looked for in messages and logs.
const ECHO_MIN_CHARS: usize = 12;
/// The longest message a refusal may have.
const MAX_MESSAGE_LEN: usize = 400;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(5000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        // The failing input is printed; no regression file is written into the tree.
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// The characters of a set written like a regular expression's class: `a-z0-9._-` (a `-`
/// between two characters is a range, elsewhere itself).
fn char_set(spec: &str) -> Vec<char> {
    let cs: Vec<char> = spec.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        if i + 2 < cs.len() && cs[i + 1] == '-' {
            out.extend(cs[i]..=cs[i + 2]);
            i += 3;
        } else {
            out.push(cs[i]);
            i += 1;
        }
    }
    out
}

/// Strings of `len` characters from a set (see [`char_set`]). Hand-made rather than
/// proptest's regular expressions, which are several times slower in a debug build.
fn s(spec: &str, len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    vec(prop::sample::select(char_set(spec)), len)
        .prop_map(String::from_iter)
        .boxed()
}

/// One character of `first`, then `rest`.
fn lead(first: &str, rest: &str, len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    (s(first, 1..=1), s(rest, len))
        .prop_map(|(a, b)| a + &b)
        .boxed()
}

/// A name shaped like a DNS label: an `edge` character, optionally followed by up to
/// `max_mid` `mid` characters and another `edge` character.
fn label(edge: &str, mid: &str, max_mid: usize) -> BoxedStrategy<String> {
    (
        s(edge, 1..=1),
        prop::option::of((s(mid, 0..=max_mid), s(edge, 1..=1))),
    )
        .prop_map(|(a, rest)| match rest {
            Some((m, z)) => a + &m + &z,
            None => a,
        })
        .boxed()
}

/// `prefix` then a string from a set.
fn prefixed(
    prefix: &'static str,
    spec: &str,
    len: std::ops::RangeInclusive<usize>,
) -> BoxedStrategy<String> {
    s(spec, len)
        .prop_map(move |x| format!("{prefix}{x}"))
        .boxed()
}

/// Any characters at all (control characters and every plane included).
fn any_chars(len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    vec(any::<char>(), len).prop_map(String::from_iter).boxed()
}

/// Container image references of every shape the validation accepts.
fn image() -> BoxedStrategy<String> {
    (
        s("a-z0-9", 1..=10),
        vec(s("a-z0-9", 1..=10), 0..=2),
        prop::option::of(s("A-Za-z0-9._-", 1..=10)),
    )
        .prop_map(|(first, more, tag)| {
            let mut out = first;
            for m in more {
                out = out + "/" + &m;
            }
            match tag {
                Some(t) => out + ":" + &t,
                None => out,
            }
        })
        .boxed()
}

/// Prefixes of the secret-looking values the generators plant.
const SECRET_PREFIXES: [&str; 6] = [
    "sk_live_",
    "AKIA",
    "ghp_",
    "xoxb-",
    "-----BEGIN PRIVATE KEY-----",
    "hunter2-",
];

/// A secret-looking value: a well-known prefix and 20 to 40 random characters.
fn secret_token() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&SECRET_PREFIXES[..]),
        s("A-Za-z0-9", 20..=40),
    )
        .prop_map(|(p, rest)| format!("{p}{rest}"))
}

/// Every kind of string an input may hold.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => s("a-z0-9-", 0..=70),
        2 => any_chars(0..=40),
        2 => s("\0-\x1f\x7f a-z", 1..=12),
        3 => secret_token(),
        1 => (1_000usize..70_000).prop_map(|n| "A".repeat(n)),
        1 => (1usize..300).prop_map(|n| "é".repeat(n)),
        1 => prop::sample::select(vec![
            "", " ", "\0", "a\0b", "\u{202e}evil", "\u{feff}", "👩‍💻🚀", "-", "a-", "..",
            "/", "../etc/passwd", "null", "true", "0", "-1", "1e400", "NaN",
        ])
        .prop_map(String::from),
        1 => prefixed("env:", "A-Za-z_=", 0..=12),
        1 => prefixed("file:", "/a-z.", 0..=20),
        1 => prefixed("arn:aws:ssm:us-east-1:123456789012:parameter/", "a-z/", 1..=20),
        1 => image(),
        1 => (s("0-9", 1..=20), prop::sample::select(vec!["", "ms", "s", "m", "h", "d", " days", "y"])).prop_map(|(n, u)| n + u),
    ]
}

/// Keys: mostly the contract's own field names (so random JSON hits real fields), or anything.
fn key_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "tenantId", "spec", "image", "command", "args", "cpu", "memory", "replicas", "port",
            "env", "config", "secrets", "name", "value", "valueFrom", "secretKeyRef", "key",
            "metadata", "labels", "owner", "environment", "idempotencyKey", "callback",
            "temporal", "workflowId", "runId", "namespace", "stepFunctions", "restate",
            "timeout", "executionId", "includeAttempts", "MODE", "DB_PASSWORD",
        ])
        .prop_map(String::from),
        1 => nasty_string(),
    ]
}

/// Numbers at and past every boundary, and random ones.
fn weird_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(i64::MIN),
            json!(-1),
            json!(0),
            json!(1),
            json!(65_535),
            json!(65_536),
            json!(u64::MAX),
            json!(1e308),
            json!(-0.0),
            json!(0.5),
            json!(1e20),
            json!(f64::MIN_POSITIVE),
            json!(604_800),
            json!(604_801),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

/// Any JSON value.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        weird_number(),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn tenant_id() -> impl Strategy<Value = String> {
    label("a-z0-9", "a-z0-9-", 40)
}

fn env_name() -> impl Strategy<Value = String> {
    lead("A-Z_", "A-Z0-9_", 0..=12)
}

/// A value for `spec.env` / `spec.config`: usually plain, sometimes secret-looking (config
/// is plain configuration, so that is accepted), sometimes anything.
fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![4 => s(" -~", 0..=30), 1 => secret_token(), 1 => nasty_string()]
}

fn secret_source() -> impl Strategy<Value = Value> {
    prop_oneof![
        prefixed("env:", "A-Z_", 1..=12).prop_map(|v| json!({"valueFrom": v})),
        prefixed("file:/run/secrets/", "a-z", 1..=12).prop_map(|v| json!({"valueFrom": v})),
        prefixed(
            "arn:aws:ssm:us-east-1:123456789012:parameter/",
            "a-z",
            1..=12
        )
        .prop_map(|v| json!({"valueFrom": v})),
        prefixed(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:",
            "a-z",
            1..=12
        )
        .prop_map(|v| json!({"valueFrom": v})),
        (label("a-z", "a-z0-9.-", 20), s("A-Za-z0-9._-", 1..=20))
            .prop_map(|(n, k)| json!({"secretKeyRef": {"name": n, "key": k}})),
    ]
}

fn callback() -> impl Strategy<Value = Value> {
    (s(" -~", 1..=40), prop::option::of(s("a-z0-9-", 1..=36)))
        .prop_map(|(w, r)| json!({"temporal": {"workflowId": w, "runId": r}}))
}

fn timeout() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["1s", "90s", "10m", "1h 30m", "7days"]).prop_map(|s| json!(s)),
        (1u64..604_800).prop_map(|s| json!(s)),
    ]
}

fn idempotency_key() -> impl Strategy<Value = String> {
    s(" -~", 1..=60)
}

/// Sets `key` in an object when `value` is present.
fn put(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        obj[key] = v;
    }
}

/// A well-formed `ComputeRequest` exercising every field (it may still be refused by a
/// provider: the local one wants a single replica, ECS and Kubernetes an image, ...).
fn valid_compute_request() -> impl Strategy<Value = Value> {
    let spec = (
        (
            vec(lead("a-z", "a-z0-9_./-", 0..=15), 1..4),
            vec(s(" -~", 0..=20), 0..4),
            prop::option::of(image()),
            prop::option::of(0.05f64..16.0),
            prop::option::of(1u64..65_536),
            prop::option::of(prop_oneof![3 => Just(1u32), 1 => 0u32..5]),
            prop::option::of(1u16..=65_535),
        ),
        (
            btree_map(env_name(), env_value(), 0..4),
            btree_map(env_name(), env_value(), 0..4),
            vec(secret_source(), 0..3),
        ),
    )
        .prop_map(
            |((command, args, image, cpu, memory, replicas, port), (env, config, secrets))| {
                let secrets: Vec<Value> = secrets
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut s)| {
                        s["name"] = json!(format!("SECRET_{i}"));
                        s
                    })
                    .collect();
                let mut spec = json!({"command": command, "args": args, "env": env,
                                      "config": config, "secrets": secrets});
                put(&mut spec, "image", image.map(Value::from));
                put(&mut spec, "cpu", cpu.map(Value::from));
                put(&mut spec, "memory", memory.map(Value::from));
                put(&mut spec, "replicas", replicas.map(Value::from));
                put(&mut spec, "port", port.map(Value::from));
                spec
            },
        );
    let metadata = (
        btree_map(lead("a-z", "a-z0-9./-", 0..=20), s("a-z0-9._-", 0..=20), 0..3),
        prop::option::of(s(" -~", 0..=30)),
        prop::option::of(prop::sample::select(vec!["prod", "staging", "dev"])),
    )
        .prop_map(|(labels, owner, environment)| {
            json!({"labels": labels, "owner": owner, "environment": environment})
        });
    (
        tenant_id(),
        spec,
        prop::option::of(metadata),
        prop::option::of(idempotency_key()),
        prop::option::of(callback()),
        prop::option::of(timeout()),
    )
        .prop_map(|(tenant, spec, metadata, key, callback, timeout)| {
            let mut r = json!({"tenantId": tenant, "spec": spec});
            put(&mut r, "metadata", metadata);
            put(&mut r, "idempotencyKey", key.map(Value::from));
            put(&mut r, "callback", callback);
            put(&mut r, "timeout", timeout);
            r
        })
}

fn valid_delete_request() -> impl Strategy<Value = Value> {
    (
        tenant_id(),
        prop::option::of(idempotency_key()),
        prop::option::of(callback()),
        prop::option::of(timeout()),
    )
        .prop_map(|(tenant, key, callback, timeout)| {
            let mut r = json!({"tenantId": tenant});
            put(&mut r, "idempotencyKey", key.map(Value::from));
            put(&mut r, "callback", callback);
            put(&mut r, "timeout", timeout);
            r
        })
}

fn valid_get_request() -> impl Strategy<Value = Value> {
    (
        (s("a-z0-9", 8..=8), vec(s("a-z0-9", 4..=4), 0..=4))
            .prop_map(|(a, more)| std::iter::once(a).chain(more).collect::<Vec<_>>().join("-")),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(id, inc)| {
            let mut r = json!({"executionId": id});
            put(&mut r, "includeAttempts", inc.map(Value::from));
            r
        })
}

fn valid_list_request() -> impl Strategy<Value = Value> {
    tenant_id().prop_map(|t| json!({"tenantId": t}))
}

fn valid_list_tenants_request() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::sample::select(vec![
            "provisioning",
            "running",
            "updating",
            "deleting",
            "deleted",
            "failed",
            "requires_manual_intervention",
        ])),
        prop::option::of(1u32..=1000),
        prop::option::of(tenant_id()),
    )
        .prop_map(|(state, size, token)| {
            let mut r = json!({});
            put(&mut r, "state", state.map(Value::from));
            put(&mut r, "pageSize", size.map(Value::from));
            put(&mut r, "pageToken", token.map(Value::from));
            r
        })
}

fn valid_cancel_request() -> impl Strategy<Value = Value> {
    (
        valid_get_request(),
        prop::option::of(s("a-zA-Z0-9 .,:-", 0..=80)),
    )
        .prop_map(|(get, reason)| {
            let mut r = json!({"executionId": get["executionId"]});
            put(&mut r, "reason", reason.map(Value::from));
            r
        })
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse() {
            Ok(i) => Seg::Index(i),
            Err(_) => Seg::Key(s.to_string()),
        })
        .collect()
}

/// A change to a near-valid request.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace (or create) the value at a path.
    Set(Vec<Seg>, Value),
    /// Remove the value at a path.
    Remove(Vec<Seg>),
    /// Add a field the contract does not know, holding a secret-looking value.
    Unknown(Vec<Seg>, String, String),
}

/// The container at `path`, created (as an object or array) where missing.
fn slot<'a>(root: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    let mut cur = root;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => {
                if !cur.is_object() {
                    *cur = json!({});
                }
                cur.as_object_mut()
                    .unwrap()
                    .entry(k.clone())
                    .or_insert(Value::Null)
            }
            Seg::Index(i) => {
                if !cur.is_array() {
                    *cur = json!([]);
                }
                let arr = cur.as_array_mut().unwrap();
                let i = (*i).min(arr.len());
                if i == arr.len() {
                    arr.push(Value::Null);
                }
                &mut arr[i]
            }
        };
    }
    cur
}

fn remove(root: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        *root = Value::Null;
        return;
    };
    let mut cur = root;
    for seg in parent {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => {
            m.remove(k);
        }
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

fn apply(mut v: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        match m {
            Mutation::Set(path, value) => *slot(&mut v, path) = value.clone(),
            Mutation::Remove(path) => remove(&mut v, path),
            Mutation::Unknown(path, key, token) => {
                let target = slot(&mut v, path);
                if !target.is_object() {
                    *target = json!({});
                }
                target[key.as_str()] = json!(token);
            }
        }
    }
    v
}

/// A replacement value: wrong types, boundary numbers, nasty strings, anything.
fn mutant_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => nasty_string().prop_map(Value::String),
        2 => weird_number(),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => prop::sample::select(vec![json!([]), json!({}), json!([null]), json!([""])]),
        1 => vec(nasty_string(), 0..4).prop_map(|v| json!(v)),
        1 => btree_map(key_string(), nasty_string(), 0..4).prop_map(|m| json!(m)),
        2 => any_json(),
    ]
}

/// Paths where an unknown field is ignored (not a map of the contract: env, config, labels).
const UNKNOWN_FIELD_PARENTS: [&str; 6] = [
    "",
    "spec",
    "spec.secrets.0",
    "spec.secrets.0.secretKeyRef",
    "metadata",
    "callback.temporal",
];

fn mutation(paths: &'static [&'static str]) -> impl Strategy<Value = Mutation> {
    let path = prop::sample::select(paths).prop_map(parse_path);
    prop_oneof![
        5 => (path.clone(), mutant_value()).prop_map(|(p, v)| Mutation::Set(p, v)),
        2 => path.prop_map(Mutation::Remove),
        1 => (
            prop::sample::select(&UNKNOWN_FIELD_PARENTS[..]).prop_map(parse_path),
            prop::sample::select(vec!["Value", "secretValue", "password", "plaintext", "apiKey"]),
            secret_token(),
        )
            .prop_map(|(p, k, t)| Mutation::Unknown(p, k.to_string(), t)),
        // A plaintext secret value where only a reference is accepted: the decoy.
        1 => (0usize..3, secret_token()).prop_map(|(i, t)| {
            Mutation::Set(parse_path(&format!("spec.secrets.{i}.value")), json!(t))
        }),
        1 => (0usize..3, secret_token()).prop_map(|(i, t)| {
            Mutation::Set(parse_path(&format!("spec.secrets.{i}")), json!(t))
        }),
    ]
}

const COMPUTE_PATHS: &[&str] = &[
    "",
    "tenantId",
    "spec",
    "spec.image",
    "spec.command",
    "spec.command.0",
    "spec.command.1",
    "spec.args",
    "spec.args.0",
    "spec.cpu",
    "spec.memory",
    "spec.replicas",
    "spec.port",
    "spec.env",
    "spec.env.MODE",
    "spec.config",
    "spec.config.LEVEL",
    "spec.secrets",
    "spec.secrets.0",
    "spec.secrets.0.name",
    "spec.secrets.0.valueFrom",
    "spec.secrets.0.secretKeyRef",
    "spec.secrets.0.secretKeyRef.name",
    "spec.secrets.0.secretKeyRef.key",
    "spec.secrets.1.name",
    "metadata",
    "metadata.labels",
    "metadata.labels.team",
    "metadata.owner",
    "metadata.environment",
    "idempotencyKey",
    "callback",
    "callback.temporal",
    "callback.temporal.workflowId",
    "callback.temporal.runId",
    "callback.stepFunctions",
    "timeout",
];

const DELETE_PATHS: &[&str] = &[
    "",
    "tenantId",
    "idempotencyKey",
    "callback",
    "callback.temporal",
    "callback.temporal.workflowId",
    "callback.temporal.namespace",
    "callback.restate",
    "timeout",
    "spec",
    "spec.secrets",
];

const GET_PATHS: &[&str] = &["", "executionId", "includeAttempts"];
const LIST_PATHS: &[&str] = &["", "tenantId"];
const LIST_TENANTS_PATHS: &[&str] = &["", "state", "pageSize", "pageToken"];
const CANCEL_PATHS: &[&str] = &["", "executionId", "reason"];

/// Inputs of one activity: fully random JSON (a third), or a near-valid request with up to
/// four mutations (the rest; a quarter of those unmutated).
fn inputs(
    valid: BoxedStrategy<Value>,
    paths: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    let mutated = (
        valid,
        prop_oneof![1 => Just(0usize), 3 => 1usize..5]
            .prop_flat_map(move |n| vec(mutation(paths), n..=n)),
    )
        .prop_map(|(base, ms)| apply(base, &ms));
    prop_oneof![1 => any_json(), 2 => mutated]
}

// ---------------------------------------------------------------------------------------------
// What is checked
// ---------------------------------------------------------------------------------------------

/// Every string value (not key) of the input of at least [`ECHO_MIN_CHARS`] characters, and
/// every secret-looking token inside one.
fn echo_candidates(v: &Value) -> Vec<String> {
    fn tokens(s: &str, out: &mut Vec<String>) {
        for p in SECRET_PREFIXES {
            for (at, _) in s.match_indices(p) {
                let token: String = s[at..].chars().take(p.chars().count() + 16).collect();
                out.push(token);
            }
        }
    }
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if s.chars().count() >= ECHO_MIN_CHARS {
                    out.push(s.clone());
                }
                tokens(s, out);
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            // Keys are names: a message may name one that looks like a name (it is checked
            // for length and control characters with the rest of the message).
            Value::Object(m) => m.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 {
        format!(
            "{}... ({} bytes)",
            &s[..s.floor_char_boundary(600)],
            s.len()
        )
    } else {
        s
    }
}

/// `text` (a message, a log) repeats no value of `input`.
fn no_echo(what: &str, input: &Value, text: &str) -> Result<(), TestCaseError> {
    for s in echo_candidates(input) {
        prop_assert!(
            !text.contains(&s),
            "{what} repeats the input value {:?}:\n{}\ninput: {}",
            short(&json!(s)),
            if text.len() > 2000 {
                &text[..text.floor_char_boundary(2000)]
            } else {
                text
            },
            short(input)
        );
    }
    Ok(())
}

/// A refusal as the contract has it: `INVALID_CONFIGURATION`, not retriable, a short message
/// without control characters that repeats nothing of the input.
fn check_refusal(what: &str, input: &Value, e: &ComputeError) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        e.code,
        ErrorCode::InvalidConfiguration,
        "{}: {} for {}",
        what,
        e,
        short(input)
    );
    prop_assert!(!e.retriable, "{what}: a refusal must not be retriable");
    prop_assert!(
        e.message.len() <= MAX_MESSAGE_LEN,
        "{what}: a {}-byte message: {}",
        e.message.len(),
        short(&json!(e.message))
    );
    prop_assert!(
        !e.message.chars().any(char::is_control),
        "{what}: control characters in the message {:?}",
        short(&json!(e.message))
    );
    no_echo(&format!("{what}'s message"), input, &e.message)?;
    no_echo(
        &format!("{what}'s error"),
        input,
        &serde_json::to_string(e).unwrap(),
    )
}

fn check(what: &str, input: &Value, r: &Result<(), ComputeError>) -> Result<(), TestCaseError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => check_refusal(what, input, e),
    }
}

/// Whether the input carries a plaintext secret: an item of `spec.secrets` with a `value`, or
/// one that is not a reference object at all.
fn carries_secret_value(input: &Value) -> bool {
    input
        .pointer("/spec/secrets")
        .and_then(Value::as_array)
        .is_some_and(|items| {
            items
                .iter()
                .any(|i| !i.is_object() || i.get("value").is_some())
        })
}

/// The secret-looking values planted in fields the contract does not know.
fn unknown_field_tokens(input: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for parent in UNKNOWN_FIELD_PARENTS {
        let pointer = if parent.is_empty() {
            String::new()
        } else {
            format!("/{}", parent.replace('.', "/"))
        };
        if let Some(Value::Object(m)) = input.pointer(&pointer) {
            for key in ["Value", "secretValue", "password", "plaintext", "apiKey"] {
                if let Some(Value::String(s)) = m.get(key) {
                    out.push(s.clone());
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The recording fakes the activities run on
// ---------------------------------------------------------------------------------------------

/// Whose validation the fake provider applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Local,
    Ecs,
    Kubernetes,
}

const FLAVOURS: [Flavour; 3] = [Flavour::Local, Flavour::Ecs, Flavour::Kubernetes];

/// A provider that validates like a real one and records every other call (none may come).
struct RecordingProvider {
    flavour: Flavour,
    local: Arc<LocalProvider>,
    calls: AtomicUsize,
}

impl RecordingProvider {
    fn unexpected(&self) -> ComputeError {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ComputeError::internal("the fuzz test's provider must not be reached")
    }
}

fn provider_validate(
    flavour: Flavour,
    local: &LocalProvider,
    spec: &ComputeSpec,
) -> Result<(), ComputeError> {
    match flavour {
        Flavour::Local => local.validate("t", spec),
        Flavour::Ecs => EcsProvider::validate_spec(spec),
        Flavour::Kubernetes => KubernetesProvider::validate_spec(spec),
    }
}

#[async_trait]
impl ComputeProvider for RecordingProvider {
    fn name(&self) -> &'static str {
        match self.flavour {
            Flavour::Local => "local",
            Flavour::Ecs => "ecs",
            Flavour::Kubernetes => "kubernetes",
        }
    }

    fn validate(&self, _tenant_id: &str, spec: &ComputeSpec) -> Result<(), ComputeError> {
        provider_validate(self.flavour, &self.local, spec)
    }

    async fn provision(
        &self,
        _: &OperationContext,
        _: &ComputeSpec,
    ) -> Result<ResourceIds, ComputeError> {
        Err(self.unexpected())
    }

    async fn update(
        &self,
        _: &OperationContext,
        _: &CurrentState,
        _: &ComputeSpec,
    ) -> Result<ResourceIds, ComputeError> {
        Err(self.unexpected())
    }

    async fn delete(
        &self,
        _: &OperationContext,
        _: &CurrentState,
    ) -> Result<ResourceIds, ComputeError> {
        Err(self.unexpected())
    }

    async fn observe(
        &self,
        _: &OperationContext,
        _: &ResourceIds,
    ) -> Result<Observation, ComputeError> {
        Err(self.unexpected())
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>, ComputeError> {
        Err(self.unexpected())
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(10)
    }
}

/// The real (in-memory SQLite) store, with every write but the audit trail counted.
struct RecordingStore {
    inner: Arc<dyn ExecutionStore>,
    writes: AtomicUsize,
    attempts: Mutex<Vec<AttemptRecord>>,
}

#[async_trait]
impl ExecutionStore for RecordingStore {
    async fn begin_execution(&self, new: NewExecution) -> store::Result<BeginOutcome> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.begin_execution(new).await
    }

    async fn get_execution(&self, execution_id: &str) -> store::Result<Option<ExecutionRecord>> {
        self.inner.get_execution(execution_id).await
    }

    async fn list_executions(&self, tenant_id: &str) -> store::Result<Vec<ExecutionRecord>> {
        self.inner.list_executions(tenant_id).await
    }

    async fn transition(&self, transition: Transition) -> store::Result<TransitionOutcome> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.transition(transition).await
    }

    async fn get_tenant(&self, tenant_id: &str) -> store::Result<Option<TenantRecord>> {
        self.inner.get_tenant(tenant_id).await
    }

    async fn list_tenants(
        &self,
        state: Option<TenantState>,
        after: Option<&str>,
        limit: u32,
    ) -> store::Result<Vec<TenantRecord>> {
        self.inner.list_tenants(state, after, limit).await
    }

    async fn mark_tenant(
        &self,
        tenant_id: &str,
        mark: compute_activities::contract::InterventionMark,
        state: Option<TenantState>,
    ) -> store::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.mark_tenant(tenant_id, mark, state).await
    }

    async fn clear_intervention(
        &self,
        tenant_id: &str,
        note: &str,
    ) -> store::Result<Option<TenantRecord>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.clear_intervention(tenant_id, note).await
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        reason: Option<&str>,
    ) -> store::Result<TransitionOutcome> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.request_cancel(execution_id, reason).await
    }

    async fn record_attempt(&self, attempt: AttemptRecord) -> store::Result<()> {
        self.attempts.lock().unwrap().push(attempt.clone());
        self.inner.record_attempt(attempt).await
    }

    async fn list_attempts(&self, execution_id: &str) -> store::Result<Vec<AttemptRecord>> {
        self.inner.list_attempts(execution_id).await
    }

    async fn record_delivery(&self, attempt: store::DeliveryAttempt) -> store::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.record_delivery(attempt).await
    }

    async fn list_deliveries(
        &self,
        execution_id: &str,
    ) -> store::Result<Vec<compute_activities::contract::CallbackDelivery>> {
        self.inner.list_deliveries(execution_id).await
    }

    async fn observer_alive(&self, observer: &str, until_ms: i64) -> store::Result<()> {
        self.inner.observer_alive(observer, until_ms).await
    }

    async fn observer_gone(&self, observer: &str) -> store::Result<()> {
        self.inner.observer_gone(observer).await
    }

    async fn claim_observation(
        &self,
        execution_id: &str,
        observer: &str,
        now_ms: i64,
    ) -> store::Result<bool> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner
            .claim_observation(execution_id, observer, now_ms)
            .await
    }

    async fn claim_orphans(
        &self,
        observer: &str,
        now_ms: i64,
        limit: u32,
    ) -> store::Result<Vec<String>> {
        self.inner.claim_orphans(observer, now_ms, limit).await
    }

    async fn end_observation(&self, execution_id: &str, observer: &str) -> store::Result<()> {
        self.inner.end_observation(execution_id, observer).await
    }

    async fn observed_by(&self, observer: &str) -> store::Result<Vec<String>> {
        self.inner.observed_by(observer).await
    }

    async fn ping(&self) -> store::Result<()> {
        self.inner.ping().await
    }
}

/// Everything the activities log, at TRACE, on the test's thread.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

/// The public activities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Provision,
    Update,
    Delete,
    Get,
    List,
    GetTenant,
    ListTenants,
    Cancel,
}

/// The real activities over the recording fakes, one set per provider flavour, and the
/// runtime and log capture they run in.
struct Rig {
    runtime: tokio::runtime::Runtime,
    store: Arc<RecordingStore>,
    providers: Vec<Arc<RecordingProvider>>,
    envs: Vec<ActivityEnvironment>,
    local: Arc<LocalProvider>,
    log: LogCapture,
    _state_dir: tempfile::TempDir,
}

/// How an activity ended: its result as JSON, or (type, non-retryable, message, everything).
type Ran = Result<Value, (Option<String>, bool, String, String)>;

impl Rig {
    fn new() -> Rig {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inner = runtime
            .block_on(store::connect("sqlite::memory:"))
            .expect("an in-memory store");
        let store = Arc::new(RecordingStore {
            inner,
            writes: AtomicUsize::new(0),
            attempts: Mutex::default(),
        });
        let state_dir = tempfile::tempdir().unwrap();
        let local = Arc::new(
            LocalProvider::new(LocalConfig {
                state_dir: state_dir.path().join("local"),
                ..LocalConfig::default()
            })
            .unwrap(),
        );
        let providers: Vec<Arc<RecordingProvider>> = FLAVOURS
            .iter()
            .map(|f| {
                Arc::new(RecordingProvider {
                    flavour: *f,
                    local: local.clone(),
                    calls: AtomicUsize::new(0),
                })
            })
            .collect();
        let envs = providers
            .iter()
            .map(|p| {
                ActivityEnvironment::builder()
                    .register_activities(ComputeActivities::new(
                        store.clone(),
                        p.clone(),
                        ActivitySettings::default(),
                    ))
                    .build()
            })
            .collect();
        Rig {
            runtime,
            store,
            providers,
            envs,
            local,
            log: LogCapture::default(),
            _state_dir: state_dir,
        }
    }

    fn provider_calls(&self) -> usize {
        self.providers
            .iter()
            .map(|p| p.calls.load(Ordering::SeqCst))
            .sum()
    }

    /// Runs one activity on the flavour's environment.
    fn run(&self, activity: Activity, flavour: usize, input: Value) -> Ran {
        let env = &self.envs[flavour];
        let result = self.runtime.block_on(async {
            match activity {
                Activity::Provision => env
                    .run(ComputeActivities::provision_tenant_compute, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::Update => env
                    .run(ComputeActivities::update_tenant_compute, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::Delete => env
                    .run(ComputeActivities::delete_tenant_compute, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::Get => env
                    .run(ComputeActivities::get_compute_execution, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::List => env
                    .run(
                        ComputeActivities::list_tenant_compute_executions,
                        raw(&input),
                    )
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::GetTenant => env
                    .run(ComputeActivities::get_tenant_compute, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::ListTenants => env
                    .run(ComputeActivities::list_tenant_compute, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
                Activity::Cancel => env
                    .run(ComputeActivities::cancel_compute_execution, raw(&input))
                    .await
                    .map(|v| serde_json::to_value(v).unwrap()),
            }
        });
        result.map_err(|e| match e {
            ActivityEnvironmentError::Activity(ActivityError::Application(app)) => (
                app.type_name().map(str::to_string),
                app.is_non_retryable(),
                app.source_error().to_string(),
                format!("{app:?}"),
            ),
            other => panic!("{activity:?} failed without an application failure: {other:?}"),
        })
    }

    /// Runs the activity and checks what it did against what validation said:
    /// `expected` is the validator's verdict (`None` when it accepted).
    fn run_and_check(
        &self,
        activity: Activity,
        flavour: usize,
        input: &Value,
        expected: Option<&ComputeError>,
    ) -> Result<(), TestCaseError> {
        let what = format!("{activity:?} on the {:?} provider", FLAVOURS[flavour]);
        let writes = self.store.writes.load(Ordering::SeqCst);
        let calls = self.provider_calls();
        let attempts = self.store.attempts.lock().unwrap().len();
        self.log.take();
        let ran = self.run(activity, flavour, input.clone());
        let log = self.log.take();

        prop_assert_eq!(
            self.provider_calls(),
            calls,
            "{} reached the provider for {}",
            what,
            short(input)
        );
        prop_assert_eq!(
            self.store.writes.load(Ordering::SeqCst),
            writes,
            "{} wrote to the store (beyond the audit trail) for {}",
            what,
            short(input)
        );
        let recorded = self.store.attempts.lock().unwrap()[attempts..].to_vec();
        prop_assert_eq!(recorded.len(), 1, "{}: one attempt recorded", what);
        let attempt = &recorded[0];
        prop_assert_eq!(attempt.attempt, 1);

        match (expected, ran) {
            (Some(e), Err((code, non_retryable, message, everything))) => {
                prop_assert_eq!(code.as_deref(), Some("INVALID_CONFIGURATION"), "{}", what);
                prop_assert!(non_retryable, "{what}: a refusal must be non-retryable");
                prop_assert_eq!(&message, &e.message, "{}: the validator's message", what);
                no_echo(&format!("{what}'s failure"), input, &everything)?;
                prop_assert_eq!(
                    attempt.outcome,
                    AttemptOutcome::Failed(ErrorCode::InvalidConfiguration)
                );
                prop_assert!(!attempt.retriable);
                prop_assert!(
                    attempt.execution_id.is_none() && attempt.tenant_id.is_none(),
                    "{what}: a refused attempt is about no execution or tenant: {attempt:?}"
                );
                no_echo(
                    &format!("{what}'s audit record"),
                    input,
                    &serde_json::to_string(attempt).unwrap(),
                )?;
                no_echo(&format!("{what}'s log"), input, &log)?;
                prop_assert!(
                    log.contains("INVALID_CONFIGURATION"),
                    "{what}: the refusal is logged:\n{log}"
                );
            }
            (Some(e), Ok(v)) => {
                return Err(TestCaseError::fail(format!(
                    "{what} accepted what validation refused ({e}): {} -> {v}",
                    short(input)
                )));
            }
            // Accepted look-ups answer from the (empty) store.
            (None, ran) => match activity {
                Activity::Get | Activity::Cancel => {
                    let (code, non_retryable, ..) = ran.err().unwrap_or_default();
                    prop_assert_eq!(code.as_deref(), Some("NOT_FOUND"), "{}", what);
                    prop_assert!(non_retryable);
                }
                Activity::List => prop_assert_eq!(ran.ok(), Some(json!([])), "{}", what),
                Activity::GetTenant => {
                    let tenant = ran.ok().unwrap_or_default();
                    prop_assert_eq!(&tenant["state"], "absent", "{}", what);
                    prop_assert_eq!(&tenant["tenantId"], &input["tenantId"], "{}", what);
                }
                Activity::ListTenants => prop_assert_eq!(
                    ran.ok(),
                    Some(json!({"tenants": [], "nextPageToken": null})),
                    "{}",
                    what
                ),
                _ => unreachable!("accepted start requests are not run"),
            },
        }
        Ok(())
    }
}

/// Counts of one property run, printed at its end.
#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    accepted: AtomicUsize,
    through_activity: AtomicUsize,
    per_provider_accepted: [AtomicUsize; 3],
}

impl Tally {
    fn report(&self, name: &str, started: Instant) {
        let cases = self.cases.load(Ordering::SeqCst);
        let accepted = self.accepted.load(Ordering::SeqCst);
        let providers = if self.per_provider_accepted[0].load(Ordering::SeqCst) > 0 {
            format!(
                " (then by the providers: {} local, {} ecs, {} kubernetes)",
                self.per_provider_accepted[0].load(Ordering::SeqCst),
                self.per_provider_accepted[1].load(Ordering::SeqCst),
                self.per_provider_accepted[2].load(Ordering::SeqCst),
            )
        } else {
            String::new()
        };
        println!(
            "{name}: {cases} cases in {:.1?}: {accepted} accepted by validation{providers}, {} \
             refused; {} run through the activity, every property held",
            started.elapsed(),
            cases - accepted,
            self.through_activity.load(Ordering::SeqCst),
        );
    }

    /// Both sides were exercised: a generator that only ever produced garbage (or only valid
    /// input) would test little.
    fn assert_both_sides(&self, name: &str, at_least: usize) {
        let cases = self.cases.load(Ordering::SeqCst);
        let accepted = self.accepted.load(Ordering::SeqCst);
        assert!(
            accepted * 100 >= cases * at_least && (cases - accepted) * 100 >= cases * at_least,
            "{name}: {accepted} of {cases} accepted; the generators should give at least \
             {at_least}% of each"
        );
    }
}

fn fail_with(
    name: &str,
    result: Result<(), proptest::test_runner::TestError<impl std::fmt::Debug>>,
) {
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

fn start_activity(activity: Activity) {
    let name = format!("{activity:?}TenantCompute");
    let rig = Rig::new();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer({
                let log = rig.log.clone();
                move || log.clone()
            })
            .finish(),
    );
    let tally = Tally::default();
    let started = Instant::now();
    let strategy = (
        inputs(valid_compute_request().boxed(), COMPUTE_PATHS),
        0..FLAVOURS.len(),
    );
    let result = runner().run(&strategy, |(input, flavour)| {
        tally.cases.fetch_add(1, Ordering::SeqCst);
        let validated = bounded(&input).and_then(|()| validate::compute_request(&input));
        if let Err(e) = &validated {
            check_refusal("validate::compute_request", &input, e)?;
        }
        if carries_secret_value(&input) {
            prop_assert!(
                validated.is_err(),
                "a request carrying a secret value was accepted: {}",
                short(&input)
            );
        }
        let mut verdicts = Vec::new();
        for (i, f) in FLAVOURS.iter().enumerate() {
            let verdict = validated
                .clone()
                .and_then(|r| provider_validate(*f, &rig.local, &r.spec));
            check(&format!("the {f:?} provider's validate"), &input, &verdict)?;
            if verdict.is_ok() {
                tally.per_provider_accepted[i].fetch_add(1, Ordering::SeqCst);
            }
            verdicts.push(verdict);
        }
        if let Ok(r) = &validated {
            tally.accepted.fetch_add(1, Ordering::SeqCst);
            // What the store would keep: the validated request, never a value from a field
            // the contract does not know.
            let kept = serde_json::to_string(r).unwrap();
            for token in unknown_field_tokens(&input) {
                prop_assert!(
                    !kept.contains(&token),
                    "an unknown field's value reached the validated request: {kept}"
                );
            }
            // No environment can hold a NUL (the local provider would find it only when it
            // starts the process, after recording the execution).
            prop_assert!(
                !r.spec
                    .env
                    .values()
                    .chain(r.spec.config.values())
                    .any(|v| v.contains('\0')),
                "an environment value with a NUL was accepted: {}",
                short(&input)
            );
            // Validating again gives the same request.
            let again = validate::compute_request(&input).ok();
            prop_assert_eq!(again.as_ref(), Some(r));
        }
        if let Err(e) = &verdicts[flavour] {
            tally.through_activity.fetch_add(1, Ordering::SeqCst);
            rig.run_and_check(activity, flavour, &input, Some(e))?;
        }
        Ok(())
    });
    fail_with(&name, result);
    tally.report(&name, started);
    tally.assert_both_sides(&name, 5);
}

#[test]
fn provision_inputs() {
    start_activity(Activity::Provision);
}

#[test]
fn update_inputs() {
    start_activity(Activity::Update);
}

/// The other activities: (name, activity, its generator, its validation).
fn simple_activity(
    name: &str,
    activity: Activity,
    valid: BoxedStrategy<Value>,
    paths: &'static [&'static str],
    validate_input: fn(&Value) -> Result<(), ComputeError>,
) {
    let rig = Rig::new();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer({
                let log = rig.log.clone();
                move || log.clone()
            })
            .finish(),
    );
    let tally = Tally::default();
    let started = Instant::now();
    let strategy = inputs(valid, paths);
    let result = runner().run(&strategy, |input| {
        tally.cases.fetch_add(1, Ordering::SeqCst);
        let verdict = validate_input(&input);
        check(&format!("{name}'s validation"), &input, &verdict)?;
        match &verdict {
            Ok(()) => {
                tally.accepted.fetch_add(1, Ordering::SeqCst);
                if activity != Activity::Delete {
                    tally.through_activity.fetch_add(1, Ordering::SeqCst);
                    rig.run_and_check(activity, 0, &input, None)?;
                }
            }
            Err(e) => {
                tally.through_activity.fetch_add(1, Ordering::SeqCst);
                rig.run_and_check(activity, 0, &input, Some(e))?;
            }
        }
        Ok(())
    });
    fail_with(name, result);
    tally.report(name, started);
    tally.assert_both_sides(name, 5);
}

/// The activities decode their raw input within the trust boundary's limits (size, depth,
/// items, string length) before any validator sees it: the same here.
fn bounded(v: &Value) -> Result<(), ComputeError> {
    compute_activities::input::decode_bytes(&serde_json::to_vec(v).unwrap(), "input").map(drop)
}

#[test]
fn delete_inputs() {
    simple_activity(
        "DeleteTenantCompute",
        Activity::Delete,
        valid_delete_request().boxed(),
        DELETE_PATHS,
        |v| bounded(v).and_then(|()| validate::delete_request(v).map(drop)),
    );
}

#[test]
fn get_execution_inputs() {
    simple_activity(
        "GetComputeExecution",
        Activity::Get,
        valid_get_request().boxed(),
        GET_PATHS,
        |v| {
            bounded(v)
                .and_then(|()| validate::execution_id(v))
                .and_then(|_| validate::include_attempts(v).map(drop))
        },
    );
}

#[test]
fn list_executions_inputs() {
    simple_activity(
        "ListTenantComputeExecutions",
        Activity::List,
        valid_list_request().boxed(),
        LIST_PATHS,
        |v| bounded(v).and_then(|()| validate::tenant_only(v).map(drop)),
    );
}

#[test]
fn get_tenant_inputs() {
    simple_activity(
        "GetTenantCompute",
        Activity::GetTenant,
        valid_list_request().boxed(),
        LIST_PATHS,
        |v| bounded(v).and_then(|()| validate::tenant_only(v).map(drop)),
    );
}

#[test]
fn list_tenants_inputs() {
    simple_activity(
        "ListTenantCompute",
        Activity::ListTenants,
        valid_list_tenants_request().boxed(),
        LIST_TENANTS_PATHS,
        |v| bounded(v).and_then(|()| validate::tenant_list_query(v).map(drop)),
    );
}

#[test]
fn cancel_inputs() {
    simple_activity(
        "CancelComputeExecution",
        Activity::Cancel,
        valid_cancel_request().boxed(),
        CANCEL_PATHS,
        |v| bounded(v).and_then(|()| validate::cancel_request(v).map(drop)),
    );
}

/// The generators reach the cases the properties are about; without them the properties
/// above would hold vacuously.
#[test]
fn generators_reach_every_kind_of_input() {
    let mut runner = TestRunner::deterministic();
    let strategy = inputs(valid_compute_request().boxed(), COMPUTE_PATHS);
    let (mut secret_values, mut unknown, mut huge, mut control, mut accepted) = (0, 0, 0, 0, 0);
    for _ in 0..2000 {
        let v = strategy.new_tree(&mut runner).unwrap().current();
        let text = v.to_string();
        secret_values += usize::from(carries_secret_value(&v));
        unknown += usize::from(!unknown_field_tokens(&v).is_empty());
        huge += usize::from(text.len() > 1000);
        control += usize::from(text.contains("\\u0000") || text.contains("\\u001"));
        accepted += usize::from(validate::compute_request(&v).is_ok());
    }
    let counts = BTreeMap::from([
        ("secret values", secret_values),
        ("unknown fields", unknown),
        ("huge strings", huge),
        ("control characters", control),
        ("accepted", accepted),
    ]);
    println!("of 2000 generated compute requests: {counts:?}");
    for (what, n) in counts {
        assert!(n >= 20, "only {n} of 2000 inputs have {what}");
    }
}
