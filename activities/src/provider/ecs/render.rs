//! Rendering: what a spec and the provider's settings become in ECS requests. The container
//! and task settings (with the spec hash that tells a family's revisions apart), the
//! RegisterTaskDefinition request, and the services' launch type and awsvpc network.

use std::collections::BTreeMap;

use aws_sdk_ecs::{
    Client,
    operation::{
        describe_task_definition::DescribeTaskDefinitionOutput,
        register_task_definition::builders::RegisterTaskDefinitionFluentBuilder,
    },
    types::{
        AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerDefinition, KeyValuePair,
        LaunchType, LogConfiguration, LogDriver, NetworkConfiguration, NetworkMode, PortMapping,
        Secret, Tag, TaskDefinitionStatus,
    },
};
use compute_contract::digest::sha256_hex;

use super::config::EcsConfig;
use crate::{
    contract::ComputeSpec,
    error::{ComputeError, Result},
};

const CONTAINER: &str = "app";
const SPEC_HASH_TAG: &str = "compute-worker/spec-hash";

/// The container and task settings a spec renders to.
#[derive(Debug, Clone)]
pub(super) struct Rendered {
    pub(super) container: ContainerDefinition,
    /// CPU units.
    pub(super) cpu: String,
    /// MiB.
    pub(super) memory: String,
    /// What compares revisions: equal hashes render the same.
    pub(super) hash: String,
}

/// Whether services run on FARGATE (else EC2).
pub(super) fn fargate(config: &EcsConfig) -> bool {
    config.launch_type == "FARGATE"
}

/// The launch type of services.
pub(super) fn launch_type(config: &EcsConfig) -> LaunchType {
    if fargate(config) {
        LaunchType::Fargate
    } else {
        LaunchType::Ec2
    }
}

/// Whether tasks get their own network interface: FARGATE needs one, and EC2 tasks take one
/// when subnets are configured.
pub(super) fn awsvpc(config: &EcsConfig) -> bool {
    fargate(config) || !config.subnets.is_empty()
}

/// The container and task settings `spec` renders to under `config`.
pub(super) fn render(config: &EcsConfig, spec: &ComputeSpec) -> Result<Rendered> {
    let image = spec
        .image
        .clone()
        .ok_or_else(|| ComputeError::invalid("spec.image: is required by the ECS provider"))?;
    let cpu_units = spec
        .cpu
        .map_or(256, |c| (c * 1024.0).round() as i32)
        .max(128);
    let memory = spec.memory.map_or(512, |m| m as i32);
    let mut env: BTreeMap<&String, &String> = spec.config.iter().collect();
    env.extend(spec.env.iter());
    let mut secrets = Vec::new();
    for (i, s) in spec.secrets.iter().enumerate() {
        let value_from = s.value_from.clone().ok_or_else(|| {
            ComputeError::invalid(format!(
                "spec.secrets[{i}].valueFrom: the ECS provider needs an SSM or Secrets Manager reference"
            ))
        })?;
        secrets.push(
            Secret::builder()
                .name(&s.name)
                .value_from(value_from)
                .build()
                .map_err(|e| ComputeError::internal(format!("building a secret: {e}")))?,
        );
    }
    let mut container = ContainerDefinition::builder()
        .name(CONTAINER)
        .image(&image)
        .essential(true)
        .memory(memory)
        .set_entry_point((!spec.command.is_empty()).then(|| spec.command.clone()))
        .set_command((!spec.args.is_empty()).then(|| spec.args.clone()))
        .set_environment(Some(
            env.iter()
                .map(|(k, v)| KeyValuePair::builder().name(*k).value(*v).build())
                .collect(),
        ))
        .set_secrets(Some(secrets));
    if let Some(port) = spec.port {
        container =
            container.port_mappings(PortMapping::builder().container_port(port as i32).build());
    }
    if let Some(group) = &config.log_group {
        container = container.log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::Awslogs)
                .options("awslogs-group", group)
                .options("awslogs-stream-prefix", "tenant")
                .build()
                .map_err(|e| {
                    ComputeError::internal(format!("building the log configuration: {e}"))
                })?,
        );
    }
    let container = container.build();
    // Secrets are references, so hashing the rendered form hashes no secret value.
    let fingerprint = format!(
        "{:?}|{cpu_units}|{memory}|{:?}|{:?}|{}",
        container, config.execution_role_arn, config.task_role_arn, config.launch_type
    );
    Ok(Rendered {
        container,
        cpu: cpu_units.to_string(),
        memory: memory.to_string(),
        // 12 bytes in hex.
        hash: sha256_hex(fingerprint, 24),
    })
}

/// The ARN of the family's latest revision (as DescribeTaskDefinition answered with its
/// tags) when it is active and renders as `rendered`.
pub(super) fn current_revision<'a>(
    latest: &'a DescribeTaskDefinitionOutput,
    rendered: &Rendered,
) -> Option<&'a str> {
    let same = latest
        .tags()
        .iter()
        .any(|t| t.key() == Some(SPEC_HASH_TAG) && t.value() == Some(rendered.hash.as_str()));
    let definition = latest.task_definition()?;
    let active = definition.status() == Some(&TaskDefinitionStatus::Active);
    if same && active {
        definition.task_definition_arn()
    } else {
        None
    }
}

/// The RegisterTaskDefinition request of a new revision of `family`, tagged with `tags` and
/// the spec hash.
pub(super) fn register_request(
    client: &Client,
    config: &EcsConfig,
    family: &str,
    rendered: Rendered,
    mut tags: Vec<Tag>,
) -> RegisterTaskDefinitionFluentBuilder {
    tags.push(
        Tag::builder()
            .key(SPEC_HASH_TAG)
            .value(&rendered.hash)
            .build(),
    );
    let mut req = client
        .register_task_definition()
        .family(family)
        .container_definitions(rendered.container)
        .cpu(rendered.cpu)
        .memory(rendered.memory)
        .set_execution_role_arn(config.execution_role_arn.clone())
        .set_task_role_arn(config.task_role_arn.clone())
        .set_tags(Some(tags));
    if awsvpc(config) {
        req = req.network_mode(NetworkMode::Awsvpc);
    }
    if fargate(config) {
        req = req.requires_compatibilities(Compatibility::Fargate);
    }
    req
}

/// The awsvpc network configuration of services.
pub(super) fn network_configuration(
    subnets: Vec<String>,
    security_groups: Vec<String>,
    assign_public_ip: bool,
) -> Result<NetworkConfiguration> {
    let vpc = AwsVpcConfiguration::builder()
        .set_subnets(Some(subnets))
        .set_security_groups(Some(security_groups))
        .assign_public_ip(if assign_public_ip {
            AssignPublicIp::Enabled
        } else {
            AssignPublicIp::Disabled
        })
        .build()
        .map_err(|e| ComputeError::internal(format!("building the network configuration: {e}")))?;
    Ok(NetworkConfiguration::builder()
        .awsvpc_configuration(vpc)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes the provider computed before it used the shared digest (the first 24 hex
    /// digits of the fingerprint's SHA-256): a change here would make every tenant's next
    /// update register a new revision. No log group: its options are a `HashMap`, whose
    /// Debug order is not the same from one process to the next.
    #[test]
    fn spec_hashes_are_stable() {
        let config = EcsConfig {
            cluster: "prod".into(),
            subnets: vec!["subnet-1".into()],
            execution_role_arn: Some("arn:role".into()),
            ..EcsConfig::default()
        };
        let mut spec = ComputeSpec {
            image: Some("nginx:1.25".into()),
            port: Some(8080),
            cpu: Some(0.5),
            memory: Some(1024),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "x".into()],
            ..ComputeSpec::default()
        };
        spec.env.insert("A".into(), "1".into());
        spec.config.insert("B".into(), "2".into());
        spec.secrets.push(crate::contract::SecretRef {
            name: "S".into(),
            value_from: Some("arn:aws:ssm:us-east-1:123456789012:parameter/x".into()),
            secret_key_ref: None,
        });
        let full = render(&config, &spec).unwrap();
        assert_eq!(
            (full.cpu.as_str(), full.memory.as_str(), full.hash.as_str()),
            ("512", "1024", "ca1557fe0404486c8d3fe6a2")
        );
        let minimal = ComputeSpec {
            image: Some("nginx:1.25".into()),
            ..ComputeSpec::default()
        };
        let min = render(&config, &minimal).unwrap();
        assert_eq!(
            (min.cpu.as_str(), min.memory.as_str(), min.hash.as_str()),
            ("256", "512", "c2aef6c456e948cc139f179e")
        );
        assert!(render(&config, &ComputeSpec::default()).is_err());
    }
}
