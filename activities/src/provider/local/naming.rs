//! The names of what the provider keeps in a tenant's directory (see the layout in the
//! provider's documentation), and the rule that keeps a tenant id inside the state directory.

use std::path::{Path, PathBuf};

use super::errors::local_error;
use crate::error::{ErrorCode, Result};
use crate::provider::OperationContext;

/// The tenant's process record.
pub(super) const RECORD_FILE: &str = "process.json";
/// The host-wide lock of the tenant's operations.
pub(super) const LOCK_FILE: &str = ".lock";
/// The workload's working directory, inside the tenant directory.
pub(super) const WORK_DIR: &str = "work";

/// Rules out tenant ids that would escape the state directory (the generic validation should
/// already have refused them).
pub(super) fn check_tenant_id(tenant_id: &str) -> Result<()> {
    if tenant_id.is_empty()
        || tenant_id == "."
        || tenant_id == ".."
        || tenant_id.contains(['/', '\0'])
    {
        return Err(local_error(
            ErrorCode::InvalidConfiguration,
            "tenantId: not usable as a directory name",
            "InvalidTenantId",
        ));
    }
    Ok(())
}

/// Turns an execution id into a file name component.
pub(super) fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The name of an execution's log of `stream` (`stdout` or `stderr`).
pub(super) fn log_name(execution_id: &str, stream: &str) -> String {
    format!("{}.{stream}.log", file_safe(execution_id))
}

pub(super) fn log_path(tenant_dir: &Path, execution_id: &str, stream: &str) -> PathBuf {
    tenant_dir.join(log_name(execution_id, stream))
}

/// The name of the file recording how the process `pid` started at `start_time` exited.
pub(super) fn exit_name(pid: u32, start_time: u64) -> String {
    format!("exit-{pid}-{start_time}.json")
}

/// The name of the temporary file `path` is written through.
pub(super) fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// The name of an execution's cgroup, under the cgroup parent.
pub(super) fn cgroup_name(op: &OperationContext) -> String {
    // `@` is not in `file_safe`'s alphabet, so tenant and execution cannot run into each other.
    format!(
        "{}@{}",
        file_safe(&op.tenant_id),
        file_safe(&op.execution_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_tenant_directory() {
        for refused in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_tenant_id(refused).is_err(), "{refused:?}");
        }
        check_tenant_id("tenant-1").unwrap();
        assert_eq!(file_safe("exec/1 ü.x_y-z"), "exec_1__.x_y-z");
        assert_eq!(log_name("a/b", "stderr"), "a_b.stderr.log");
        assert_eq!(
            log_path(Path::new("/s/t"), "e", "stdout"),
            Path::new("/s/t/e.stdout.log")
        );
        assert_eq!(exit_name(12, 34), "exit-12-34.json");
        assert_eq!(
            temporary_path(Path::new("/s/t/process.json")),
            Path::new("/s/t/.process.json.tmp")
        );
    }
}
