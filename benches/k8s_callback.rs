//! Benchmark of the Kubernetes provider's callback latency: from the moment a tenant's pod is
//! marked Ready (the benchmark plays the kubelet) to the moment the caller's workflow history
//! records the `compute-provisioned` signal, over N concurrent provisions through the real
//! worker, a real Temporal dev server and the rig's kube-apiserver. Also reports how many watch
//! connections the worker holds, read from the API server's own metrics.
//!
//! `scripts/bench-k8s.sh [operations]` runs it. Under `cargo test` (no `--bench` argument) it
//! only says how to run it: it measures, it does not test.
#![allow(
    missing_docs,
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used
)]

#[path = "../tests/worker/rigs/mod.rs"]
mod rigs;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use compute_activities::names;
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::watcher,
};
use serde_json::json;

use rigs::{Outcome, WorkerOpts, client, kube_client, kube_rig, mark_ready, spawn_worker};

const TENANT_LABEL: &str = "compute-worker/tenant";

/// Sums the API server's gauge of open WATCH requests: all of them, and the namespace-scoped
/// ones (the controller manager watches cluster-wide; the worker watches its namespace).
async fn open_watches(kube: &kube::Client) -> Result<(u64, u64)> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = kube.request_text(request).await.context("GET /metrics")?;
    let (mut all, mut namespaced) = (0u64, 0u64);
    for line in text.lines() {
        if line.starts_with("apiserver_longrunning_gauge{") && line.contains("verb=\"WATCH\"") {
            let n = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            all += n;
            if line.contains("scope=\"namespace\"") {
                namespaced += n;
            }
        }
    }
    Ok((all, namespaced))
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("k8s_callback: a benchmark; run it with scripts/bench-k8s.sh");
        return Ok(());
    }
    let operations: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(100);

    let rig = kube_rig();
    let kube = kube_client(&rig.kubeconfig).await;
    let ns = format!("bench-{}", std::process::id());
    Api::<Namespace>::all(kube.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .context("create the namespace")?;
    let (watches_before, namespaced_before) = open_watches(&kube).await?;

    let worker = spawn_worker(
        "k8s-bench",
        WorkerOpts {
            env: vec![("KUBECONFIG", rig.kubeconfig.display().to_string())],
            args: vec![
                "--provider".into(),
                "kubernetes".into(),
                "--k8s-namespace".into(),
                ns.clone(),
            ],
            ..Default::default()
        },
    );
    let client = client().await;

    // The kubelet: marks every new pod Ready at once and notes when (after the API server
    // accepted the status).
    let ready_at: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    // When each Deployment is first complete as the API server has it (the controller
    // manager's share of the latency), seen by a watch of this benchmark's own.
    let available_at: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
    let deployments_watch = {
        let available_at = available_at.clone();
        let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(deployments, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = event else {
                    continue;
                };
                let status = d.status.clone().unwrap_or_default();
                let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                if status.ready_replicas == Some(desired)
                    && status.updated_replicas == Some(desired)
                    && status.observed_generation == d.metadata.generation
                {
                    let tenant = d
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(TENANT_LABEL))
                        .cloned()
                        .unwrap_or_default();
                    available_at
                        .lock()
                        .unwrap()
                        .entry(tenant)
                        .or_insert_with(Utc::now);
                }
            }
        })
    };
    let kubelet = {
        let ready_at = ready_at.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(pods.clone(), watcher::Config::default()));
            while let Some(event) = events.next().await {
                let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = (match event {
                    Ok(e) => e,
                    Err(_) => continue,
                }) else {
                    continue;
                };
                let tenant = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(TENANT_LABEL))
                    .cloned()
                    .unwrap_or_default();
                if ready_at.lock().unwrap().contains_key(&tenant) {
                    continue;
                }
                if mark_ready(&pods, &pod).await.is_ok() {
                    ready_at.lock().unwrap().insert(tenant, Utc::now());
                }
            }
        })
    };

    let started = Instant::now();
    let runs = (0..operations).map(|i| {
        let tenant = format!("bench-{i}");
        let id = format!("k8s-bench-{}-{i}", std::process::id());
        let input = json!({"operation": "provision",
            "request": {"tenantId": tenant, "spec": {"image": "nginx:1.25", "replicas": 1}},
            "policy": {"callbackTimeout": "120s", "maxAttempts": 1}});
        let (worker, client) = (&worker, &client);
        async move {
            let outcome = worker.run_tenant_workflow(client, &id, input).await;
            (tenant, id, outcome)
        }
    });
    let results = futures::future::join_all(runs).await;
    let wall = started.elapsed();
    let (watches_during, namespaced_during) = open_watches(&kube).await?;

    let mut latencies = Vec::new();
    let mut recorded = Vec::new();
    let mut controller = Vec::new();
    let mut failures = 0;
    let mut by_signal = 0;
    for (tenant, id, outcome) in &results {
        let finished = match outcome {
            Outcome::Completed(s) if s["state"] == "succeeded" => s["finishedAt"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            other => {
                failures += 1;
                eprintln!("{id}: {other:?}");
                continue;
            }
        };
        let Some(ready) = ready_at.lock().unwrap().get(tenant).copied() else {
            failures += 1;
            continue;
        };
        if let Some(f) = finished {
            recorded.push(ms(f - ready));
        }
        if let Some(a) = available_at.lock().unwrap().get(tenant) {
            controller.push(ms(*a - ready));
        }
        // The caller knows by the signal, or by the start activity's final handle (the
        // operation ended before the activity answered): both count.
        match rigs::learned_end_at(id, "compute-provisioned", names::PROVISION_ACTIVITY) {
            Some((how, at)) => {
                if how == "signal" {
                    by_signal += 1;
                }
                latencies.push((at - ready).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            }
            None => failures += 1,
        }
    }
    kubelet.abort();
    deployments_watch.abort();
    controller.sort_by(|a, b| a.total_cmp(b));
    latencies.sort_by(|a, b| a.total_cmp(b));
    recorded.sort_by(|a, b| a.total_cmp(b));

    println!("operations:                         {operations} (concurrent provisions)");
    println!(
        "succeeded and measured:             {} ({by_signal} told by signal, the rest by the final handle)",
        latencies.len()
    );
    println!("failed or unmeasured:               {failures}");
    println!(
        "pod Ready -> caller knows:          p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "pod Ready -> Deployment complete:   p50 {:.1} ms, p99 {:.1} ms (the controller manager's share)",
        percentile(&controller, 50.0),
        percentile(&controller, 99.0)
    );
    println!(
        "pod Ready -> success in the store:  p50 {:.1} ms, p99 {:.1} ms (the watch's share)",
        percentile(&recorded, 50.0),
        percentile(&recorded, 99.0)
    );
    println!(
        "wall time for all operations:       {:.2} s",
        wall.as_secs_f64()
    );
    println!(
        "open WATCH requests on the API server: {watches_before} before the worker, \
         {watches_during} with it; in the namespace {namespaced_before} before, \
         {namespaced_during} with it, of which 2 are this benchmark's own (pods, Deployments): the worker holds {}",
        namespaced_during.saturating_sub(namespaced_before + 2)
    );

    drop(worker);
    let _ = Api::<Namespace>::all(kube)
        .delete(&ns, &DeleteParams::default())
        .await;
    Ok(())
}
