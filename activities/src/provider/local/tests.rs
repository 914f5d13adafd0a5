//! The fixtures of the local provider's tests (a provider over a state directory of its own,
//! and helpers to drive it), and the tests of its operations as a whole: provision, update,
//! delete and validate, across workers.

// Test support (compiled only under cfg(test)): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::time::Instant;

use super::LocalProvider;
use super::config::LocalConfig;
use super::naming::RECORD_FILE;
use super::record::{ProcessIdentity, ProcessRecord};
use super::supervise::signal_group;
use crate::contract::{ComputeSpec, Operation, ResourceIds, SecretKeyRef, SecretRef};
use crate::error::ErrorCode;
use crate::provider::{ComputeProvider, CurrentState, Observation, OperationContext};

/// A provider over its own state directory. Dropping it SIGKILLs every process a record
/// still names, so that a failing test leaves nothing behind.
pub(super) struct TestEnv {
    pub(super) dir: TempDir,
    pub(super) provider: LocalProvider,
}

impl TestEnv {
    pub(super) fn new() -> Self {
        Self::with(|_| {})
    }

    /// With the test configuration changed by `tweak`.
    pub(super) fn with(tweak: impl Fn(&mut LocalConfig)) -> Self {
        let dir = TempDir::new().unwrap();
        let mut config = config(dir.path());
        tweak(&mut config);
        let provider = LocalProvider::new(config).unwrap();
        TestEnv { dir, provider }
    }

    /// Another provider over the same state directory (another worker on the host).
    pub(super) fn second_provider(&self) -> LocalProvider {
        LocalProvider::new(self.provider.config.clone()).unwrap()
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.provider.root) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(bytes) = std::fs::read(entry.path().join(RECORD_FILE)) else {
                continue;
            };
            if let Ok(record) = serde_json::from_slice::<ProcessRecord>(&bytes)
                && record.identity().is_live()
            {
                let _ = signal_group(record.pid, Signal::SIGKILL);
            }
        }
    }
}

/// The test configuration: `<dir>/secrets` is the one secret directory, `PATH` the one
/// variable a secret may name.
pub(super) fn config(dir: &Path) -> LocalConfig {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    LocalConfig {
        state_dir: dir.join("state"),
        settle_ms: 300,
        stop_grace_ms: 300,
        poll_interval_ms: 50,
        secret_env_allow: vec!["PATH".into()],
        secret_dirs: vec![dir.join("secrets")],
        ..LocalConfig::default()
    }
}

pub(super) fn op(tenant: &str, execution: &str, operation: Operation) -> OperationContext {
    OperationContext {
        execution_id: execution.to_string(),
        tenant_id: tenant.to_string(),
        operation,
        metadata: Default::default(),
    }
}

pub(super) fn spec(command: &[&str]) -> ComputeSpec {
    ComputeSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..ComputeSpec::default()
    }
}

pub(super) fn identity(ids: &ResourceIds) -> ProcessIdentity {
    ProcessIdentity::from_ids(ids).expect("pid and start time")
}

/// Observes until the answer is final (or fails the test after 5 s).
pub(super) async fn observe_until_final(
    provider: &LocalProvider,
    op: &OperationContext,
    ids: &ResourceIds,
) -> (Observation, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut in_progress = 0;
    loop {
        match provider.observe(op, ids).await.unwrap() {
            Observation::InProgress(_) => in_progress += 1,
            other => return (other, in_progress),
        }
        assert!(Instant::now() < deadline, "no final observation within 5s");
    }
}

pub(super) async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn secret(value_from: &str) -> SecretRef {
    SecretRef {
        name: "TOKEN".into(),
        value_from: Some(value_from.to_string()),
        secret_key_ref: None,
    }
}

pub(super) fn with_secret(value_from: &str) -> ComputeSpec {
    let mut s = spec(&["sleep", "30"]);
    s.secrets = vec![secret(value_from)];
    s
}

/// Waits for the exact content of a file the workload writes.
pub(super) async fn wait_for_content(path: &Path, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {text:?}, not {expected:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn provision_is_idempotent_and_settles() {
    let env = TestEnv::new();
    let p = &env.provider;
    let first = op("t1", "exec-1", Operation::Provision);
    let ids = p.provision(&first, &spec(&["sleep", "30"])).await.unwrap();
    assert!(identity(&ids).is_live());
    assert_eq!(ids.command_line, ["sleep", "30"]);

    // Even with another spec and execution: still the same process.
    let again = p
        .provision(
            &op("t1", "exec-2", Operation::Provision),
            &spec(&["sleep", "40"]),
        )
        .await
        .unwrap();
    assert_eq!(again, ids);
    assert_eq!(p.live_process("t1").await, Some(ids.clone()));

    let (outcome, in_progress) = observe_until_final(p, &first, &ids).await;
    assert_eq!(outcome, Observation::Succeeded(ids.clone()));
    assert!(
        in_progress >= 1,
        "the first observation must still be settling"
    );

    let record: ProcessRecord =
        serde_json::from_slice(&std::fs::read(p.tenant_dir("t1").join(RECORD_FILE)).unwrap())
            .unwrap();
    assert_eq!(record.execution_id, "exec-1");
    assert!(record.spec_hash.is_some());

    p.delete(
        &op("t1", "exec-3", Operation::Delete),
        &CurrentState::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn update_replaces_the_process_once() {
    let env = TestEnv::new();
    let p = &env.provider;
    let old = p
        .provision(
            &op("t3", "exec-1", Operation::Provision),
            &spec(&["sleep", "30"]),
        )
        .await
        .unwrap();
    let current = CurrentState {
        spec: Some(spec(&["sleep", "30"])),
        resource_ids: old.clone(),
    };
    let mut desired = spec(&["sleep"]);
    desired.args = vec!["31".to_string()];
    let update = op("t3", "exec-2", Operation::Update);
    let new = p.update(&update, &current, &desired).await.unwrap();
    assert!(!identity(&old).is_live());
    assert!(identity(&new).is_live());
    assert_ne!(new.pid, old.pid);
    assert_eq!(new.command_line, ["sleep", "31"]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", new.pid.unwrap())).unwrap();
    assert_eq!(cmdline, b"sleep\x0031\x00");

    // A retry of the same update must not restart it again.
    let retried = p.update(&update, &current, &desired).await.unwrap();
    assert_eq!(retried, new);
    assert!(identity(&new).is_live());

    let (outcome, _) = observe_until_final(p, &update, &new).await;
    assert_eq!(outcome, Observation::Succeeded(new.clone()));

    p.delete(
        &op("t3", "exec-3", Operation::Delete),
        &CurrentState::default(),
    )
    .await
    .unwrap();
    assert!(!identity(&new).is_live());
}

#[tokio::test]
async fn update_with_an_unreadable_secret_keeps_the_old_process() {
    let env = TestEnv::new();
    let p = &env.provider;
    let old = p
        .provision(
            &op("t3b", "exec-1", Operation::Provision),
            &spec(&["sleep", "30"]),
        )
        .await
        .unwrap();
    let mut desired = spec(&["sleep", "31"]);
    desired.secrets = vec![SecretRef {
        name: "TOKEN".into(),
        value_from: Some("file:/nonexistent/compute-worker-test-secret".into()),
        secret_key_ref: None,
    }];
    let error = p
        .update(
            &op("t3b", "exec-2", Operation::Update),
            &CurrentState::default(),
            &desired,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidConfiguration);
    assert!(error.message.contains("spec.secrets[0].valueFrom"));
    assert!(!error.message.contains("nonexistent"));
    assert!(identity(&old).is_live());
}

#[tokio::test]
async fn delete_stops_and_is_idempotent() {
    let env = TestEnv::new();
    let p = &env.provider;
    let ids = p
        .provision(
            &op("t4", "exec-1", Operation::Provision),
            &spec(&["sleep", "30"]),
        )
        .await
        .unwrap();
    let delete = op("t4", "exec-2", Operation::Delete);
    let current = CurrentState {
        spec: None,
        resource_ids: ids.clone(),
    };
    let stopped = p.delete(&delete, &current).await.unwrap();
    assert_eq!(stopped, ids);
    assert!(!identity(&ids).is_live());
    assert_eq!(p.live_process("t4").await, None);
    assert!(!p.tenant_dir("t4").join(RECORD_FILE).exists());
    assert_eq!(
        p.observe(&delete, &stopped).await.unwrap(),
        Observation::Succeeded(ResourceIds::default())
    );

    let again = p.delete(&delete, &current).await.unwrap();
    assert!(again.is_empty());
    // A tenant that never had anything.
    let never = p
        .delete(
            &op("never", "exec-3", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();
    assert!(never.is_empty());
}

#[tokio::test]
async fn another_worker_re_adopts_a_live_process() {
    let env = TestEnv::new();
    let ids = env
        .provider
        .provision(
            &op("t6", "exec-1", Operation::Provision),
            &spec(&["sleep", "30"]),
        )
        .await
        .unwrap();
    let other = env.second_provider();
    assert_eq!(other.live_process("t6").await, Some(ids.clone()));
    let again = other
        .provision(
            &op("t6", "exec-2", Operation::Provision),
            &spec(&["sleep", "30"]),
        )
        .await
        .unwrap();
    assert_eq!(again, ids);
    let stopped = other
        .delete(
            &op("t6", "exec-3", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();
    assert_eq!(stopped, ids);
    assert!(!identity(&ids).is_live());
}

#[test]
fn validate_names_the_field() {
    let dir = TempDir::new().unwrap();
    let p = LocalProvider::new(config(dir.path())).unwrap();
    let message = |s: &ComputeSpec| {
        let e = p.validate("t", s).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        e.message
    };
    assert!(message(&spec(&[])).starts_with("spec.command"));
    assert!(message(&spec(&[""])).starts_with("spec.command[0]"));

    let mut s = spec(&["sleep", "1"]);
    s.replicas = Some(2);
    assert!(message(&s).contains("one process per tenant"));
    s.replicas = Some(1);
    p.validate("t", &s).unwrap();

    s.secrets = vec![SecretRef {
        name: "TOKEN".into(),
        value_from: None,
        secret_key_ref: Some(SecretKeyRef {
            name: "db".into(),
            key: "password".into(),
        }),
    }];
    let m = message(&s);
    assert!(m.contains("spec.secrets[0].secretKeyRef"), "{m}");
    assert!(m.contains("spec.secrets[0].valueFrom"), "{m}");

    s.secrets = vec![SecretRef {
        name: "TOKEN".into(),
        value_from: Some("arn:aws:ssm:eu-west-1:1:parameter/x".into()),
        secret_key_ref: None,
    }];
    let m = message(&s);
    assert!(m.starts_with("spec.secrets[0].valueFrom"), "{m}");
    assert!(!m.contains("arn:"), "{m}");
}
