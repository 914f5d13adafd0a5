//! `--ecs-*`: the ECS provider's flags and their conversion into its config.

use std::time::Duration;

use clap::Args;
use compute_activities::provider::ecs::EcsConfig;

/// Settings of the ECS provider; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct EcsArgs {
    /// ECS: the cluster every tenant service lives in.
    #[arg(long, env = "ECS_CLUSTER", default_value = "default")]
    pub ecs_cluster: String,
    /// ECS: launch type.
    #[arg(long, env = "ECS_LAUNCH_TYPE", default_value = "FARGATE", value_parser = ["FARGATE", "EC2"])]
    pub ecs_launch_type: String,
    /// ECS: subnets of the services' awsvpc configuration (comma-separated).
    #[arg(long, env = "ECS_SUBNETS", value_delimiter = ',')]
    pub ecs_subnets: Vec<String>,
    /// ECS: security groups of the services' awsvpc configuration (comma-separated).
    #[arg(long, env = "ECS_SECURITY_GROUPS", value_delimiter = ',')]
    pub ecs_security_groups: Vec<String>,
    /// ECS: give tasks a public IP.
    #[arg(long, env = "ECS_ASSIGN_PUBLIC_IP")]
    pub ecs_assign_public_ip: bool,
    /// ECS: the task execution role (image pulls, secrets).
    #[arg(long, env = "ECS_EXECUTION_ROLE_ARN")]
    pub ecs_execution_role_arn: Option<String>,
    /// ECS: the task role.
    #[arg(long, env = "ECS_TASK_ROLE_ARN")]
    pub ecs_task_role_arn: Option<String>,
    /// ECS: the CloudWatch Logs group of the containers.
    #[arg(long, env = "ECS_LOG_GROUP")]
    pub ecs_log_group: Option<String>,
    /// ECS: how often the shared observer describes in-flight services.
    #[arg(long, env = "ECS_OBSERVE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ecs_observe_interval: Duration,
    /// ECS: ARN prefixes a secret's `valueFrom` must start with (repeatable or
    /// comma-separated; `{tenantId}` stands for the tenant's id). Default: the worker's own
    /// account and region, any SSM parameter or Secrets Manager secret.
    #[arg(long, env = "ECS_SECRET_ARN_PREFIX", value_delimiter = ',')]
    pub ecs_secret_arn_prefix: Vec<String>,
    /// ECS: the longest one AWS call may take, retries included.
    #[arg(long, env = "ECS_CALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ecs_call_timeout: Duration,
    /// ECS: the longest one attempt of an AWS call may take.
    #[arg(long, env = "ECS_ATTEMPT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ecs_attempt_timeout: Duration,
}

impl From<EcsArgs> for EcsConfig {
    fn from(a: EcsArgs) -> Self {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        EcsConfig {
            cluster: a.ecs_cluster,
            launch_type: a.ecs_launch_type,
            subnets: super::non_empty(a.ecs_subnets),
            security_groups: super::non_empty(a.ecs_security_groups),
            assign_public_ip: a.ecs_assign_public_ip,
            execution_role_arn: a.ecs_execution_role_arn,
            task_role_arn: a.ecs_task_role_arn,
            log_group: a.ecs_log_group,
            observe_interval_ms: millis(a.ecs_observe_interval),
            secret_arn_prefixes: super::non_empty(a.ecs_secret_arn_prefix),
            call_timeout_ms: millis(a.ecs_call_timeout),
            attempt_timeout_ms: millis(a.ecs_attempt_timeout),
        }
    }
}
