//! What the ECS provider's unit tests share: an operation, a spec, a configuration, and the
//! ECS answers most of them start from.

use aws_sdk_ecs::{
    operation::{
        describe_services::DescribeServicesOutput,
        describe_task_definition::DescribeTaskDefinitionError,
    },
    types::{Failure, error::ClientException},
};

use super::config::EcsConfig;
use crate::{
    contract::{ComputeSpec, Metadata, Operation},
    provider::OperationContext,
};

pub(super) fn op(operation: Operation) -> OperationContext {
    OperationContext {
        execution_id: "acme-provision-0011223344556677".into(),
        tenant_id: "acme".into(),
        operation,
        metadata: Metadata {
            owner: Some("alice".into()),
            ..Metadata::default()
        },
    }
}

pub(super) fn spec() -> ComputeSpec {
    ComputeSpec {
        image: Some("nginx:1.25".into()),
        ..ComputeSpec::default()
    }
}

pub(super) fn config() -> EcsConfig {
    EcsConfig {
        cluster: "prod".into(),
        subnets: vec!["subnet-1".into()],
        security_groups: vec!["sg-1".into()],
        observe_interval_ms: 50,
        ..EcsConfig::default()
    }
}

/// DescribeServices' answer for a tenant without a service.
pub(super) fn no_service() -> DescribeServicesOutput {
    DescribeServicesOutput::builder()
        .failures(
            Failure::builder()
                .arn("tenant-acme")
                .reason("MISSING")
                .build(),
        )
        .build()
}

/// DescribeTaskDefinition's answer for a family that does not exist yet.
pub(super) fn family_missing() -> DescribeTaskDefinitionError {
    DescribeTaskDefinitionError::ClientException(
        ClientException::builder()
            .message("Unable to describe task definition.")
            .build(),
    )
}

/// RegisterTaskDefinition's answer: revision `arn:td:1`.
pub(super) fn registered()
-> aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionOutput {
    aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionOutput::builder()
        .task_definition(
            aws_sdk_ecs::types::TaskDefinition::builder()
                .task_definition_arn("arn:td:1")
                .build(),
        )
        .build()
}
