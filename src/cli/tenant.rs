//! `compute-worker tenant`: operators read tenants and clear manual-intervention marks on the
//! store, without the worker running.

use clap::{Args, Subcommand};

use super::DatabaseUrl;

/// `compute-worker tenant ...`.
#[derive(Debug, Clone, Args)]
pub struct TenantArgs {
    /// The execution store, as for `run`.
    #[arg(
        long,
        env = "COMPUTE_DATABASE_URL",
        default_value = "sqlite://compute-worker.db",
        global = true
    )]
    pub database: DatabaseUrl,
    /// What to do.
    #[command(subcommand)]
    pub command: TenantCommand,
}

/// The operator's tenant commands.
#[derive(Debug, Clone, Subcommand)]
pub enum TenantCommand {
    /// List tenants by id: state, revision, live resources, manual-intervention mark.
    List {
        /// Only tenants in this state (`provisioning`, `running`, `updating`, `deleting`,
        /// `deleted`, `failed`, `requires_manual_intervention`).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON (the `ListTenantCompute` shape, every page) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant: state, last good spec, resources, mark, latest executions.
    Show {
        /// The tenant id.
        tenant: String,
        /// Print JSON (`{tenant, executions}`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Clear a tenant's manual-intervention mark (recorded in the history of the execution
    /// that set it).
    Clear {
        /// The tenant id.
        tenant: String,
    },
}
