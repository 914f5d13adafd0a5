//! The shared watches: one reflector per kind (Deployments, ReplicaSets, Pods) over every
//! object the worker manages, started once per worker and read by every in-flight
//! observation, which wakes on their changes instead of polling.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::watch;

use super::naming::{MANAGED_BY, MANAGED_BY_LABEL};

/// The shared watches: one reflector per kind, over every object the worker manages.
pub struct Watch {
    pub(super) deployments: Store<Deployment>,
    pub(super) replica_sets: Store<ReplicaSet>,
    pub(super) pods: Store<Pod>,
    /// Bumped on every event of any of the watches: what an observation waits on.
    pub(super) changes: watch::Sender<u64>,
    connections: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watch {
    pub(super) fn start(client: &Client, namespace: Option<&str>) -> Watch {
        let (changes, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let deployments = spawn_reflector::<Deployment>(
            api(client, namespace),
            &changes,
            &connections,
            &mut tasks,
        );
        let replica_sets = spawn_reflector::<ReplicaSet>(
            api(client, namespace),
            &changes,
            &connections,
            &mut tasks,
        );
        let pods =
            spawn_reflector::<Pod>(api(client, namespace), &changes, &connections, &mut tasks);
        Watch {
            deployments,
            replica_sets,
            pods,
            changes,
            connections,
            tasks,
        }
    }

    pub(super) async fn ready(&self) -> bool {
        let all = async {
            let _ = self.deployments.wait_until_ready().await;
            let _ = self.replica_sets.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .is_ok()
    }

    /// How many watch streams the worker holds (one per kind).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// An API over one namespace, or over all of them.
pub(super) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    changes: &watch::Sender<u64>,
    connections: &Arc<AtomicUsize>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    // A plain list + watch: the 1.20 API servers still in use have no streaming lists.
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let changes = changes.clone();
    let connections = connections.clone();
    tasks.push(tokio::spawn(async move {
        connections.fetch_add(1, Ordering::Relaxed);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "Kubernetes watch failed; it restarts with backoff.");
                }
            }
        }
        connections.fetch_sub(1, Ordering::Relaxed);
    }));
    reader
}
