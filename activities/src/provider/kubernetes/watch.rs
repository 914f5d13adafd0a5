//! The shared watches: one reflector per kind (Deployments, ReplicaSets, Pods) over every
//! object the worker manages, started once per worker and read by every in-flight
//! observation, which wakes on the changes of its own tenant's objects instead of polling.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
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

use super::naming::{MANAGED_BY, MANAGED_BY_LABEL, TENANT_LABEL};

/// Wake-ups per tenant: an event about one tenant's objects (its Deployment, ReplicaSets or
/// pods, in one namespace) wakes only the observations of that tenant, so a hundred
/// operations in flight do not each look again at every event of the others. A relist (a
/// watch that restarted) wakes every observation.
#[derive(Debug, Default)]
pub(super) struct Bells {
    by_tenant: Mutex<BellMap>,
}

/// (namespace, tenant id) -> the bell its observations wait on.
type BellMap = HashMap<(String, String), Arc<watch::Sender<u64>>>;

impl Bells {
    fn map(&self) -> std::sync::MutexGuard<'_, BellMap> {
        self.by_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The bell of one tenant's objects in `namespace`, for an observation to wait on.
    pub(super) fn of(&self, namespace: &str, tenant_id: &str) -> Arc<watch::Sender<u64>> {
        let mut map = self.map();
        let key = (namespace.to_string(), tenant_id.to_string());
        if let Some(bell) = map.get(&key) {
            return bell.clone();
        }
        // Bells no observation holds any more go when a new one comes.
        map.retain(|_, bell| Arc::strong_count(bell) > 1);
        map.entry(key)
            .or_insert_with(|| Arc::new(watch::channel(0).0))
            .clone()
    }

    fn ring(&self, namespace: Option<&str>, tenant_id: Option<&str>) {
        let (Some(ns), Some(tenant)) = (namespace, tenant_id) else {
            return;
        };
        let bell = self
            .map()
            .get(&(ns.to_string(), tenant.to_string()))
            .cloned();
        if let Some(bell) = bell {
            bell.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn ring_all(&self) {
        let bells: Vec<_> = self.map().values().cloned().collect();
        for bell in bells {
            bell.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn ring_for<K: Resource>(&self, obj: &K) {
        let meta = obj.meta();
        let tenant = meta.labels.as_ref().and_then(|l| l.get(TENANT_LABEL));
        self.ring(meta.namespace.as_deref(), tenant.map(String::as_str));
    }
}

/// The shared watches: one reflector per kind, over every object the worker manages.
pub struct Watch {
    pub(super) deployments: Store<Deployment>,
    pub(super) replica_sets: Store<ReplicaSet>,
    pub(super) pods: Store<Pod>,
    /// Rung by the events of each tenant's objects: what an observation waits on.
    pub(super) bells: Arc<Bells>,
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
        let bells = Arc::new(Bells::default());
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let deployments =
            spawn_reflector::<Deployment>(api(client, namespace), &bells, &connections, &mut tasks);
        let replica_sets =
            spawn_reflector::<ReplicaSet>(api(client, namespace), &bells, &connections, &mut tasks);
        let pods = spawn_reflector::<Pod>(api(client, namespace), &bells, &connections, &mut tasks);
        Watch {
            deployments,
            replica_sets,
            pods,
            bells,
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
    bells: &Arc<Bells>,
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
    let bells = bells.clone();
    let connections = connections.clone();
    tasks.push(tokio::spawn(async move {
        connections.fetch_add(1, Ordering::Relaxed);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                    bells.ring_for(&obj);
                }
                // A relist may have changed anything: everyone looks again once it is whole.
                Ok(watcher::Event::InitDone) => bells.ring_all(),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "Kubernetes watch failed; it restarts with backoff.");
                }
            }
        }
        connections.fetch_sub(1, Ordering::Relaxed);
    }));
    reader
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(namespace: &str, tenant: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(TENANT_LABEL.into(), tenant.into())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn an_event_wakes_only_its_own_tenants_observations() {
        let bells = Bells::default();
        let a = bells.of("ns", "a");
        let b = bells.of("ns", "b");
        let a_elsewhere = bells.of("other", "a");
        let (mut ra, rb, rx) = (a.subscribe(), b.subscribe(), a_elsewhere.subscribe());
        bells.ring_for(&pod("ns", "a"));
        assert!(ra.has_changed().unwrap());
        assert!(!rb.has_changed().unwrap());
        assert!(!rx.has_changed().unwrap());
        ra.borrow_and_update();
        // An object without the tenant label wakes nobody; a relist wakes everybody.
        bells.ring_for(&Pod::default());
        assert!(!ra.has_changed().unwrap());
        bells.ring_all();
        assert!(
            ra.has_changed().unwrap() && rb.has_changed().unwrap() && rx.has_changed().unwrap()
        );
        // The same tenant's observations share one bell; a bell nobody holds goes.
        assert!(Arc::ptr_eq(&a, &bells.of("ns", "a")));
        drop((b, rb));
        let _c = bells.of("ns", "c");
        assert!(
            !bells
                .map()
                .contains_key(&("ns".to_string(), "b".to_string()))
        );
    }
}
