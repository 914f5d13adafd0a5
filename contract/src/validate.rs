//! Turns raw activity input (JSON) into validated requests.
//!
//! The SDK retries forever a payload it cannot deserialize, so every activity takes
//! `serde_json::Value` and comes here. Every refusal is a non-retryable
//! `INVALID_CONFIGURATION` whose message names the field and never repeats the refused value:
//! a secret pasted into the wrong field must not reach a log, the store or history.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Map, Value};

use crate::{
    error::{ComputeError, Result},
    types::{
        CallbackTarget, ComputeRequest, ComputeSpec, DeleteRequest, Metadata, RestateCallback,
        SecretKeyRef, SecretRef, StepFunctionsCallback, TemporalCallback, TenantState,
    },
};

/// Longest accepted operation timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest accepted operation timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

fn invalid(field: &str, what: &str) -> ComputeError {
    ComputeError::invalid(format!("{field}: {what}"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ComputeError {
    invalid(
        field,
        &format!("must be {expected}, got {}", type_name(got)),
    )
}

/// A JSON object being read, with the path used in error messages.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn root(v: &'a Value) -> Result<Self> {
        match v {
            Value::Object(map) => Ok(Obj {
                path: String::new(),
                map,
            }),
            other => Err(ComputeError::invalid(format!(
                "input must be a JSON object, got {}",
                type_name(other)
            ))),
        }
    }

    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The value of a present, non-null field.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value> {
        self.get(name)
            .ok_or_else(|| invalid(&self.field(name), "is required"))
    }

    fn object(&self, name: &str) -> Result<Option<Obj<'a>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                path: self.field(name),
                map,
            })),
            Some(other) => Err(wrong_type(&self.field(name), "an object", other)),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(&self.field(name), "a string", other)),
        }
    }

    fn required_string(&self, name: &str) -> Result<&'a str> {
        self.required(name)?;
        Ok(self.string(name)?.unwrap_or_default())
    }

    fn string_list(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong_type(
                        &format!("{}[{i}]", self.field(name)),
                        "a string",
                        other,
                    )),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(wrong_type(&self.field(name), "an array of strings", other)),
        }
    }

    fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let Some(obj) = self.object(name)? else {
            return Ok(BTreeMap::new());
        };
        obj.map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(wrong_type(&obj.entry_field(k), "a string", other)),
            })
            .collect()
    }

    /// The path of a map entry. The key is caller input, and messages reach logs, the store
    /// and history: it is named only when it looks like a name (at most 63 ASCII letters,
    /// digits, `_`, `-`, `.` or `/`), never when it holds control characters or is huge
    /// (found by tests/fuzz_inputs.rs).
    fn entry_field(&self, key: &str) -> String {
        let name_like = !key.is_empty()
            && key.len() <= 63
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
        if name_like {
            self.field(key)
        } else {
            format!("{} (a key that is not a name)", self.path)
        }
    }

    fn positive_number(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f > 0.0 && f.is_finite() => Ok(Some(f)),
                _ => Err(invalid(&self.field(name), "must be a positive number")),
            },
            Some(other) => Err(wrong_type(&self.field(name), "a number", other)),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(&self.field(name), "a boolean", other)),
        }
    }

    fn unsigned(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(u) if (min..=max).contains(&u) => Ok(Some(u)),
                _ => Err(invalid(
                    &self.field(name),
                    &format!("must be a whole number from {min} to {max}"),
                )),
            },
            Some(other) => Err(wrong_type(&self.field(name), "a whole number", other)),
        }
    }
}

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric,
/// at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A container image reference: no whitespace or control characters, a lowercase repository,
/// an optional `:tag` or `@digest`.
pub fn is_image_reference(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
    {
        return false;
    }
    let (name, _digest) = s.split_once('@').unwrap_or((s, ""));
    // The tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    };
    let path = repo.split_once('/').map_or(repo, |(host, rest)| {
        if host.contains('.') || host.contains(':') || host == "localhost" {
            rest
        } else {
            repo
        }
    });
    !path.is_empty()
        && !path.starts_with(['.', '_', '-', '/'])
        && path.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
        })
}

/// Parses a duration given as a string (`"90s"`, `"10m"`, `"1h 30m"`) or a number of seconds.
pub fn parse_duration(field: &str, v: &Value) -> Result<Duration> {
    let d = match v {
        Value::String(s) => humantime::parse_duration(s.trim()).map_err(|_| {
            invalid(
                field,
                "must be a duration such as \"30s\", \"10m\" or \"1h\"",
            )
        })?,
        // `try_`: a number of seconds past what a Duration holds (1e20) must be refused, not
        // panic (found by tests/fuzz_inputs.rs).
        Value::Number(n) => match n.as_f64().map(Duration::try_from_secs_f64) {
            Some(Ok(d)) => d,
            _ => return Err(invalid(field, "must be a non-negative number of seconds")),
        },
        other => return Err(wrong_type(field, "a duration string", other)),
    };
    Ok(d)
}

fn timeout(obj: &Obj<'_>) -> Result<Option<String>> {
    let Some(v) = obj.get("timeout") else {
        return Ok(None);
    };
    let field = obj.field("timeout");
    let d = parse_duration(&field, v)?;
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&d) {
        return Err(invalid(&field, "must be between 1s and 7 days"));
    }
    Ok(Some(humantime::format_duration(d).to_string()))
}

fn tenant_id(obj: &Obj<'_>) -> Result<String> {
    let id = obj.required_string("tenantId")?;
    if !is_dns1123_label(id) {
        return Err(invalid(
            "tenantId",
            "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit",
        ));
    }
    Ok(id.to_string())
}

fn idempotency_key(obj: &Obj<'_>) -> Result<Option<String>> {
    match obj.string("idempotencyKey")? {
        None => Ok(None),
        Some(k) if k.is_empty() || k.len() > 200 || k.chars().any(char::is_control) => {
            Err(invalid(
                "idempotencyKey",
                "must be 1 to 200 characters with no control characters",
            ))
        }
        Some(k) => Ok(Some(k.to_string())),
    }
}

fn callback(obj: &Obj<'_>) -> Result<Option<CallbackTarget>> {
    let Some(cb) = obj.object("callback")? else {
        return Ok(None);
    };
    callback_target_of(&cb).map(Some)
}

/// Validates one callback target, `{"temporal": {...}}` | `{"stepFunctions": {...}}` |
/// `{"restate": {...}}` (a request's `callback`, an `attach-callback` signal's `target`, a
/// delivery's target). Messages name the fields under `callback`.
pub fn callback_target(v: &Value) -> Result<CallbackTarget> {
    match v {
        Value::Object(map) => callback_target_of(&Obj {
            path: "callback".into(),
            map,
        }),
        other => Err(wrong_type("callback", "an object", other)),
    }
}

fn callback_target_of(cb: &Obj<'_>) -> Result<CallbackTarget> {
    let kinds: Vec<&String> = cb.map.keys().collect();
    if kinds.len() != 1 {
        return Err(invalid(
            "callback",
            "must have exactly one of \"temporal\", \"stepFunctions\", \"restate\"",
        ));
    }
    match kinds[0].as_str() {
        "temporal" => {
            let t = cb
                .object("temporal")?
                .ok_or_else(|| invalid("callback.temporal", "must be an object"))?;
            let workflow_id = t.required_string("workflowId")?;
            if workflow_id.is_empty()
                || workflow_id.len() > 1000
                || workflow_id.chars().any(char::is_control)
            {
                return Err(invalid(
                    "callback.temporal.workflowId",
                    "must be 1 to 1000 characters with no control characters",
                ));
            }
            let run_id = t.string("runId")?;
            if let Some(r) = run_id
                && (r.is_empty()
                    || r.len() > 64
                    || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            {
                return Err(invalid(
                    "callback.temporal.runId",
                    "must be a run id (1 to 64 letters, digits or '-')",
                ));
            }
            let namespace = t.string("namespace")?;
            if let Some(n) = namespace
                && (n.is_empty()
                    || n.len() > 255
                    || !n
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
            {
                return Err(invalid(
                    "callback.temporal.namespace",
                    "must be a namespace name (1 to 255 letters, digits, '-', '_' or '.')",
                ));
            }
            Ok(CallbackTarget::Temporal(TemporalCallback {
                workflow_id: workflow_id.to_string(),
                run_id: run_id.map(str::to_string),
                namespace: namespace.map(str::to_string),
            }))
        }
        "stepFunctions" => {
            let t = cb
                .object("stepFunctions")?
                .ok_or_else(|| invalid("callback.stepFunctions", "must be an object"))?;
            let token = t.required_string("taskToken")?;
            // Step Functions' own bounds; a token is opaque, but never holds whitespace or
            // control characters.
            if token.is_empty()
                || token.len() > crate::types::MAX_TASK_TOKEN_LEN
                || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(
                    "callback.stepFunctions.taskToken",
                    &format!(
                        "must be 1 to {} printable ASCII characters without spaces",
                        crate::types::MAX_TASK_TOKEN_LEN
                    ),
                ));
            }
            // At least a second (Step Functions' own minimum), a day at most: a longer
            // heartbeat interval guards nothing.
            let heartbeat_seconds = t.unsigned("heartbeatSeconds", 1, 86_400)?.map(|s| s as u32);
            Ok(CallbackTarget::StepFunctions(StepFunctionsCallback {
                task_token: token.to_string(),
                heartbeat_seconds,
            }))
        }
        "restate" => {
            let r = cb
                .object("restate")?
                .ok_or_else(|| invalid("callback.restate", "must be an object"))?;
            let id = r.required_string("awakeableId")?;
            if !is_awakeable_id(id) {
                return Err(invalid(
                    "callback.restate.awakeableId",
                    "must be a Restate awakeable id: \"sign_\" or \"prom_\" followed by 1 to \
                     500 base64url characters (A-Z, a-z, 0-9, '_', '-')",
                ));
            }
            let ingress_url = r.string("ingressUrl")?;
            if let Some(u) = ingress_url
                && (u.is_empty() || u.len() > 2000)
            {
                return Err(invalid(
                    "callback.restate.ingressUrl",
                    "must be 1 to 2000 characters",
                ));
            }
            Ok(CallbackTarget::Restate(RestateCallback {
                awakeable_id: id.to_string(),
                ingress_url: ingress_url.map(str::to_string),
            }))
        }
        _ => Err(invalid(
            "callback",
            "must have exactly one of \"temporal\", \"stepFunctions\", \"restate\"",
        )),
    }
}

/// Restate's awakeable ids: `sign_` (or the older `prom_`) and base64url. They go into the
/// ingress URL's path as they are, so nothing else may pass.
pub fn is_awakeable_id(id: &str) -> bool {
    let Some(rest) = id
        .strip_prefix("sign_")
        .or_else(|| id.strip_prefix("prom_"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 500
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates a request's `callback` field on its own (`TenantComputeWorkflow` reads it
/// before the operation starts): `None` when absent.
pub fn callback_of(request: &Value) -> Result<Option<CallbackTarget>> {
    callback(&Obj::root(request)?)
}

fn secrets(spec: &Obj<'_>) -> Result<Vec<SecretRef>> {
    let field = spec.field("secrets");
    let items = match spec.get("secrets") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type(&field, "an array of secret references", other)),
    };
    let mut names = std::collections::BTreeSet::new();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{field}[{i}]");
            let Value::Object(map) = item else {
                return Err(invalid(
                    &path,
                    "must be a reference object {\"name\", \"valueFrom\"} or \
                     {\"name\", \"secretKeyRef\": {\"name\", \"key\"}}; secret values are not accepted",
                ));
            };
            // Refuse before reading anything else: the value must go no further.
            if map.contains_key("value") {
                return Err(invalid(
                    &format!("{path}.value"),
                    "secret values are not accepted; give a reference (valueFrom or secretKeyRef)",
                ));
            }
            let obj = Obj { path: path.clone(), map };
            let name = obj.required_string("name")?;
            if !is_env_name(name) {
                return Err(invalid(
                    &obj.field("name"),
                    "must be an environment variable name (letters, digits, '_')",
                ));
            }
            if !names.insert(name.to_string()) {
                return Err(invalid(&obj.field("name"), "is given twice"));
            }
            let value_from = obj.string("valueFrom")?;
            let key_ref = obj.object("secretKeyRef")?;
            match (value_from, key_ref) {
                (Some(v), None) if !v.is_empty() => Ok(SecretRef {
                    name: name.to_string(),
                    value_from: Some(v.to_string()),
                    secret_key_ref: None,
                }),
                (None, Some(r)) => {
                    let secret = r.required_string("name")?;
                    let key = r.required_string("key")?;
                    if !is_dns1123_subdomain(secret) {
                        return Err(invalid(&r.field("name"), "must be a DNS-1123 subdomain"));
                    }
                    if key.is_empty() || key.len() > 253 {
                        return Err(invalid(&r.field("key"), "must be 1 to 253 characters"));
                    }
                    Ok(SecretRef {
                        name: name.to_string(),
                        value_from: None,
                        secret_key_ref: Some(SecretKeyRef {
                            name: secret.to_string(),
                            key: key.to_string(),
                        }),
                    })
                }
                _ => Err(invalid(
                    &path,
                    "must have exactly one non-empty reference: valueFrom or secretKeyRef",
                )),
            }
        })
        .collect()
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn env_map(spec: &Obj<'_>, name: &str) -> Result<BTreeMap<String, String>> {
    let map = spec.string_map(name)?;
    for (key, value) in &map {
        if !is_env_name(key) {
            return Err(invalid(
                &spec.field(name),
                "keys must be environment variable names (letters, digits, '_', not starting with a digit)",
            ));
        }
        // No environment can hold a NUL: the local provider would refuse it only when it
        // starts the process, after the execution was recorded (found by tests/fuzz_inputs.rs).
        if value.contains('\0') {
            // The key is a valid name but may be huge: named only while it is short.
            let field = if key.len() <= 63 {
                spec.field(&format!("{name}.{key}"))
            } else {
                format!("{} (a long key)", spec.field(name))
            };
            return Err(invalid(&field, "must not contain NUL characters"));
        }
    }
    Ok(map)
}

fn spec(obj: &Obj<'_>) -> Result<ComputeSpec> {
    obj.required("spec")?;
    let spec = obj
        .object("spec")?
        .ok_or_else(|| invalid("spec", "is required"))?;
    let image = spec.string("image")?;
    if let Some(image) = image
        && !is_image_reference(image)
    {
        return Err(invalid(
            "spec.image",
            "must be a container image reference such as \"registry.example.com/team/app:1.2\"",
        ));
    }
    let command = spec.string_list("command")?;
    if let Some(command) = &command
        && (command.is_empty() || command[0].trim().is_empty())
    {
        return Err(invalid("spec.command", "must not be empty"));
    }
    let args = spec.string_list("args")?.unwrap_or_default();
    for (field, list) in [
        ("spec.command", command.as_deref().unwrap_or(&[])),
        ("spec.args", &args),
    ] {
        if list.iter().any(|a| a.contains('\0')) {
            return Err(invalid(field, "must not contain NUL characters"));
        }
    }
    let spec_out = ComputeSpec {
        image: image.map(str::to_string),
        command: command.unwrap_or_default(),
        args,
        cpu: spec.positive_number("cpu")?,
        memory: spec.unsigned("memory", 1, 16 * 1024 * 1024)?,
        replicas: spec.unsigned("replicas", 0, 10_000)?.map(|r| r as u32),
        port: spec.unsigned("port", 1, 65_535)?.map(|p| p as u16),
        env: env_map(&spec, "env")?,
        config: env_map(&spec, "config")?,
        secrets: secrets(&spec)?,
    };
    for s in &spec_out.secrets {
        if spec_out.env.contains_key(&s.name) || spec_out.config.contains_key(&s.name) {
            return Err(invalid(
                "spec.secrets",
                "a secret's name must not also be a key of spec.env or spec.config",
            ));
        }
    }
    Ok(spec_out)
}

fn metadata(obj: &Obj<'_>) -> Result<Metadata> {
    let Some(m) = obj.object("metadata")? else {
        return Ok(Metadata::default());
    };
    let labels = m.string_map("labels")?;
    for (k, v) in &labels {
        if k.is_empty()
            || k.len() > 128
            || v.len() > 256
            || k.chars().chain(v.chars()).any(char::is_control)
        {
            return Err(invalid(
                "metadata.labels",
                "keys must be 1 to 128 and values at most 256 characters, with no control characters",
            ));
        }
    }
    let short = |name: &str| -> Result<Option<String>> {
        match m.string(name)? {
            Some(s) if s.len() > 256 || s.chars().any(char::is_control) => Err(invalid(
                &m.field(name),
                "must be at most 256 characters with no control characters",
            )),
            s => Ok(s.map(str::to_string)),
        }
    };
    Ok(Metadata {
        labels,
        owner: short("owner")?,
        environment: short("environment")?,
    })
}

/// Validates the input of `ProvisionTenantCompute` / `UpdateTenantCompute`.
pub fn compute_request(input: &Value) -> Result<ComputeRequest> {
    let obj = Obj::root(input)?;
    Ok(ComputeRequest {
        tenant_id: tenant_id(&obj)?,
        spec: spec(&obj)?,
        metadata: metadata(&obj)?,
        idempotency_key: idempotency_key(&obj)?,
        callback: callback(&obj)?,
        timeout: timeout(&obj)?,
    })
}

/// Validates the input of `DeleteTenantCompute`.
pub fn delete_request(input: &Value) -> Result<DeleteRequest> {
    let obj = Obj::root(input)?;
    Ok(DeleteRequest {
        tenant_id: tenant_id(&obj)?,
        idempotency_key: idempotency_key(&obj)?,
        callback: callback(&obj)?,
        timeout: timeout(&obj)?,
    })
}

/// Validates `{executionId}`.
pub fn execution_id(input: &Value) -> Result<String> {
    let obj = Obj::root(input)?;
    let id = obj.required_string("executionId")?;
    check_execution_id("executionId", id)?;
    Ok(id.to_string())
}

/// Checks that `id` (in field `field`) looks like an execution id we hand out.
pub fn check_execution_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 200 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid(
            field,
            "must be an execution id as returned in an ExecutionHandle",
        ));
    }
    Ok(())
}

/// Checks that `id` (in field `field`) is a valid tenant id.
pub fn check_tenant_id(field: &str, id: &str) -> Result<()> {
    if !is_dns1123_label(id) {
        return Err(invalid(field, "must be a tenant id (a DNS-1123 label)"));
    }
    Ok(())
}

/// Reads the optional `includeAttempts` flag of `GetComputeExecution`'s input (default false).
pub fn include_attempts(input: &Value) -> Result<bool> {
    Ok(Obj::root(input)?
        .boolean("includeAttempts")?
        .unwrap_or(false))
}

/// Validates `{tenantId}`.
pub fn tenant_only(input: &Value) -> Result<String> {
    tenant_id(&Obj::root(input)?)
}

/// The validated input of `ListTenantCompute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantListQuery {
    /// Only tenants in this state.
    pub state: Option<TenantState>,
    /// At most this many tenants (1 to [`MAX_TENANT_PAGE`]; default [`DEFAULT_TENANT_PAGE`]).
    pub page_size: u32,
    /// Tenants after this id (the previous page's `nextPageToken`).
    pub after: Option<String>,
}

/// The page size of `ListTenantCompute` when the input gives none.
pub const DEFAULT_TENANT_PAGE: u32 = 100;
/// The largest page `ListTenantCompute` returns.
pub const MAX_TENANT_PAGE: u32 = 1000;

/// Validates `{state?, pageSize?, pageToken?}` (`ListTenantCompute`).
pub fn tenant_list_query(input: &Value) -> Result<TenantListQuery> {
    let obj = Obj::root(input)?;
    let state = match obj.string("state")? {
        None => None,
        Some(s) => match TenantState::parse(s) {
            Some(TenantState::Absent) => {
                return Err(invalid(
                    "state",
                    "absent tenants are not recorded, so never listed",
                ));
            }
            Some(state) => Some(state),
            None => {
                return Err(invalid(
                    "state",
                    "must be one of provisioning, running, updating, deleting, deleted, failed, \
                     requires_manual_intervention",
                ));
            }
        },
    };
    let page_size = obj
        .unsigned("pageSize", 1, u64::from(MAX_TENANT_PAGE))?
        .map_or(DEFAULT_TENANT_PAGE, |n| n as u32);
    let after = match obj.string("pageToken")? {
        None | Some("") => None,
        Some(token) => {
            // The token is the last tenant id of the previous page: anything else is not one
            // we handed out.
            if !is_dns1123_label(token) {
                return Err(invalid(
                    "pageToken",
                    "must be a nextPageToken from an earlier page",
                ));
            }
            Some(token.to_string())
        }
    };
    Ok(TenantListQuery {
        state,
        page_size,
        after,
    })
}

/// The longest `reason` `CancelComputeExecution` takes.
pub const MAX_CANCEL_REASON: usize = 500;

/// Validates `{executionId, reason?}` (`CancelComputeExecution`).
pub fn cancel_request(input: &Value) -> Result<(String, Option<String>)> {
    let obj = Obj::root(input)?;
    let id = obj.required_string("executionId")?;
    check_execution_id("executionId", id)?;
    let reason = match obj.string("reason")? {
        Some(r) if r.chars().count() > MAX_CANCEL_REASON || r.chars().any(char::is_control) => {
            return Err(invalid(
                "reason",
                "must be at most 500 characters with no control characters",
            ));
        }
        r => r.map(str::to_string),
    };
    Ok((id.to_string(), reason))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn tenant_list_queries_and_cancel_requests_are_checked() {
        let q = tenant_list_query(&json!({})).unwrap();
        assert_eq!(
            (q.state, q.page_size, q.after),
            (None, DEFAULT_TENANT_PAGE, None)
        );
        let q = tenant_list_query(&json!({"state": "running", "pageSize": 2, "pageToken": "acme"}))
            .unwrap();
        assert_eq!(q.state, Some(TenantState::Running));
        assert_eq!((q.page_size, q.after.as_deref()), (2, Some("acme")));
        for bad in [
            json!({"state": "absent"}),
            json!({"state": "nope"}),
            json!({"state": 3}),
            json!({"pageSize": 0}),
            json!({"pageSize": 1001}),
            json!({"pageSize": -1}),
            json!({"pageToken": "../x"}),
            json!([]),
        ] {
            let e = tenant_list_query(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration, "{bad}");
        }
        assert_eq!(
            cancel_request(&json!({"executionId": "a-update-1", "reason": "oops"})).unwrap(),
            ("a-update-1".to_string(), Some("oops".to_string()))
        );
        for bad in [
            json!({}),
            json!({"executionId": "../x"}),
            json!({"executionId": "a", "reason": "x".repeat(501)}),
            json!({"executionId": "a", "reason": "a\nb"}),
            json!({"executionId": "a", "reason": 1}),
        ] {
            assert!(cancel_request(&bad).is_err(), "{bad}");
        }
    }

    fn ok() -> Value {
        json!({
            "tenantId": "acme-1",
            "spec": {"command": ["sleep"], "args": ["30"], "image": "ghcr.io/acme/app:1.2",
                     "cpu": 0.5, "memory": 512, "replicas": 1,
                     "env": {"MODE": "x"}, "config": {"LEVEL": "3"},
                     "secrets": [{"name": "DB_PASSWORD", "valueFrom": "env:DB"},
                                 {"name": "API", "secretKeyRef": {"name": "api", "key": "token"}}]},
            "metadata": {"labels": {"team": "payments"}, "owner": "alice", "environment": "prod"},
            "idempotencyKey": "k-1",
            "timeout": "90s",
            "somethingUnknown": 1
        })
    }

    fn refused(v: Value) -> String {
        let e = compute_request(&v).expect_err("must be refused");
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        assert!(!e.retriable);
        e.message
    }

    #[test]
    fn accepts_a_full_request() {
        let r = compute_request(&ok()).unwrap();
        assert_eq!(r.tenant_id, "acme-1");
        assert_eq!(r.spec.command, vec!["sleep"]);
        assert_eq!(r.spec.secrets.len(), 2);
        assert_eq!(r.timeout.as_deref(), Some("1m 30s"));
    }

    #[test]
    fn names_the_field_and_never_echoes_the_value() {
        let mut v = ok();
        v["spec"]["secrets"][0] = json!({"name": "DB_PASSWORD", "value": "hunter2-plaintext"});
        let m = refused(v);
        assert!(m.contains("spec.secrets[0].value"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");

        let mut v = ok();
        v["spec"]["secrets"][0] = json!("hunter2-plaintext");
        let m = refused(v);
        assert!(
            m.contains("spec.secrets[0]") && !m.contains("hunter2"),
            "{m}"
        );

        let mut v = ok();
        v["tenantId"] = json!("Not_A_Label-hunter2");
        let m = refused(v);
        assert!(m.starts_with("tenantId") && !m.contains("hunter2"), "{m}");
    }

    #[test]
    fn refuses_each_bad_shape() {
        let cases: Vec<(Value, &str)> = vec![
            (json!("just a string"), "input"),
            (json!({"spec": {"command": ["x"]}}), "tenantId"),
            (json!({"tenantId": "a"}), "spec"),
            (json!({"tenantId": 5, "spec": {}}), "tenantId"),
            (json!({"tenantId": "a".repeat(64), "spec": {}}), "tenantId"),
            (json!({"tenantId": "-a", "spec": {}}), "tenantId"),
            (
                json!({"tenantId": "a", "spec": {"command": []}}),
                "spec.command",
            ),
            (
                json!({"tenantId": "a", "spec": {"command": [""]}}),
                "spec.command",
            ),
            (
                json!({"tenantId": "a", "spec": {"command": "sleep 1"}}),
                "spec.command",
            ),
            (
                json!({"tenantId": "a", "spec": {"command": ["x", 1]}}),
                "spec.command[1]",
            ),
            (
                json!({"tenantId": "a", "spec": {"cpu": "lots"}}),
                "spec.cpu",
            ),
            (json!({"tenantId": "a", "spec": {"cpu": -1}}), "spec.cpu"),
            (
                json!({"tenantId": "a", "spec": {"memory": 1.5}}),
                "spec.memory",
            ),
            (
                json!({"tenantId": "a", "spec": {"image": "UPPER/case"}}),
                "spec.image",
            ),
            (
                json!({"tenantId": "a", "spec": {"image": "has space"}}),
                "spec.image",
            ),
            (
                json!({"tenantId": "a", "spec": {"env": {"1BAD": "x"}}}),
                "spec.env",
            ),
            (
                json!({"tenantId": "a", "spec": {"env": {"A": 1}}}),
                "spec.env.A",
            ),
            (
                json!({"tenantId": "a", "spec": {"secrets": [{"name": "A"}]}}),
                "spec.secrets[0]",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "timeout": "soon"}),
                "timeout",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "timeout": "30d"}),
                "timeout",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"email": {}}}),
                "callback",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "idempotencyKey": ""}),
                "idempotencyKey",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"stepFunctions": {}}}),
                "callback.stepFunctions.taskToken",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"stepFunctions": {"taskToken": "a b"}}}),
                "callback.stepFunctions.taskToken",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"stepFunctions": {"taskToken": "x".repeat(2049)}}}),
                "callback.stepFunctions.taskToken",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"stepFunctions": {"taskToken": "t", "heartbeatSeconds": 0}}}),
                "callback.stepFunctions.heartbeatSeconds",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"restate": {"awakeableId": "../admin"}}}),
                "callback.restate.awakeableId",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"restate": {"awakeableId": "sign_1a", "ingressUrl": 5}}}),
                "callback.restate.ingressUrl",
            ),
            (
                json!({"tenantId": "a", "spec": {}, "callback": {"restate": {}, "temporal": {}}}),
                "callback",
            ),
        ];
        for (input, field) in cases {
            let m = refused(input.clone());
            assert!(m.starts_with(field), "{input} -> {m} (expected {field})");
        }
    }

    /// Found by tests/fuzz_inputs.rs: each was a panic, a refusal that came only after the
    /// execution was recorded, or a message repeating caller input.
    #[test]
    fn fuzz_findings() {
        let m = refused(json!({"tenantId": "a", "spec": {}, "timeout": 1e20}));
        assert!(m.starts_with("timeout"), "{m}");
        let m = refused(json!({"tenantId": "a", "spec": {"env": {"MODE": "a\0b"}}}));
        assert!(m.starts_with("spec.env.MODE"), "{m}");
        let m = refused(json!({"tenantId": "a", "spec": {"config": {"LEVEL": "\0"}}}));
        assert!(m.starts_with("spec.config.LEVEL"), "{m}");
        let key = format!("\u{1b}[31m{}", "k".repeat(5000));
        let m = refused(json!({"tenantId": "a", "spec": {"env": {key: 1}}}));
        assert!(m.starts_with("spec.env (a key that is not a name)"), "{m}");
        assert!(m.len() < 200 && !m.chars().any(char::is_control), "{m}");
        assert!(
            parse_duration("policy.callbackTimeout", &json!(1e300)).is_err(),
            "workflow policies share the parser"
        );
    }

    #[test]
    fn image_references() {
        for good in [
            "nginx",
            "nginx:1.25",
            "ghcr.io/a/b:v1",
            "localhost:5000/x",
            "a/b@sha256:abc",
            "repo/app:V1",
        ] {
            assert!(is_image_reference(good), "{good}");
        }
        for bad in ["", "Nginx", "a b", "/x", "x\n", "ghcr.io/A/b"] {
            assert!(!is_image_reference(bad), "{bad}");
        }
    }

    #[test]
    fn delete_and_lookup_inputs() {
        assert_eq!(
            delete_request(&json!({"tenantId": "t"})).unwrap().tenant_id,
            "t"
        );
        assert!(delete_request(&json!({})).is_err());
        assert!(execution_id(&json!({"executionId": "a-b-1"})).is_ok());
        assert!(execution_id(&json!({"executionId": "../x"})).is_err());
        assert!(!include_attempts(&json!({"executionId": "a"})).unwrap());
        assert!(include_attempts(&json!({"executionId": "a", "includeAttempts": true})).unwrap());
        let e = include_attempts(&json!({"includeAttempts": "yes"})).unwrap_err();
        assert!(e.message.starts_with("includeAttempts"), "{e}");
        assert!(tenant_only(&json!({"tenantId": "UP"})).is_err());
    }
}
