//! The ECS rig: a moto server (the ECS API, one per test) and direct clients for assertions on
//! moto's state. The fault-injecting proxy in front of it is its own rig (`fault_proxy.rs`).
//!
//! What moto does NOT model (tests must not pretend it does; see shared/test-rig.md):
//! - `clientToken` is ignored by CreateService, and CreateService with the name of an existing
//!   service silently REPLACES it: "one service in moto" cannot tell a duplicate create from
//!   none. The proxy's per-target counters (`FaultProxy::forwarded`) can.
//! - Deployments complete only because the server runs with `MOTO_ECS_SERVICE_RUNNING=1` (so
//!   a service with more than one replica never completes); UpdateService does not touch
//!   `deployments`; deleted services stay listed as INACTIVE.
//! - It validates awsvpc subnets and security groups against its EC2 model: fake ids such as
//!   `subnet-12345` are refused, so tests use the default VPC's ([`MotoServer::network`]).

use std::{path::PathBuf, process::Command};

use serde_json::Value;

use super::{
    http,
    process::{ServerProcess, start_local_server},
    python_scripts_dir,
};

/// The `moto_server` executable: `$MOTO_SERVER_BIN`, or Python's scripts dir, or `$PATH`.
pub fn moto_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOTO_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let beside = python_scripts_dir().join("moto_server");
    if beside.exists() {
        return beside;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("moto_server"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "moto's server is missing (looked for {}): install it with `pip install 'moto[server]'` \
             (scripts/install-tools.sh does)",
            beside.display()
        )
    })
}

/// The first `<tag>value</tag>` of an XML document.
fn xml_first(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_string())
}

/// An ECS client for assertions and set-up, straight to `endpoint` (moto or the proxy), with
/// the SDK's own retries off so an injected fault shows as it is.
pub async fn ecs_client(endpoint: &str) -> aws_sdk_ecs::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    aws_sdk_ecs::Client::new(&conf)
}

/// The awsvpc network the rig's services use: moto's default VPC subnet and security group.
#[derive(Debug, Clone)]
pub struct EcsNetwork {
    pub subnet: String,
    pub security_group: String,
}

/// A moto server (the ECS, EC2 and SSM APIs, account 123456789012, region us-east-1) for one
/// test, with `MOTO_ECS_SERVICE_RUNNING=1` so deployments complete; killed on drop.
pub struct MotoServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    dir: tempfile::TempDir,
    _process: ServerProcess,
}

/// Starts a moto server on a free loopback port and waits until it answers.
pub fn moto_server() -> MotoServer {
    let bin = moto_server_bin();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("moto.log");
    let (process, endpoint) = start_local_server(
        "moto_server",
        &log,
        |port| {
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_ECS_SERVICE_RUNNING", "1")
                // Nothing in the test's environment may point moto elsewhere.
                .env_remove("MOTO_CALL_RESET_API");
            cmd
        },
        |endpoint| matches!(http(endpoint, "GET", "/moto-api/", &[], b""), Ok((200, _))),
    );
    MotoServer {
        endpoint,
        dir,
        _process: process,
    }
}

/// A fake SigV4 header: moto does not check signatures but routes by the credential scope.
pub fn aws_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

impl MotoServer {
    /// Everything moto logged (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// A client straight to moto (no proxy), for assertions and set-up.
    pub async fn ecs(&self) -> aws_sdk_ecs::Client {
        ecs_client(&self.endpoint).await
    }

    /// Wipes every model (`POST /moto-api/reset`).
    pub fn reset(&self) {
        let (status, body) = http(&self.endpoint, "POST", "/moto-api/reset", &[], b"").unwrap();
        assert_eq!(status, 200, "moto reset: {body}");
    }

    /// A query-protocol call (EC2): the XML answer.
    fn query(&self, service: &str, form: &str) -> String {
        let auth = aws_authorization(service);
        let (status, body) = http(
            &self.endpoint,
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ],
            form.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "moto {service} {form}: {body}");
        body
    }

    /// A JSON-protocol call (SSM, ...): the JSON answer.
    pub(crate) fn json_call(&self, service: &str, target: &str, input: &Value) -> Value {
        let auth = aws_authorization(service);
        let (status, body) = http(
            &self.endpoint,
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                ("X-Amz-Target", target),
                ("Content-Type", "application/x-amz-json-1.1"),
            ],
            input.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "moto {target}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// moto's default-VPC subnet and security group (moto refuses unknown ids).
    pub fn network(&self) -> EcsNetwork {
        let subnets = self.query(
            "ec2",
            "Action=DescribeSubnets&Version=2016-11-15\
             &Filter.1.Name=default-for-az&Filter.1.Value.1=true",
        );
        let groups = self.query(
            "ec2",
            "Action=DescribeSecurityGroups&Version=2016-11-15\
             &Filter.1.Name=group-name&Filter.1.Value.1=default",
        );
        EcsNetwork {
            subnet: xml_first(&subnets, "subnetId").expect("moto has a default subnet"),
            security_group: xml_first(&groups, "groupId")
                .expect("moto has a default security group"),
        }
    }

    /// Stores a SecureString parameter in moto's SSM and returns its ARN (what a spec's
    /// `valueFrom` names).
    pub fn ssm_put_secret(&self, name: &str, value: &str) -> String {
        self.json_call(
            "ssm",
            "AmazonSSM.PutParameter",
            &serde_json::json!({"Name": name, "Value": value, "Type": "SecureString"}),
        );
        let got = self.json_call(
            "ssm",
            "AmazonSSM.GetParameter",
            &serde_json::json!({"Name": name, "WithDecryption": true}),
        );
        assert_eq!(got["Parameter"]["Value"], value);
        got["Parameter"]["ARN"].as_str().unwrap().to_string()
    }
}
