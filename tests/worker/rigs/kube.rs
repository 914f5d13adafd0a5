//! The Kubernetes rig: one real control plane per test binary (etcd, kube-apiserver and
//! kube-controller-manager 1.20, from `scripts/k8s-rig.sh run`), shared by every Kubernetes
//! test; each test works in a namespace of its own.
//!
//! What it does NOT have (tests must not pretend; see shared/test-rig.md): no scheduler and no
//! kubelet. Pods stay Pending on no node until a test plays the kubelet by patching their
//! status; nothing runs, no image is pulled, no Secret's value is read. A pod that was never
//! scheduled is deleted at once (no grace period), so deletes complete without a kubelet.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{
    process::on_parent_death,
    worker::{alive, processes_with},
};

/// The shared Kubernetes control plane.
pub struct KubeRig {
    /// Its directory: `kubeconfig` (admin token), `rig.log` and each component's log.
    pub dir: PathBuf,
    /// The admin kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
}

impl KubeRig {
    /// The rig script's log and the tail of each component's.
    pub fn log(&self) -> String {
        rig_log(&self.dir)
    }
}

fn rig_log(dir: &Path) -> String {
    let mut out = std::fs::read_to_string(dir.join("rig.log")).unwrap_or_default();
    for component in ["etcd", "apiserver", "controller-manager"] {
        let text =
            std::fs::read_to_string(dir.join(format!("{component}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- {component}.log (tail) ---\n"));
        out.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
    }
    out
}

/// Where `scripts/k8s-rig.sh` caches the two binaries it builds.
fn kube_rig_bin_dir() -> PathBuf {
    match std::env::var_os("K8S_RIG_CACHE") {
        Some(cache) => PathBuf::from(cache).join("bin"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/compute-worker/k8s/bin"),
    }
}

fn kube_binaries_built() -> bool {
    let bin = kube_rig_bin_dir();
    bin.join("kube-apiserver").exists() && bin.join("kube-controller-manager").exists()
}

/// Writes straight to the test binary's stderr, past libtest's output capture.
fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The shared rig, started on first use. A rig that cannot start fails the test with its log.
pub fn kube_rig() -> &'static KubeRig {
    static RIG: OnceLock<KubeRig> = OnceLock::new();
    RIG.get_or_init(start_kube_rig)
}

fn start_kube_rig() -> KubeRig {
    use std::sync::{Arc, Mutex};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-rig.sh");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Rigs of earlier runs whose test binary is gone leave their directory (etcd's data).
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only when no process uses it any more (a rig may still be stopping).
            if let Some(pid) = name
                .strip_prefix("k8s-rig-")
                .and_then(|p| p.parse::<u64>().ok())
                && !alive(pid)
                && processes_with(&e.path().display().to_string()).is_empty()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("k8s-rig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // A build already under way elsewhere (another test run, or `k8s-rig.sh build`): wait for
    // it rather than start a second one in the same cache.
    let build_marker = "WHAT=cmd/kube-apiserver";
    if !kube_binaries_built() && !processes_with(build_marker).is_empty() {
        note(
            "k8s rig: waiting for the kube-apiserver build already running (10-15 min on a \
             first run)",
        );
        let deadline = Instant::now() + Duration::from_secs(30 * 60);
        while !kube_binaries_built() && !processes_with(build_marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the running kube-apiserver build did not finish within 30 min"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let building = !kube_binaries_built();
    if building {
        note(
            "k8s rig: building kube-apiserver and kube-controller-manager from Debian's source \
             first (10-15 min, once; cached)",
        );
    }

    let log = std::fs::File::create(dir.join("rig.log")).unwrap();
    // The rig script stops the controller manager, the API server and etcd in order on
    // SIGTERM, but a second SIGTERM during that stop kills it halfway (its trap is reset),
    // leaving an API server that no longer exits once etcd is gone. And PR_SET_PDEATHSIG fires
    // once per thread as the test binary's threads exit (the child is handed from one thread
    // to the next). So the death signal goes to a supervisor that forwards exactly one
    // SIGTERM to the script and waits for it; in a process group of its own, a Ctrl-C reaches
    // the rig only that way too.
    const SUPERVISOR: &str = r#"
        rig=; sent=
        forward() { sent=1; trap '' TERM INT HUP; [ -z "$rig" ] || kill -TERM "$rig" 2>/dev/null; }
        trap forward TERM INT HUP
        bash "$1" run "$2" & rig=$!
        [ -z "$sent" ] || kill -TERM "$rig" 2>/dev/null
        while kill -0 "$rig" 2>/dev/null; do wait "$rig"; done
        wait "$rig"
    "#;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(SUPERVISOR)
        .arg("k8s-rig-supervisor")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    on_parent_death(&mut cmd, nix::sys::signal::Signal::SIGTERM);
    // The death signal follows the spawning thread: a thread that never ends spawns the rig
    // and waits for it.
    let exit: Arc<Mutex<Option<String>>> = Arc::default();
    let exit_in_thread = exit.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        let status = child.wait();
        *exit_in_thread.lock().unwrap() = Some(format!("{status:?}"));
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));

    let patience = Duration::from_secs(if building { 30 * 60 } else { 3 * 60 });
    let deadline = Instant::now() + patience;
    let ready = dir.join("ready");
    while !ready.exists() {
        if let Some(status) = exit.lock().unwrap().clone() {
            panic!(
                "the Kubernetes rig exited before it was ready ({status}):\n{}",
                rig_log(&dir)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the Kubernetes rig was not ready within {patience:?}:\n{}",
            rig_log(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    note(&format!(
        "k8s rig: ready, KUBECONFIG={}",
        dir.join("kubeconfig").display()
    ));
    KubeRig {
        kubeconfig: dir.join("kubeconfig"),
        dir,
    }
}

/// Creates the namespace `ns` (a test's own) on the shared rig; fails the test with the rig's
/// log.
pub async fn create_namespace(kube: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ObjectMeta, PostParams};
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(kube.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create the namespace {ns} on the rig: {e}\n{}",
                kube_rig().log()
            )
        });
}

/// A Kubernetes client from a kubeconfig file (its current context). Each test makes its own:
/// a client belongs to the runtime it was made on.
pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("use {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("a Kubernetes client")
}

// --- Playing the kubelet: the rig has none. ---

/// Now, as a Kubernetes timestamp.
pub fn k8s_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The image of a pod's first container.
pub fn pod_image(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The made-up container id the kubelet reports for a pod (64 hex digits, as containerd's).
pub fn container_id(pod: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pod.hash(&mut h);
    let x = h.finish();
    format!(
        "containerd://{x:016x}{:016x}{x:016x}{:016x}",
        !x,
        x.rotate_left(17)
    )
}

/// What a kubelet reports for a started, ready container: Running, every condition True.
pub async fn mark_ready(
    api: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> kube::Result<k8s_openapi::api::core::v1::Pod> {
    let name = pod.metadata.name.clone().unwrap();
    let image = pod_image(pod);
    let now = k8s_now();
    let condition = |type_: &str| {
        serde_json::json!({"type": type_, "status": "True", "lastProbeTime": null,
               "lastTransitionTime": now})
    };
    let patch = serde_json::json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            condition("PodScheduled"),
            condition("Initialized"),
            condition("ContainersReady"),
            condition("Ready"),
        ],
        "containerStatuses": [{
            "name": "workload",
            "ready": true,
            "started": true,
            "restartCount": 0,
            "image": image,
            "imageID": format!("docker-pullable://{image}@sha256:{}", "0".repeat(64)),
            "containerID": container_id(&name),
            "state": {"running": {"startedAt": now}},
        }],
    }});
    api.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
}
