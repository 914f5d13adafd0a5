//! `--simulated-*`: the simulated provider's flags (benchmarks and workflow tests only).

use std::time::Duration;

use clap::Args;
use compute_activities::provider::simulated::SimulatedConfig;

/// Settings of the simulated provider; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct SimulatedArgs {
    /// Simulated provider: how long every operation takes (`0s` ends it at once).
    #[arg(long, env = "COMPUTE_SIMULATED_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub simulated_delay: Duration,
    /// Simulated provider: the share of executions that fail with `WORKLOAD_FAILED`
    /// (0.0 to 1.0, picked by execution id).
    #[arg(long, env = "COMPUTE_SIMULATED_FAILURE_RATE", default_value_t = 0.0)]
    pub simulated_failure_rate: f64,
}

impl From<SimulatedArgs> for SimulatedConfig {
    fn from(a: SimulatedArgs) -> Self {
        SimulatedConfig {
            delay_ms: u64::try_from(a.simulated_delay.as_millis()).unwrap_or(u64::MAX),
            failure_rate: a.simulated_failure_rate,
        }
    }
}
