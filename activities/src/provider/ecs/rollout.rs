//! Rollout: what a described service says about an execution (done, failed, or how far
//! along) from its deployments, and, where their counts are not enough, from its tasks.

use aws_sdk_ecs::{
    Client,
    types::{Deployment, DeploymentRolloutState, DesiredStatus, Service, Task},
};

use super::{PROVIDER, errors::classify, errors::stopped_task_error};
use crate::{
    contract::{Operation, Progress, ResourceIds},
    error::{ComputeError, ErrorCode, PartialResult},
    provider::Observation,
};

/// DescribeTasks takes at most 100 tasks a call.
const DESCRIBE_TASKS_MAX: usize = 100;

/// The ids an observation reports for a service.
pub(super) fn service_ids(service: &Service) -> ResourceIds {
    ResourceIds {
        ecs_service_arn: service.service_arn().map(str::to_string),
        task_definition_arn: service.task_definition().map(str::to_string),
        ..ResourceIds::default()
    }
}

/// The tasks of the cluster's services.
pub(super) struct Tasks<'a> {
    pub(super) client: &'a Client,
    pub(super) cluster: &'a str,
}

impl Tasks<'_> {
    /// The service's tasks with `status` as their desired status (ECS lists the most recent
    /// first), at most `limit` of them, described; none when they cannot be listed or
    /// described.
    async fn described(&self, name: &str, status: DesiredStatus, limit: usize) -> Vec<Task> {
        // Task details only sharpen a verdict the deployment already gives (why it failed,
        // which parts run): a failed read is worth a warning, not a failed observation.
        let listed = match self
            .client
            .list_tasks()
            .cluster(self.cluster)
            .service_name(name)
            .desired_status(status)
            .send()
            .await
        {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(service = %name, error = %aws_sdk_ecs::error::DisplayErrorContext(&e), "ECS ListTasks failed; judging the rollout without its tasks.");
                return Vec::new();
            }
        };
        let arns: Vec<String> = listed.task_arns().iter().take(limit).cloned().collect();
        if arns.is_empty() {
            return Vec::new();
        }
        match self
            .client
            .describe_tasks()
            .cluster(self.cluster)
            .set_tasks(Some(arns))
            .send()
            .await
        {
            Ok(out) => out.tasks().to_vec(),
            Err(e) => {
                tracing::warn!(service = %name, error = %aws_sdk_ecs::error::DisplayErrorContext(&e), "ECS DescribeTasks failed; judging the rollout without its tasks.");
                Vec::new()
            }
        }
    }

    /// The service's most recent stopped tasks (up to 10), described.
    async fn stopped(&self, name: &str) -> Vec<Task> {
        self.described(name, DesiredStatus::Stopped, 10).await
    }

    /// The service's tasks that are running now, described.
    async fn running(&self, name: &str) -> Vec<Task> {
        let mut running = self
            .described(name, DesiredStatus::Running, DESCRIBE_TASKS_MAX)
            .await;
        running.retain(|t| t.last_status() == Some("RUNNING"));
        running
    }

    /// The service's current tasks; none when they cannot be listed (the success stands).
    async fn arns(&self, name: &str) -> Vec<String> {
        match self
            .client
            .list_tasks()
            .cluster(self.cluster)
            .service_name(name)
            .send()
            .await
        {
            Ok(out) => out.task_arns().to_vec(),
            Err(e) => {
                let e = classify("ListTasks", &e, self.cluster);
                tracing::warn!(code = %e.code, error = %e.message, "Listing the service's tasks failed.");
                Vec::new()
            }
        }
    }

    /// The success observation: the service's ids with its current tasks.
    async fn succeeded(&self, service: &Service, name: &str) -> Observation {
        let mut ids = service_ids(service);
        ids.ecs_task_arns = self.arns(name).await;
        Observation::Succeeded(ids)
    }
}

/// What `service` (the service `name` as last described) says about an execution of
/// `operation` that recorded `resources`.
pub(super) async fn observation(
    tasks: &Tasks<'_>,
    operation: Operation,
    name: &str,
    service: Option<Service>,
    resources: &ResourceIds,
) -> Observation {
    match (operation, service) {
        (Operation::Delete, None) => Observation::Succeeded(resources.clone()),
        (Operation::Delete, Some(s)) if s.status() == Some("INACTIVE") => {
            Observation::Succeeded(resources.clone())
        }
        (Operation::Delete, Some(s)) => Observation::InProgress(Progress {
            message: format!("service is {}", s.status().unwrap_or("draining")),
            ready: Some(s.running_count().max(0) as u32),
            desired: Some(0),
        }),
        (_, None) => Observation::Failed(
            ComputeError::new(
                ErrorCode::NotFound,
                format!("the ECS service {name} disappeared"),
            )
            .with_provider(PROVIDER, Some("MISSING")),
        ),
        (_, Some(s)) => rollout(tasks, name, &s, resources.task_definition_arn.as_deref()).await,
    }
}

/// How far the rollout of `wanted` (the task definition the execution registered, if any)
/// to the service is.
async fn rollout(tasks: &Tasks<'_>, name: &str, s: &Service, wanted: Option<&str>) -> Observation {
    let primary = s
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"));
    let Some(primary) = primary else {
        return Observation::InProgress(Progress {
            message: "no primary deployment yet".into(),
            ..Progress::default()
        });
    };
    if wanted.is_some() && primary.task_definition() != wanted {
        // Real ECS starts a new PRIMARY deployment on UpdateService. An API that
        // only switches the service's task definition (moto) is done once that
        // switch is made and nothing is rolling out or pending.
        let switched = s.task_definition() == wanted
            && s.running_count() >= s.desired_count()
            && s.pending_count() == 0
            && s.deployments()
                .iter()
                .all(|d| d.rollout_state() != Some(&DeploymentRolloutState::InProgress));
        if switched {
            return tasks.succeeded(s, name).await;
        }
        return Observation::InProgress(Progress {
            message: "waiting for the new deployment".into(),
            ..Progress::default()
        });
    }
    let progress = Progress {
        message: format!(
            "{} of {} tasks running",
            primary.running_count(),
            primary.desired_count()
        ),
        ready: Some(primary.running_count().max(0) as u32),
        desired: Some(primary.desired_count().max(0) as u32),
    };
    match primary.rollout_state() {
        Some(DeploymentRolloutState::Failed) => Observation::Failed(
            ComputeError::new(
                ErrorCode::WorkloadFailed,
                format!(
                    "the ECS deployment failed: {}",
                    primary.rollout_state_reason().unwrap_or("no reason given")
                ),
            )
            .with_provider(PROVIDER, Some("DeploymentFailed")),
        ),
        Some(DeploymentRolloutState::Completed) => tasks.succeeded(s, name).await,
        _ if primary.failed_tasks() > 0 => {
            let stopped = tasks.stopped(name).await;
            // Why the most recent stopped task stopped, if ECS says.
            let Some(reason) = stopped.iter().find_map(|t| t.stopped_reason()) else {
                return Observation::InProgress(progress);
            };
            let running = if primary.running_count() > 0 {
                tasks.running(name).await
            } else {
                Vec::new()
            };
            let error = partial_failure(name, s, primary, &running, &stopped)
                .unwrap_or_else(|| stopped_task_error(reason));
            Observation::Failed(error)
        }
        _ if primary.running_count() >= primary.desired_count()
            && primary.pending_count() == 0
            && s.deployments().len() == 1 =>
        {
            tasks.succeeded(s, name).await
        }
        _ => Observation::InProgress(progress),
    }
}

/// The failure of a deployment some of whose tasks run while others stopped: a
/// `PARTIAL_FAILURE` listing the task definition, the service and each running task as
/// succeeded, and each stopped task with its reason as failed (most recent first, as ECS
/// lists them). Only the deployment's own tasks (of its task definition) count; `None`
/// unless both lists have one.
fn partial_failure(
    name: &str,
    s: &Service,
    primary: &Deployment,
    running: &[Task],
    stopped: &[Task],
) -> Option<ComputeError> {
    let task_definition = primary.task_definition();
    let ours = |t: &&Task| match (task_definition, t.task_definition_arn()) {
        (Some(wanted), Some(its)) => wanted == its,
        _ => true,
    };
    let arn = |t: &Task| t.task_arn().unwrap_or("(unknown)").to_string();
    let mut up: Vec<String> = running.iter().filter(ours).map(arn).collect();
    let failed: Vec<(String, &str)> = stopped
        .iter()
        .filter(ours)
        .filter_map(|t| t.stopped_reason().map(|reason| (arn(t), reason)))
        .collect();
    if up.is_empty() || failed.is_empty() {
        return None;
    }
    up.sort();
    let (first, first_reason) = &failed[0];
    let mut succeeded = Vec::with_capacity(up.len() + 2);
    succeeded.extend(task_definition.map(|td| format!("task-definition {td}")));
    succeeded.extend(s.service_arn().map(|svc| format!("service {svc}")));
    let running_count = up.len();
    succeeded.extend(up.into_iter().map(|t| format!("task {t}")));
    Some(
        ComputeError::new(
            ErrorCode::PartialFailure,
            format!(
                "{running_count} of {} tasks of the ECS service {name} are running and {} \
                 stopped; first: {first}: {first_reason}",
                primary.desired_count(),
                failed.len(),
            ),
        )
        .with_provider(PROVIDER, Some("PartialRollout"))
        .with_root_cause(first_reason)
        .with_partial(PartialResult {
            succeeded,
            failed: failed
                .iter()
                .map(|(t, reason)| format!("task {t}: {reason}"))
                .collect(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::operation::{
        describe_services::DescribeServicesOutput, describe_tasks::DescribeTasksOutput,
        list_tasks::ListTasksOutput,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::provider::{
        ComputeProvider,
        ecs::{
            fixtures::{config, op},
            provider::EcsProvider,
        },
    };

    #[tokio::test]
    async fn a_stopped_task_fails_the_rollout_with_its_reason() {
        let describe = mock!(Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .services(
                    Service::builder()
                        .service_name("tenant-acme")
                        .status("ACTIVE")
                        .deployments(
                            Deployment::builder()
                                .status("PRIMARY")
                                .desired_count(1)
                                .failed_tasks(1)
                                .rollout_state(DeploymentRolloutState::InProgress)
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let list = mock!(Client::list_tasks)
            .then_output(|| ListTasksOutput::builder().task_arns("arn:task:1").build());
        let tasks = mock!(Client::describe_tasks).then_output(|| {
            DescribeTasksOutput::builder()
                .tasks(
                    Task::builder()
                        .stopped_reason(
                            "CannotPullContainerError: pull access denied for nginx:nope",
                        )
                        .build(),
                )
                .build()
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe, &list, &tasks]);
        let provider = EcsProvider::with_client(client, config());
        let observed = provider
            .observe(&op(Operation::Provision), &ResourceIds::default())
            .await
            .unwrap();
        let Observation::Failed(e) = observed else {
            panic!("expected a failure, got {observed:?}")
        };
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        assert!(e.message.contains("pull access denied"), "{}", e.message);
        assert_eq!(
            stopped_task_error("Essential container in task exited").code,
            ErrorCode::WorkloadFailed
        );
        assert_eq!(
            stopped_task_error("RESOURCE:MEMORY").code,
            ErrorCode::InsufficientCapacity
        );
    }

    /// A task with the given ARN, task definition, last status and stopped reason.
    fn task(arn: &str, task_definition: &str, status: &str, stopped: Option<&str>) -> Task {
        Task::builder()
            .task_arn(arn)
            .task_definition_arn(task_definition)
            .last_status(status)
            .set_stopped_reason(stopped.map(str::to_string))
            .build()
    }

    #[tokio::test]
    async fn some_tasks_running_and_others_stopped_is_a_partial_failure_listing_them() {
        // Desired 3: one task of the new revision runs, two stopped; the old revision's
        // tasks (one still running, one stopped by the rollout) are not this deployment's.
        let describe = mock!(Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .services(
                    Service::builder()
                        .service_name("tenant-acme")
                        .service_arn("arn:svc")
                        .status("ACTIVE")
                        .task_definition("arn:td:2")
                        .desired_count(3)
                        .running_count(2)
                        .deployments(
                            Deployment::builder()
                                .status("PRIMARY")
                                .task_definition("arn:td:2")
                                .desired_count(3)
                                .running_count(1)
                                .failed_tasks(2)
                                .rollout_state(DeploymentRolloutState::InProgress)
                                .build(),
                        )
                        .deployments(
                            Deployment::builder()
                                .status("ACTIVE")
                                .task_definition("arn:td:1")
                                .desired_count(1)
                                .running_count(1)
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let list_stopped = mock!(Client::list_tasks)
            .match_requests(|r| r.desired_status() == Some(&DesiredStatus::Stopped))
            .then_output(|| {
                ListTasksOutput::builder()
                    .task_arns("arn:task:s2")
                    .task_arns("arn:task:old-stopped")
                    .task_arns("arn:task:s1")
                    .build()
            });
        let list_running = mock!(Client::list_tasks)
            .match_requests(|r| r.desired_status() == Some(&DesiredStatus::Running))
            .then_output(|| {
                ListTasksOutput::builder()
                    .task_arns("arn:task:r1")
                    .task_arns("arn:task:old-running")
                    .task_arns("arn:task:pending")
                    .build()
            });
        let describe_stopped = mock!(Client::describe_tasks)
            .match_requests(|r| r.tasks().iter().any(|t| t == "arn:task:s1"))
            .then_output(|| {
                DescribeTasksOutput::builder()
                    .tasks(task(
                        "arn:task:s2",
                        "arn:td:2",
                        "STOPPED",
                        Some("Essential container in task exited"),
                    ))
                    .tasks(task(
                        "arn:task:old-stopped",
                        "arn:td:1",
                        "STOPPED",
                        Some("Scaling activity initiated by deployment ecs-svc/1"),
                    ))
                    .tasks(task(
                        "arn:task:s1",
                        "arn:td:2",
                        "STOPPED",
                        Some("Task failed container health checks"),
                    ))
                    .build()
            });
        let describe_running = mock!(Client::describe_tasks)
            .match_requests(|r| r.tasks().iter().any(|t| t == "arn:task:r1"))
            .then_output(|| {
                DescribeTasksOutput::builder()
                    .tasks(task("arn:task:r1", "arn:td:2", "RUNNING", None))
                    .tasks(task("arn:task:old-running", "arn:td:1", "RUNNING", None))
                    .tasks(task("arn:task:pending", "arn:td:2", "PENDING", None))
                    .build()
            });
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [
                &describe,
                &list_stopped,
                &list_running,
                &describe_stopped,
                &describe_running
            ]
        );
        let provider = EcsProvider::with_client(client, config());
        let resources = ResourceIds {
            ecs_service_arn: Some("arn:svc".into()),
            task_definition_arn: Some("arn:td:2".into()),
            ..ResourceIds::default()
        };
        let observed = provider
            .observe(&op(Operation::Update), &resources)
            .await
            .unwrap();
        let Observation::Failed(e) = observed else {
            panic!("expected a failure, got {observed:?}")
        };
        assert_eq!(e.code, ErrorCode::PartialFailure, "{e:?}");
        assert!(!e.retriable);
        assert_eq!(e.provider_code.as_deref(), Some("PartialRollout"));
        assert!(
            e.message.contains("1 of 3 tasks") && e.message.contains("2 stopped"),
            "{}",
            e.message
        );
        assert_eq!(
            e.root_cause.as_deref(),
            Some("Essential container in task exited")
        );
        let partial = e.partial.expect("the parts");
        assert_eq!(
            partial.succeeded,
            [
                "task-definition arn:td:2",
                "service arn:svc",
                "task arn:task:r1"
            ]
        );
        assert_eq!(
            partial.failed,
            [
                "task arn:task:s2: Essential container in task exited",
                "task arn:task:s1: Task failed container health checks"
            ]
        );
    }

    /// With no task running, a stopped task's failure stays what its reason says.
    #[test]
    fn no_running_task_is_no_partial_failure() {
        let s = Service::builder().service_name("tenant-acme").build();
        let primary = Deployment::builder()
            .task_definition("arn:td:2")
            .desired_count(2)
            .build();
        let stopped = [task("arn:task:s1", "arn:td:2", "STOPPED", Some("x"))];
        let old = [task("arn:task:o1", "arn:td:1", "RUNNING", None)];
        assert!(partial_failure("tenant-acme", &s, &primary, &[], &stopped).is_none());
        assert!(partial_failure("tenant-acme", &s, &primary, &old, &stopped).is_none());
        let ours = [task("arn:task:r1", "arn:td:2", "RUNNING", None)];
        let old_stopped = [task(
            "arn:task:o2",
            "arn:td:1",
            "STOPPED",
            Some("scaled in"),
        )];
        assert!(partial_failure("tenant-acme", &s, &primary, &ours, &old_stopped).is_none());
        assert!(partial_failure("tenant-acme", &s, &primary, &ours, &stopped).is_some());
    }
}
