//! Child servers of the rigs: spawned so they die with the test binary, on free loopback ports,
//! waited for until they answer.

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes a child die with the test process, so no server outlives the test run.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    on_parent_death(cmd, nix::sys::signal::Signal::SIGKILL);
}

/// Makes the child get `signal` when the thread that spawned it ends (PR_SET_PDEATHSIG).
pub(crate) fn on_parent_death(cmd: &mut Command, signal: nix::sys::signal::Signal) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

/// A helper server of one test, spawned by a dedicated thread that lives as long as the
/// server (PR_SET_PDEATHSIG follows the spawning thread, so the server dies with the test
/// binary), and killed when this is dropped.
pub(crate) struct ServerProcess {
    /// A grace period: SIGTERM first, SIGKILL once it is over.
    stop: Option<std::sync::mpsc::Sender<Duration>>,
    thread: Option<std::thread::JoinHandle<()>>,
    exited: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ServerProcess {
    pub(crate) fn spawn(mut cmd: Command) -> Result<Self> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
            mpsc,
        };
        die_with_parent(&mut cmd);
        let (started_tx, started_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<Duration>();
        let exited = Arc::new(AtomicBool::new(false));
        let exited_in_thread = exited.clone();
        let thread = std::thread::spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            // Until told to stop (or the owner is gone): note an early exit, then kill.
            let grace = loop {
                match stop_rx.recv_timeout(Duration::from_millis(100)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !exited_in_thread.load(Ordering::SeqCst)
                            && matches!(child.try_wait(), Ok(Some(_)))
                        {
                            exited_in_thread.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok(grace) => break Some(grace),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                }
            };
            // The child is still this thread's (not reaped), so its pid is still its own.
            if let Some(grace) = grace {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        started_rx
            .recv()
            .context("the spawning thread died")?
            .map_err(anyhow::Error::msg)?;
        Ok(ServerProcess {
            stop: Some(stop_tx),
            thread: Some(thread),
            exited,
        })
    }

    /// [`spawn`](Self::spawn) with stdin closed and stdout and stderr appended to `log`.
    pub(crate) fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        Self::spawn(cmd)
    }

    pub(crate) fn exited(&self) -> bool {
        self.exited.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits up to `within` until `ready()`; false if the server exited first. Fails the test
    /// with `log` if it is neither ready nor gone in time.
    pub(crate) fn wait_ready(
        &self,
        what: &str,
        within: Duration,
        log: &Path,
        ready: impl Fn() -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if ready() {
                return true;
            }
            if self.exited() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{what} was not ready within {within:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it gracefully (SIGTERM, SIGKILL after `grace`) and waits until it is gone.
    pub(crate) fn terminate(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        // Drop joins the thread, which kills what is left after the grace period.
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a server on a free loopback port (a few ports are tried: another process may take
/// the port between the probe and the bind) and waits until `ready(endpoint)`.
pub(crate) fn start_local_server(
    what: &str,
    log: &Path,
    command: impl Fn(u16) -> Command,
    ready: impl Fn(&str) -> bool,
) -> (ServerProcess, String) {
    for _ in 0..3 {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = ServerProcess::spawn_logged(command(port), log)
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let answering = server.wait_ready(
            &format!("{what} on {endpoint}"),
            Duration::from_secs(30),
            log,
            || ready(&endpoint),
        );
        if answering {
            return (server, endpoint);
        }
    }
    panic!(
        "{what} exited at start on three ports:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
