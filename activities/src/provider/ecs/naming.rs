//! Names, marks and secret scope: what the provider calls a tenant's service and task
//! definition family, the `clientToken` of a create, the tags that mark what the worker
//! manages (and reading them back for the sweeper), and which secret references a tenant's
//! spec may use.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{Service, Tag};
use compute_contract::digest::sha256_hex;

use super::{PROVIDER, config::TENANT_PLACEHOLDER};
use crate::{
    contract::ComputeSpec,
    error::{ComputeError, Result},
    provider::{ManagedResource, OperationContext},
};

/// The service name of a tenant (also its task definition family).
pub fn service_name(tenant_id: &str) -> String {
    format!("tenant-{tenant_id}")
}

/// A `clientToken` (at most 36 characters) derived from the execution id.
pub fn client_token(execution_id: &str) -> String {
    // 16 bytes in hex: 32 characters, within ECS's limit of 36.
    sha256_hex(execution_id, 32)
}

/// The tags of everything the provider creates for `op`: the request's `metadata`, and the
/// marks [`managed_resource`] reads back.
pub(super) fn tags(op: &OperationContext, metadata: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut tags: BTreeMap<String, String> = metadata.clone();
    tags.insert("tenant-id".into(), op.tenant_id.clone());
    tags.insert("execution-id".into(), op.execution_id.clone());
    tags.insert("managed-by".into(), "compute-worker".into());
    tags.into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// The tags a request's metadata asks for (labels, owner, environment).
pub(super) fn metadata_tags(op: &OperationContext) -> BTreeMap<String, String> {
    let mut tags = op.metadata.labels.clone();
    if let Some(owner) = &op.metadata.owner {
        tags.insert("owner".into(), owner.clone());
    }
    if let Some(env) = &op.metadata.environment {
        tags.insert("environment".into(), env.clone());
    }
    tags
}

/// The tenant's compute, if `service` (described with its tags) is an active service the
/// worker manages.
pub(super) fn managed_resource(service: &Service) -> Option<ManagedResource> {
    if service.status() != Some("ACTIVE") {
        return None;
    }
    let tag = |key: &str| {
        service
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value().map(str::to_string))
    };
    if tag("managed-by").as_deref() != Some("compute-worker") {
        return None;
    }
    Some(ManagedResource {
        tenant_id: tag("tenant-id")?,
        kind: "ecs-service".into(),
        id: service.service_arn().unwrap_or_default().to_string(),
        execution_id: tag("execution-id"),
    })
}

/// The default secret scope: the worker's own account and region, any SSM parameter or
/// Secrets Manager secret.
pub fn default_secret_arn_prefixes(partition: &str, region: &str, account: &str) -> Vec<String> {
    vec![
        format!("arn:{partition}:ssm:{region}:{account}:parameter/"),
        format!("arn:{partition}:secretsmanager:{region}:{account}:secret:"),
    ]
}

/// The default secret scope, from the SDK's region and the account and partition STS
/// names for the worker's credentials.
pub(super) async fn own_account_prefixes(
    sdk: &aws_config::SdkConfig,
    timeouts: &aws_config::timeout::TimeoutConfig,
) -> Result<Vec<String>> {
    use aws_sdk_sts::error::ProvideErrorMetadata;
    const HINT: &str = "set --ecs-secret-arn-prefix to the ARN prefixes tenants' secrets may \
                        come from";
    let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
        ComputeError::invalid(format!(
            "the ECS provider has no AWS region (AWS_REGION) to scope secrets to the worker's \
             own region: {HINT}"
        ))
    })?;
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(sdk)
            .timeout_config(timeouts.clone())
            .build(),
    );
    let identity = sts.get_caller_identity().send().await.map_err(|e| {
        ComputeError::invalid(format!(
            "the ECS provider could not learn the worker's AWS account from STS \
             GetCallerIdentity to scope secrets to it: {HINT}"
        ))
        .with_provider(PROVIDER, Some(e.code().unwrap_or("GetCallerIdentity")))
        .with_root_cause(aws_sdk_sts::error::DisplayErrorContext(&e))
    })?;
    let account = identity.account().unwrap_or_default();
    // The partition (aws, aws-cn, aws-us-gov, ...) is the caller ARN's second field.
    let partition = identity
        .arn()
        .and_then(|a| a.split(':').nth(1))
        .unwrap_or_default();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || partition.is_empty() {
        return Err(ComputeError::invalid(format!(
            "STS GetCallerIdentity named no usable account and partition: {HINT}"
        )));
    }
    Ok(default_secret_arn_prefixes(partition, &region, account))
}

/// Whether `value_from` is under `prefix` for the tenant.
pub(super) fn under_prefix(prefix: &str, tenant_id: &str, value_from: &str) -> bool {
    let Some((before, after)) = prefix.split_once(TENANT_PLACEHOLDER) else {
        return value_from.starts_with(prefix);
    };
    // A tenant id is letters, digits and '-': only a separator after it keeps tenant `ab`'s
    // prefix from being tenant `abc`'s too.
    after.starts_with(['/', ':', '.', '_'])
        && value_from
            .strip_prefix(before)
            .and_then(|r| r.strip_prefix(tenant_id))
            .is_some_and(|r| r.starts_with(after))
}

/// Whether a `valueFrom` is the ARN of an SSM parameter or a Secrets Manager secret
/// (`arn:<partition>:ssm|secretsmanager:<region>:<account>:...`).
pub fn is_secret_arn(v: &str) -> bool {
    let parts: Vec<&str> = v.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && matches!(parts[2], "ssm" | "secretsmanager")
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && !parts[5].is_empty()
        && !v.chars().any(char::is_whitespace)
}

/// Checks that every secret's `valueFrom` is under one of the allowed `prefixes`.
pub(super) fn check_secrets(
    prefixes: &[String],
    tenant_id: &str,
    spec: &ComputeSpec,
) -> Result<()> {
    for (i, s) in spec.secrets.iter().enumerate() {
        let allowed = s
            .value_from
            .as_deref()
            .is_some_and(|v| prefixes.iter().any(|p| under_prefix(p, tenant_id, v)));
        if !allowed {
            return Err(ComputeError::invalid(format!(
                "spec.secrets[{i}].valueFrom: must be under an ARN prefix the operator \
                 allowed (--ecs-secret-arn-prefix; by default, an SSM parameter or Secrets \
                 Manager secret of the worker's own account and region)"
            )));
        }
    }
    Ok(())
}

/// The ECS provider's own checks: an image, and secrets as SSM / Secrets Manager references.
pub(super) fn validate_spec(spec: &ComputeSpec) -> Result<()> {
    if spec.image.is_none() {
        return Err(ComputeError::invalid(
            "spec.image: is required by the ECS provider",
        ));
    }
    for (i, s) in spec.secrets.iter().enumerate() {
        // Only a full ARN: a bare parameter name cannot be told apart from a secret value
        // pasted where the reference belongs.
        match &s.value_from {
            Some(v) if is_secret_arn(v) => {}
            _ => {
                return Err(ComputeError::invalid(format!(
                    "spec.secrets[{i}].valueFrom: the ECS provider needs the full ARN of an \
                     SSM parameter or a Secrets Manager secret"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aws_smithy_mocks::{RuleMode, mock_client};

    use super::*;
    use crate::{
        error::ErrorCode,
        provider::{
            ComputeProvider,
            ecs::{
                config::EcsConfig,
                fixtures::{config, spec},
                provider::EcsProvider,
            },
        },
    };

    #[test]
    fn only_secret_arns_are_references() {
        for good in [
            "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
            "arn:aws-us-gov:ssm:us-gov-west-1:123456789012:parameter/x",
        ] {
            assert!(is_secret_arn(good), "{good}");
        }
        for bad in [
            "hunter2",
            "/prod/db/password",
            "arn:aws:s3:::bucket/key",
            "arn:aws:ssm:us-east-1:1234:parameter/x",
            "arn:aws:ssm:us-east-1:123456789012:",
            "arn:aws:ssm:us-east-1:123456789012:parameter/a b",
        ] {
            assert!(!is_secret_arn(bad), "{bad}");
        }
    }

    const ACCOUNT: &str = "123456789012";

    fn with_secrets(value_froms: &[&str]) -> ComputeSpec {
        ComputeSpec {
            secrets: value_froms
                .iter()
                .enumerate()
                .map(|(i, v)| crate::contract::SecretRef {
                    name: format!("S{i}"),
                    value_from: Some(v.to_string()),
                    secret_key_ref: None,
                })
                .collect(),
            ..spec()
        }
    }

    /// A provider allowing `prefixes`, on a client that is never called.
    fn scoped(prefixes: Vec<String>) -> EcsProvider {
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, []);
        EcsProvider::with_client(
            client,
            EcsConfig {
                secret_arn_prefixes: prefixes,
                ..config()
            },
        )
    }

    /// The refusal of `value_from` for `tenant`, or `None` when it is allowed.
    fn refusal(provider: &EcsProvider, tenant: &str, value_from: &str) -> Option<ComputeError> {
        let e = provider
            .validate(tenant, &with_secrets(&[value_from]))
            .err()?;
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        assert!(!e.retriable);
        assert!(
            e.message.starts_with("spec.secrets[0].valueFrom: "),
            "{}",
            e.message
        );
        assert!(!e.message.contains(value_from), "repeats the ARN: {e}");
        Some(e)
    }

    #[tokio::test]
    async fn secrets_default_to_the_workers_own_account_and_region() {
        let provider = scoped(default_secret_arn_prefixes("aws", "us-east-1", ACCOUNT));
        for allowed in [
            "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db",
            "arn:aws:ssm:us-east-1:123456789012:parameter/x",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf:password::",
        ] {
            assert!(refusal(&provider, "acme", allowed).is_none(), "{allowed}");
        }
        for refused in [
            // Another account, another region, another partition.
            "arn:aws:ssm:us-east-1:210987654321:parameter/prod/db",
            "arn:aws:secretsmanager:us-east-1:210987654321:secret:db-AbCdEf",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/prod/db",
            "arn:aws-cn:ssm:us-east-1:123456789012:parameter/prod/db",
            // Another service, or another kind of resource of the same.
            "arn:aws:kms:us-east-1:123456789012:key/1234",
            "arn:aws:ssm:us-east-1:123456789012:document/x",
            // The account spelled with more digits after ours.
            "arn:aws:ssm:us-east-1:1234567890123:parameter/x",
        ] {
            assert!(refusal(&provider, "acme", refused).is_some(), "{refused}");
        }
        // The index names the secret refused.
        let e = provider
            .validate(
                "acme",
                &with_secrets(&[
                    "arn:aws:ssm:us-east-1:123456789012:parameter/ok",
                    "arn:aws:ssm:us-east-1:210987654321:parameter/no",
                ]),
            )
            .unwrap_err();
        assert!(e.message.starts_with("spec.secrets[1].valueFrom"), "{e}");
        // Without prefixes (a provider over a bare client), nothing is allowed.
        assert!(
            refusal(
                &scoped(Vec::new()),
                "acme",
                "arn:aws:ssm:us-east-1:123456789012:parameter/x"
            )
            .is_some()
        );
    }

    #[tokio::test]
    async fn configured_secret_prefixes_replace_the_default() {
        let provider = scoped(vec![
            "arn:aws:ssm:eu-west-1:210987654321:parameter/shared/".into(),
            "arn:aws:secretsmanager:eu-west-1:210987654321:secret:tenants/{tenantId}/".into(),
        ]);
        for allowed in [
            "arn:aws:ssm:eu-west-1:210987654321:parameter/shared/db",
            "arn:aws:secretsmanager:eu-west-1:210987654321:secret:tenants/acme/db-AbCdEf",
        ] {
            assert!(refusal(&provider, "acme", allowed).is_none(), "{allowed}");
        }
        for refused in [
            // The worker's own account is no longer implied.
            "arn:aws:ssm:us-east-1:123456789012:parameter/shared/db",
            "arn:aws:ssm:eu-west-1:210987654321:parameter/private/db",
            // Another tenant's, including one whose id extends ours.
            "arn:aws:secretsmanager:eu-west-1:210987654321:secret:tenants/other/db",
            "arn:aws:secretsmanager:eu-west-1:210987654321:secret:tenants/acme-corp/db",
            "arn:aws:secretsmanager:eu-west-1:210987654321:secret:tenants/acmecorp/db",
        ] {
            assert!(refusal(&provider, "acme", refused).is_some(), "{refused}");
        }
        assert!(
            refusal(
                &provider,
                "acme-corp",
                "arn:aws:secretsmanager:eu-west-1:210987654321:secret:tenants/acme-corp/db"
            )
            .is_none()
        );
    }

    #[test]
    fn secret_prefix_configuration_is_checked() {
        let check = |p: &str| {
            EcsConfig {
                secret_arn_prefixes: vec![p.into()],
                // FARGATE without subnets is valid only with `ecs-default-vpc`.
                subnets: vec!["subnet-1".into()],
                ..EcsConfig::default()
            }
            .check()
        };
        for good in [
            "arn:aws:ssm:us-east-1:123456789012:",
            "arn:aws:ssm:us-east-1:123456789012:parameter/prod/",
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:",
            "arn:aws:ssm:us-east-1:123456789012:parameter/t/{tenantId}/",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:{tenantId}_",
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "arn:",
            "arn:aws:ssm:",
            "arn:aws:ssm:us-east-1:123456789012",
            "arn:aws:ssm::123456789012:parameter/",
            "arn:aws:s3:us-east-1:123456789012:bucket",
            "arn:aws:ssm:*:123456789012:parameter/",
            "arn:aws:ssm:us-east-1:{tenantId}:parameter/",
            "arn:aws:ssm:us-east-1:123456789012:parameter/{tenantId}",
            "arn:aws:ssm:us-east-1:123456789012:parameter/{tenantId}-",
            "arn:aws:ssm:us-east-1:123456789012:parameter/{tenantId}/{tenantId}/",
        ] {
            let e = check(bad).expect_err(bad);
            assert!(
                e.message.starts_with("--ecs-secret-arn-prefix"),
                "{bad}: {e}"
            );
        }
        let e = EcsConfig {
            attempt_timeout_ms: 40_000,
            ..EcsConfig::default()
        }
        .check()
        .unwrap_err();
        assert!(e.message.contains("--ecs-call-timeout"), "{e}");
        assert!(config().check().is_ok());
        if cfg!(feature = "ecs-default-vpc") {
            assert!(EcsConfig::default().check().is_ok());
        }
    }

    #[test]
    fn validation_and_names() {
        let provider_spec = ComputeSpec::default();
        let e = EcsProvider::validate_spec(&provider_spec).unwrap_err();
        assert!(e.message.starts_with("spec.image"));
        let mut s = spec();
        s.secrets.push(crate::contract::SecretRef {
            name: "DB".into(),
            value_from: Some("env:DB".into()),
            secret_key_ref: None,
        });
        assert!(
            EcsProvider::validate_spec(&s)
                .unwrap_err()
                .message
                .starts_with("spec.secrets[0].valueFrom")
        );
        assert_eq!(service_name("acme"), "tenant-acme");
        let token = client_token("acme-provision-0011223344556677");
        assert!(token.len() <= 36);
        assert_eq!(token, client_token("acme-provision-0011223344556677"));
        assert_ne!(token, client_token("acme-provision-0011223344556678"));
    }

    /// The token ECS remembers a create by: a change would let a retry of an execution
    /// started before it create a second service.
    #[test]
    fn client_tokens_are_stable() {
        assert_eq!(
            client_token("acme-provision-0011223344556677"),
            "846a3de267d87ac77890f9341bad584c"
        );
    }
}
