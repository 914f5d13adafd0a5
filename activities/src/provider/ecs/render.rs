//! Rendering: what a spec and the provider's settings become in ECS requests. The container
//! and task settings (with the spec hash that tells a family's revisions apart), the
//! RegisterTaskDefinition request, and the services' launch type and awsvpc network.

use std::collections::BTreeMap;

use serde::Serialize;

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
pub(super) const SPEC_HASH_TAG: &str = "compute-worker/spec-hash";

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
    let cpu = cpu_units.to_string();
    let memory = memory.to_string();
    let hash = spec_hash(config, &container, &cpu, &memory)?;
    Ok(Rendered {
        container,
        cpu,
        memory,
        hash,
    })
}

/// What a RegisterTaskDefinition request registers, in one canonical form: every field
/// [`register_request`] sends except the family and the tags, with every map and list whose
/// order means nothing sorted. Serialized to JSON (fields in declaration order), it is the
/// same bytes in every process, which the SDK types' `Debug` is not: it hides `environment`
/// and prints the log options' `HashMap` in a per-process order.
#[derive(Serialize)]
struct Registered<'a> {
    container: RegisteredContainer<'a>,
    cpu: &'a str,
    memory: &'a str,
    execution_role_arn: Option<&'a str>,
    task_role_arn: Option<&'a str>,
    network_mode: Option<&'a str>,
    requires_compatibilities: Vec<&'a str>,
}

/// The container of [`Registered`].
#[derive(Serialize)]
struct RegisteredContainer<'a> {
    name: Option<&'a str>,
    image: Option<&'a str>,
    essential: Option<bool>,
    memory: Option<i32>,
    entry_point: &'a [String],
    command: &'a [String],
    /// Name and value, sorted.
    environment: Vec<(Option<&'a str>, Option<&'a str>)>,
    /// Name and reference (`valueFrom`, never a secret's value), sorted.
    secrets: Vec<(&'a str, &'a str)>,
    /// Container port, host port and protocol, sorted.
    port_mappings: Vec<(Option<i32>, Option<i32>, Option<&'a str>)>,
    log_configuration: Option<RegisteredLogs<'a>>,
}

/// The log configuration of [`RegisteredContainer`].
#[derive(Serialize)]
struct RegisteredLogs<'a> {
    driver: &'a str,
    options: BTreeMap<&'a str, &'a str>,
    /// Name and reference, sorted.
    secret_options: Vec<(&'a str, &'a str)>,
}

/// Name and reference of each secret, sorted.
fn secret_refs(secrets: &[Secret]) -> Vec<(&str, &str)> {
    let mut refs: Vec<_> = secrets.iter().map(|s| (s.name(), s.value_from())).collect();
    refs.sort_unstable();
    refs
}

/// The spec hash of a revision registering `container` with `cpu` and `memory` under
/// `config`: the first 24 hex digits (12 bytes) of the SHA-256 of its [`Registered`] form.
/// Environment values are hashed as registered (the revision holds them in the clear);
/// secrets only by reference.
fn spec_hash(
    config: &EcsConfig,
    container: &ContainerDefinition,
    cpu: &str,
    memory: &str,
) -> Result<String> {
    let mut environment: Vec<_> = container
        .environment()
        .iter()
        .map(|kv| (kv.name(), kv.value()))
        .collect();
    environment.sort_unstable();
    let mut port_mappings: Vec<_> = container
        .port_mappings()
        .iter()
        .map(|p| {
            (
                p.container_port(),
                p.host_port(),
                p.protocol().map(|p| p.as_str()),
            )
        })
        .collect();
    port_mappings.sort_unstable();
    let network_mode = network_mode(config);
    let compatibilities = compatibilities(config);
    let registered = Registered {
        container: RegisteredContainer {
            name: container.name(),
            image: container.image(),
            essential: container.essential(),
            memory: container.memory(),
            entry_point: container.entry_point(),
            command: container.command(),
            environment,
            secrets: secret_refs(container.secrets()),
            port_mappings,
            log_configuration: container.log_configuration().map(|l| RegisteredLogs {
                driver: l.log_driver().as_str(),
                options: l
                    .options()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                secret_options: secret_refs(l.secret_options()),
            }),
        },
        cpu,
        memory,
        execution_role_arn: config.execution_role_arn.as_deref(),
        task_role_arn: config.task_role_arn.as_deref(),
        network_mode: network_mode.as_ref().map(NetworkMode::as_str),
        requires_compatibilities: compatibilities.iter().map(Compatibility::as_str).collect(),
    };
    let canonical = serde_json::to_vec(&registered)
        .map_err(|e| ComputeError::internal(format!("serializing the task definition: {e}")))?;
    Ok(sha256_hex(canonical, 24))
}

/// The network mode task definitions register: awsvpc where tasks get their own interface,
/// else ECS's default.
fn network_mode(config: &EcsConfig) -> Option<NetworkMode> {
    awsvpc(config).then_some(NetworkMode::Awsvpc)
}

/// The launch types task definitions declare they are compatible with.
fn compatibilities(config: &EcsConfig) -> Vec<Compatibility> {
    if fargate(config) {
        vec![Compatibility::Fargate]
    } else {
        Vec::new()
    }
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
    let compatibilities = compatibilities(config);
    client
        .register_task_definition()
        .family(family)
        .container_definitions(rendered.container)
        .cpu(rendered.cpu)
        .memory(rendered.memory)
        .set_execution_role_arn(config.execution_role_arn.clone())
        .set_task_role_arn(config.task_role_arn.clone())
        .set_tags(Some(tags))
        .set_network_mode(network_mode(config))
        .set_requires_compatibilities((!compatibilities.is_empty()).then_some(compatibilities))
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

    fn config() -> EcsConfig {
        EcsConfig {
            cluster: "prod".into(),
            subnets: vec!["subnet-1".into()],
            execution_role_arn: Some("arn:role".into()),
            ..EcsConfig::default()
        }
    }

    fn full_spec() -> ComputeSpec {
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
        spec
    }

    /// The hashes of the canonical form, pinned: a change here makes every tenant's next
    /// update register a new revision. The log group's options are a `HashMap` in the SDK;
    /// the canonical form sorts them, so that hash is pinned too.
    #[test]
    fn spec_hashes_are_stable() {
        let config = config();
        let full = render(&config, &full_spec()).unwrap();
        assert_eq!(
            (full.cpu.as_str(), full.memory.as_str(), full.hash.as_str()),
            ("512", "1024", "ddbccee3a72330089ae63fae")
        );
        let minimal = ComputeSpec {
            image: Some("nginx:1.25".into()),
            ..ComputeSpec::default()
        };
        let min = render(&config, &minimal).unwrap();
        assert_eq!(
            (min.cpu.as_str(), min.memory.as_str(), min.hash.as_str()),
            ("256", "512", "193d7926b99b7e9471df1643")
        );
        let logged = EcsConfig {
            log_group: Some("/tenants".into()),
            ..config.clone()
        };
        assert_eq!(
            render(&logged, &full_spec()).unwrap().hash,
            "fbf26bd75b60d92e99988d8f"
        );
        assert!(render(&config, &ComputeSpec::default()).is_err());
    }

    /// The SDK's `Debug` of a container hides its environment: an update that only changes
    /// an environment value (or adds one) must still be a new revision.
    #[test]
    fn an_env_only_change_changes_the_hash() {
        let config = config();
        let before = render(&config, &full_spec()).unwrap().hash;
        let mut changed = full_spec();
        changed.env.insert("A".into(), "2".into());
        let mut added = full_spec();
        added.env.insert("C".into(), "3".into());
        let mut from_config = full_spec();
        from_config.config.insert("B".into(), "3".into());
        let hashes = [
            render(&config, &changed).unwrap().hash,
            render(&config, &added).unwrap().hash,
            render(&config, &from_config).unwrap().hash,
        ];
        for hash in &hashes {
            assert_ne!(*hash, before);
        }
        assert_ne!(hashes[0], hashes[1]);
        assert_eq!(render(&config, &full_spec()).unwrap().hash, before);
    }

    /// With a log group, each render builds a fresh `HashMap` of options (a fresh random
    /// iteration order); the hash does not follow that order.
    #[test]
    fn a_log_group_hashes_the_same_every_time() {
        let config = EcsConfig {
            log_group: Some("/tenants".into()),
            ..config()
        };
        let first = render(&config, &full_spec()).unwrap().hash;
        for _ in 0..32 {
            assert_eq!(render(&config, &full_spec()).unwrap().hash, first);
        }
        // The same options (and secrets) inserted in the other order.
        let container = |options: &[(&str, &str)], secrets: &[(&str, &str)]| {
            let mut logs = LogConfiguration::builder().log_driver(LogDriver::Awslogs);
            for (k, v) in options {
                logs = logs.options(*k, *v);
            }
            let mut c = ContainerDefinition::builder()
                .name(CONTAINER)
                .image("nginx:1.25")
                .log_configuration(logs.build().unwrap());
            for (name, from) in secrets {
                c = c.secrets(
                    Secret::builder()
                        .name(*name)
                        .value_from(*from)
                        .build()
                        .unwrap(),
                );
            }
            c.build()
        };
        let options = [
            ("awslogs-group", "/tenants"),
            ("awslogs-stream-prefix", "tenant"),
            ("awslogs-region", "us-east-1"),
        ];
        let secrets = [("S", "arn:s"), ("T", "arn:t")];
        let mut reversed_options = options;
        reversed_options.reverse();
        let mut reversed_secrets = secrets;
        reversed_secrets.reverse();
        let a = spec_hash(&config, &container(&options, &secrets), "256", "512").unwrap();
        let b = spec_hash(
            &config,
            &container(&reversed_options, &reversed_secrets),
            "256",
            "512",
        )
        .unwrap();
        assert_eq!(a, b);
        let other = [("awslogs-group", "/other"), options[1], options[2]];
        let c = spec_hash(&config, &container(&other, &secrets), "256", "512").unwrap();
        assert_ne!(a, c);
    }
}
