//! Benchmark of the ECS provider's batched tracking: N in-flight executions observed together
//! through the one shared observer. Reports DescribeServices calls per execution per tracking
//! cycle (the goal is at most 0.1) and wall time. Needs an ECS API: `scripts/bench-ecs.sh`
//! starts a moto server and runs this against it.
//!
//! `cargo run -p compute-activities --example ecs_tracking_bench -- [executions] [cycles]`

// A benchmark: a failed unwrap is a failed run.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use compute_activities::{
    contract::{ComputeSpec, Operation},
    provider::{
        ComputeProvider, Observation, OperationContext,
        ecs::{EcsConfig, EcsProvider},
    },
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let executions: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let cycles: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    let interval = Duration::from_millis(200);

    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let client = aws_sdk_ecs::Client::new(&sdk);
    client.create_cluster().cluster_name("bench").send().await?;
    let provider = EcsProvider::with_client(
        client,
        EcsConfig {
            cluster: "bench".into(),
            launch_type: "EC2".into(),
            observe_interval_ms: interval.as_millis() as u64,
            ..EcsConfig::default()
        },
    );
    let spec = ComputeSpec {
        image: Some("nginx:1.25".into()),
        memory: Some(256),
        ..ComputeSpec::default()
    };
    let ops: Vec<OperationContext> = (0..executions)
        .map(|i| OperationContext {
            execution_id: format!("bench-{i}-provision-0000000000000000"),
            tenant_id: format!("bench-{i}"),
            operation: Operation::Provision,
            metadata: Default::default(),
        })
        .collect();
    let mut resources = Vec::new();
    let started = Instant::now();
    for op in &ops {
        resources.push(provider.provision(op, &spec).await?);
    }
    let provisioned = started.elapsed();

    // Every execution observes concurrently, as the trackers' watch activities do. Without
    // MOTO_ECS_SERVICE_RUNNING the deployments stay in progress, so all stay in flight.
    let before = provider.observer().describe_calls();
    let tracking = Instant::now();
    let mut observations = 0u64;
    for _ in 0..cycles {
        let results = futures::future::join_all(
            ops.iter()
                .zip(&resources)
                .map(|(op, ids)| provider.observe(op, ids)),
        )
        .await;
        for r in results {
            match r? {
                Observation::InProgress(_) | Observation::Succeeded(_) => observations += 1,
                Observation::Failed(e) => return Err(format!("observation failed: {e}").into()),
            }
        }
    }
    let elapsed = tracking.elapsed();
    let calls = provider.observer().describe_calls() - before;
    let per = calls as f64 / (executions as f64 * cycles as f64);
    println!("executions in flight:               {executions}");
    println!("tracking cycles:                    {cycles} (observe interval {interval:?})");
    println!("observations answered:              {observations}");
    println!("DescribeServices calls:             {calls}");
    println!("calls per execution per cycle:      {per:.3} (goal <= 0.1)");
    println!("provisioning {executions} services:          {provisioned:.2?}");
    println!(
        "tracking wall time:                 {elapsed:.2?} ({:.2?} per cycle)",
        elapsed / cycles as u32
    );
    Ok(())
}
