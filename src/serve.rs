//! The worker's operations port (`--metrics-address`): `GET /metrics` (the SDK's `temporal_*`
//! metrics and the worker's `compute_*` ones, Prometheus text), `GET /healthz` (the process
//! answers) and `GET /readyz` (200 only while Temporal, the store and the provider answer and
//! the worker polls; 503 with a JSON reason otherwise).
//!
//! The port faces whatever can reach it, so every request is bounded: a few connections at
//! once, headers within seconds, one readiness check at a time whatever the request rate.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use compute_activities::{metrics::Metrics, provider::ComputeProvider, store::ExecutionStore};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use temporalio_client::{Client, tonic};
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
};
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// A client has this long to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lives at most this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Each readiness check's bound: a dependency slower than this is not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A readiness answer is reused this long: probes and floods cost one check per period.
const READY_REUSE: Duration = Duration::from_secs(1);
/// The SDK's metrics are read from its exporter on loopback within this long, at most this
/// large.
const SDK_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
const SDK_SCRAPE_MAX: u64 = 16 << 20;

/// What `/readyz` looks at.
pub struct Readiness {
    client: Client,
    store: Arc<dyn ExecutionStore>,
    provider: Arc<dyn ComputeProvider>,
    polling: Arc<AtomicBool>,
    last: Mutex<Option<(Instant, bool, serde_json::Value)>>,
}

impl Readiness {
    /// Readiness of a worker over these; `polling` is true while the worker polls.
    pub fn new(
        client: Client,
        store: Arc<dyn ExecutionStore>,
        provider: Arc<dyn ComputeProvider>,
        polling: Arc<AtomicBool>,
    ) -> Self {
        Readiness {
            client,
            store,
            provider,
            polling,
            last: Mutex::new(None),
        }
    }

    /// Whether the worker is ready, and each check's answer. Concurrent callers wait for one
    /// check; an answer younger than [`READY_REUSE`] is reused.
    async fn check(&self) -> (bool, serde_json::Value) {
        let mut last = self.last.lock().await;
        if let Some((at, ready, report)) = last.as_ref()
            && at.elapsed() < READY_REUSE
        {
            return (*ready, report.clone());
        }
        let temporal = async {
            let mut service = self.client.connection().workflow_service();
            service
                .get_system_info(tonic::Request::new(GetSystemInfoRequest::default()))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        let store = async {
            self.store
                .ping()
                .await
                .map_err(|e| e.to_compute_error().message)
        };
        let provider = async { self.provider.ready().await.map_err(|e| e.message) };
        let (temporal, store, provider) =
            tokio::join!(bounded(temporal), bounded(store), bounded(provider));
        let polling = self.polling.load(Ordering::Acquire);
        let ready = temporal.is_ok() && store.is_ok() && provider.is_ok() && polling;
        let verdict = |r: &Result<(), String>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        let report = json!({
            "ready": ready,
            "checks": {
                "temporal": verdict(&temporal),
                "store": verdict(&store),
                "provider": verdict(&provider),
                "worker": if polling { "polling" } else { "not polling" },
            }
        });
        if !ready {
            tracing::warn!(report = %report, "The worker is not ready.");
        }
        *last = Some((Instant::now(), ready, report.clone()));
        (ready, report)
    }
}

async fn bounded(check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// What the port serves.
pub struct Ops {
    /// The worker's own metrics.
    pub metrics: Metrics,
    /// The SDK's Prometheus exporter, on loopback.
    pub sdk_metrics: Option<SocketAddr>,
    /// `/readyz`.
    pub readiness: Readiness,
}

/// Binds `address` (failing the start when it cannot) and serves until `stop`.
pub async fn serve(
    address: SocketAddr,
    ops: Ops,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on --metrics-address {address}"))?;
    tracing::info!(address = %listener.local_addr().unwrap_or(address), "Serving /metrics, /healthz and /readyz.");
    let ops = Arc::new(ops);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "Accepting a metrics connection failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let ops = Arc::clone(&ops);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let ops = Arc::clone(&ops);
                    async move { Ok::<_, Infallible>(answer(&ops, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(permit);
            });
        }
    }))
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn answer(ops: &Ops, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => {
            let (ready, report) = ops.readiness.check().await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, JSON, format!("{report}\n"))
        }
        "/metrics" => {
            let mut text = match ops.sdk_metrics {
                Some(at) => match scrape_sdk(at).await {
                    Ok(text) => text,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "The SDK's metrics could not be read; serving the worker's own.");
                        String::new()
                    }
                },
                None => String::new(),
            };
            text.push_str(&ops.metrics.render());
            reply(StatusCode::OK, PROMETHEUS, text)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    }
}

/// One `GET path` on a fresh connection to `at`, read to its end (at most `max` bytes) within
/// `within`: the status line and the body.
async fn get_once(
    at: SocketAddr,
    path: &str,
    max: u64,
    within: Duration,
) -> anyhow::Result<(String, Vec<u8>)> {
    let exchange = async {
        let mut stream = TcpStream::connect(at).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(max).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(within, exchange)
        .await
        .with_context(|| format!("{at} did not answer within {within:?}"))?
        .with_context(|| format!("cannot ask {at}"))?;
    let (head, body) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (&raw[..end], raw[end + 4..].to_vec()),
        None => (&raw[..], Vec::new()),
    };
    let status = String::from_utf8_lossy(head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// The SDK's exporter's text (it serves only `/metrics`, on a loopback port of its own).
async fn scrape_sdk(at: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = get_once(at, "/metrics", SDK_SCRAPE_MAX, SDK_SCRAPE_TIMEOUT)
        .await
        .context("the SDK's exporter")?;
    anyhow::ensure!(
        status.starts_with("HTTP/1.1 200"),
        "the SDK's exporter answered {status}"
    );
    String::from_utf8(body).context("the SDK's exporter sent something not UTF-8")
}

/// `compute-worker probe`: one GET on a running worker's operations port; an error unless it
/// answers 200 within [`PROBE_TIMEOUT`].
pub async fn probe(args: &crate::ProbeArgs) -> anyhow::Result<()> {
    let mut at = args.metrics_address;
    if at.ip().is_unspecified() {
        at.set_ip(match at {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let (status, body) = get_once(at, &args.path, PROBE_MAX, PROBE_TIMEOUT).await?;
    println!("{}", String::from_utf8_lossy(&body).trim_end());
    anyhow::ensure!(
        status.starts_with("HTTP/1.1 200"),
        "{} answered {status}",
        args.path
    );
    Ok(())
}

/// How long `probe` waits: under the orchestrators' usual probe timeouts, above a readiness
/// check's own bound.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_MAX: u64 = 1 << 20;
