//! The ECS provider's settings (`--ecs-*`), compiled with or without the `ecs` feature so
//! that a worker built without it can still name the provider in its start-up error.

use serde::{Deserialize, Serialize};

use crate::error::{ComputeError, Result};

/// Stands for the tenant's id in [`EcsConfig::secret_arn_prefixes`].
pub const TENANT_PLACEHOLDER: &str = "{tenantId}";
/// Why a FARGATE service cannot start without `--ecs-subnets` in this build.
pub const NO_SUBNETS: &str = if cfg!(feature = "ecs-default-vpc") {
    "--ecs-subnets: FARGATE services need subnets"
} else {
    "--ecs-subnets is required for FARGATE services: this worker is built without the cargo \
     feature `ecs-default-vpc`, which would use the region's default VPC"
};

/// ECS provider settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EcsConfig {
    /// The cluster every tenant service lives in.
    pub cluster: String,
    /// `FARGATE` or `EC2`.
    pub launch_type: String,
    /// Subnets of the services' awsvpc network configuration.
    pub subnets: Vec<String>,
    /// Security groups of the services' awsvpc network configuration.
    pub security_groups: Vec<String>,
    /// Whether tasks get a public IP.
    pub assign_public_ip: bool,
    /// Task execution role (pulls images, reads secrets).
    pub execution_role_arn: Option<String>,
    /// Task role (what the workload may call).
    pub task_role_arn: Option<String>,
    /// CloudWatch Logs group for the containers' output.
    pub log_group: Option<String>,
    /// How often the shared observer describes the in-flight services.
    pub observe_interval_ms: u64,
    /// The ARN prefixes a secret's `valueFrom` must start with (`{tenantId}` in one stands
    /// for the tenant's id). Empty: the worker's own account and region, any SSM parameter
    /// or Secrets Manager secret (the account is asked of STS at start).
    pub secret_arn_prefixes: Vec<String>,
    /// The longest one AWS call may take, its attempts together.
    pub call_timeout_ms: u64,
    /// The longest one attempt of an AWS call may take.
    pub attempt_timeout_ms: u64,
}

impl Default for EcsConfig {
    fn default() -> Self {
        EcsConfig {
            cluster: "default".into(),
            launch_type: "FARGATE".into(),
            subnets: Vec::new(),
            security_groups: Vec::new(),
            assign_public_ip: false,
            execution_role_arn: None,
            task_role_arn: None,
            log_group: None,
            observe_interval_ms: 5000,
            secret_arn_prefixes: Vec::new(),
            call_timeout_ms: 30_000,
            attempt_timeout_ms: 10_000,
        }
    }
}

impl EcsConfig {
    /// Checks the settings a provider cannot work with, at start.
    pub fn check(&self) -> Result<()> {
        if self.launch_type != "FARGATE" && self.launch_type != "EC2" {
            return Err(ComputeError::invalid(
                "--ecs-launch-type must be FARGATE or EC2",
            ));
        }
        if self.attempt_timeout_ms == 0 || self.call_timeout_ms < self.attempt_timeout_ms {
            return Err(ComputeError::invalid(
                "--ecs-attempt-timeout must be more than zero and --ecs-call-timeout at least \
                 as long",
            ));
        }
        #[cfg(not(feature = "ecs-default-vpc"))]
        if self.launch_type == "FARGATE" && self.subnets.is_empty() {
            return Err(ComputeError::invalid(NO_SUBNETS));
        }
        for prefix in &self.secret_arn_prefixes {
            check_secret_arn_prefix(prefix)?;
        }
        Ok(())
    }
}

/// Checks one configured `valueFrom` prefix: a full ARN up to and including the account, so
/// a prefix cannot open every account or region by accident.
fn check_secret_arn_prefix(prefix: &str) -> Result<()> {
    let invalid = || {
        ComputeError::invalid(
            "--ecs-secret-arn-prefix: each prefix must be an SSM or Secrets Manager ARN up to \
             its account and ':' at least (arn:aws:ssm:us-east-1:123456789012:parameter/...), \
             with {tenantId} at most once, in the name and followed by '/', ':', '.' or '_'",
        )
    };
    let parts: Vec<&str> = prefix.splitn(6, ':').collect();
    let [arn, partition, service, region, account, name] = parts[..] else {
        return Err(invalid());
    };
    let header_ok = arn == "arn"
        && partition.starts_with("aws")
        && matches!(service, "ssm" | "secretsmanager")
        // A prefix is literal: a region such as `*` would match nothing, silently.
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !prefix.chars().any(char::is_whitespace);
    let placeholder_ok = match name.matches(TENANT_PLACEHOLDER).count() {
        0 => true,
        1 => name
            .split_once(TENANT_PLACEHOLDER)
            .is_some_and(|(_, after)| after.starts_with(['/', ':', '.', '_'])),
        _ => false,
    };
    if header_ok && placeholder_ok && !prefix[..prefix.len() - name.len()].contains('{') {
        Ok(())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fargate_without_subnets_needs_the_default_vpc_feature() {
        let config = EcsConfig::default();
        let checked = config.check();
        if cfg!(feature = "ecs-default-vpc") {
            assert!(checked.is_ok(), "{checked:?}");
        } else {
            let e = checked.unwrap_err();
            assert!(e.message.contains("`ecs-default-vpc`"), "{}", e.message);
        }
        let with_subnets = EcsConfig {
            subnets: vec!["subnet-1".into()],
            ..EcsConfig::default()
        };
        assert!(with_subnets.check().is_ok());
        let ec2 = EcsConfig {
            launch_type: "EC2".into(),
            ..EcsConfig::default()
        };
        assert!(ec2.check().is_ok(), "bridge networking needs no subnets");
    }
}
