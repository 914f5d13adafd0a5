//! The files that deploy the worker itself, checked against the real servers and the code:
//! `deploy/kubernetes/worker.yaml` applied server-side (dry run) on the rig's apiserver, and
//! `deploy/ecs/task-definition.json` and `deploy/ecs/iam-policy.json` registered and created
//! on moto through boto3 (whose client checks every parameter against the AWS API model),
//! the policy compared with every AWS call in the source, each file's settings with the
//! binary's flags.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    deploy::{flag_variables, is_standard_variable, start_with},
    rigs::{create_namespace, kube_client, kube_rig, moto_server},
};

fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn yaml_docs(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_path(name)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn json_file(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path(name)).unwrap())
        .unwrap_or_else(|e| panic!("{name} is JSON: {e}"))
}

/// Every variable a deploy file sets is one the worker reads.
fn assert_known_variables(what: &str, names: impl IntoIterator<Item = String>) {
    let flags = flag_variables();
    for name in names {
        assert!(
            flags.contains(&name) || is_standard_variable(&name),
            "{what} sets {name}, which compute-worker does not read"
        );
    }
}

#[tokio::test]
async fn k8s_worker_manifest_applies_server_side_with_the_rbac_and_probes_the_worker_serves() {
    let docs = yaml_docs("deploy/kubernetes/worker.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
    );
    // The RBAC is rbac.yaml's, object for object (the tests prove that one sufficient).
    assert_eq!(docs[..3], yaml_docs("deploy/kubernetes/rbac.yaml")[..]);

    let deployment = &docs[3];
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["spec"]["serviceAccountName"], docs[0]["metadata"]["name"],
        "the pods run as the manifest's account"
    );
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["args"], json!(["run"]));
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_known_variables("worker.yaml", env.keys().cloned());
    assert_eq!(env["COMPUTE_PROVIDER"]["value"], "kubernetes");
    // The store's URL (it may hold a password) is a reference to a Secret, never a value.
    assert!(
        env["COMPUTE_DATABASE_URL"]["valueFrom"]["secretKeyRef"].is_object(),
        "{:?}",
        env["COMPUTE_DATABASE_URL"]
    );
    let metrics: std::net::SocketAddr = env["COMPUTE_METRICS_ADDRESS"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let port = &c["ports"][0];
    assert_eq!(port["containerPort"], metrics.port());
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        metrics.port().to_string()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], port["name"], "{probe}");
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    // SIGTERM's grace (30 s by default) and the observer's hand-over (10 s) fit.
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > 40
    );
    // The image's user (Dockerfile: USER 10001).
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 10001);

    // Server-side apply, dry run, in a namespace of the test's own: the apiserver checks every
    // field against its schema (an unknown one is an error) and stores nothing.
    let kube = kube_client(&kube_rig().kubeconfig).await;
    let ns = format!("k8s-manifest-{}", std::process::id());
    create_namespace(&kube, &ns).await;
    for doc in &docs {
        let mut obj = doc.clone();
        obj["metadata"]["namespace"] = json!(ns);
        if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
            for s in subjects {
                s["namespace"] = json!(ns);
            }
        }
        let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                obj["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let kind = obj["kind"].as_str().unwrap().to_string();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &kind));
        let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), &ns, &resource);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("compute-worker-tests").dry_run(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("the apiserver refuses the {kind}: {e}"));
        if kind == "Deployment" {
            // What the server would store keeps the probes and the port (nothing dropped).
            let stored = serde_json::to_value(&applied).unwrap();
            let c = &stored["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"], "/readyz",
                "{stored}"
            );
            assert_eq!(c["ports"][0]["containerPort"], metrics.port(), "{stored}");
        }
        assert!(
            api.get_opt(&name).await.unwrap().is_none(),
            "a dry run stores nothing ({kind})"
        );
    }
}

/// Every AWS call the source makes, as IAM actions (`ecs:CreateService`): each operation (a
/// method whose name starts with a verb) called on an AWS client (`client`, `sts`, `ec2`,
/// `.sfn()`) in the AWS backends' sources, its service told by its name.
fn aws_calls_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_path("activities/src/provider/ecs"), &mut files);
    files.push(repo_path("activities/src/callback/step_functions.rs"));
    files.push(repo_path("activities/src/aws.rs"));
    let mut calls = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for receiver in ["client", "sts", "ec2", "sfn()"] {
            for (at, _) in text.match_indices(receiver) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let mut rest = text[at + receiver.len()..].trim_start();
                // `self.sfn().await.send_task_heartbeat()`
                if let Some(r) = rest.strip_prefix(".await") {
                    rest = r.trim_start();
                }
                let Some(rest) = rest.strip_prefix('.') else {
                    continue;
                };
                let op: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                // An AWS operation's name starts with its verb (a config's `check()` does not).
                let verbs = [
                    "create_",
                    "update_",
                    "delete_",
                    "describe_",
                    "list_",
                    "register_",
                    "deregister_",
                    "send_task_",
                    "get_",
                    "tag_",
                    "untag_",
                    "run_",
                    "stop_",
                ];
                if !rest[op.len()..].starts_with("()") || !verbs.iter().any(|v| op.starts_with(v)) {
                    continue;
                }
                let service = match op.as_str() {
                    "get_caller_identity" => "sts",
                    "describe_vpcs" | "describe_subnets" | "describe_security_groups" => "ec2",
                    o if o.starts_with("send_task_") => "states",
                    _ => "ecs",
                };
                let pascal: String = op
                    .split('_')
                    .map(|w| {
                        let mut c = w.chars();
                        c.next()
                            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                            .unwrap_or_default()
                    })
                    .collect();
                calls.insert(format!("{service}:{pascal}"));
            }
        }
    }
    calls
}

/// Python with boto3 against moto: registers the task definition and creates the policy
/// (botocore refuses any parameter the AWS model does not have; moto checks the policy's
/// grammar). Prints the registered task definition.
const REGISTER: &str = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="test", aws_secret_access_key="test")
td = json.load(open(sys.argv[2]))
out = boto3.client("ecs", **kw).register_task_definition(**td)["taskDefinition"]
boto3.client("iam", **kw).create_policy(PolicyName="compute-worker",
                                        PolicyDocument=open(sys.argv[3]).read())
print(json.dumps(out, default=str))
"#;

#[test]
fn ecs_deploy_files_match_the_calls_the_code_makes_and_register_on_the_ecs_api() {
    // The policy allows exactly what the code calls, plus what those calls need besides:
    // passing the tenants' roles and tagging on create. GetCallerIdentity needs no permission.
    let policy = json_file("deploy/ecs/iam-policy.json");
    let mut allowed = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            Value::String(a) => {
                allowed.insert(a.clone());
            }
            Value::Array(a) => allowed.extend(a.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("an Action: {other}"),
        }
        assert!(
            !allowed.iter().any(|a| a.contains('*')),
            "no wildcard action: {allowed:?}"
        );
    }
    let mut called = aws_calls_in_source();
    println!("AWS calls in the source: {called:?}");
    assert!(called.contains("ecs:CreateService") && called.contains("states:SendTaskSuccess"));
    called.remove("sts:GetCallerIdentity");
    let besides: BTreeSet<String> = ["iam:PassRole", "ecs:TagResource"].map(String::from).into();
    let needed: BTreeSet<String> = called.union(&besides).cloned().collect();
    assert_eq!(allowed, needed, "the policy against the code's calls");
    let provider = std::fs::read_to_string(repo_path("activities/src/provider/ecs/render.rs"))
        .unwrap_or_default()
        + &std::fs::read_to_string(repo_path("activities/src/provider/ecs/provider.rs")).unwrap();
    assert!(
        provider.contains("execution_role_arn") && provider.contains("task_role_arn"),
        "the provider passes roles (iam:PassRole)"
    );
    assert!(
        provider.contains(".tags("),
        "the provider tags on create (ecs:TagResource)"
    );

    // The worker's own task definition.
    let td = json_file("deploy/ecs/task-definition.json");
    let container = &td["containerDefinitions"][0];
    let env: BTreeMap<String, String> = container["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let secrets: Vec<String> = container["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_known_variables("task-definition.json", env.keys().chain(&secrets).cloned());
    assert_eq!(env["COMPUTE_PROVIDER"], "ecs");
    assert!(
        secrets.contains(&"COMPUTE_DATABASE_URL".to_string())
            && !env.contains_key("COMPUTE_DATABASE_URL"),
        "the store's URL is a secret reference"
    );
    let metrics: std::net::SocketAddr = env["COMPUTE_METRICS_ADDRESS"].parse().unwrap();
    assert_eq!(
        container["portMappings"][0]["containerPort"],
        metrics.port()
    );
    assert_eq!(
        container["healthCheck"]["command"],
        json!(["CMD", "/usr/local/bin/compute-worker", "probe"])
    );
    assert!(container["stopTimeout"].as_u64().unwrap() > 40);
    assert_eq!(container["command"], json!(["run"]));
    // The binary takes these settings: with them (and a store URL of a host that does not
    // exist here) it stops at the store, not at parsing.
    let mut run_env = env.clone();
    run_env.insert(
        "COMPUTE_DATABASE_URL".into(),
        "postgres://compute@compute-store.invalid:5432/compute".into(),
    );
    let (code, stderr) = start_with(&run_env);
    assert_ne!(code, Some(2), "the settings do not parse:\n{stderr}");
    assert!(stderr.contains("execution store"), "{stderr}");

    let moto = moto_server();
    let out = Command::new("python3")
        .args(["-c", REGISTER, &moto.endpoint])
        .arg(repo_path("deploy/ecs/task-definition.json"))
        .arg(repo_path("deploy/ecs/iam-policy.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 against moto: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(registered["family"], "compute-worker");
    assert_eq!(registered["revision"], 1);
    assert_eq!(
        registered["containerDefinitions"][0]["healthCheck"]["command"],
        container["healthCheck"]["command"]
    );
}
