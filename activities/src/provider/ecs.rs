//! ECS provider: a tenant's compute is an ECS service `tenant-<tenantId>` running a task
//! definition of family `tenant-<tenantId>`.
//!
//! Idempotent by construction: provision looks the service up by name before creating it,
//! and passes a `clientToken` derived from the execution id (real ECS honours it; moto does
//! not, so the look-up is what keeps a retry from making a second service there). Tracking
//! goes through one [`Observer`] per worker that batches `DescribeServices` (10 services a
//! call) for every in-flight execution. Every AWS call has an operation and an attempt
//! timeout, so a hung call cannot stall that observer.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use aws_sdk_ecs::{
    Client,
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
    types::{
        AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerDefinition,
        DeploymentRolloutState, DesiredStatus, KeyValuePair, LaunchType, LogConfiguration,
        LogDriver, NetworkConfiguration, NetworkMode, PortMapping, Secret, Service, Tag,
        TaskDefinitionField, TaskDefinitionStatus,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext};
use crate::{
    contract::{ComputeSpec, Operation, Progress, ResourceIds},
    error::{ComputeError, ErrorCode, Result},
};

const PROVIDER: &str = "ecs";
const CONTAINER: &str = "app";
const SPEC_HASH_TAG: &str = "compute-worker/spec-hash";
/// Stands for the tenant's id in [`EcsConfig::secret_arn_prefixes`].
pub const TENANT_PLACEHOLDER: &str = "{tenantId}";
/// The connect timeout of every AWS call (capped at the attempt timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        for prefix in &self.secret_arn_prefixes {
            check_secret_arn_prefix(prefix)?;
        }
        Ok(())
    }

    /// The timeouts of every AWS call.
    pub fn timeouts(&self) -> aws_config::timeout::TimeoutConfig {
        let attempt = Duration::from_millis(self.attempt_timeout_ms);
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(attempt))
            .operation_attempt_timeout(attempt)
            .operation_timeout(Duration::from_millis(self.call_timeout_ms))
            .build()
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

/// The default secret scope: the worker's own account and region, any SSM parameter or
/// Secrets Manager secret.
pub fn default_secret_arn_prefixes(partition: &str, region: &str, account: &str) -> Vec<String> {
    vec![
        format!("arn:{partition}:ssm:{region}:{account}:parameter/"),
        format!("arn:{partition}:secretsmanager:{region}:{account}:secret:"),
    ]
}

/// Whether `value_from` is under `prefix` for the tenant.
fn under_prefix(prefix: &str, tenant_id: &str, value_from: &str) -> bool {
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

/// The service name of a tenant.
pub fn service_name(tenant_id: &str) -> String {
    format!("tenant-{tenant_id}")
}

/// A `clientToken` (at most 36 characters) derived from the execution id.
pub fn client_token(execution_id: &str) -> String {
    let digest = Sha256::digest(execution_id.as_bytes());
    // 16 bytes in hex: 32 characters, within ECS's limit of 36.
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
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

/// Treats "the service is already gone" as success: deleting is idempotent.
fn ok_if_gone<T>(result: Result<T>) -> Result<()> {
    match result {
        Err(e) if e.code != ErrorCode::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Maps an SDK error onto the error table, where it arises, with AWS's request id when the
/// response carried one.
pub fn classify<E>(what: &str, err: &SdkError<E, HttpResponse>, cluster: &str) -> ComputeError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let unavailable = |m: String| ComputeError::new(ErrorCode::ProviderTemporarilyUnavailable, m);
    let error = match err {
        SdkError::TimeoutError(_) => unavailable(format!("{what}: ECS did not answer in time"))
            .with_provider(PROVIDER, Some("TimeoutError")),
        SdkError::DispatchFailure(e) => unavailable(format!("{what}: ECS could not be reached"))
            .with_provider(PROVIDER, Some("DispatchFailure"))
            .with_root_cause(format!("{e:?}")),
        SdkError::ResponseError(e) => unavailable(format!(
            "{what}: ECS sent a response that could not be read"
        ))
        .with_provider(PROVIDER, Some("ResponseError"))
        .with_root_cause(format!("{:?}", e.raw().status())),
        SdkError::ConstructionFailure(_) => {
            ComputeError::internal(format!("{what}: the request could not be built"))
                .with_provider(PROVIDER, Some("ConstructionFailure"))
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let (code, message) = service_error_code(se.err());
            classify_code(what, &code, &message, status, cluster)
        }
        _ => unavailable(format!("{what}: unexpected SDK error")).with_provider(PROVIDER, None),
    };
    error.with_provider_request_id(err.request_id())
}

/// The error for a task that stopped while the deployment rolled out.
pub fn stopped_task_error(reason: &str) -> ComputeError {
    let (code, provider_code) = if reason.contains("CannotPullContainer") {
        (ErrorCode::InvalidConfiguration, "CannotPullContainerError")
    } else if reason.contains("RESOURCE:") || reason.contains("no container instance") {
        (ErrorCode::InsufficientCapacity, "TaskPlacementFailed")
    } else {
        (ErrorCode::WorkloadFailed, "TaskStopped")
    };
    ComputeError::new(code, format!("a task of the deployment stopped: {reason}"))
        .with_provider(PROVIDER, Some(provider_code))
}

/// A provider response for the debug log, with every environment value and secret
/// reference masked: only their names stay.
pub fn redact(debug: &str) -> String {
    const MARKERS: [&str; 4] = [
        "value: Some(\"",
        "value_from: Some(\"",
        "value: \"",
        "value_from: \"",
    ];
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some((start, len)) = MARKERS
        .iter()
        .filter_map(|m| rest.find(m).map(|i| (i, m.len())))
        .min()
    {
        out.push_str(&rest[..start + len]);
        rest = &rest[start + len..];
        // Skip the string literal up to its closing quote, honouring escapes.
        let mut escaped = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map_or(rest.len(), |(j, _)| j);
        out.push_str("<redacted>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// ECS's name for a service error, and its message.
fn service_error_code<E: ProvideErrorMetadata + std::error::Error>(err: &E) -> (String, String) {
    // A modelled error built without wire metadata has no `code()`; its Display starts with
    // the modelled shape's name, which is the same name.
    let display = err.to_string();
    let (shape, detail) = display.split_once(':').unwrap_or((display.as_str(), ""));
    (
        err.code().unwrap_or(shape.trim()).to_string(),
        err.message().unwrap_or(detail.trim()).to_string(),
    )
}

/// Whether a `ClientException`'s message is ECS's "Too many concurrent attempts ...".
fn is_concurrency_limit(message: &str) -> bool {
    message.starts_with("Too many concurrent attempts")
}

/// The table from ECS's error names (and HTTP status) to our codes.
pub fn classify_code(
    what: &str,
    code: &str,
    message: &str,
    status: u16,
    cluster: &str,
) -> ComputeError {
    let (ours, text) = match code {
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "RequestThrottled" => (
            ErrorCode::Throttled,
            format!("{what}: ECS is throttling requests"),
        ),
        "ServerException"
        | "ServiceUnavailableException"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "InternalError" => (
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: ECS failed ({code})"),
        ),
        // ECS answers concurrent RegisterTaskDefinition calls of one family with a plain
        // ClientException: it is load, not a bad request.
        "ClientException" if is_concurrency_limit(message) => (
            ErrorCode::Throttled,
            format!("{what}: ECS is throttling concurrent changes: {message}"),
        ),
        "ClusterNotFoundException" => (
            ErrorCode::InvalidConfiguration,
            format!("{what}: the ECS cluster {cluster:?} does not exist (--ecs-cluster)"),
        ),
        "InvalidParameterException"
        | "ClientException"
        | "PlatformUnknownException"
        | "PlatformTaskDefinitionIncompatibilityException"
        | "UnsupportedFeatureException" => (
            ErrorCode::InvalidConfiguration,
            format!("{what}: ECS refused the request: {message}"),
        ),
        "LimitExceededException" | "ServiceQuotaExceededException" => (
            ErrorCode::QuotaExceeded,
            format!("{what}: an ECS limit would be exceeded: {message}"),
        ),
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => (
            ErrorCode::PermissionDenied,
            format!("{what}: the worker's AWS credentials may not do this"),
        ),
        "ServiceNotFoundException" | "ServiceNotActiveException" | "TaskSetNotFoundException" => {
            (ErrorCode::NotFound, format!("{what}: {message}"))
        }
        "ConflictException" | "ResourceInUseException" | "UpdateInProgressException" => (
            ErrorCode::Conflict,
            format!("{what}: a concurrent change got there first: {message}"),
        ),
        _ if code.starts_with("RESOURCE:") => (
            ErrorCode::InsufficientCapacity,
            format!("{what}: ECS has no capacity to place the tasks ({code})"),
        ),
        _ if status >= 500 => (
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: ECS answered HTTP {status}"),
        ),
        _ if status == 429 => (
            ErrorCode::Throttled,
            format!("{what}: ECS is throttling requests"),
        ),
        _ => (
            ErrorCode::Internal,
            format!("{what}: unexpected ECS error {code}: {message}"),
        ),
    };
    let mut e = ComputeError::new(ours, text).with_provider(PROVIDER, Some(code));
    if ours == ErrorCode::Throttled {
        e = e.with_retry_after(Duration::from_secs(2));
    }
    if !message.is_empty() {
        e = e.with_root_cause(message);
    }
    e
}

/// What the observer last saw of one service.
#[derive(Debug, Clone)]
struct Snapshot {
    service: Option<Service>,
    seen_at: Instant,
}

#[derive(Default)]
struct ObserverState {
    /// Service name -> when an execution last asked about it.
    interest: HashMap<String, Instant>,
    snapshots: HashMap<String, Snapshot>,
    describe_calls: u64,
}

/// One per worker and cluster: describes every in-flight service in batches of 10.
pub struct Observer {
    client: Client,
    cluster: String,
    interval: Duration,
    state: Mutex<ObserverState>,
    tick: watch::Sender<u64>,
}

impl Observer {
    fn new(client: Client, cluster: String, interval: Duration) -> Arc<Self> {
        let (tick, _) = watch::channel(0);
        let observer = Arc::new(Observer {
            client,
            cluster,
            interval,
            state: Mutex::new(ObserverState::default()),
            tick,
        });
        let weak = Arc::downgrade(&observer);
        tokio::spawn(async move {
            loop {
                let Some(o) = weak.upgrade() else { return };
                o.cycle().await;
                let interval = o.interval;
                drop(o);
                tokio::time::sleep(interval).await;
            }
        });
        observer
    }

    /// `DescribeServices` calls made so far (for the benchmark).
    pub fn describe_calls(&self) -> u64 {
        self.state.lock().unwrap().describe_calls
    }

    async fn cycle(&self) {
        let names: Vec<String> = {
            let mut st = self.state.lock().unwrap();
            // Forget services nobody asked about for a while (their executions ended).
            let stale = self.interval * 5 + Duration::from_secs(10);
            st.interest.retain(|_, at| at.elapsed() < stale);
            // Their snapshots go with them: the map holds in-flight services only.
            let st = &mut *st;
            st.snapshots
                .retain(|name, _| st.interest.contains_key(name));
            st.interest.keys().cloned().collect()
        };
        if names.is_empty() {
            return;
        }
        for chunk in names.chunks(10) {
            let result = self
                .client
                .describe_services()
                .cluster(&self.cluster)
                .set_services(Some(chunk.to_vec()))
                .send()
                .await;
            let mut st = self.state.lock().unwrap();
            st.describe_calls += 1;
            match result {
                Ok(out) => {
                    let now = Instant::now();
                    for name in chunk {
                        let service = out
                            .services()
                            .iter()
                            .find(|s| s.service_name() == Some(name.as_str()))
                            .cloned();
                        tracing::debug!(service = %name, status = ?service.as_ref().and_then(|s| s.status()), running = ?service.as_ref().map(|s| s.running_count()), "Described ECS service.");
                        st.snapshots.insert(
                            name.clone(),
                            Snapshot {
                                service,
                                seen_at: now,
                            },
                        );
                    }
                }
                Err(e) => {
                    let e = classify("DescribeServices", &e, &self.cluster);
                    tracing::warn!(code = %e.code, error = %e.message, "Observing ECS services failed; will retry.");
                }
            }
        }
        self.tick.send_modify(|t| *t += 1);
    }

    /// The service as described after `since`, waiting up to `within` for a cycle.
    async fn snapshot(&self, name: &str, since: Instant, within: Duration) -> Option<Snapshot> {
        self.state
            .lock()
            .unwrap()
            .interest
            .insert(name.to_string(), Instant::now());
        let mut rx = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.state.lock().unwrap().snapshots.get(name)
                && s.seen_at >= since
            {
                return Some(s.clone());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

/// The ECS provider.
pub struct EcsProvider {
    client: Client,
    /// For the default VPC's subnets and security group when none are configured.
    ec2: Option<aws_sdk_ec2::Client>,
    default_network: tokio::sync::OnceCell<(Vec<String>, Vec<String>)>,
    config: EcsConfig,
    observer: Arc<Observer>,
}

impl EcsProvider {
    /// Builds the provider from the standard AWS configuration chain (credentials, region,
    /// `AWS_ENDPOINT_URL_ECS` / `AWS_ENDPOINT_URL`).
    pub async fn new(config: EcsConfig) -> Result<Self> {
        config.check()?;
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(config.timeouts())
            .load()
            .await;
        Self::from_sdk(&sdk, config).await
    }

    /// Builds the provider from an AWS configuration: ECS and EC2 clients with the
    /// configured timeouts, and (with no configured prefixes) the default secret scope from
    /// the SDK's region and STS's account.
    pub async fn from_sdk(sdk: &aws_config::SdkConfig, mut config: EcsConfig) -> Result<Self> {
        config.check()?;
        let timeouts = config.timeouts();
        if config.secret_arn_prefixes.is_empty() {
            config.secret_arn_prefixes = own_account_prefixes(sdk, &timeouts).await?;
        }
        tracing::info!(prefixes = ?config.secret_arn_prefixes, "ECS secrets may come from these ARN prefixes.");
        // Retries belong to the activity layer, where each failure is classified, recorded
        // in the execution's history and given the delay ECS asked for; SDK-level retries
        // would hide throttling and resend a create whose answer was lost.
        let conf = aws_sdk_ecs::config::Builder::from(sdk)
            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
            .timeout_config(timeouts.clone())
            .build();
        let client = Client::from_conf(conf);
        let ec2_conf = aws_sdk_ec2::config::Builder::from(sdk)
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .build();
        let mut provider = Self::with_client(client, config);
        provider.ec2 = Some(aws_sdk_ec2::Client::from_conf(ec2_conf));
        Ok(provider)
    }

    /// Builds the provider over a given client (tests). The secret scope is
    /// `config.secret_arn_prefixes` as given: empty allows no secret at all.
    pub fn with_client(client: Client, config: EcsConfig) -> Self {
        let observer = Observer::new(
            client.clone(),
            config.cluster.clone(),
            Duration::from_millis(config.observe_interval_ms.max(10)),
        );
        EcsProvider {
            client,
            ec2: None,
            default_network: tokio::sync::OnceCell::new(),
            config,
            observer,
        }
    }

    /// The shared observer (for the benchmark's call count).
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// Checks that every secret's `valueFrom` is under one of the allowed prefixes.
    pub fn check_secrets(&self, tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
        for (i, s) in spec.secrets.iter().enumerate() {
            let allowed = s.value_from.as_deref().is_some_and(|v| {
                self.config
                    .secret_arn_prefixes
                    .iter()
                    .any(|p| under_prefix(p, tenant_id, v))
            });
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
    pub fn validate_spec(spec: &ComputeSpec) -> Result<()> {
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

    fn fargate(&self) -> bool {
        self.config.launch_type == "FARGATE"
    }

    fn tags(&self, op: &OperationContext, metadata: &BTreeMap<String, String>) -> Vec<Tag> {
        let mut tags: BTreeMap<String, String> = metadata.clone();
        tags.insert("tenant-id".into(), op.tenant_id.clone());
        tags.insert("execution-id".into(), op.execution_id.clone());
        tags.insert("managed-by".into(), "compute-worker".into());
        tags.into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    /// The container and task settings a spec renders to, with a hash to compare revisions.
    fn render(&self, spec: &ComputeSpec) -> Result<(ContainerDefinition, String, String, String)> {
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
        if let Some(group) = &self.config.log_group {
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
            container,
            self.config.execution_role_arn,
            self.config.task_role_arn,
            self.config.launch_type
        );
        let hash: String = Sha256::digest(fingerprint.as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((container, cpu_units.to_string(), memory.to_string(), hash))
    }

    /// The task definition for `spec`: the family's latest revision when it renders the same,
    /// else a new revision.
    async fn ensure_task_definition(
        &self,
        op: &OperationContext,
        spec: &ComputeSpec,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String> {
        let family = service_name(&op.tenant_id);
        let (container, cpu, memory, hash) = self.render(spec)?;
        let latest = self
            .client
            .describe_task_definition()
            .task_definition(&family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await;
        match latest {
            Ok(out) => {
                let same = out
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(SPEC_HASH_TAG) && t.value() == Some(hash.as_str()));
                let active = out.task_definition().and_then(|t| t.status())
                    == Some(&TaskDefinitionStatus::Active);
                if same
                    && active
                    && let Some(arn) = out.task_definition().and_then(|t| t.task_definition_arn())
                {
                    return Ok(arn.to_string());
                }
            }
            // A family that does not exist yet is described as a ClientException.
            Err(e)
                if e.as_service_error().map(service_error_code).is_some_and(
                    |(code, message)| code == "ClientException" && !is_concurrency_limit(&message),
                ) => {}
            Err(e) => return Err(classify("DescribeTaskDefinition", &e, &self.config.cluster)),
        }
        let mut tags = self.tags(op, metadata);
        tags.push(Tag::builder().key(SPEC_HASH_TAG).value(&hash).build());
        let mut req = self
            .client
            .register_task_definition()
            .family(&family)
            .container_definitions(container)
            .cpu(cpu)
            .memory(memory)
            .set_execution_role_arn(self.config.execution_role_arn.clone())
            .set_task_role_arn(self.config.task_role_arn.clone())
            .set_tags(Some(tags));
        if self.fargate() || !self.config.subnets.is_empty() {
            req = req.network_mode(NetworkMode::Awsvpc);
        }
        if self.fargate() {
            req = req.requires_compatibilities(Compatibility::Fargate);
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify("RegisterTaskDefinition", &e, &self.config.cluster))?;
        tracing::debug!(response = %redact(&format!("{out:?}")), "ECS RegisterTaskDefinition answered.");
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_string)
            .ok_or_else(|| {
                ComputeError::internal("RegisterTaskDefinition returned no ARN")
                    .with_provider(PROVIDER, None)
            })
    }

    async fn describe(&self, name: &str) -> Result<Option<Service>> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.config.cluster)
            .services(name)
            .send()
            .await
            .map_err(|e| classify("DescribeServices", &e, &self.config.cluster))?;
        if let Some(f) = out
            .failures()
            .iter()
            .find(|f| f.reason() != Some("MISSING"))
        {
            return Err(classify_code(
                "DescribeServices",
                f.reason().unwrap_or("Failure"),
                f.detail().unwrap_or_default(),
                200,
                &self.config.cluster,
            ));
        }
        Ok(out
            .services()
            .iter()
            .find(|s| s.status() != Some("INACTIVE"))
            .cloned())
    }

    async fn network(&self) -> Result<Option<NetworkConfiguration>> {
        if !self.fargate() && self.config.subnets.is_empty() {
            return Ok(None);
        }
        let (subnets, security_groups) = if self.config.subnets.is_empty() {
            self.default_network().await?
        } else {
            (
                self.config.subnets.clone(),
                self.config.security_groups.clone(),
            )
        };
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(subnets))
            .set_security_groups(Some(security_groups))
            .assign_public_ip(if self.config.assign_public_ip {
                AssignPublicIp::Enabled
            } else {
                AssignPublicIp::Disabled
            })
            .build()
            .map_err(|e| {
                ComputeError::internal(format!("building the network configuration: {e}"))
            })?;
        Ok(Some(
            NetworkConfiguration::builder()
                .awsvpc_configuration(vpc)
                .build(),
        ))
    }

    /// The region's default VPC: its default-for-AZ subnets and its `default` security group,
    /// looked up once.
    async fn default_network(&self) -> Result<(Vec<String>, Vec<String>)> {
        use aws_sdk_ec2::types::Filter;
        let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
        let cluster = &self.config.cluster;
        self.default_network
            .get_or_try_init(|| async {
                let ec2 = self.ec2.as_ref().ok_or_else(|| {
                    ComputeError::invalid("--ecs-subnets: FARGATE services need subnets")
                })?;
                let vpcs = ec2
                    .describe_vpcs()
                    .filters(filter("is-default", "true"))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeVpcs", &e, cluster))?;
                let vpc = vpcs
                    .vpcs()
                    .iter()
                    .find_map(|v| v.vpc_id())
                    .ok_or_else(|| {
                        ComputeError::invalid(
                            "--ecs-subnets: the region has no default VPC; give the services' subnets",
                        )
                    })?
                    .to_string();
                let subnets: Vec<String> = ec2
                    .describe_subnets()
                    .filters(filter("vpc-id", &vpc))
                    .filters(filter("default-for-az", "true"))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeSubnets", &e, cluster))?
                    .subnets()
                    .iter()
                    .filter_map(|s| s.subnet_id().map(str::to_string))
                    .collect();
                if subnets.is_empty() {
                    return Err(ComputeError::invalid(
                        "--ecs-subnets: the default VPC has no default subnets; give the services' subnets",
                    ));
                }
                let groups: Vec<String> = ec2
                    .describe_security_groups()
                    .filters(filter("vpc-id", &vpc))
                    .filters(filter("group-name", "default"))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeSecurityGroups", &e, cluster))?
                    .security_groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect();
                tracing::info!(vpc = %vpc, subnets = ?subnets, security_groups = ?groups, "Using the default VPC for ECS services.");
                Ok((subnets, groups))
            })
            .await
            .cloned()
    }

    fn ids(service: &Service) -> ResourceIds {
        ResourceIds {
            ecs_service_arn: service.service_arn().map(str::to_string),
            task_definition_arn: service.task_definition().map(str::to_string),
            ..ResourceIds::default()
        }
    }

    /// Why the service's most recent stopped task stopped, if ECS says.
    async fn stopped_reason(&self, name: &str) -> Option<String> {
        let stopped = self
            .client
            .list_tasks()
            .cluster(&self.config.cluster)
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
            .cluster(&self.config.cluster)
            .set_tasks(Some(arns))
            .send()
            .await
            .ok()?;
        tasks
            .tasks()
            .iter()
            .find_map(|t| t.stopped_reason().map(str::to_string))
    }

    /// The success observation: the service's ids with its current tasks.
    async fn succeeded(&self, service: &Service, name: &str) -> Observation {
        let mut ids = Self::ids(service);
        ids.ecs_task_arns = self.task_arns(name).await;
        Observation::Succeeded(ids)
    }

    async fn task_arns(&self, name: &str) -> Vec<String> {
        match self
            .client
            .list_tasks()
            .cluster(&self.config.cluster)
            .service_name(name)
            .send()
            .await
        {
            Ok(out) => out.task_arns().to_vec(),
            Err(e) => {
                let e = classify("ListTasks", &e, &self.config.cluster);
                tracing::warn!(code = %e.code, error = %e.message, "Listing the service's tasks failed.");
                Vec::new()
            }
        }
    }
}

/// The default secret scope, from the SDK's region and the account and partition STS
/// names for the worker's credentials.
async fn own_account_prefixes(
    sdk: &aws_config::SdkConfig,
    timeouts: &aws_config::timeout::TimeoutConfig,
) -> Result<Vec<String>> {
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

/// The tags a request's metadata asks for (labels, owner, environment).
fn metadata_tags(op: &OperationContext) -> BTreeMap<String, String> {
    let mut tags = op.metadata.labels.clone();
    if let Some(owner) = &op.metadata.owner {
        tags.insert("owner".into(), owner.clone());
    }
    if let Some(env) = &op.metadata.environment {
        tags.insert("environment".into(), env.clone());
    }
    tags
}

#[async_trait]
impl ComputeProvider for EcsProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn validate(&self, tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
        Self::validate_spec(spec)?;
        self.check_secrets(tenant_id, spec)
    }

    async fn provision(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<ResourceIds> {
        let name = service_name(&op.tenant_id);
        if let Some(existing) = self.describe(&name).await? {
            tracing::info!(service = %name, "ECS service exists; returning it.");
            return Ok(Self::ids(&existing));
        }
        let metadata = metadata_tags(op);
        let task_definition = self.ensure_task_definition(op, spec, &metadata).await?;
        let created = self
            .client
            .create_service()
            .cluster(&self.config.cluster)
            .service_name(&name)
            .task_definition(&task_definition)
            .desired_count(spec.replicas.unwrap_or(1) as i32)
            .launch_type(if self.fargate() {
                LaunchType::Fargate
            } else {
                LaunchType::Ec2
            })
            .set_network_configuration(self.network().await?)
            .client_token(client_token(&op.execution_id))
            .set_tags(Some(self.tags(op, &metadata)))
            .send()
            .await;
        match created {
            Ok(out) => {
                tracing::debug!(response = %redact(&format!("{out:?}")), "ECS CreateService answered.");
                out.service().map(Self::ids).ok_or_else(|| {
                    ComputeError::internal("CreateService returned no service")
                        .with_provider(PROVIDER, None)
                })
            }
            Err(e) => {
                let err = classify("CreateService", &e, &self.config.cluster);
                // A concurrent provision may have created it in between: return that one.
                if let Ok(Some(existing)) = self.describe(&name).await {
                    return Ok(Self::ids(&existing));
                }
                Err(err)
            }
        }
    }

    async fn update(
        &self,
        op: &OperationContext,
        _current: &CurrentState,
        desired: &ComputeSpec,
    ) -> Result<ResourceIds> {
        let name = service_name(&op.tenant_id);
        if self.describe(&name).await?.is_none() {
            return Err(ComputeError::new(
                ErrorCode::NotFound,
                format!("the tenant has no ECS service {name}; provision it first"),
            )
            .with_provider(PROVIDER, Some("ServiceNotFoundException")));
        }
        let task_definition = self
            .ensure_task_definition(op, desired, &metadata_tags(op))
            .await?;
        let out = self
            .client
            .update_service()
            .cluster(&self.config.cluster)
            .service(&name)
            .task_definition(&task_definition)
            .desired_count(desired.replicas.unwrap_or(1) as i32)
            .send()
            .await
            .map_err(|e| classify("UpdateService", &e, &self.config.cluster))?;
        let mut ids = out.service().map(Self::ids).unwrap_or_default();
        ids.task_definition_arn = Some(task_definition);
        Ok(ids)
    }

    async fn delete(&self, op: &OperationContext, _current: &CurrentState) -> Result<ResourceIds> {
        let name = service_name(&op.tenant_id);
        let mut ids = ResourceIds::default();
        if let Some(service) = self.describe(&name).await? {
            ids = Self::ids(&service);
            if service.desired_count() > 0 {
                ok_if_gone(
                    self.client
                        .update_service()
                        .cluster(&self.config.cluster)
                        .service(&name)
                        .desired_count(0)
                        .send()
                        .await
                        .map_err(|e| classify("UpdateService", &e, &self.config.cluster)),
                )?;
            }
            ok_if_gone(
                self.client
                    .delete_service()
                    .cluster(&self.config.cluster)
                    .service(&name)
                    .force(true)
                    .send()
                    .await
                    .map_err(|e| classify("DeleteService", &e, &self.config.cluster)),
            )?;
        }
        let defs = self
            .client
            .list_task_definitions()
            .family_prefix(&name)
            .send()
            .await
            .map_err(|e| classify("ListTaskDefinitions", &e, &self.config.cluster))?;
        for arn in defs.task_definition_arns() {
            // The prefix also matches `tenant-<id>-...` of other tenants: keep to this family.
            let family = arn
                .rsplit('/')
                .next()
                .and_then(|f| f.rsplit_once(':'))
                .map(|(f, _)| f);
            if family != Some(name.as_str()) {
                continue;
            }
            self.client
                .deregister_task_definition()
                .task_definition(arn)
                .send()
                .await
                .map_err(|e| classify("DeregisterTaskDefinition", &e, &self.config.cluster))?;
        }
        Ok(ids)
    }

    async fn observe(&self, op: &OperationContext, resources: &ResourceIds) -> Result<Observation> {
        let name = service_name(&op.tenant_id);
        let since = Instant::now();
        let within = self.observer.interval * 2 + Duration::from_secs(1);
        let Some(snapshot) = self.observer.snapshot(&name, since, within).await else {
            return Ok(Observation::InProgress(Progress {
                message: "waiting for the next ECS observation".into(),
                ..Progress::default()
            }));
        };
        match (op.operation, snapshot.service) {
            (Operation::Delete, None) => Ok(Observation::Succeeded(resources.clone())),
            (Operation::Delete, Some(s)) if s.status() == Some("INACTIVE") => {
                Ok(Observation::Succeeded(resources.clone()))
            }
            (Operation::Delete, Some(s)) => Ok(Observation::InProgress(Progress {
                message: format!("service is {}", s.status().unwrap_or("draining")),
                ready: Some(s.running_count().max(0) as u32),
                desired: Some(0),
            })),
            (_, None) => Ok(Observation::Failed(
                ComputeError::new(
                    ErrorCode::NotFound,
                    format!("the ECS service {name} disappeared"),
                )
                .with_provider(PROVIDER, Some("MISSING")),
            )),
            (_, Some(s)) => {
                let wanted = resources.task_definition_arn.as_deref();
                let primary = s
                    .deployments()
                    .iter()
                    .find(|d| d.status() == Some("PRIMARY"));
                let Some(primary) = primary else {
                    return Ok(Observation::InProgress(Progress {
                        message: "no primary deployment yet".into(),
                        ..Progress::default()
                    }));
                };
                if wanted.is_some() && primary.task_definition() != wanted {
                    // Real ECS starts a new PRIMARY deployment on UpdateService. An API that
                    // only switches the service's task definition (moto) is done once that
                    // switch is made and nothing is rolling out or pending.
                    let switched = s.task_definition() == wanted
                        && s.running_count() >= s.desired_count()
                        && s.pending_count() == 0
                        && s.deployments().iter().all(|d| {
                            d.rollout_state() != Some(&DeploymentRolloutState::InProgress)
                        });
                    if switched {
                        return Ok(self.succeeded(&s, &name).await);
                    }
                    return Ok(Observation::InProgress(Progress {
                        message: "waiting for the new deployment".into(),
                        ..Progress::default()
                    }));
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
                    Some(DeploymentRolloutState::Failed) => Ok(Observation::Failed(
                        ComputeError::new(
                            ErrorCode::WorkloadFailed,
                            format!(
                                "the ECS deployment failed: {}",
                                primary.rollout_state_reason().unwrap_or("no reason given")
                            ),
                        )
                        .with_provider(PROVIDER, Some("DeploymentFailed")),
                    )),
                    Some(DeploymentRolloutState::Completed) => Ok(self.succeeded(&s, &name).await),
                    _ if primary.failed_tasks() > 0 => match self.stopped_reason(&name).await {
                        Some(reason) => Ok(Observation::Failed(stopped_task_error(&reason))),
                        None => Ok(Observation::InProgress(progress)),
                    },
                    _ if primary.running_count() >= primary.desired_count()
                        && primary.pending_count() == 0
                        && s.deployments().len() == 1 =>
                    {
                        Ok(self.succeeded(&s, &name).await)
                    }
                    _ => Ok(Observation::InProgress(progress)),
                }
            }
        }
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>> {
        let cluster = &self.config.cluster;
        let mut arns = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .client
                .list_services()
                .cluster(cluster)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| classify("ListServices", &e, cluster))?;
            arns.extend(page.service_arns().iter().cloned());
            next_token = page.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
            }
        }
        let mut out = Vec::new();
        // DescribeServices takes at most 10 services a call.
        for batch in arns.chunks(10) {
            let described = self
                .client
                .describe_services()
                .cluster(cluster)
                .set_services(Some(batch.to_vec()))
                .include(aws_sdk_ecs::types::ServiceField::Tags)
                .send()
                .await
                .map_err(|e| classify("DescribeServices", &e, cluster))?;
            for service in described.services() {
                if service.status() != Some("ACTIVE") {
                    continue;
                }
                let tag = |key: &str| {
                    service
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(key))
                        .and_then(|t| t.value().map(str::to_string))
                };
                if tag("managed-by").as_deref() != Some("compute-worker") {
                    continue;
                }
                let Some(tenant_id) = tag("tenant-id") else {
                    continue;
                };
                out.push(ManagedResource {
                    tenant_id,
                    kind: "ecs-service".into(),
                    id: service.service_arn().unwrap_or_default().to_string(),
                    execution_id: tag("execution-id"),
                });
            }
        }
        out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(out)
    }

    fn poll_interval(&self) -> Duration {
        self.observer.interval
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::{
        operation::{
            create_service::{CreateServiceError, CreateServiceOutput},
            delete_service::DeleteServiceError,
            describe_services::DescribeServicesOutput,
            describe_task_definition::DescribeTaskDefinitionError,
            list_task_definitions::ListTaskDefinitionsOutput,
            register_task_definition::RegisterTaskDefinitionOutput,
        },
        types::{
            Failure, TaskDefinition,
            error::{
                AccessDeniedException, ClientException, ClusterNotFoundException,
                InvalidParameterException, PlatformUnknownException, ServerException,
                ServiceNotFoundException, UnsupportedFeatureException,
            },
        },
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

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
    use crate::contract::Metadata;

    fn op(operation: Operation) -> OperationContext {
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

    fn spec() -> ComputeSpec {
        ComputeSpec {
            image: Some("nginx:1.25".into()),
            ..ComputeSpec::default()
        }
    }

    fn config() -> EcsConfig {
        EcsConfig {
            cluster: "prod".into(),
            subnets: vec!["subnet-1".into()],
            security_groups: vec!["sg-1".into()],
            observe_interval_ms: 50,
            ..EcsConfig::default()
        }
    }

    fn no_service() -> DescribeServicesOutput {
        DescribeServicesOutput::builder()
            .failures(
                Failure::builder()
                    .arn("tenant-acme")
                    .reason("MISSING")
                    .build(),
            )
            .build()
    }

    fn family_missing() -> DescribeTaskDefinitionError {
        DescribeTaskDefinitionError::ClientException(
            ClientException::builder()
                .message("Unable to describe task definition.")
                .build(),
        )
    }

    async fn provision_failing_with(
        error: impl Fn() -> CreateServiceError + Send + Sync + 'static,
    ) -> ComputeError {
        let describe = mock!(Client::describe_services).then_output(no_service);
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_output(|| {
            RegisterTaskDefinitionOutput::builder()
                .task_definition(
                    TaskDefinition::builder()
                        .task_definition_arn("arn:td:1")
                        .build(),
                )
                .build()
        });
        let create = mock!(Client::create_service).then_error(error);
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &create]
        );
        let provider = EcsProvider::with_client(client, config());
        provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .expect_err("the create fails")
    }

    #[tokio::test]
    async fn every_modelled_create_service_error_maps_to_the_table() {
        type Case = (fn() -> CreateServiceError, ErrorCode, &'static str);
        let cases: Vec<Case> = vec![
            (
                || {
                    CreateServiceError::ServerException(
                        ServerException::builder().message("boom").build(),
                    )
                },
                ErrorCode::ProviderTemporarilyUnavailable,
                "ServerException",
            ),
            (
                || {
                    CreateServiceError::ClusterNotFoundException(
                        ClusterNotFoundException::builder().build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "ClusterNotFoundException",
            ),
            (
                || {
                    CreateServiceError::InvalidParameterException(
                        InvalidParameterException::builder()
                            .message("bad cpu")
                            .build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "InvalidParameterException",
            ),
            (
                || CreateServiceError::ClientException(ClientException::builder().build()),
                ErrorCode::InvalidConfiguration,
                "ClientException",
            ),
            (
                || {
                    CreateServiceError::AccessDeniedException(
                        AccessDeniedException::builder().build(),
                    )
                },
                ErrorCode::PermissionDenied,
                "AccessDeniedException",
            ),
            (
                || {
                    CreateServiceError::PlatformUnknownException(
                        PlatformUnknownException::builder().build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "PlatformUnknownException",
            ),
            (
                || {
                    CreateServiceError::UnsupportedFeatureException(
                        UnsupportedFeatureException::builder().build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "UnsupportedFeatureException",
            ),
        ];
        for (error, code, provider_code) in cases {
            let e = provision_failing_with(error).await;
            assert_eq!(e.code, code, "{provider_code}: {e:?}");
            assert_eq!(e.provider_code.as_deref(), Some(provider_code));
            assert_eq!(e.provider.as_deref(), Some("ecs"));
            assert_eq!(
                e.retriable,
                code.classification() == crate::error::Classification::Retriable
            );
            if code == ErrorCode::InvalidConfiguration
                && provider_code == "ClusterNotFoundException"
            {
                assert!(
                    e.message.contains("\"prod\""),
                    "names the cluster: {}",
                    e.message
                );
            }
        }
    }

    #[test]
    fn unmodelled_errors_map_by_name_and_status() {
        let t = classify_code(
            "CreateService",
            "ThrottlingException",
            "Rate exceeded",
            400,
            "c",
        );
        assert_eq!(t.code, ErrorCode::Throttled);
        assert!(t.retry_after_ms.is_some());
        for (name, status, expected) in [
            ("LimitExceededException", 400, ErrorCode::QuotaExceeded),
            (
                "ServiceUnavailableException",
                503,
                ErrorCode::ProviderTemporarilyUnavailable,
            ),
            ("Weird", 502, ErrorCode::ProviderTemporarilyUnavailable),
            ("Weird", 429, ErrorCode::Throttled),
            ("ServiceNotFoundException", 400, ErrorCode::NotFound),
            ("Weird", 400, ErrorCode::Internal),
        ] {
            let e = classify_code("X", name, "", status, "c");
            assert_eq!(e.code, expected, "{name} / HTTP {status}");
        }
    }

    #[tokio::test]
    async fn raw_http_errors_are_classified() {
        for (status, body, header, expected) in [
            (
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                "ThrottlingException",
                ErrorCode::Throttled,
            ),
            (
                503,
                r#"{"__type":"ServiceUnavailableException"}"#,
                "ServiceUnavailableException",
                ErrorCode::ProviderTemporarilyUnavailable,
            ),
        ] {
            let describe = mock!(Client::describe_services).then_http_response(move || {
                let mut r =
                    HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body));
                r.headers_mut().insert("x-amzn-ErrorType", header);
                r.headers_mut().insert("x-amzn-RequestId", "req-123");
                r
            });
            let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe], |c| c
                .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled()));
            let provider = EcsProvider::with_client(client, config());
            let e = provider
                .provision(&op(Operation::Provision), &spec())
                .await
                .unwrap_err();
            assert_eq!(e.code, expected, "{e:?}");
            assert!(e.retriable);
            assert_eq!(e.provider_request_id.as_deref(), Some("req-123"));
        }
    }

    #[tokio::test]
    async fn provision_returns_an_existing_service_without_creating() {
        let describe = mock!(Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .services(
                    Service::builder()
                        .service_name("tenant-acme")
                        .service_arn("arn:svc")
                        .status("ACTIVE")
                        .task_definition("arn:td:3")
                        .build(),
                )
                .build()
        });
        let create =
            mock!(Client::create_service).then_output(|| CreateServiceOutput::builder().build());
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe, &create]);
        let provider = EcsProvider::with_client(client, config());
        let ids = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap();
        assert_eq!(ids.ecs_service_arn.as_deref(), Some("arn:svc"));
        assert_eq!(ids.task_definition_arn.as_deref(), Some("arn:td:3"));
        assert_eq!(create.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_lost_create_response_finds_the_created_service() {
        // The create went through but its answer was lost: the second look-up finds it.
        let describe = mock!(Client::describe_services)
            .sequence()
            .output(no_service)
            .output(|| {
                DescribeServicesOutput::builder()
                    .services(
                        Service::builder()
                            .service_name("tenant-acme")
                            .service_arn("arn:svc")
                            .status("ACTIVE")
                            .build(),
                    )
                    .build()
            })
            .build();
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_output(|| {
            RegisterTaskDefinitionOutput::builder()
                .task_definition(
                    TaskDefinition::builder()
                        .task_definition_arn("arn:td:1")
                        .build(),
                )
                .build()
        });
        let create = mock!(Client::create_service).then_http_response(|| {
            HttpResponse::new(StatusCode::try_from(500).unwrap(), SdkBody::from("{}"))
        });
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &create],
            |c| c.retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
        );
        let provider = EcsProvider::with_client(client, config());
        let ids = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap();
        assert_eq!(ids.ecs_service_arn.as_deref(), Some("arn:svc"));
    }

    #[tokio::test]
    async fn deleting_a_missing_service_succeeds() {
        let describe = mock!(Client::describe_services).then_output(no_service);
        let delete = mock!(Client::delete_service).then_error(|| {
            DeleteServiceError::ServiceNotFoundException(
                ServiceNotFoundException::builder().build(),
            )
        });
        let list = mock!(Client::list_task_definitions)
            .then_output(|| ListTaskDefinitionsOutput::builder().build());
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe, &delete, &list]);
        let provider = EcsProvider::with_client(client, config());
        let ids = provider
            .delete(&op(Operation::Delete), &CurrentState::default())
            .await
            .unwrap();
        assert!(ids.is_empty());
        assert_eq!(delete.num_calls(), 0);
    }

    #[test]
    fn debug_responses_keep_names_and_mask_values() {
        let container = ContainerDefinition::builder()
            .name("app")
            .environment(
                KeyValuePair::builder()
                    .name("DB_URL")
                    .value("postgres://u:hunter2@db")
                    .build(),
            )
            .secrets(
                Secret::builder()
                    .name("TOKEN")
                    .value_from("arn:aws:ssm:x:1:parameter/t\"q")
                    .build()
                    .unwrap(),
            )
            .build();
        let shown = redact(&format!("{container:?}"));
        // The SDK already hides `environment`; references are masked here, names stay.
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("parameter/t"),
            "{shown}"
        );
        assert_eq!(shown.matches("<redacted>").count(), 1, "{shown}");
        let plain = redact(r#"KeyValuePair { name: Some("A"), value: Some("s3cr\"et") }, x"#);
        assert_eq!(
            plain,
            r#"KeyValuePair { name: Some("A"), value: Some("<redacted>") }, x"#
        );
    }

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

    #[test]
    fn capacity_failures_are_insufficient_capacity() {
        let e = classify_code("DescribeServices", "RESOURCE:MEMORY", "", 200, "c");
        assert_eq!(e.code, ErrorCode::InsufficientCapacity);
        assert!(e.retriable);
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
        assert!(EcsConfig::default().check().is_ok());
    }

    #[tokio::test]
    async fn too_many_concurrent_attempts_is_throttling() {
        use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionError;
        let describe = mock!(Client::describe_services).then_output(no_service);
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_error(|| {
            RegisterTaskDefinitionError::ClientException(
                ClientException::builder()
                    .message(
                        "Too many concurrent attempts to create a new revision of the \
                         specified family.",
                    )
                    .build(),
            )
        });
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register]
        );
        let provider = EcsProvider::with_client(client, config());
        let e = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Throttled, "{e:?}");
        assert!(e.retriable);
        assert!(e.retry_after_ms.is_some());
        assert_eq!(e.provider_code.as_deref(), Some("ClientException"));
        // Any other ClientException is still the request's fault.
        let other = classify_code("RegisterTaskDefinition", "ClientException", "bad", 400, "c");
        assert_eq!(other.code, ErrorCode::InvalidConfiguration);
    }

    /// A TCP server that accepts connections and never answers; its address.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        format!("http://{addr}")
    }

    async fn sdk_to(endpoint: &str, config: &EcsConfig) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .timeout_config(config.timeouts())
            .load()
            .await
    }

    #[tokio::test]
    async fn a_hung_call_times_out_as_retriable() {
        let endpoint = silent_server().await;
        let config = EcsConfig {
            secret_arn_prefixes: vec!["arn:aws:ssm:us-east-1:123456789012:parameter/".into()],
            call_timeout_ms: 600,
            attempt_timeout_ms: 300,
            ..config()
        };
        // The loader's timeouts are left at the SDK's defaults: the provider sets its own.
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .load()
            .await;
        let provider = EcsProvider::from_sdk(&sdk, config).await.unwrap();
        let started = std::time::Instant::now();
        let e = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.code, ErrorCode::ProviderTemporarilyUnavailable, "{e:?}");
        assert!(e.retriable);
        assert_eq!(e.provider_code.as_deref(), Some("TimeoutError"));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[tokio::test]
    async fn without_prefixes_a_failed_account_lookup_stops_the_start() {
        let endpoint = silent_server().await;
        let config = EcsConfig {
            call_timeout_ms: 600,
            attempt_timeout_ms: 300,
            ..config()
        };
        let sdk = sdk_to(&endpoint, &config).await;
        let started = std::time::Instant::now();
        let Err(e) = EcsProvider::from_sdk(&sdk, config).await else {
            panic!("the provider started without knowing its account");
        };
        assert!(e.message.contains("--ecs-secret-arn-prefix"), "{e}");
        assert!(e.message.contains("GetCallerIdentity"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
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
}
