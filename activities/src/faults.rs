//! Fault injection for the test suite (`tests/worker/faults.rs`): named crash points where
//! the worker kills itself with SIGKILL, so tests can check that another worker (or the
//! restarted one) finishes every operation. Inert unless `COMPUTE_FAULT_CRASH_AT` is set.
//!
//! - `COMPUTE_FAULT_CRASH_AT=<name>`: [`crash_point`] with that name kills the process.
//! - `COMPUTE_FAULT_ONCE_FILE=<path>` (optional): crash only if the file does not exist yet
//!   (it is created first), so only the first worker sharing the file crashes.
//!
//! The environment is read once; with no crash point set, a call is one atomic load.
//!
//! Compiled in only with the `fault-injection` feature, which the workspace enables for its
//! own test builds (a dev-dependency): a release build has no crash points, whatever its
//! environment says.

#[cfg(feature = "fault-injection")]
use std::sync::OnceLock;

/// After the provider call, before its result is written to the store.
pub const AFTER_PROVIDER_CALL: &str = "after-provider-call";
/// After the store recorded the running state, before the tracker is started.
pub const BEFORE_TRACKER_START: &str = "before-tracker-start";
/// After the store recorded the terminal state, before the callback signal is sent.
pub const AFTER_TERMINAL_STATE: &str = "after-terminal-state";

#[cfg(feature = "fault-injection")]
struct Config {
    crash_at: Option<String>,
    once_file: Option<std::path::PathBuf>,
}

#[cfg(feature = "fault-injection")]
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config {
        crash_at: std::env::var("COMPUTE_FAULT_CRASH_AT")
            .ok()
            .filter(|s| !s.is_empty()),
        once_file: std::env::var_os("COMPUTE_FAULT_ONCE_FILE").map(Into::into),
    })
}

/// Kills this process with SIGKILL when `COMPUTE_FAULT_CRASH_AT` names this point (and the
/// once-file, if configured, did not exist yet). Does nothing otherwise, and nothing at all
/// without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
pub fn crash_point(_name: &str) {}

/// Kills this process with SIGKILL when `COMPUTE_FAULT_CRASH_AT` names this point (and the
/// once-file, if configured, did not exist yet). Does nothing otherwise.
#[cfg(feature = "fault-injection")]
pub fn crash_point(name: &str) {
    let config = config();
    if config.crash_at.as_deref() != Some(name) {
        return;
    }
    if let Some(path) = &config.once_file {
        // create_new is atomic: of several workers sharing the file, one crashes.
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .is_err()
        {
            return;
        }
    }
    tracing::warn!(point = name, "Fault injection: crashing with SIGKILL.");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
}
