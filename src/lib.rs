//! The compute-worker application: configuration, wiring and the worker's run loop.
//!
//! `main.rs` only parses the command line; everything else is here so that tests start the
//! same application.

pub mod telemetry;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use compute_activities::{
    ComputeActivities,
    activities::ActivitySettings,
    callback::{Callbacks, parse_ingress_urls},
    names,
    provider::{
        self, ProviderConfig, ecs::EcsConfig, kubernetes::KubernetesConfig, local::LocalConfig,
    },
    store,
};
use compute_workflows::{tenant::TenantComputeWorkflow, tracker::ComputeExecutionTracker};
use temporalio_client::{
    Client, ClientOptions, Connection, envconfig::LoadClientConfigProfileOptions, tonic,
};
use temporalio_common::protos::temporal::api::{
    enums::v1::IndexedValueType,
    operatorservice::v1::{AddSearchAttributesRequest, ListSearchAttributesRequest},
};
use temporalio_sdk::{
    Runtime, Worker, WorkerOptions,
    runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder},
};

use crate::telemetry::LogFormat;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "compute-worker",
    version,
    about = "Provisions, updates and deletes tenants' compute for Temporal workflows."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start: the size of the `run` arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker until SIGTERM or Ctrl-C. The Temporal connection comes from the SDK's
    /// environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
    /// TLS variables or a temporal.toml profile).
    Run(RunArgs),
    /// Print the error codes with their classes and the RetryPolicy callers should use, as JSON.
    RetryPolicy,
    /// List the provider's resources marked `managed-by=compute-worker` whose tenant is
    /// unknown or deleted, or whose execution is unknown; `--apply` removes them. Takes the
    /// same provider and database settings as `run`.
    Sweep(SweepArgs),
}

/// Settings of `compute-worker sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// Remove the orphans; without it the sweep only lists them (a dry run).
    #[arg(long)]
    pub apply: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The provider and the store, as for `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Which provider runs the compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// Local processes on this host.
    Local,
    /// ECS services (credentials, region and endpoint from the standard AWS chain).
    Ecs,
    /// Kubernetes Deployments (cluster from KUBECONFIG, ~/.kube/config or in-cluster).
    Kubernetes,
}

/// Settings of `compute-worker run`; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The task queue callers use.
    #[arg(long, env = "COMPUTE_TASK_QUEUE", default_value = names::DEFAULT_TASK_QUEUE)]
    pub task_queue: String,
    /// The provider.
    #[arg(long, env = "COMPUTE_PROVIDER", value_enum, default_value = "local")]
    pub provider: ProviderKind,
    /// The execution store: `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (several workers may share one Postgres).
    #[arg(
        long,
        env = "COMPUTE_DATABASE_URL",
        default_value = "sqlite://compute-worker.db"
    )]
    pub database: String,
    /// How many activities the worker runs at once. Every in-flight operation holds one slot
    /// with its watch (mostly idle, waiting on the provider), so this bounds the operations one
    /// worker tracks while still taking new requests.
    #[arg(long, env = "COMPUTE_MAX_CONCURRENT_ACTIVITIES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_activities: u32,
    /// Timeout of operations whose request gives none.
    #[arg(long, env = "COMPUTE_DEFAULT_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_timeout: Duration,
    /// Local provider: where workloads' records and logs live.
    #[arg(
        long,
        env = "COMPUTE_LOCAL_STATE_DIR",
        default_value = ".compute-worker/local"
    )]
    pub local_state_dir: PathBuf,
    /// Local provider: how long a workload must stay up to count as healthy.
    #[arg(long, env = "COMPUTE_LOCAL_SETTLE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub local_settle: Duration,
    /// Local provider: how long a workload gets between SIGTERM and SIGKILL.
    #[arg(long, env = "COMPUTE_LOCAL_STOP_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub local_stop_grace: Duration,
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
    /// Kubernetes: the namespace of every tenant's objects.
    #[arg(long, env = "K8S_NAMESPACE", default_value = "default")]
    pub k8s_namespace: String,
    /// Kubernetes: give each tenant a namespace of its own (`tenant-<id>`) instead.
    #[arg(
        long,
        env = "K8S_NAMESPACE_PER_TENANT",
        conflicts_with = "k8s_namespace"
    )]
    pub k8s_namespace_per_tenant: bool,
    /// Kubernetes: how long a rollout may make no progress before it fails
    /// (the Deployments' progressDeadlineSeconds).
    #[arg(long, env = "K8S_PROGRESS_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub k8s_progress_deadline: Duration,
    /// Restate ingress URLs that `restate` callbacks may be completed through
    /// (comma-separated); the first is the default. A callback naming any other is refused.
    #[arg(long, env = "RESTATE_INGRESS_URL", value_delimiter = ',')]
    pub restate_ingress_url: Vec<String>,
    /// Log format.
    #[arg(long, env = "COMPUTE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Everything the worker needs, resolved from the command line.
#[derive(Clone)]
pub struct Settings {
    /// The task queue.
    pub task_queue: String,
    /// The provider and its settings.
    pub provider: ProviderConfig,
    /// The store's URL.
    pub database_url: String,
    /// Default operation timeout.
    pub default_timeout: Duration,
    /// Activity slots of the worker.
    pub max_concurrent_activities: usize,
    /// Restate ingresses callbacks may use.
    pub restate_ingress_urls: Vec<String>,
}

// By hand: the database URL may carry a password.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("task_queue", &self.task_queue)
            .field("provider", &self.provider)
            .field("database_url", &store::redact_url(&self.database_url))
            .field("default_timeout", &self.default_timeout)
            .field("max_concurrent_activities", &self.max_concurrent_activities)
            .field("restate_ingress_urls", &self.restate_ingress_urls)
            .finish()
    }
}

impl RunArgs {
    /// Resolves the settings.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let provider = match self.provider {
            ProviderKind::Local => ProviderConfig::Local(LocalConfig {
                state_dir: self.local_state_dir.clone(),
                settle_ms: self.local_settle.as_millis() as u64,
                stop_grace_ms: self.local_stop_grace.as_millis() as u64,
                ..LocalConfig::default()
            }),
            ProviderKind::Ecs => ProviderConfig::Ecs(EcsConfig {
                cluster: self.ecs_cluster.clone(),
                launch_type: self.ecs_launch_type.clone(),
                subnets: self.ecs_subnets.clone(),
                security_groups: self.ecs_security_groups.clone(),
                assign_public_ip: self.ecs_assign_public_ip,
                execution_role_arn: self.ecs_execution_role_arn.clone(),
                task_role_arn: self.ecs_task_role_arn.clone(),
                log_group: self.ecs_log_group.clone(),
                observe_interval_ms: self.ecs_observe_interval.as_millis() as u64,
            }),
            ProviderKind::Kubernetes => ProviderConfig::Kubernetes(KubernetesConfig {
                namespace: self.k8s_namespace.clone(),
                namespace_per_tenant: self.k8s_namespace_per_tenant,
                progress_deadline_seconds: i32::try_from(self.k8s_progress_deadline.as_secs())
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| anyhow!("--k8s-progress-deadline must be 1s to 68 years"))?,
                ..KubernetesConfig::default()
            }),
        };
        let restate_ingress_urls: Vec<String> = self
            .restate_ingress_url
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        parse_ingress_urls(&restate_ingress_urls).map_err(|e| anyhow!("{}", e.message))?;
        Ok(Settings {
            max_concurrent_activities: self.max_concurrent_activities as usize,
            task_queue: self.task_queue.clone(),
            provider,
            database_url: self.database.clone(),
            default_timeout: self.default_timeout,
            restate_ingress_urls,
        })
    }
}

/// Opens the execution store and starts the provider the settings name.
async fn open_backends(
    settings: &Settings,
) -> anyhow::Result<(
    Arc<dyn store::ExecutionStore>,
    Arc<dyn provider::ComputeProvider>,
)> {
    let store = store::connect(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the execution store {}",
                store::redact_url(&settings.database_url)
            )
        })?;
    let provider = provider::build(&settings.provider)
        .await
        .map_err(|e| anyhow!("cannot start the provider: {e}"))?;
    Ok((store, provider))
}

/// Runs the orphan sweeper (see [`Command::Sweep`]); fails when an orphan could not be
/// removed.
pub async fn sweep(args: &SweepArgs) -> anyhow::Result<()> {
    use compute_activities::sweep;
    let settings = args.run.settings()?;
    let (store, provider) = open_backends(&settings).await?;
    let orphans = sweep::find_orphans(store.as_ref(), provider.as_ref())
        .await
        .map_err(|e| anyhow!("cannot list the managed resources: {e}"))?;
    if !args.apply {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"applied": false, "orphans": orphans})
                )?
            );
        } else {
            for o in &orphans {
                println!(
                    "orphan {} {} (tenant {}): {}",
                    o.resource.kind,
                    o.resource.id,
                    o.resource.tenant_id,
                    serde_json::to_value(o.reason)?.as_str().unwrap_or_default()
                );
            }
            println!(
                "{} orphan(s) found; dry run: nothing removed (--apply removes them)",
                orphans.len()
            );
        }
        return Ok(());
    }
    let removals = sweep::remove_orphans(provider.as_ref(), &orphans).await;
    let failed = removals.iter().filter(|r| !r.removed).count();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"applied": true, "removals": removals})
            )?
        );
    } else {
        for r in &removals {
            let o = &r.orphan;
            match &r.error {
                None => println!(
                    "removed {} {} (tenant {})",
                    o.resource.kind, o.resource.id, o.resource.tenant_id
                ),
                Some(e) => println!(
                    "FAILED to remove {} {} (tenant {}): {e}",
                    o.resource.kind, o.resource.id, o.resource.tenant_id
                ),
            }
        }
        println!(
            "{} orphan(s) removed, {failed} failed",
            removals.len() - failed
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} orphan(s) could not be removed");
    }
    Ok(())
}

/// Resolves when the process gets SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C will stop the worker.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down."),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received; shutting down."),
    }
}

/// Connects to Temporal with the SDK's environment configuration.
pub async fn connect_temporal() -> anyhow::Result<Client> {
    let (conn_opts, client_opts) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())
            .map_err(|e| anyhow!("invalid Temporal client configuration: {e}"))?;
    let connection = Connection::connect(conn_opts)
        .await
        .context("cannot connect to Temporal (set TEMPORAL_ADDRESS)")?;
    Client::new(connection, client_opts).context("cannot build the Temporal client")
}

/// Registers the `TenantId` keyword search attribute on the namespace if it is missing:
/// without it every workflow that sets it would fail its tasks.
pub async fn ensure_search_attribute(client: &Client) -> anyhow::Result<()> {
    let namespace = client.options().namespace.clone();
    let mut operator = client.connection().operator_service();
    let existing = operator
        .list_search_attributes(tonic::Request::new(ListSearchAttributesRequest {
            namespace: namespace.clone(),
        }))
        .await
        .context("cannot list the namespace's search attributes")?
        .into_inner();
    if existing
        .custom_attributes
        .contains_key(names::TENANT_ID_SEARCH_ATTRIBUTE)
    {
        return Ok(());
    }
    let result = operator
        .add_search_attributes(tonic::Request::new(AddSearchAttributesRequest {
            search_attributes: [(
                names::TENANT_ID_SEARCH_ATTRIBUTE.to_string(),
                IndexedValueType::Keyword as i32,
            )]
            .into(),
            namespace,
        }))
        .await;
    match result {
        Ok(_) => Ok(()),
        // Another worker registered it first.
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(anyhow!(
            "cannot register the {} search attribute ({}); register it with \
             `temporal operator search-attribute create --name {} --type Keyword`",
            names::TENANT_ID_SEARCH_ATTRIBUTE,
            s.message(),
            names::TENANT_ID_SEARCH_ATTRIBUTE
        )),
    }
}

/// Runs the worker until `shutdown` resolves, then stops gracefully (in-flight activities
/// finish or are handed back to Temporal).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (store, provider) = open_backends(&settings).await?;
    let client = connect_temporal().await?;
    if let Err(e) = ensure_search_attribute(&client).await {
        // Some deployments (Temporal Cloud, restricted API keys) register attributes out of
        // band: say what is missing and keep serving.
        tracing::error!(error = %format!("{e:#}"), "The TenantId search attribute is not registered; workflows that set it will fail their tasks until it is.");
    }

    let activities = ComputeActivities::new(
        store,
        Arc::clone(&provider),
        ActivitySettings {
            task_queue: settings.task_queue.clone(),
            default_timeout: settings.default_timeout,
            ..ActivitySettings::default()
        },
    )
    .with_callbacks(
        Callbacks::new(&settings.restate_ingress_urls)
            .map_err(|e| anyhow!("invalid Restate configuration: {}", e.message))?,
    );
    let runtime = Runtime::from_current_tokio(Default::default())
        .map_err(|e| anyhow!("cannot start the Temporal runtime: {e}"))?;
    // The SDK's default is 100 activity slots; each in-flight operation's watch holds one, so
    // past 100 operations new requests would wait for a slot.
    let tuner = TunerHolder::builder()
        .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(100))
        .activity_task_slot_supplier(FixedSizeSlotSupplier::new(
            settings.max_concurrent_activities,
        ))
        .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(100))
        .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(100))
        .build();
    let options = WorkerOptions::new(settings.task_queue.clone())
        .tuner(tuner)
        .register_activities(activities)
        .register_workflow::<ComputeExecutionTracker>()?
        .register_workflow::<TenantComputeWorkflow>()?
        .build();
    let mut worker = Worker::new(&runtime, client, options)
        .map_err(|e| anyhow!("cannot create the worker: {e}"))?;
    let stop = worker.shutdown_handle();
    tracing::info!(
        task_queue = %settings.task_queue,
        provider = provider.name(),
        "Worker started."
    );
    // Worker::run is not Send: it runs here, on the main task, raced against the shutdown.
    let run = worker.run();
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        _ = shutdown => {
            stop();
            run.await
        }
    };
    result.map_err(|e| anyhow!("the worker stopped with an error: {e}"))?;
    tracing::info!("Worker stopped.");
    Ok(())
}
