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
    pub database: DatabaseUrl,
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
    /// Local provider: the worker's environment variables an `env:NAME` secret may name
    /// (comma-separated exact names or `PREFIX*` patterns; default: none, so no `env:` secret
    /// resolves).
    #[arg(long, env = "COMPUTE_LOCAL_SECRET_ENV_ALLOW", value_delimiter = ',')]
    pub local_secret_env_allow: Vec<String>,
    /// Local provider: a directory `file:PATH` secrets may lie in, after symlinks are
    /// resolved (repeatable or comma-separated; default: none, so no `file:` secret resolves).
    #[arg(long, env = "COMPUTE_LOCAL_SECRET_DIR", value_delimiter = ',')]
    pub local_secret_dir: Vec<PathBuf>,
    /// Local provider: the user (name or uid) workloads run as, with its primary group and
    /// no supplementary groups (the worker must run as root); default: the worker's own.
    #[arg(long, env = "COMPUTE_LOCAL_RUN_AS_USER")]
    pub local_run_as_user: Option<String>,
    /// Local provider: a delegated cgroup v2 directory; each workload then runs in a child
    /// cgroup with `spec.memory` as `memory.max` (default: `spec.memory` as RLIMIT_DATA).
    #[arg(long, env = "COMPUTE_LOCAL_CGROUP_PARENT")]
    pub local_cgroup_parent: Option<PathBuf>,
    /// Local provider: a workload's open-file limit (RLIMIT_NOFILE; 0 keeps the worker's).
    #[arg(long, env = "COMPUTE_LOCAL_MAX_OPEN_FILES", default_value_t = 4096)]
    pub local_max_open_files: u64,
    /// Local provider: a workload's process limit (RLIMIT_NPROC, counted per user; 0 keeps
    /// the worker's).
    #[arg(long, env = "COMPUTE_LOCAL_MAX_PROCESSES", default_value_t = 0)]
    pub local_max_processes: u64,
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
    /// Kubernetes: the prefix of every Secret a `secretKeyRef` may name (`{tenantId}` stands
    /// for the tenant's id). Default: `tenant-<tenantId>-`, or any Secret with
    /// --k8s-namespace-per-tenant.
    #[arg(long, env = "K8S_SECRET_NAME_PREFIX")]
    pub k8s_secret_name_prefix: Option<String>,
    /// Kubernetes: the security profile of tenant pods: `baseline` (no privilege escalation,
    /// RuntimeDefault seccomp, nothing privileged, no host namespaces) or `restricted`
    /// (also runAsNonRoot and every capability dropped).
    #[arg(long, env = "K8S_POD_SECURITY", default_value = "baseline", value_parser = ["baseline", "restricted"])]
    pub k8s_pod_security: String,
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
    /// Temporal namespaces a `temporal` callback may name besides the worker's own
    /// (comma-separated; default: the worker's own only).
    #[arg(long, env = "COMPUTE_CALLBACK_NAMESPACES", value_delimiter = ',')]
    pub callback_namespaces: Vec<String>,
    /// How long the audit trail (`activity_attempts`) and the delivery records
    /// (`callback_deliveries`) are kept; older rows are pruned in the background.
    #[arg(long, env = "COMPUTE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// On SIGTERM: how long in-flight activities get to finish before they are cancelled.
    /// Watches are released at once (another worker resumes them); deliveries and starts
    /// finish within this period.
    #[arg(long, env = "COMPUTE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How many history events one run of an execution's tracker may grow to before it
    /// continues as new (a tuning knob; the default keeps far below Temporal's limits).
    #[arg(long, env = "COMPUTE_TRACKER_HISTORY_LIMIT", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(20..=40_000))]
    pub tracker_history_limit: u32,
    /// Log format.
    #[arg(long, env = "COMPUTE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The store's URL as given on the command line; its `Debug` masks the password, so no
/// printout of the arguments shows it.
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_string()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&store::redact_url(&self.0))
    }
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
    /// Namespaces `temporal` callbacks may name besides the worker's own.
    pub callback_namespaces: Vec<String>,
    /// How long audit and delivery records are kept.
    pub retention: Duration,
    /// How long in-flight activities get at shutdown.
    pub shutdown_grace: Duration,
    /// History events per tracker run before it continues as new.
    pub tracker_history_limit: u32,
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
            .field("callback_namespaces", &self.callback_namespaces)
            .field("retention", &self.retention)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tracker_history_limit", &self.tracker_history_limit)
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
                secret_env_allow: self
                    .local_secret_env_allow
                    .iter()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect(),
                secret_dirs: self.local_secret_dir.clone(),
                run_as_user: self.local_run_as_user.clone(),
                cgroup_parent: self.local_cgroup_parent.clone(),
                max_open_files: self.local_max_open_files,
                max_processes: self.local_max_processes,
                file_retention_ms: u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX),
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
                secret_arn_prefixes: self
                    .ecs_secret_arn_prefix
                    .iter()
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
                call_timeout_ms: u64::try_from(self.ecs_call_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                attempt_timeout_ms: u64::try_from(self.ecs_attempt_timeout.as_millis())
                    .unwrap_or(u64::MAX),
            }),
            ProviderKind::Kubernetes => ProviderConfig::Kubernetes(KubernetesConfig {
                namespace: self.k8s_namespace.clone(),
                namespace_per_tenant: self.k8s_namespace_per_tenant,
                progress_deadline_seconds: i32::try_from(self.k8s_progress_deadline.as_secs())
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| anyhow!("--k8s-progress-deadline must be 1s to 68 years"))?,
                secret_name_prefix: self.k8s_secret_name_prefix.clone(),
                pod_security: self
                    .k8s_pod_security
                    .parse()
                    .map_err(|_| anyhow!("--k8s-pod-security must be baseline or restricted"))?,
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
            database_url: self.database.0.clone(),
            default_timeout: self.default_timeout,
            restate_ingress_urls,
            callback_namespaces: self
                .callback_namespaces
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            retention: self.retention,
            shutdown_grace: self.shutdown_grace,
            tracker_history_limit: self.tracker_history_limit,
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
    // Against a wrong --database every resource looks orphaned: remove nothing then.
    sweep::check_store_knows_provider(store.as_ref(), provider.name(), &settings.database_url)
        .await
        .map_err(|e| anyhow!("{}", e.message))?;
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

/// Makes the worker non-dumpable: a workload running as the same user can then read neither
/// `/proc/<worker>/environ` (the worker's credentials) nor its memory, nor attach a debugger.
fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "Could not make the worker non-dumpable (PR_SET_DUMPABLE); same-user workloads may read its environment.");
    }
}

/// How often old audit and delivery records (and the local provider's old files) are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Prunes what is older than `retention`, now and then every [`PRUNE_INTERVAL`]. A failure
/// costs a warning: the next round tries again.
async fn prune_periodically(
    store: Arc<dyn store::ExecutionStore>,
    provider: Arc<dyn provider::ComputeProvider>,
    retention: Duration,
) {
    let mut every = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        every.tick().await;
        match store
            .prune(store::retention_cutoff(chrono::Utc::now(), retention))
            .await
        {
            Ok(n) => tracing::info!(
                attempts = n.attempts,
                deliveries = n.deliveries,
                "Pruned records older than the retention."
            ),
            Err(e) => tracing::warn!(error = %e, "Pruning old records failed; trying again later."),
        }
        match provider.prune(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "Pruned the provider's old files."),
            Err(e) => {
                tracing::warn!(error = %e, "Pruning the provider's old files failed; trying again later.")
            }
        }
    }
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
    harden_process();
    let (store, provider) = open_backends(&settings).await?;
    let client = connect_temporal().await?;
    if let Err(e) = ensure_search_attribute(&client).await {
        // Some deployments (Temporal Cloud, restricted API keys) register attributes out of
        // band: say what is missing and keep serving.
        tracing::error!(error = %format!("{e:#}"), "The TenantId search attribute is not registered; workflows that set it will fail their tasks until it is.");
    }

    let release = tokio_util::sync::CancellationToken::new();
    let own_namespace = client.options().namespace.clone();
    let activities = ComputeActivities::new(
        Arc::clone(&store),
        Arc::clone(&provider),
        ActivitySettings {
            task_queue: settings.task_queue.clone(),
            default_timeout: settings.default_timeout,
            tracker_max_history_events: settings.tracker_history_limit,
            release: release.clone(),
            ..ActivitySettings::default()
        },
    )
    .with_callbacks(
        Callbacks::new(&settings.restate_ingress_urls)
            .map_err(|e| anyhow!("invalid Restate configuration: {}", e.message))?
            .with_namespaces(
                std::iter::once(own_namespace).chain(settings.callback_namespaces.iter().cloned()),
            ),
    );
    let pruner = tokio::spawn(prune_periodically(
        Arc::clone(&store),
        Arc::clone(&provider),
        settings.retention,
    ));
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
        .graceful_shutdown_period(settings.shutdown_grace)
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
            // Stop polling first, then release the watches: their retried attempts go to the
            // workers still polling, not back to this one.
            stop();
            release.cancel();
            tracing::info!(grace = ?settings.shutdown_grace, "Shutting down: watches released; in-flight activities get the grace period.");
            run.await
        }
    };
    pruner.abort();
    result.map_err(|e| anyhow!("the worker stopped with an error: {e}"))?;
    tracing::info!("Worker stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_printout_of_the_settings_shows_a_password() {
        let cli = Cli::try_parse_from([
            "compute-worker",
            "run",
            "--database",
            "postgres://compute:hunter2@db/compute?sslmode=require",
        ])
        .unwrap();
        let Command::Run(args) = &cli.command else {
            panic!("run");
        };
        assert!(!format!("{cli:?}").contains("hunter2"));
        let settings = args.settings().unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert!(
            settings.database_url.contains("hunter2"),
            "the value itself is kept"
        );
    }
}
