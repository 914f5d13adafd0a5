//! Judging a provision's or update's rollout from what the watches hold: the Deployment, the
//! ReplicaSet that runs its pod template and that ReplicaSet's pods become an
//! [`Observation`], and a pod that cannot start fails the operation with the code of its
//! reason.
//!
//! The ReplicaSet is found by template, as the Deployment controller finds it, not by the
//! revision annotation: a revert to a template that still has a ReplicaSet re-uses it, and
//! for one sync of the controller the Deployment's status already describes the re-used
//! ReplicaSet while its revision annotation still names the failed one. Judged by revision,
//! that window would blame the failed ReplicaSet's pods (`ImagePullBackOff`) on the revert.

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Pod, PodTemplateSpec},
};
use kube::{Resource, runtime::reflector::ObjectRef};

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

/// The label the Deployment controller adds to a ReplicaSet's template (and its pods).
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

fn revision_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
}

/// Whether a ReplicaSet's template is `template` but for the hash label the controller adds
/// (the controller's own `EqualIgnoreHash`).
fn same_template(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let Some(mut theirs) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
        return false;
    };
    if let Some(labels) = theirs.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let mut ours = template.clone();
    if let Some(labels) = ours.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    theirs == ours
}

/// The ReplicaSet that runs the Deployment's pod template, chosen as the controller chooses
/// it (`FindNewReplicaSet`): the oldest of the Deployment's ReplicaSets whose template is the
/// Deployment's, whatever revision it carries.
fn current_replica_set<'a>(
    dep: &Deployment,
    replica_sets: &'a [Arc<ReplicaSet>],
) -> Option<&'a ReplicaSet> {
    let ns = dep.metadata.namespace.as_deref();
    let uid = dep.metadata.uid.as_deref()?;
    let template = &dep.spec.as_ref()?.template;
    replica_sets
        .iter()
        .map(Arc::as_ref)
        .filter(|rs| {
            rs.metadata.namespace.as_deref() == ns
                && rs.metadata.deletion_timestamp.is_none()
                && owned_by(*rs, uid)
                && same_template(rs, template)
        })
        .min_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        })
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
    // The ReplicaSet of the template applied, not of the revision annotation (see the module
    // header): until the watches hold it, there is nothing of this rollout to judge yet.
    let current_rs = current_replica_set(dep, replica_sets);
    let rs_name = current_rs.and_then(|rs| rs.metadata.name.clone());
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
                    succeeded: ready_pods.iter().map(|p| format!("pod {p}")).collect(),
                    failed: failures
                        .iter()
                        .map(|(p, _, detail)| format!("pod {p}: {detail}"))
                        .collect(),
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
    // NB: a timed-out Progressing condition outlives the rollout it timed out: a revert that
    // re-uses an older ReplicaSet inherits the failed one's `ProgressDeadlineExceeded` until
    // the controller sees progress. The controller names the ReplicaSet in the message; only
    // a deadline of this template's ReplicaSet fails this rollout.
    if let Some(c) = condition("Progressing")
        && c.status == "False"
        && rs_name
            .as_deref()
            .zip(c.message.as_deref())
            .is_some_and(|(rs, message)| message.contains(&format!("\"{rs}\"")))
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
    // The controller records the re-used ReplicaSet's revision on the Deployment one sync
    // after it counts its replicas: done only once both agree.
    let revision_recorded = current_rs
        .and_then(revision_of)
        .is_some_and(|r| revision_of(dep) == Some(r));
    if available
        && revision_recorded
        && updated == desired
        && ready == desired
        && total == desired
        && ready_current >= desired
    {
        let ids = ResourceIds {
            k8s_namespace: Some(ns),
            k8s_deployment: Some(name),
            k8s_replica_set: rs_name,
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
            apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSetSpec},
            core::v1::{
                Container, ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition,
                PodSpec, PodStatus,
            },
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::super::naming::CONTAINER;
    use super::*;

    /// The image of the template the Deployment of [`dep`] asks for.
    const NEW: &str = "nginx:1.27";
    /// The image of the template before it.
    const OLD: &str = "nginx:1.25";

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([(
                    "compute-worker/tenant".into(),
                    "acme".into(),
                )])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: CONTAINER.into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

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
                template: template(NEW),
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

    /// A ReplicaSet of the Deployment running `image`, its template marked with its hash as
    /// the controller marks it.
    fn rs(name: &str, uid: &str, revision: &str, image: &str) -> Arc<ReplicaSet> {
        let mut template = template(image);
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.insert(POD_TEMPLATE_HASH_LABEL.into(), format!("hash-{uid}"));
        }
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
            spec: Some(ReplicaSetSpec {
                template: Some(template),
                ..Default::default()
            }),
            status: None,
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
            rs("tenant-acme-old", "rs-old", "1", OLD),
            rs("tenant-acme-new", "rs-new", "2", NEW),
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
        let sets = [rs("tenant-acme-new", "rs-new", "2", NEW)];
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
            rs("tenant-acme-old", "rs-old", "1", OLD),
            rs("tenant-acme-new", "rs-new", "2", NEW),
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
                assert_eq!(partial.succeeded, ["pod new-a"]);
                assert_eq!(
                    partial.failed,
                    ["pod new-b: ImagePullBackOff: back-off pulling image"]
                );
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
        d.status.as_mut().unwrap().conditions = Some(vec![condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "ReplicaSet \"tenant-acme-new\" has timed out progressing.",
        )]);
        match rollout_observation(&d, &sets, &[]) {
            Observation::Failed(e) => {
                assert_eq!(e.code, ErrorCode::Timeout);
                assert_eq!(e.provider_code.as_deref(), Some("ProgressDeadlineExceeded"));
            }
            other => panic!("{other:?}"),
        }
        // The deadline of another ReplicaSet (an earlier rollout's) is not this one's.
        d.status.as_mut().unwrap().conditions = Some(vec![condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "ReplicaSet \"tenant-acme-old\" has timed out progressing.",
        )]);
        assert!(matches!(
            rollout_observation(&d, &old, &[]),
            Observation::InProgress(_)
        ));
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> DeploymentCondition {
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        }
    }

    /// The Deployment of [`dep`] (2 replicas) at `generation` with the template of `image`, as
    /// the controller has recorded it so far: the revision annotation, the generation it
    /// observed, `[replicas, updated, ready]` and the conditions.
    fn recorded(
        image: &str,
        generation: i64,
        revision: &str,
        observed: i64,
        [total, updated, ready]: [i32; 3],
        conditions: Vec<DeploymentCondition>,
    ) -> Deployment {
        let mut d = dep(generation, observed, ready, false);
        d.metadata.annotations = Some(BTreeMap::from([(
            REVISION_ANNOTATION.into(),
            revision.into(),
        )]));
        d.spec.as_mut().unwrap().template = template(image);
        let status = d.status.as_mut().unwrap();
        status.replicas = Some(total);
        status.updated_replicas = Some(updated);
        status.conditions = Some(conditions);
        d
    }

    /// After the rollout to template B (`NEW`, revision 2) failed on `ImagePullBackOff` and
    /// hit its deadline, the revert to template A (`OLD`) is judged on A's ReplicaSet, the
    /// one the controller re-uses (revision 1, then 3) or a new one: in progress while A's
    /// pods are not ready, succeeded when they are, and never failed for B's pod or B's
    /// deadline, though the Deployment's revision annotation names B for a while.
    #[test]
    fn a_revert_is_judged_on_the_replica_set_of_the_template_it_went_back_to() {
        let b_timed_out = || {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                "ReplicaSet \"tenant-acme-b\" has timed out progressing.",
            )
        };
        let unavailable = || condition("Available", "False", "MinimumReplicasUnavailable", "");
        let available = || condition("Available", "True", "MinimumReplicasAvailable", "");
        let b = rs("tenant-acme-b", "rs-b", "2", NEW);
        let b_pod = pod("b-1", "rs-b", false, Some("ImagePullBackOff"));
        let a_ready = [
            pod("a-1", "rs-a", true, None),
            pod("a-2", "rs-a", true, None),
        ];
        // A's second pod was replaced while B rolled out and is still starting.
        let a_starting = [
            pod("a-1", "rs-a", true, None),
            pod("a-2", "rs-a", false, Some("ContainerCreating")),
        ];

        // The failed rollout itself: B's pod cannot pull its image.
        let failed = recorded(
            NEW,
            2,
            "2",
            2,
            [3, 1, 1],
            vec![unavailable(), b_timed_out()],
        );
        let before = [rs("tenant-acme-a", "rs-a", "1", OLD), b.clone()];
        let pods = [a_starting[0].clone(), a_starting[1].clone(), b_pod.clone()];
        match rollout_observation(&failed, &before, &pods) {
            Observation::Failed(e) => assert_eq!(e.code, ErrorCode::InvalidConfiguration),
            other => panic!("{other:?}"),
        }

        // The revert applied template A (generation 3); the controller has not seen it yet.
        let reverted = |revision, observed, counts, conditions| {
            recorded(OLD, 3, revision, observed, counts, conditions)
        };
        let not_failed = |d: &Deployment, sets: &[Arc<ReplicaSet>], pods: &[Arc<Pod>]| {
            match rollout_observation(d, sets, pods) {
                Observation::InProgress(p) => p,
                other => panic!("{other:?}"),
            }
        };
        not_failed(
            &reverted("2", 2, [3, 1, 1], vec![unavailable(), b_timed_out()]),
            &before,
            &pods,
        );

        // The controller re-uses A's ReplicaSet and counts it, before (and while) it bumps
        // that ReplicaSet to revision 3, and before it records revision 3 on the Deployment,
        // whose deadline condition still names B. A's pods are not all ready: in progress.
        let after = [rs("tenant-acme-a", "rs-a", "3", OLD), b.clone()];
        for sets in [&before, &after] {
            let p = not_failed(
                &reverted("2", 3, [3, 2, 1], vec![unavailable(), b_timed_out()]),
                sets,
                &pods,
            );
            assert_eq!((p.ready, p.desired), (Some(1), Some(2)));
        }

        // A's pods are ready while B's is still there, then B's is gone: still not done while
        // the Deployment's revision names B.
        let pods = [a_ready[0].clone(), a_ready[1].clone(), b_pod.clone()];
        not_failed(
            &reverted("2", 3, [3, 2, 2], vec![available(), b_timed_out()]),
            &after,
            &pods,
        );
        not_failed(
            &reverted("2", 3, [2, 2, 2], vec![available(), b_timed_out()]),
            &after,
            &a_ready,
        );

        // The controller records revision 3: the revert succeeded, on A's ReplicaSet.
        let a_progressed = condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            "ReplicaSet \"tenant-acme-a\" has successfully progressed.",
        );
        match rollout_observation(
            &reverted("3", 3, [2, 2, 2], vec![available(), a_progressed.clone()]),
            &after,
            &a_ready,
        ) {
            Observation::Succeeded(ids) => {
                assert_eq!(ids.k8s_replica_set.as_deref(), Some("tenant-acme-a"));
                assert_eq!(ids.pod_names, ["a-1", "a-2"]);
            }
            other => panic!("{other:?}"),
        }
        // Success does not wait for B's pod to be deleted from the watch: it is not A's.
        let pods = [a_ready[0].clone(), a_ready[1].clone(), b_pod.clone()];
        assert!(matches!(
            rollout_observation(
                &reverted("3", 3, [2, 2, 2], vec![available(), a_progressed]),
                &after,
                &pods,
            ),
            Observation::Succeeded(_)
        ));

        // A's old ReplicaSet is gone (history limit): the controller makes a new one for A,
        // revision 3, and the revert is judged on it the same way.
        let c = rs("tenant-acme-c", "rs-c", "3", OLD);
        let sets = [b.clone(), c];
        let pods = [
            pod("c-1", "rs-c", true, None),
            pod("c-2", "rs-c", false, Some("ContainerCreating")),
            b_pod.clone(),
        ];
        not_failed(
            &reverted("3", 3, [3, 2, 1], vec![unavailable(), b_timed_out()]),
            &sets,
            &pods,
        );
        let pods = [
            pod("c-1", "rs-c", true, None),
            pod("c-2", "rs-c", true, None),
        ];
        match rollout_observation(
            &reverted("3", 3, [2, 2, 2], vec![available()]),
            &sets,
            &pods,
        ) {
            Observation::Succeeded(ids) => {
                assert_eq!(ids.k8s_replica_set.as_deref(), Some("tenant-acme-c"));
            }
            other => panic!("{other:?}"),
        }

        // A's own failures do fail the revert: a crashing pod of A, or A's own deadline.
        let pods = [
            pod("a-1", "rs-a", true, None),
            pod("a-2", "rs-a", false, Some("CrashLoopBackOff")),
            b_pod,
        ];
        match rollout_observation(
            &reverted("2", 3, [3, 2, 1], vec![unavailable(), b_timed_out()]),
            &after,
            &pods,
        ) {
            Observation::Failed(e) => {
                assert_eq!(e.code, ErrorCode::PartialFailure);
                let partial = e.partial.unwrap();
                assert_eq!(partial.succeeded, ["pod a-1"]);
                assert_eq!(partial.failed.len(), 1);
                assert!(partial.failed[0].starts_with("pod a-2: CrashLoopBackOff"));
            }
            other => panic!("{other:?}"),
        }
        let a_timed_out = condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "ReplicaSet \"tenant-acme-a\" has timed out progressing.",
        );
        match rollout_observation(
            &reverted("3", 3, [2, 2, 1], vec![unavailable(), a_timed_out]),
            &after,
            &a_starting,
        ) {
            Observation::Failed(e) => assert_eq!(e.code, ErrorCode::Timeout),
            other => panic!("{other:?}"),
        }
    }
}
