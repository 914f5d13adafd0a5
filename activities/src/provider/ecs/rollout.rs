//! Rollout: what a described service says about an execution (done, failed, or how far
//! along) from its deployments, and, where their counts are not enough, from its tasks.

use aws_sdk_ecs::{
    Client,
    types::{DeploymentRolloutState, DesiredStatus, Service},
};

use super::{PROVIDER, errors::classify, errors::stopped_task_error};
use crate::{
    contract::{Operation, Progress, ResourceIds},
    error::{ComputeError, ErrorCode},
    provider::Observation,
};

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
    /// Why the service's most recent stopped task stopped, if ECS says.
    async fn stopped_reason(&self, name: &str) -> Option<String> {
        let stopped = self
            .client
            .list_tasks()
            .cluster(self.cluster)
            .service_name(name)
            .desired_status(DesiredStatus::Stopped)
            .send()
            .await
            .ok()?;
        let arns: Vec<String> = stopped.task_arns().iter().take(10).cloned().collect();
        if arns.is_empty() {
            return None;
        }
        let tasks = self
            .client
            .describe_tasks()
            .cluster(self.cluster)
            .set_tasks(Some(arns))
            .send()
            .await
            .ok()?;
        tasks
            .tasks()
            .iter()
            .find_map(|t| t.stopped_reason().map(str::to_string))
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
        _ if primary.failed_tasks() > 0 => match tasks.stopped_reason(name).await {
            Some(reason) => Observation::Failed(stopped_task_error(&reason)),
            None => Observation::InProgress(progress),
        },
        _ if primary.running_count() >= primary.desired_count()
            && primary.pending_count() == 0
            && s.deployments().len() == 1 =>
        {
            tasks.succeeded(s, name).await
        }
        _ => Observation::InProgress(progress),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
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
        use aws_sdk_ecs::{
            operation::{describe_tasks::DescribeTasksOutput, list_tasks::ListTasksOutput},
            types::{Deployment, Task},
        };
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
}
