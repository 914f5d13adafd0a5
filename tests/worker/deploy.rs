//! `docker-compose.yml` and `Dockerfile`, checked by parsing (no Docker engine runs here):
//! the compose file's services, dependencies, healthchecks, ports and volumes, each worker's
//! settings against the flags of the real binary (`compute-worker run --help`, and a start
//! with exactly that environment), and the Dockerfile's stages, user, entrypoint and the path
//! of the binary it copies.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_yaml::Value as Yaml;

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compose's interpolation with every variable unset: `${NAME:-default}` / `${NAME-default}`
/// is its default, `${NAME}` / `$NAME` empty, `$$` a `$`.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').expect("an unterminated ${");
            let expr = &r[..end];
            if let Some((_, default)) = expr.split_once(":-").or_else(|| expr.split_once('-')) {
                out.push_str(default);
            }
            rest = &r[end + 1..];
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    out
}

fn text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => interpolate(s),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's `environment`, as a map (compose accepts a map or a list of `K=V`).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Mapping(m) => m
            .iter()
            .map(|(k, v)| (text(k), if v.is_null() { String::new() } else { text(v) }))
            .collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = text(i);
                let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Yaml::Null => BTreeMap::new(),
        other => panic!("environment must be a map or a list: {other:?}"),
    }
}

/// A service's `depends_on`: target -> condition (`service_started` for the list form).
fn depends_on(service: &Yaml) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| (text(i), "service_started".to_string()))
            .collect(),
        Yaml::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let condition = match &v["condition"] {
                    Yaml::Null => "service_started".to_string(),
                    c => text(c),
                };
                (text(k), condition)
            })
            .collect(),
        Yaml::Null => BTreeMap::new(),
        other => panic!("depends_on must be a list or a map: {other:?}"),
    }
}

/// The pieces of a `postgres://user:password@host:port/db` URL.
#[derive(Debug, PartialEq)]
struct PgUrl {
    user: String,
    password: String,
    host: String,
    port: u16,
    db: String,
}

fn parse_pg_url(url: &str) -> PgUrl {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or_else(|| panic!("not a postgres:// URL: {url}"));
    let (userinfo, rest) = rest.split_once('@').expect("user and password in the URL");
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (hostport, db) = rest.split_once('/').expect("a database in the URL");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    PgUrl {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.parse().expect("a port number"),
        db: db.split('?').next().unwrap().into(),
    }
}

/// `(host ip, host port)` of a `ports` entry (`"7233:7233"`, `"127.0.0.1:5433:5432"`, or the
/// long form).
fn host_port(entry: &Yaml) -> Option<(String, u16)> {
    if let Yaml::Mapping(_) = entry {
        let published = &entry["published"];
        if published.is_null() {
            return None;
        }
        let ip = match &entry["host_ip"] {
            Yaml::Null => "0.0.0.0".to_string(),
            v => text(v),
        };
        return Some((ip, text(published).parse().unwrap()));
    }
    let s = text(entry);
    let s = s.split('/').next().unwrap();
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [_container] => None,
        [_container, host] => Some(("0.0.0.0".into(), host.parse().unwrap())),
        [_container, host, ip] => Some((ip.to_string(), host.parse().unwrap())),
        _ => unreachable!(),
    }
}

/// The container port of a `ports` entry.
fn container_port(entry: &Yaml) -> Option<u16> {
    if let Yaml::Mapping(_) = entry {
        return text(&entry["target"]).parse().ok();
    }
    let s = text(entry);
    s.split('/').next()?.rsplit(':').next()?.parse().ok()
}

/// The environment variables `compute-worker run` reads as flags, from its `--help`.
pub fn flag_variables() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .args(["run", "--help"])
        .output()
        .expect("compute-worker run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let vars: BTreeSet<String> = help
        .match_indices("[env: ")
        .map(|(i, _)| {
            help[i + 6..]
                .split(['=', ']'])
                .next()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert!(
        vars.contains("COMPUTE_DATABASE_URL") && vars.len() > 10,
        "--help lists the flags' variables: {vars:?}\n{help}"
    );
    vars
}

/// Variables the worker reads that are not its own flags: the log filter, the Temporal SDK's
/// environment configuration, and the AWS and Kubernetes clients' standard ones.
pub fn is_standard_variable(name: &str) -> bool {
    name == "RUST_LOG"
        || name == "KUBECONFIG"
        || name.starts_with("AWS_")
        || [
            "TEMPORAL_ADDRESS",
            "TEMPORAL_NAMESPACE",
            "TEMPORAL_API_KEY",
            "TEMPORAL_PROFILE",
            "TEMPORAL_CONFIG_FILE",
            "TEMPORAL_TLS",
            "TEMPORAL_TLS_CLIENT_CERT_PATH",
            "TEMPORAL_TLS_CLIENT_KEY_PATH",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
            "TEMPORAL_TLS_SERVER_NAME",
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
            "TEMPORAL_GRPC_META",
        ]
        .contains(&name)
}

/// Starts the real binary with exactly `env` (nothing inherited but PATH) and returns its
/// exit code and stderr once it gives up: it cannot reach the compose network's hosts, so it
/// must stop at connecting, never at parsing its settings.
pub fn start_with(env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        // The image's working directory does not exist here: state goes to a scratch dir.
        .env("COMPUTE_LOCAL_STATE_DIR", dir.path().join("local"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .expect("start compute-worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default(),
    )
}

#[test]
fn compose_file_runs_temporal_a_store_and_two_workers() {
    let mut compose: Yaml =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml is YAML");
    compose.apply_merge().expect("merge keys resolve");
    let services = compose["services"]
        .as_mapping()
        .expect("a services map")
        .iter()
        .map(|(k, v)| (text(k), v.clone()))
        .collect::<BTreeMap<String, Yaml>>();
    let image = |name: &str| match &services[name]["image"] {
        Yaml::Null => String::new(),
        v => text(v),
    };

    // Temporal: the server (or the dev server) and, for the server, Postgres of its own.
    let temporal: Vec<&String> = services
        .keys()
        .filter(|n| {
            let i = image(n);
            i.starts_with("temporalio/server:") || i.starts_with("temporalio/temporal:")
        })
        .collect();
    assert_eq!(temporal.len(), 1, "one Temporal service: {temporal:?}");
    let temporal = temporal[0].clone();
    let postgres: BTreeSet<String> = services
        .keys()
        .filter(|n| image(n).starts_with("postgres:"))
        .cloned()
        .collect();
    let temporal_env = environment(&services[&temporal]);
    let temporal_db = temporal_env.get("POSTGRES_SEEDS").cloned();
    if image(&temporal).starts_with("temporalio/server:") {
        let db = temporal_db.as_ref().expect("the server's POSTGRES_SEEDS");
        assert!(
            postgres.contains(db),
            "Temporal's database {db} is a service"
        );
        assert_eq!(
            temporal_env.get("DB").map(String::as_str),
            Some("postgres12")
        );
    }
    assert!(
        services[&temporal]["ports"]
            .as_sequence()
            .is_some_and(|p| p.iter().any(|e| host_port(e).map(|(_, p)| p) == Some(7233))),
        "Temporal's frontend is published on 7233"
    );

    // Exactly two workers, built from this repository's Dockerfile, running `compute-worker
    // run` with the same store and task queue.
    let workers: Vec<&String> = services
        .keys()
        .filter(|n| {
            let build = &services[*n]["build"];
            build.as_str() == Some(".") || build["context"].as_str() == Some(".")
        })
        .collect();
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");
    let flags = flag_variables();
    let mut stores = BTreeSet::new();
    let mut queues = BTreeSet::new();
    for w in &workers {
        let service = &services[*w];
        let command: Vec<String> = service["command"]
            .as_sequence()
            .map(|c| c.iter().map(text).collect())
            .unwrap_or_default();
        assert_eq!(command.first().map(String::as_str), Some("run"), "{w}");
        let env = environment(service);
        for name in env.keys() {
            assert!(
                flags.contains(name) || is_standard_variable(name),
                "{w} sets {name}, which compute-worker does not read (flags: {flags:?})"
            );
        }
        // Temporal: the Temporal service's frontend.
        let address = env.get("TEMPORAL_ADDRESS").expect("TEMPORAL_ADDRESS");
        assert_eq!(address, &format!("{temporal}:7233"), "{w}");
        // The store: Postgres, a service of its own (not Temporal's), with these credentials.
        let url = env
            .get("COMPUTE_DATABASE_URL")
            .expect("COMPUTE_DATABASE_URL");
        let pg = parse_pg_url(url);
        assert!(
            postgres.contains(&pg.host),
            "{w}'s store {} is a Postgres service",
            pg.host
        );
        assert_ne!(
            Some(&pg.host),
            temporal_db.as_ref(),
            "the store is not Temporal's database"
        );
        let pg_env = environment(&services[&pg.host]);
        assert_eq!(pg.port, 5432);
        assert_eq!(pg_env.get("POSTGRES_USER"), Some(&pg.user), "{w}");
        assert_eq!(pg_env.get("POSTGRES_PASSWORD"), Some(&pg.password), "{w}");
        assert_eq!(
            pg_env.get("POSTGRES_DB").unwrap_or(&pg.user),
            &pg.db,
            "{w}'s database is the one Postgres creates"
        );
        stores.insert(url.clone());
        queues.insert(env.get("COMPUTE_TASK_QUEUE").cloned());
        // It waits for the store to be healthy, and for Temporal (directly or through a
        // set-up step that waits for it).
        let deps = depends_on(service);
        assert_eq!(
            deps.get(&pg.host).map(String::as_str),
            Some("service_healthy"),
            "{w} waits for its store"
        );
        let reaches_temporal = deps
            .keys()
            .any(|d| d == &temporal || depends_on(&services[d]).contains_key(&temporal));
        assert!(reaches_temporal, "{w} waits for Temporal: {deps:?}");
        // Its state directory is on a volume of its own.
        let state = env
            .get("COMPUTE_LOCAL_STATE_DIR")
            .expect("COMPUTE_LOCAL_STATE_DIR");
        let mounts: Vec<String> = service["volumes"]
            .as_sequence()
            .map(|v| v.iter().map(text).collect())
            .unwrap_or_default();
        assert!(
            mounts.iter().any(|m| m
                .split(':')
                .nth(1)
                .is_some_and(|target| state.starts_with(target))),
            "{w}'s {state} is on a volume: {mounts:?}"
        );

        // The real binary accepts these settings: with exactly this environment it gets past
        // parsing them and stops only at reaching the store (whose host exists only on the
        // compose network).
        // Its operations port is on and published, and its health check asks /readyz through
        // the binary itself (the image has no HTTP client).
        let metrics: std::net::SocketAddr = env
            .get("COMPUTE_METRICS_ADDRESS")
            .expect("COMPUTE_METRICS_ADDRESS")
            .parse()
            .expect("an IP:PORT");
        let targets: Vec<u16> = service["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(container_port)
            .collect();
        assert!(
            targets.contains(&metrics.port()),
            "{w} publishes its metrics port {}: {targets:?}",
            metrics.port()
        );
        let check: Vec<String> = service["healthcheck"]["test"]
            .as_sequence()
            .map(|c| c.iter().map(text).collect())
            .unwrap_or_default();
        assert_eq!(
            check,
            ["CMD", "/usr/local/bin/compute-worker", "probe"],
            "{w}'s health check"
        );

        let (code, stderr) = start_with(&env);
        assert_ne!(code, Some(0), "{w}: it cannot have run here");
        assert_ne!(code, Some(2), "{w}: its settings do not parse:\n{stderr}");
        assert!(
            stderr.contains("execution store") && !stderr.contains("Usage:"),
            "{w} stopped at the store, not at its settings:\n{stderr}"
        );
    }
    assert_eq!(stores.len(), 1, "both workers share one store: {stores:?}");
    assert_eq!(
        queues.len(),
        1,
        "both workers serve one task queue: {queues:?}"
    );
    assert!(queues.iter().all(Option::is_some));

    // Every dependency exists; a healthy condition has a healthcheck to pass; a completion
    // condition is a one-shot service.
    for (name, service) in &services {
        for (target, condition) in depends_on(service) {
            let t = services
                .get(&target)
                .unwrap_or_else(|| panic!("{name} depends on {target}, which is no service"));
            match condition.as_str() {
                "service_healthy" => assert!(
                    !t["healthcheck"].is_null(),
                    "{name} waits for {target} to be healthy, which has no healthcheck"
                ),
                "service_completed_successfully" => assert!(
                    !matches!(t["restart"].as_str(), Some("always" | "unless-stopped")),
                    "{name} waits for {target} to complete, which restarts forever"
                ),
                "service_started" => {}
                other => panic!("{name}: unknown condition {other}"),
            }
        }
    }
    // Every database and Temporal itself have a healthcheck.
    for name in postgres.iter().chain([&temporal]) {
        assert!(
            !services[name]["healthcheck"].is_null(),
            "{name} has a healthcheck"
        );
    }
    // No cycle: every service starts.
    let mut started: BTreeSet<&String> = BTreeSet::new();
    while started.len() < services.len() {
        let before = started.len();
        for (name, service) in &services {
            if depends_on(service).keys().all(|d| started.contains(d)) {
                started.insert(name);
            }
        }
        assert!(
            started.len() > before,
            "a dependency cycle among {:?}",
            services.keys()
        );
    }

    // No host port is published twice (an unspecified address clashes with any).
    let mut published: Vec<(String, u16, String)> = Vec::new();
    for (name, service) in &services {
        for entry in service["ports"].as_sequence().into_iter().flatten() {
            if let Some((ip, port)) = host_port(entry) {
                for (other_ip, other_port, other) in &published {
                    assert!(
                        !(port == *other_port
                            && (ip == *other_ip || ip == "0.0.0.0" || other_ip == "0.0.0.0")),
                        "host port {port} is published by {name} and {other}"
                    );
                }
                // Nothing listens beyond this host: Temporal (no auth), its UI and the store
                // hold everything a caller may do and every execution.
                assert_eq!(
                    ip, "127.0.0.1",
                    "{name} publishes port {port} on {ip}, not on loopback only"
                );
                published.push((ip, port, name.clone()));
            }
        }
    }

    // Every named volume a service mounts is declared.
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(text).collect())
        .unwrap_or_default();
    for (name, service) in &services {
        for v in service["volumes"].as_sequence().into_iter().flatten() {
            let source = text(v).split(':').next().unwrap().to_string();
            if !source.starts_with(['.', '/', '~']) && text(v).contains(':') {
                assert!(
                    declared.contains(&source),
                    "{name} mounts undeclared volume {source}"
                );
            }
        }
    }
    println!(
        "docker-compose.yml: {} services, workers {workers:?} on store {stores:?}, Temporal \
         {temporal}, published ports {:?}",
        services.len(),
        published
            .iter()
            .map(|(_, p, n)| format!("{n}:{p}"))
            .collect::<Vec<_>>()
    );
}

/// One instruction of a Dockerfile.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// A Dockerfile's instructions (continuations joined, comments dropped), grouped by stage.
fn dockerfile_stages(text: &str) -> (BTreeMap<String, String>, Vec<Vec<Instruction>>) {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut global_args = BTreeMap::new();
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in joined {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            stages.push(vec![instruction]);
        } else if let Some(stage) = stages.last_mut() {
            stage.push(instruction);
        } else if instruction.keyword == "ARG" {
            let (k, v) = instruction
                .args
                .split_once('=')
                .unwrap_or((&instruction.args, ""));
            global_args.insert(k.to_string(), v.to_string());
        } else {
            panic!("{} before the first FROM", instruction.keyword);
        }
    }
    (global_args, stages)
}

/// `${NAME}` / `$NAME` replaced by the global ARG defaults.
fn substitute(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in args {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    out
}

/// An exec-form (JSON) ENTRYPOINT or CMD.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("use the exec (JSON) form, not {args:?}: {e}"))
}

#[test]
fn dockerfile_builds_in_rust_and_runs_as_non_root_from_a_small_image() {
    let (args, stages) = dockerfile_stages(&repo_file("Dockerfile"));
    assert!(stages.len() >= 2, "a multi-stage build");
    let from = |stage: &Vec<Instruction>| -> (String, Option<String>) {
        let parts: Vec<String> = substitute(&stage[0].args, &args)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let name = parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case("AS"))
            .map(|i| parts[i + 1].clone());
        (parts[0].clone(), name)
    };
    let runs = |stage: &Vec<Instruction>, keyword: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.clone())
            .collect()
    };

    // The builder: a Rust image that builds the release binary from the lock file.
    let builder = stages
        .iter()
        .find(|s| from(s).1.as_deref() == Some("builder"))
        .expect("a stage `FROM ... AS builder`");
    let (builder_image, _) = from(builder);
    assert!(builder_image.starts_with("rust:"), "{builder_image}");
    let builder_runs = runs(builder, "RUN").join("\n");
    assert!(
        builder_runs.contains("cargo build --release --locked"),
        "{builder_runs}"
    );

    // The runtime: the last stage, a slim Debian with CA certificates and no toolchain.
    let runtime = stages.last().unwrap();
    let (runtime_image, _) = from(runtime);
    assert!(
        runtime_image.starts_with("debian:") && runtime_image.ends_with("-slim"),
        "a small runtime image, not {runtime_image}"
    );
    let runtime_runs = runs(runtime, "RUN").join("\n");
    assert!(runtime_runs.contains("ca-certificates"), "{runtime_runs}");
    assert!(
        !runtime_runs.contains("cargo"),
        "no build in the runtime stage"
    );

    // A non-root user.
    let user = runs(runtime, "USER")
        .pop()
        .expect("the runtime stage sets USER");
    let account = user.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&account),
        "the runtime runs as {user}"
    );

    // What runs: `compute-worker run`, from the path the binary is copied to.
    let entrypoint = runs(runtime, "ENTRYPOINT")
        .pop()
        .map(|a| exec_form(&a))
        .unwrap_or_default();
    let cmd = runs(runtime, "CMD")
        .pop()
        .map(|a| exec_form(&a))
        .unwrap_or_default();
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    let program = argv
        .iter()
        .position(|a| a == "compute-worker" || a.ends_with("/compute-worker"))
        .unwrap_or_else(|| panic!("the image runs compute-worker: {argv:?}"));
    assert_eq!(
        argv.get(program + 1).map(String::as_str),
        Some("run"),
        "{argv:?}"
    );
    let copies: Vec<Vec<String>> = runs(runtime, "COPY")
        .iter()
        .map(|c| c.split_whitespace().map(str::to_string).collect())
        .filter(|c: &Vec<String>| c.first().map(String::as_str) == Some("--from=builder"))
        .collect();
    assert_eq!(copies.len(), 1, "one COPY --from=builder: {copies:?}");
    let (source, destination) = (&copies[0][1], &copies[0][2]);
    assert!(
        builder_runs.contains(source.as_str()),
        "the builder stage puts the binary at {source}: {builder_runs}"
    );
    let runs_destination = &argv[program] == destination
        || (argv[program] == "compute-worker" && destination == "/usr/local/bin/compute-worker");
    assert!(
        runs_destination,
        "the entrypoint runs {} but the binary is copied to {destination}",
        argv[program]
    );

    // Its settings are the worker's flags; its data volume is where compose mounts one.
    let flags = flag_variables();
    let mut volume = None;
    for i in runtime {
        match i.keyword.as_str() {
            "ENV" => {
                for pair in i.args.split_whitespace() {
                    let name = pair.split('=').next().unwrap();
                    assert!(
                        flags.contains(name) || is_standard_variable(name),
                        "the image sets {name}, which compute-worker does not read"
                    );
                }
            }
            "VOLUME" => volume = Some(exec_form(&i.args)),
            _ => {}
        }
    }
    let volume = volume.expect("the runtime declares its data VOLUME");
    let compose = repo_file("docker-compose.yml");
    for v in &volume {
        assert!(
            compose.contains(&format!(":{v}")),
            "docker-compose.yml mounts a volume at the image's {v}"
        );
        assert!(
            runtime_runs.contains(v.as_str()),
            "the runtime stage creates {v} (owned by its user)"
        );
    }

    // The build context leaves out the target directory and local state.
    let ignore = repo_file(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        ".dockerignore leaves out target/"
    );
    println!(
        "Dockerfile: {} stages ({builder_image} -> {runtime_image}), USER {user}, runs {argv:?}",
        stages.len()
    );
}
