//! The compute-worker application: configuration, wiring and the worker's run loop.
//!
//! `main.rs` only parses the command line; everything else is here so that tests start the
//! same application.

pub mod cli;
pub mod serve;
pub mod telemetry;
pub mod tenants;

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, anyhow};
use compute_activities::{
    ComputeActivities, activities::ActivitySettings, callback::Callbacks, metrics::Metrics, names,
    provider, store,
};
use compute_workflows::{tenant::TenantComputeWorkflow, tracker::ComputeExecutionTracker};
use temporalio_client::{
    Client, ClientOptions, Connection, envconfig::LoadClientConfigProfileOptions, tonic,
};
use temporalio_common::protos::temporal::api::{
    enums::v1::IndexedValueType,
    operatorservice::v1::{AddSearchAttributesRequest, ListSearchAttributesRequest},
};
use temporalio_common::telemetry::{
    PrometheusExporterOptions, TelemetryOptions, start_prometheus_metric_exporter,
};
use temporalio_sdk::{
    Runtime, Worker, WorkerOptions,
    runtime::{
        RuntimeOptions,
        worker_tuner::{FixedSizeSlotSupplier, TunerHolder},
    },
};

pub use crate::cli::{
    Cli, Command, ProbeArgs, RunArgs, SchemaArgs, Settings, SweepArgs, TenantArgs,
};

/// `compute-worker schema`: prints the contract's JSON Schemas as one object by file name, or
/// writes them, one file each, into `--out`.
pub fn schema(args: &SchemaArgs) -> anyhow::Result<()> {
    use compute_contract::schema;
    let docs = schema::documents();
    match &args.out {
        None => println!("{}", serde_json::to_string_pretty(&docs)?),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (file, doc) in &docs {
                std::fs::write(dir.join(file), schema::render(doc))
                    .with_context(|| format!("cannot write {}", dir.join(file).display()))?;
            }
            println!("{} schemas written to {}", docs.len(), dir.display());
        }
    }
    Ok(())
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
    // Every call the activities make to the store and the provider is counted.
    let metrics = Metrics::new(provider.name());
    let store = store::metered::MeteredStore::wrap(
        store,
        store::backend_of(&settings.database_url),
        metrics.clone(),
    );
    let provider = provider::metered::MeteredProvider::wrap(provider, metrics.clone());
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
            metrics: metrics.clone(),
            ..ActivitySettings::default()
        },
    )
    .with_callbacks(
        Callbacks::new(&settings.restate_ingress_urls)
            .map_err(|e| anyhow!("invalid Restate configuration: {}", e.message))?
            .with_namespaces(
                std::iter::once(own_namespace).chain(settings.callback_namespaces.iter().cloned()),
            ),
    )
    .with_observer(client.clone());
    // The observer watches every operation in flight from this process (no activity slot
    // each) and takes over those of workers that went away. Its lease exists before the
    // worker takes its first operation.
    activities
        .renew_observer_lease()
        .await
        .map_err(|e| anyhow!("cannot register the observer in the store: {}", e.message))?;
    let observer = {
        let activities = activities.clone();
        tokio::spawn(async move { activities.run_observer().await })
    };
    let pruner = tokio::spawn(prune_periodically(
        Arc::clone(&store),
        Arc::clone(&provider),
        settings.retention,
    ));
    // The SDK's own metrics go to its exporter on a loopback port of its own, which the
    // operations port reads on each scrape: one port for everything.
    let sdk_exporter = match settings.metrics_address {
        Some(_) => Some(
            start_prometheus_metric_exporter(
                PrometheusExporterOptions::builder()
                    .socket_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                    .build(),
            )
            .map_err(|e| anyhow!("cannot start the SDK's metrics exporter: {e}"))?,
        ),
        None => None,
    };
    let mut telemetry = TelemetryOptions::builder().build();
    if let Some(exporter) = &sdk_exporter {
        telemetry.metrics = Some(exporter.meter.clone());
    }
    let runtime_options = RuntimeOptions::builder()
        .telemetry_options(telemetry)
        .build()
        .map_err(|e| anyhow!("invalid Temporal runtime options: {e}"))?;
    let runtime = Runtime::from_current_tokio(runtime_options)
        .map_err(|e| anyhow!("cannot start the Temporal runtime: {e}"))?;
    // Activity slots bound the short steps running at once (starts, reads, deliveries); an
    // operation in flight holds none (the observer watches it), except a tracker from before
    // the observer, whose watch activity holds one.
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
        .max_cached_workflows(settings.max_cached_workflows)
        .build();
    let mut worker = Worker::new(&runtime, client.clone(), options)
        .map_err(|e| anyhow!("cannot create the worker: {e}"))?;
    let stop = worker.shutdown_handle();
    let polling = Arc::new(AtomicBool::new(false));
    let ops_stop = tokio_util::sync::CancellationToken::new();
    let ops = match settings.metrics_address {
        Some(address) => Some(
            serve::serve(
                address,
                serve::Ops {
                    metrics: metrics.clone(),
                    sdk_metrics: sdk_exporter.as_ref().map(|e| e.bound_addr),
                    readiness: serve::Readiness::new(
                        client.clone(),
                        Arc::clone(&store),
                        Arc::clone(&provider),
                        Arc::clone(&polling),
                    ),
                },
                ops_stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    tracing::info!(
        task_queue = %settings.task_queue,
        provider = provider.name(),
        "Worker started."
    );
    // Worker::run is not Send: it runs here, on the main task, raced against the shutdown.
    let run = worker.run();
    tokio::pin!(run);
    polling.store(true, std::sync::atomic::Ordering::Release);
    let result = tokio::select! {
        r = &mut run => r,
        _ = shutdown => {
            // Stop polling first, then release the watches: their retried attempts go to the
            // workers still polling, not back to this one.
            polling.store(false, std::sync::atomic::Ordering::Release);
            stop();
            release.cancel();
            tracing::info!(grace = ?settings.shutdown_grace, "Shutting down: watches released; in-flight activities get the grace period.");
            run.await
        }
    };
    // The observer gives up its lease (another worker takes its executions over at once).
    release.cancel();
    if tokio::time::timeout(Duration::from_secs(10), observer)
        .await
        .is_err()
    {
        tracing::warn!("The observer did not stop in time: its lease expires by itself.");
    }
    polling.store(false, std::sync::atomic::Ordering::Release);
    pruner.abort();
    ops_stop.cancel();
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    if let Some(exporter) = sdk_exporter {
        exporter.abort_handle.abort();
    }
    result.map_err(|e| anyhow!("the worker stopped with an error: {e}"))?;
    tracing::info!("Worker stopped.");
    Ok(())
}
