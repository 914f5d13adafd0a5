//! Judging a provision's or update's rollout from what the watches hold: the Deployment, the
//! ReplicaSet of its current revision and that ReplicaSet's pods become an [`Observation`],
//! and a pod that cannot start fails the operation with the code of its reason.

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use kube::runtime::reflector::ObjectRef;

use super::{
    naming::{EXECUTION_ANNOTATION, PROVIDER, REVISION_ANNOTATION, owned_by},
    watch::Watch,
};
use crate::{
    contract::{Progress, ResourceIds},
    error::{ComputeError, ErrorCode, PartialResult},
    provider::{Observation, OperationContext},
};

/// What the watches say about a provision's or update's Deployment. The watches may lag
/// behind the API, so the first two are for the caller to confirm with a read.
// Short-lived, one per observation: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Evaluation {
    /// The watches hold no such Deployment.
    Missing,
    /// Another execution (named) applied the Deployment last.
    AppliedByOther(String),
    /// The verdict.
    Done(Observation),
}

/// What the watches say about a provision or update.
pub(super) fn evaluate(watch: &Watch, op: &OperationContext, ns: &str, name: &str) -> Evaluation {
    let Some(dep) = watch.deployments.get(&ObjectRef::new(name).within(ns)) else {
        return Evaluation::Missing;
    };
    let applied_by = dep
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXECUTION_ANNOTATION));
    if applied_by.map(String::as_str) != Some(op.execution_id.as_str()) {
        return Evaluation::AppliedByOther(applied_by.cloned().unwrap_or_default());
    }
    if dep.metadata.deletion_timestamp.is_some() {
        return Evaluation::Done(Observation::Failed(
            ComputeError::new(
                ErrorCode::Conflict,
                format!("the Deployment {ns}/{name} is being deleted"),
            )
            .with_provider(PROVIDER, Some("Terminating")),
        ));
    }
    Evaluation::Done(rollout_observation(
        &dep,
        &watch.replica_sets.state(),
        &watch.pods.state(),
    ))
}

/// Why a pod of the current ReplicaSet cannot become ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodFailure {
    ImagePull,
    Crash,
    Unschedulable,
}

fn pod_failure(pod: &Pod) -> Option<(PodFailure, String)> {
    let status = pod.status.as_ref()?;
    for c in status.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            let detail = format!("{reason}: {}", w.message.as_deref().unwrap_or_default());
            match reason {
                "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
                    return Some((PodFailure::ImagePull, detail));
                }
                "CrashLoopBackOff" | "CreateContainerConfigError" | "RunContainerError" => {
                    let exit = c
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .map(|t| format!(" (last exit code {})", t.exit_code))
                        .unwrap_or_default();
                    return Some((PodFailure::Crash, format!("{detail}{exit}")));
                }
                _ => {}
            }
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some((
            PodFailure::Crash,
            format!(
                "pod failed: {}",
                status.reason.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
        {
            return Some((
                PodFailure::Unschedulable,
                format!(
                    "Unschedulable: {}",
                    c.message.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    None
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Judges a rollout from a Deployment and the ReplicaSets and Pods the watches hold.
fn rollout_observation(
    dep: &Deployment,
    replica_sets: &[Arc<ReplicaSet>],
    pods: &[Arc<Pod>],
) -> Observation {
    let ns = dep.metadata.namespace.clone().unwrap_or_default();
    let name = dep.metadata.name.clone().unwrap_or_default();
    let generation = dep.metadata.generation.unwrap_or_default();
    let desired = dep
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0);
    let status = dep.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let progress = |message: String| {
        Observation::InProgress(Progress {
            message,
            ready: Some(ready.max(0) as u32),
            desired: Some(desired as u32),
        })
    };
    if observed < generation {
        return progress(format!(
            "waiting for the controller to see generation {generation} of {ns}/{name}"
        ));
    }
    // The current ReplicaSet carries the Deployment's revision.
    let revision = dep
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION));
    let uid = dep.metadata.uid.clone().unwrap_or_default();
    let current_rs = replica_sets.iter().find(|rs| {
        rs.metadata.namespace.as_deref() == Some(ns.as_str())
            && owned_by(rs.as_ref(), &uid)
            && revision.is_some()
            && rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                == revision
    });
    let rs_uid = current_rs.and_then(|rs| rs.metadata.uid.clone());
    let mut current_pods: Vec<&Pod> = pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && rs_uid.as_deref().is_some_and(|u| owned_by(*p, u))
        })
        .collect();
    current_pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let pod_name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();

    let failures: Vec<(String, PodFailure, String)> = current_pods
        .iter()
        .filter_map(|p| pod_failure(p).map(|(kind, detail)| (pod_name(p), kind, detail)))
        .collect();
    if let Some((first_pod, kind, detail)) = failures.first() {
        let ready_pods: Vec<String> = current_pods
            .iter()
            .filter(|p| pod_ready(p))
            .map(|p| pod_name(p))
            .collect();
        if !ready_pods.is_empty() {
            return Observation::Failed(
                ComputeError::new(
                    ErrorCode::PartialFailure,
                    format!(
                        "{} of {desired} replicas of {ns}/{name} are up and {} failed; first: {first_pod}: {detail}",
                        ready_pods.len(),
                        failures.len()
                    ),
                )
                .with_provider(PROVIDER, Some("PartialRollout"))
                .with_partial(PartialResult {
                    succeeded: ready_pods,
                    failed: failures.iter().map(|(p, _, _)| p.clone()).collect(),
                }),
            );
        }
        let (code, provider_code, what) = match kind {
            PodFailure::ImagePull => (
                ErrorCode::InvalidConfiguration,
                "ImagePullBackOff",
                "cannot pull the image",
            ),
            PodFailure::Crash => (ErrorCode::WorkloadFailed, "CrashLoopBackOff", "crashed"),
            PodFailure::Unschedulable => (
                ErrorCode::InsufficientCapacity,
                "Unschedulable",
                "cannot be scheduled",
            ),
        };
        return Observation::Failed(
            ComputeError::new(code, format!("pod {ns}/{first_pod} {what}: {detail}"))
                .with_provider(PROVIDER, Some(provider_code)),
        );
    }
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .cloned()
    };
    if let Some(c) = condition("Progressing")
        && c.status == "False"
    {
        return Observation::Failed(
            ComputeError::new(
                ErrorCode::Timeout,
                format!(
                    "the rollout of {ns}/{name} made no progress within its deadline: {}",
                    c.message.unwrap_or_default()
                ),
            )
            .with_provider(
                PROVIDER,
                Some(c.reason.as_deref().unwrap_or("ProgressDeadlineExceeded")),
            ),
        );
    }
    let available = condition("Available").is_some_and(|c| c.status == "True");
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let ready_current = current_pods.iter().filter(|p| pod_ready(p)).count() as i32;
    if available
        && updated == desired
        && ready == desired
        && total == desired
        && ready_current >= desired
    {
        let ids = ResourceIds {
            k8s_namespace: Some(ns),
            k8s_deployment: Some(name),
            k8s_replica_set: current_rs.and_then(|rs| rs.metadata.name.clone()),
            pod_names: current_pods.iter().map(|p| pod_name(p)).collect(),
            container_ids: current_pods
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .filter_map(|c| c.container_id.clone())
                .collect(),
            ..Default::default()
        };
        return Observation::Succeeded(ids);
    }
    progress(format!(
        "{ready}/{desired} replicas ready, {updated} updated, {total} in all"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::{
            apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus},
            core::v1::{
                ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
            },
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::super::naming::CONTAINER;
    use super::*;

    fn dep(generation: i64, observed: i64, ready: i32, available: bool) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("tenant-acme".into()),
                namespace: Some("default".into()),
                uid: Some("dep-uid".into()),
                generation: Some(generation),
                annotations: Some(BTreeMap::from([(REVISION_ANNOTATION.into(), "2".into())])),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(2),
                updated_replicas: Some(2),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                conditions: Some(vec![DeploymentCondition {
                    type_: "Available".into(),
                    status: if available { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn rs(name: &str, uid: &str, revision: &str) -> Arc<ReplicaSet> {
        Arc::new(ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                annotations: Some(BTreeMap::from([(
                    REVISION_ANNOTATION.into(),
                    revision.into(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    uid: "dep-uid".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn pod(name: &str, rs_uid: &str, ready: bool, waiting: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                owner_references: Some(vec![OwnerReference {
                    uid: rs_uid.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER.into(),
                    container_id: ready.then(|| format!("containerd://{name}")),
                    state: waiting.map(|reason| ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some("back-off pulling image".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn success_needs_the_current_generation_and_every_replica_ready() {
        let sets = [
            rs("tenant-acme-old", "rs-old", "1"),
            rs("tenant-acme-new", "rs-new", "2"),
        ];
        let pods = [
            pod("old-1", "rs-old", true, None),
            pod("new-b", "rs-new", true, None),
            pod("new-a", "rs-new", true, None),
        ];
        match rollout_observation(&dep(3, 3, 2, true), &sets, &pods) {
            Observation::Succeeded(ids) => {
                assert_eq!(ids.k8s_replica_set.as_deref(), Some("tenant-acme-new"));
                assert_eq!(ids.pod_names, ["new-a", "new-b"]);
                assert_eq!(
                    ids.container_ids,
                    ["containerd://new-a", "containerd://new-b"]
                );
            }
            other => panic!("{other:?}"),
        }
        // The controller has not seen the latest spec yet: not done, whatever the status says.
        assert!(matches!(
            rollout_observation(&dep(4, 3, 2, true), &sets, &pods),
            Observation::InProgress(_)
        ));
        match rollout_observation(&dep(3, 3, 1, false), &sets, &pods[..2]) {
            Observation::InProgress(p) => {
                assert_eq!((p.ready, p.desired), (Some(1), Some(2)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pod_failures_map_to_codes() {
        let sets = [rs("tenant-acme-new", "rs-new", "2")];
        let cases = [
            ("ImagePullBackOff", ErrorCode::InvalidConfiguration),
            ("ErrImagePull", ErrorCode::InvalidConfiguration),
            ("CrashLoopBackOff", ErrorCode::WorkloadFailed),
        ];
        for (reason, want) in cases {
            let pods = [pod("new-a", "rs-new", false, Some(reason))];
            match rollout_observation(&dep(3, 3, 0, false), &sets, &pods) {
                Observation::Failed(e) => assert_eq!(e.code, want, "{reason}: {e}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        // A failing pod of the old ReplicaSet does not fail the new rollout.
        let old = [
            rs("tenant-acme-old", "rs-old", "1"),
            rs("tenant-acme-new", "rs-new", "2"),
        ];
        let pods = [pod("old-a", "rs-old", false, Some("CrashLoopBackOff"))];
        assert!(matches!(
            rollout_observation(&dep(3, 3, 0, false), &old, &pods),
            Observation::InProgress(_)
        ));
        // Some replicas up, some failed: a partial failure listing both.
        let pods = [
            pod("new-a", "rs-new", true, None),
            pod("new-b", "rs-new", false, Some("ImagePullBackOff")),
        ];
        match rollout_observation(&dep(3, 3, 1, false), &sets, &pods) {
            Observation::Failed(e) => {
                assert_eq!(e.code, ErrorCode::PartialFailure);
                let partial = e.partial.unwrap();
                assert_eq!(partial.succeeded, ["new-a"]);
                assert_eq!(partial.failed, ["new-b"]);
            }
            other => panic!("{other:?}"),
        }
        // Unschedulable pods: no capacity.
        let mut p = (*pod("new-a", "rs-new", false, None)).clone();
        p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: 3 Insufficient cpu.".into()),
            ..Default::default()
        }]);
        match rollout_observation(&dep(3, 3, 0, false), &sets, &[Arc::new(p)]) {
            Observation::Failed(e) => assert_eq!(e.code, ErrorCode::InsufficientCapacity),
            other => panic!("{other:?}"),
        }
        // Progressing=False (the deadline passed) with no pod to blame: a timeout.
        let mut d = dep(3, 3, 0, false);
        d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..Default::default()
        }]);
        match rollout_observation(&d, &sets, &[]) {
            Observation::Failed(e) => {
                assert_eq!(e.code, ErrorCode::Timeout);
                assert_eq!(e.provider_code.as_deref(), Some("ProgressDeadlineExceeded"));
            }
            other => panic!("{other:?}"),
        }
    }
}
