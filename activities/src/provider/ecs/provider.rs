//! ECS provider: a tenant's compute is an ECS service `tenant-<tenantId>` running a task
//! definition of family `tenant-<tenantId>`.
//!
//! Idempotent by construction: provision looks the service up by name before creating it,
//! and passes a `clientToken` derived from the execution id (real ECS honours it; moto does
//! not, so the look-up is what keeps a retry from making a second service there). Tracking
//! goes through one [`Observer`] per worker that batches `DescribeServices` (10 services a
//! call) for every in-flight execution. Every AWS call has an operation and an attempt
//! timeout, so a hung call cannot stall that observer.
//!
//! This file holds the provider and the order of its calls; what the calls carry, mean and
//! observe lives in the sibling modules.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use aws_sdk_ecs::{
    Client,
    types::{NetworkConfiguration, Service, TaskDefinitionField},
};

use super::{
    PROVIDER,
    config::{EcsConfig, NO_SUBNETS},
    errors::{classify, classify_code, is_missing_family, redact},
    naming::{self, client_token, metadata_tags, service_name, tags},
    observer::Observer,
    render::{self, register_request},
    rollout::{self, Tasks, service_ids},
};
use crate::{
    contract::{ComputeSpec, Progress, ResourceIds},
    error::{ComputeError, ErrorCode, Result},
    provider::{
        ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext,
        kit::ok_if_gone,
    },
};

/// The connect timeout of every AWS call (capped at the attempt timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl EcsConfig {
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

/// A task definition revision for a spec.
struct Revision {
    arn: String,
    /// Whether this call registered it (else it was the family's latest already).
    registered: bool,
}

/// The ECS provider.
pub struct EcsProvider {
    client: Client,
    /// For the default VPC's subnets and security group when none are configured.
    #[cfg(feature = "ecs-default-vpc")]
    default_vpc: Option<super::default_vpc::DefaultVpc>,
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
            config.secret_arn_prefixes = naming::own_account_prefixes(sdk, &timeouts).await?;
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
        #[allow(unused_mut)]
        let mut provider = Self::with_client(client, config);
        #[cfg(feature = "ecs-default-vpc")]
        {
            provider.default_vpc = Some(super::default_vpc::DefaultVpc::new(sdk, timeouts));
        }
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
            #[cfg(feature = "ecs-default-vpc")]
            default_vpc: None,
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
        naming::check_secrets(&self.config.secret_arn_prefixes, tenant_id, spec)
    }

    /// The ECS provider's own checks: an image, and secrets as SSM / Secrets Manager references.
    pub fn validate_spec(spec: &ComputeSpec) -> Result<()> {
        naming::validate_spec(spec)
    }

    /// The task definition for `spec`: the family's latest revision when it renders the same,
    /// else a new revision.
    async fn ensure_task_definition(
        &self,
        op: &OperationContext,
        spec: &ComputeSpec,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Revision> {
        let family = service_name(&op.tenant_id);
        let rendered = render::render(&self.config, spec)?;
        let latest = self
            .client
            .describe_task_definition()
            .task_definition(&family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await;
        match latest {
            Ok(out) => {
                if let Some(arn) = render::current_revision(&out, &rendered) {
                    return Ok(Revision {
                        arn: arn.to_string(),
                        registered: false,
                    });
                }
            }
            // A family that does not exist yet is described as a ClientException.
            Err(e) if is_missing_family(&e) => {}
            Err(e) => return Err(classify("DescribeTaskDefinition", &e, &self.config.cluster)),
        }
        let out = register_request(
            &self.client,
            &self.config,
            &family,
            rendered,
            tags(op, metadata),
        )
        .send()
        .await
        .map_err(|e| classify("RegisterTaskDefinition", &e, &self.config.cluster))?;
        tracing::debug!(response = %redact(&format!("{out:?}")), "ECS RegisterTaskDefinition answered.");
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(|arn| Revision {
                arn: arn.to_string(),
                registered: true,
            })
            .ok_or_else(|| {
                ComputeError::internal("RegisterTaskDefinition returned no ARN")
                    .with_provider(PROVIDER, None)
            })
    }

    /// Deregisters the revision a failed create registered, so it does not outlive the
    /// failure; a failure to do so is logged and otherwise ignored (the create's error is
    /// what the caller needs, and the tenant's delete deregisters the family anyway).
    async fn deregister_unused(&self, arn: &str) {
        match self
            .client
            .deregister_task_definition()
            .task_definition(arn)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(task_definition = %arn, "Deregistered the task definition of a failed CreateService.");
            }
            Err(e) => {
                let e = classify("DeregisterTaskDefinition", &e, &self.config.cluster);
                tracing::warn!(task_definition = %arn, code = %e.code, error = %e.message, "Deregistering the task definition of a failed CreateService failed; it stays registered.");
            }
        }
    }

    /// The tenant's service, or `NOT_FOUND` when it has none.
    async fn existing_service(&self, name: &str) -> Result<Service> {
        self.describe(name).await?.ok_or_else(|| {
            ComputeError::new(
                ErrorCode::NotFound,
                format!("the tenant has no ECS service {name}; provision it first"),
            )
            .with_provider(PROVIDER, Some("ServiceNotFoundException"))
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
        if !render::awsvpc(&self.config) {
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
        render::network_configuration(subnets, security_groups, self.config.assign_public_ip)
            .map(Some)
    }

    /// The subnets and security groups of services when none are configured: the region's
    /// default VPC's, with the `ecs-default-vpc` feature.
    async fn default_network(&self) -> Result<(Vec<String>, Vec<String>)> {
        #[cfg(feature = "ecs-default-vpc")]
        if let Some(vpc) = &self.default_vpc {
            return vpc.network(&self.config.cluster).await;
        }
        Err(ComputeError::invalid(NO_SUBNETS))
    }

    fn tasks(&self) -> Tasks<'_> {
        Tasks {
            client: &self.client,
            cluster: &self.config.cluster,
        }
    }
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
            return Ok(service_ids(&existing));
        }
        let metadata = metadata_tags(op);
        // Before registering: a network that cannot be found registers nothing.
        let network = self.network().await?;
        let revision = self.ensure_task_definition(op, spec, &metadata).await?;
        let created = self
            .client
            .create_service()
            .cluster(&self.config.cluster)
            .service_name(&name)
            .task_definition(&revision.arn)
            .desired_count(spec.replicas.unwrap_or(1) as i32)
            .launch_type(render::launch_type(&self.config))
            .set_network_configuration(network)
            .client_token(client_token(&op.execution_id))
            .set_tags(Some(tags(op, &metadata)))
            .send()
            .await;
        match created {
            Ok(out) => {
                tracing::debug!(response = %redact(&format!("{out:?}")), "ECS CreateService answered.");
                out.service().map(service_ids).ok_or_else(|| {
                    ComputeError::internal("CreateService returned no service")
                        .with_provider(PROVIDER, None)
                })
            }
            Err(e) => {
                let err = classify("CreateService", &e, &self.config.cluster);
                // A concurrent provision may have created it in between: return that one.
                if let Ok(Some(existing)) = self.describe(&name).await {
                    return Ok(service_ids(&existing));
                }
                // A retry reuses the revision; a create that fails for good leaves none
                // behind that this call registered.
                if !err.retriable && revision.registered {
                    self.deregister_unused(&revision.arn).await;
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
        self.existing_service(&name).await?;
        let revision = self
            .ensure_task_definition(op, desired, &metadata_tags(op))
            .await?;
        let out = self
            .client
            .update_service()
            .cluster(&self.config.cluster)
            .service(&name)
            .task_definition(&revision.arn)
            .desired_count(desired.replicas.unwrap_or(1) as i32)
            .send()
            .await
            .map_err(|e| classify("UpdateService", &e, &self.config.cluster))?;
        let mut ids = out.service().map(service_ids).unwrap_or_default();
        ids.task_definition_arn = Some(revision.arn);
        Ok(ids)
    }

    /// Points the service back at the revision that ran `previous` (registering nothing),
    /// with `previous.spec`'s replicas; without a recorded revision, registers
    /// `previous.spec` as an update would.
    async fn revert(
        &self,
        op: &OperationContext,
        previous: &CurrentState,
        failed: &ResourceIds,
    ) -> Result<ResourceIds> {
        let Some(previous_arn) = previous.resource_ids.task_definition_arn.as_deref() else {
            return crate::provider::reapply(self, op, previous, failed).await;
        };
        let name = service_name(&op.tenant_id);
        self.existing_service(&name).await?;
        // Without a last good spec the count stays as it is: only the revision is known.
        let desired_count = previous
            .spec
            .as_ref()
            .map(|spec| spec.replicas.unwrap_or(1) as i32);
        let out = self
            .client
            .update_service()
            .cluster(&self.config.cluster)
            .service(&name)
            .task_definition(previous_arn)
            .set_desired_count(desired_count)
            .send()
            .await
            .map_err(|e| classify("UpdateService", &e, &self.config.cluster))?;
        tracing::info!(service = %name, task_definition = %previous_arn, "Pointed the ECS service back at its last good task definition.");
        let mut ids = out.service().map(service_ids).unwrap_or_default();
        ids.task_definition_arn = Some(previous_arn.to_string());
        Ok(ids)
    }

    async fn delete(&self, op: &OperationContext, _current: &CurrentState) -> Result<ResourceIds> {
        let name = service_name(&op.tenant_id);
        let mut ids = ResourceIds::default();
        if let Some(service) = self.describe(&name).await? {
            ids = service_ids(&service);
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
        let within = self.observer.interval() * 2 + Duration::from_secs(1);
        let Some(snapshot) = self.observer.snapshot(&name, since, within).await else {
            return Ok(Observation::InProgress(Progress {
                message: "waiting for the next ECS observation".into(),
                ..Progress::default()
            }));
        };
        Ok(rollout::observation(
            &self.tasks(),
            op.operation,
            &name,
            snapshot.service,
            resources,
        )
        .await)
    }

    async fn ready(&self) -> Result<()> {
        // One page of one service: the credentials, the endpoint and the cluster all answer.
        self.client
            .list_services()
            .cluster(&self.config.cluster)
            .max_results(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("ListServices", &e, &self.config.cluster))
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>> {
        let mut arns = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .client
                .list_services()
                .cluster(&self.config.cluster)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| classify("ListServices", &e, &self.config.cluster))?;
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
                .cluster(&self.config.cluster)
                .set_services(Some(batch.to_vec()))
                .include(aws_sdk_ecs::types::ServiceField::Tags)
                .send()
                .await
                .map_err(|e| classify("DescribeServices", &e, &self.config.cluster))?;
            out.extend(
                described
                    .services()
                    .iter()
                    .filter_map(naming::managed_resource),
            );
        }
        out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(out)
    }

    fn poll_interval(&self) -> Duration {
        self.observer.interval()
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::{
        config::http::HttpResponse,
        operation::{
            create_service::{CreateServiceError, CreateServiceOutput},
            delete_service::DeleteServiceError,
            deregister_task_definition::{
                DeregisterTaskDefinitionError, DeregisterTaskDefinitionOutput,
            },
            describe_services::DescribeServicesOutput,
            describe_task_definition::DescribeTaskDefinitionOutput,
            list_task_definitions::ListTaskDefinitionsOutput,
            update_service::UpdateServiceOutput,
        },
        types::{
            Tag, TaskDefinition, TaskDefinitionStatus,
            error::{InvalidParameterException, ServerException, ServiceNotFoundException},
        },
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;
    use crate::{
        contract::Operation,
        provider::ecs::fixtures::{config, family_missing, no_service, op, registered, spec},
    };

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
        let register = mock!(Client::register_task_definition).then_output(registered);
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

    /// DescribeServices' answer for the tenant's service, running `task_definition`.
    fn a_service(task_definition: &'static str) -> impl Fn() -> DescribeServicesOutput {
        move || {
            DescribeServicesOutput::builder()
                .services(
                    Service::builder()
                        .service_name("tenant-acme")
                        .service_arn("arn:svc")
                        .status("ACTIVE")
                        .task_definition(task_definition)
                        .build(),
                )
                .build()
        }
    }

    /// UpdateService's answer: the service, now on `task_definition`.
    fn updated(task_definition: &'static str) -> impl Fn() -> UpdateServiceOutput {
        move || {
            UpdateServiceOutput::builder()
                .service(
                    Service::builder()
                        .service_name("tenant-acme")
                        .service_arn("arn:svc")
                        .status("ACTIVE")
                        .task_definition(task_definition)
                        .build(),
                )
                .build()
        }
    }

    /// The state before a failed update: two replicas of `spec()` on revision `arn:td:3`.
    fn previous() -> CurrentState {
        CurrentState {
            spec: Some(ComputeSpec {
                replicas: Some(2),
                ..spec()
            }),
            resource_ids: ResourceIds {
                ecs_service_arn: Some("arn:svc".into()),
                task_definition_arn: Some("arn:td:3".into()),
                ..ResourceIds::default()
            },
        }
    }

    /// The resources of the failed update: revision `arn:td:4`.
    fn failed() -> ResourceIds {
        ResourceIds {
            ecs_service_arn: Some("arn:svc".into()),
            task_definition_arn: Some("arn:td:4".into()),
            ..ResourceIds::default()
        }
    }

    #[tokio::test]
    async fn revert_points_the_service_back_at_the_previous_revision() {
        let describe = mock!(Client::describe_services).then_output(a_service("arn:td:4"));
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_output(registered);
        let update = mock!(Client::update_service)
            .match_requests(|r| {
                r.cluster() == Some("prod")
                    && r.service() == Some("tenant-acme")
                    && r.task_definition() == Some("arn:td:3")
                    && r.desired_count() == Some(2)
            })
            .then_output(updated("arn:td:3"));
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &update]
        );
        let provider = EcsProvider::with_client(client, config());
        let op = op(Operation::Update).revert();
        let ids = provider.revert(&op, &previous(), &failed()).await.unwrap();
        assert_eq!(ids.ecs_service_arn.as_deref(), Some("arn:svc"));
        assert_eq!(ids.task_definition_arn.as_deref(), Some("arn:td:3"));
        assert_eq!(update.num_calls(), 1);
        assert_eq!(register.num_calls(), 0);
        assert_eq!(describe_td.num_calls(), 0);
    }

    #[tokio::test]
    async fn revert_without_a_previous_revision_registers_the_previous_spec() {
        let describe = mock!(Client::describe_services).then_output(a_service("arn:td:4"));
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_output(registered);
        let update = mock!(Client::update_service)
            .match_requests(|r| {
                r.task_definition() == Some("arn:td:1") && r.desired_count() == Some(2)
            })
            .then_output(updated("arn:td:1"));
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &update]
        );
        let provider = EcsProvider::with_client(client, config());
        let previous = CurrentState {
            resource_ids: ResourceIds::default(),
            ..previous()
        };
        let ids = provider
            .revert(&op(Operation::Update).revert(), &previous, &failed())
            .await
            .unwrap();
        assert_eq!(ids.task_definition_arn.as_deref(), Some("arn:td:1"));
        assert_eq!(register.num_calls(), 1);
        assert_eq!(update.num_calls(), 1);
    }

    #[tokio::test]
    async fn revert_of_a_missing_service_is_not_found() {
        let describe = mock!(Client::describe_services).then_output(no_service);
        let update = mock!(Client::update_service).then_output(updated("arn:td:3"));
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe, &update]);
        let provider = EcsProvider::with_client(client, config());
        let e = provider
            .revert(&op(Operation::Update).revert(), &previous(), &failed())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        assert_eq!(e.provider_code.as_deref(), Some("ServiceNotFoundException"));
        assert_eq!(update.num_calls(), 0);
    }

    fn invalid_parameter() -> CreateServiceError {
        CreateServiceError::InvalidParameterException(
            InvalidParameterException::builder()
                .message("bad subnet")
                .build(),
        )
    }

    #[tokio::test]
    async fn a_create_that_fails_for_good_deregisters_the_revision_it_registered() {
        for deregister_fails in [false, true] {
            let describe = mock!(Client::describe_services).then_output(no_service);
            let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
            let register = mock!(Client::register_task_definition).then_output(registered);
            let create = mock!(Client::create_service).then_error(invalid_parameter);
            let deregister = if deregister_fails {
                mock!(Client::deregister_task_definition)
                    .match_requests(|r| r.task_definition() == Some("arn:td:1"))
                    .then_error(|| {
                        DeregisterTaskDefinitionError::ServerException(
                            ServerException::builder().message("boom").build(),
                        )
                    })
            } else {
                mock!(Client::deregister_task_definition)
                    .match_requests(|r| r.task_definition() == Some("arn:td:1"))
                    .then_output(|| DeregisterTaskDefinitionOutput::builder().build())
            };
            let client = mock_client!(
                aws_sdk_ecs,
                RuleMode::MatchAny,
                [&describe, &describe_td, &register, &create, &deregister]
            );
            let provider = EcsProvider::with_client(client, config());
            let e = provider
                .provision(&op(Operation::Provision), &spec())
                .await
                .unwrap_err();
            // The create's error, whether or not the deregister went through.
            assert_eq!(e.code, ErrorCode::InvalidConfiguration, "{e:?}");
            assert_eq!(
                e.provider_code.as_deref(),
                Some("InvalidParameterException")
            );
            assert_eq!(
                deregister.num_calls(),
                1,
                "deregister fails: {deregister_fails}"
            );
        }
    }

    #[tokio::test]
    async fn a_retriable_create_failure_keeps_the_revision_for_the_retry() {
        let describe = mock!(Client::describe_services).then_output(no_service);
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_output(registered);
        let create = mock!(Client::create_service).then_error(|| {
            CreateServiceError::ServerException(ServerException::builder().message("boom").build())
        });
        let deregister = mock!(Client::deregister_task_definition)
            .then_output(|| DeregisterTaskDefinitionOutput::builder().build());
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &create, &deregister]
        );
        let provider = EcsProvider::with_client(client, config());
        let e = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ProviderTemporarilyUnavailable, "{e:?}");
        assert!(e.retriable);
        assert_eq!(register.num_calls(), 1);
        assert_eq!(deregister.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_failed_create_keeps_a_revision_it_did_not_register() {
        let hash = render::render(&config(), &spec()).unwrap().hash;
        let describe = mock!(Client::describe_services).then_output(no_service);
        let describe_td = mock!(Client::describe_task_definition).then_output(move || {
            DescribeTaskDefinitionOutput::builder()
                .task_definition(
                    TaskDefinition::builder()
                        .task_definition_arn("arn:td:7")
                        .status(TaskDefinitionStatus::Active)
                        .build(),
                )
                .tags(
                    Tag::builder()
                        .key(render::SPEC_HASH_TAG)
                        .value(&hash)
                        .build(),
                )
                .build()
        });
        let register = mock!(Client::register_task_definition).then_output(registered);
        let create = mock!(Client::create_service)
            .match_requests(|r| r.task_definition() == Some("arn:td:7"))
            .then_error(invalid_parameter);
        let deregister = mock!(Client::deregister_task_definition)
            .then_output(|| DeregisterTaskDefinitionOutput::builder().build());
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &create, &deregister]
        );
        let provider = EcsProvider::with_client(client, config());
        let e = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfiguration, "{e:?}");
        assert_eq!(create.num_calls(), 1);
        assert_eq!(register.num_calls(), 0);
        assert_eq!(deregister.num_calls(), 0);
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
}
