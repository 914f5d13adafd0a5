//! `compute-worker tenant list | show | clear`: the operator's view of tenants, read straight
//! from the store (the same answers as `ListTenantCompute` and `GetTenantCompute`).

use anyhow::{Context, anyhow, bail};
use compute_activities::{
    activities::list_tenant_page,
    contract::{ExecutionStatus, TenantCompute, TenantState},
    store::{self, ExecutionStore},
    validate::{self, MAX_TENANT_PAGE, TenantListQuery},
};
use serde_json::json;

use crate::cli::{TenantArgs, TenantCommand};

/// How many of a tenant's executions `tenant show` prints (the latest).
const SHOWN_EXECUTIONS: usize = 10;

/// Runs one `tenant` command.
pub async fn run(args: &TenantArgs) -> anyhow::Result<()> {
    let store = store::connect(&args.database.0).await.map_err(|e| {
        anyhow!(
            "cannot open the store {}: {e}",
            store::redact_url(&args.database.0)
        )
    })?;
    match &args.command {
        TenantCommand::List { state, json } => list(store.as_ref(), state.as_deref(), *json).await,
        TenantCommand::Show { tenant, json } => show(store.as_ref(), tenant, *json).await,
        TenantCommand::Clear { tenant } => clear(store.as_ref(), tenant).await,
    }
}

fn tenant_id(tenant: &str) -> anyhow::Result<()> {
    validate::check_tenant_id("TENANT", tenant).map_err(|e| anyhow!("{}", e.message))
}

async fn list(
    store: &dyn ExecutionStore,
    state: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let state = match state {
        None => None,
        Some(s) => match TenantState::parse(s) {
            Some(TenantState::Absent) | None => bail!(
                "--state: must be one of provisioning, running, updating, deleting, deleted, \
                 failed, requires_manual_intervention"
            ),
            Some(state) => Some(state),
        },
    };
    let mut query = TenantListQuery {
        state,
        page_size: MAX_TENANT_PAGE,
        after: None,
    };
    let mut tenants = Vec::new();
    loop {
        let page = list_tenant_page(store, &query)
            .await
            .context("listing tenants")?;
        tenants.extend(page.tenants);
        match page.next_page_token {
            Some(token) => query.after = Some(token),
            None => break,
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"tenants": tenants, "nextPageToken": null}))?
        );
        return Ok(());
    }
    println!(
        "{:<40} {:<30} {:>8}  {:<24} MARK",
        "TENANT", "STATE", "REVISION", "UPDATED"
    );
    for t in &tenants {
        println!(
            "{:<40} {:<30} {:>8}  {:<24} {}",
            t.tenant_id,
            t.state.as_str(),
            t.revision,
            t.updated_at.map(|u| u.to_rfc3339()).unwrap_or_default(),
            t.requires_intervention
                .as_ref()
                .map(|m| format!("{} ({})", m.code, m.execution_id))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!("{} tenant(s)", tenants.len());
    Ok(())
}

async fn show(store: &dyn ExecutionStore, tenant: &str, as_json: bool) -> anyhow::Result<()> {
    tenant_id(tenant)?;
    let compute = match store
        .get_tenant(tenant)
        .await
        .context("reading the tenant")?
    {
        Some(t) => t.to_compute(),
        None => TenantCompute::absent(tenant),
    };
    let mut executions: Vec<ExecutionStatus> = store
        .list_executions(tenant)
        .await
        .context("reading the tenant's executions")?
        .into_iter()
        .map(|r| r.status)
        .collect();
    executions.drain(..executions.len().saturating_sub(SHOWN_EXECUTIONS));
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"tenant": compute, "executions": executions}))?
        );
        return Ok(());
    }
    println!("tenant:      {}", compute.tenant_id);
    println!("state:       {}", compute.state);
    println!("revision:    {}", compute.revision);
    println!(
        "spec:        {}",
        compute
            .spec
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?
            .unwrap_or_else(|| "(none)".into())
    );
    println!(
        "resources:   {}",
        serde_json::to_string(&compute.resource_ids)?
    );
    match &compute.requires_intervention {
        Some(m) => println!(
            "mark:        {}: {} (execution {}, at {}); `compute-worker tenant clear {}` clears it",
            m.code,
            m.message,
            m.execution_id,
            m.at.to_rfc3339(),
            compute.tenant_id
        ),
        None => println!("mark:        (none)"),
    }
    println!("active:      {}", compute.active_execution_ids.join(", "));
    println!("executions (latest {SHOWN_EXECUTIONS}):");
    for e in &executions {
        println!(
            "  {}  {:<9} {:<10} attempt {}  {}{}",
            e.created_at.to_rfc3339(),
            e.operation.as_str(),
            e.state.as_str(),
            e.attempt,
            e.execution_id,
            e.error
                .as_ref()
                .map(|err| format!("  {}: {}", err.code, err.message))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn clear(store: &dyn ExecutionStore, tenant: &str) -> anyhow::Result<()> {
    tenant_id(tenant)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "an operator".into());
    let before = store
        .get_tenant(tenant)
        .await
        .context("reading the tenant")?;
    let Some(before) = before else {
        bail!("tenant {tenant} is not recorded in this store");
    };
    let Some(mark) = before.intervention else {
        println!("tenant {tenant} has no manual-intervention mark: nothing to clear");
        return Ok(());
    };
    let note = format!(
        "manual-intervention mark ({}: {}) cleared by {user} with `compute-worker tenant clear`",
        mark.code, mark.message
    );
    let after = store
        .clear_intervention(tenant, &note)
        .await
        .context("clearing the mark")?
        .ok_or_else(|| anyhow!("tenant {tenant} disappeared"))?;
    println!(
        "cleared the manual-intervention mark of tenant {tenant} (set by execution {}); state now {}",
        mark.execution_id, after.state
    );
    Ok(())
}
