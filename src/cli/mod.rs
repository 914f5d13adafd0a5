//! The command line: the worker's general flags, and one group of flags per provider
//! (`local`, `ecs`, `kubernetes`, `simulated`), each converted into that provider's config by one `From`.

mod ecs;
mod kubernetes;
mod local;
mod simulated;
mod tenant;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use compute_activities::{callback, names, provider::ProviderConfig, store};

pub use self::{
    ecs::EcsArgs,
    kubernetes::KubernetesArgs,
    local::LocalArgs,
    simulated::SimulatedArgs,
    tenant::{TenantArgs, TenantCommand},
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
    /// Read tenants (`list`, `show`) and clear manual-intervention marks (`clear`) on the
    /// store named by `--database` / `COMPUTE_DATABASE_URL`.
    Tenant(TenantArgs),
    /// Ask a running worker's operations port whether it is ready (`/readyz`; `--path
    /// /healthz` for alive): exits 0 on 200 and 1 otherwise, printing the answer. For health
    /// checks in images with no HTTP client (the compose file's, ECS's).
    Probe(ProbeArgs),
    /// Print the contract's JSON Schemas (draft 2020-12: every public activity's input and
    /// output, TenantComputeWorkflow's input, the callback, the status) as one JSON object by
    /// file name, or write them to `--out DIR` (as in contract/schema/).
    Schema(SchemaArgs),
}

/// Settings of `compute-worker schema`.
#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    /// Write one file per schema into this directory instead of printing them.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// Settings of `compute-worker probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The worker's `--metrics-address`; an unspecified IP (`0.0.0.0`, `::`) is asked on
    /// loopback.
    #[arg(long, env = "COMPUTE_METRICS_ADDRESS")]
    pub metrics_address: std::net::SocketAddr,
    /// The endpoint to ask.
    #[arg(long, default_value = "/readyz", value_parser = ["/readyz", "/healthz"])]
    pub path: String,
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

/// The provider (`--provider`) and every provider's settings. A provider this worker was
/// built without is still a valid name here: the factory refuses it at start with the cargo
/// feature to build it with.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// The provider: `local` (processes on this host), `ecs` (ECS services; credentials,
    /// region and endpoint from the standard AWS chain) or `kubernetes` (Deployments; cluster
    /// from KUBECONFIG, ~/.kube/config or in-cluster), or `simulated` (nothing runs: every
    /// operation ends after `--simulated-delay`; for benchmarks and workflow tests only).
    #[arg(
        long = "provider",
        env = "COMPUTE_PROVIDER",
        default_value = "local",
        value_parser = ["local", "ecs", "kubernetes", "simulated"]
    )]
    pub name: String,
    /// Local provider settings.
    #[command(flatten)]
    pub local: LocalArgs,
    /// ECS settings.
    #[command(flatten)]
    pub ecs: EcsArgs,
    /// Kubernetes settings.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// Simulated provider settings.
    #[command(flatten)]
    pub simulated: SimulatedArgs,
}

impl ProviderArgs {
    /// The named provider's config.
    pub fn config(&self) -> anyhow::Result<ProviderConfig> {
        Ok(match self.name.as_str() {
            "local" => ProviderConfig::Local(self.local.clone().into()),
            "ecs" => ProviderConfig::Ecs(self.ecs.clone().into()),
            "kubernetes" => ProviderConfig::Kubernetes(self.kubernetes.clone().into()),
            "simulated" => ProviderConfig::Simulated(self.simulated.clone().into()),
            other => anyhow::bail!("unknown provider {other:?}"),
        })
    }
}

/// A comma-separated flag's values, trimmed, without empty ones.
fn non_empty(values: Vec<String>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Settings of `compute-worker run`; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The task queue callers use.
    #[arg(long, env = "COMPUTE_TASK_QUEUE", default_value = names::DEFAULT_TASK_QUEUE)]
    pub task_queue: String,
    /// The provider and its settings.
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// The execution store: `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (several workers may share one Postgres).
    #[arg(
        long,
        env = "COMPUTE_DATABASE_URL",
        default_value = "sqlite://compute-worker.db"
    )]
    pub database: DatabaseUrl,
    /// How many activities the worker runs at once: the short steps (starts, reads,
    /// deliveries). An operation in flight holds none: the worker's observer watches it.
    #[arg(long, env = "COMPUTE_MAX_CONCURRENT_ACTIVITIES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_activities: u32,
    /// How many workflow runs the worker keeps in memory between their tasks. A tracker waits
    /// minutes between two tasks, so one not kept is replayed from its short history when it
    /// wakes: keeping thousands would cost memory and save little.
    #[arg(long, env = "COMPUTE_MAX_CACHED_WORKFLOWS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub max_cached_workflows: u32,
    /// Timeout of operations whose request gives none.
    #[arg(long, env = "COMPUTE_DEFAULT_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_timeout: Duration,
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
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address (IP:PORT, e.g.
    /// `0.0.0.0:9464`); off by default.
    #[arg(long, env = "COMPUTE_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
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
    /// Workflow runs kept in memory.
    pub max_cached_workflows: usize,
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
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub metrics_address: Option<std::net::SocketAddr>,
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
            .field("max_cached_workflows", &self.max_cached_workflows)
            .field("restate_ingress_urls", &self.restate_ingress_urls)
            .field("callback_namespaces", &self.callback_namespaces)
            .field("retention", &self.retention)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tracker_history_limit", &self.tracker_history_limit)
            .field("metrics_address", &self.metrics_address)
            .finish()
    }
}

impl RunArgs {
    /// Resolves the settings.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut provider = self.provider.config()?;
        if let ProviderConfig::Local(local) = &mut provider {
            local.file_retention_ms = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
        }
        let restate_ingress_urls = non_empty(self.restate_ingress_url.clone());
        callback::check_ingress_urls(&restate_ingress_urls)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(Settings {
            max_concurrent_activities: self.max_concurrent_activities as usize,
            max_cached_workflows: self.max_cached_workflows as usize,
            task_queue: self.task_queue.clone(),
            provider,
            database_url: self.database.0.clone(),
            default_timeout: self.default_timeout,
            restate_ingress_urls,
            callback_namespaces: non_empty(self.callback_namespaces.clone()),
            retention: self.retention,
            shutdown_grace: self.shutdown_grace,
            tracker_history_limit: self.tracker_history_limit,
            metrics_address: self.metrics_address,
        })
    }
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
