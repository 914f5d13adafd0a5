//! The local provider's error table: how its failures become [`ComputeError`]s, each naming
//! `local` as the provider and, as the provider code, what went wrong. Messages name a field
//! of the spec, never a value.

use std::io;

use nix::errno::Errno;

use super::containment::CONTAINMENT_ERRNO;
use crate::error::{ComputeError, ErrorCode};

/// The provider's name, in errors and logs.
pub(super) const PROVIDER: &str = "local";

/// An error of this provider with `provider_code` as its provider code.
pub(super) fn local_error(
    code: ErrorCode,
    message: impl Into<String>,
    provider_code: &str,
) -> ComputeError {
    ComputeError::new(code, message).with_provider(PROVIDER, Some(provider_code))
}

/// A failure of the worker's own file handling (`what` says which), caused by `error`.
pub(super) fn io_internal(what: &str, error: &io::Error) -> ComputeError {
    ComputeError::internal(what.to_string())
        .with_root_cause(error)
        .with_provider(PROVIDER, Some("IoError"))
}

/// A setting of the local provider the worker cannot start with.
pub(super) fn config_error(message: String) -> ComputeError {
    local_error(ErrorCode::InvalidConfiguration, message, "LocalConfig")
}

/// A blocking task of the provider (`what` says which) that panicked or was cancelled.
pub(super) fn task_failed(
    what: &str,
    provider_code: &str,
    error: tokio::task::JoinError,
) -> ComputeError {
    ComputeError::internal(what.to_string())
        .with_root_cause(error)
        .with_provider(PROVIDER, Some(provider_code))
}

/// A spec without a command: the local provider has nothing to run.
pub(super) fn missing_command() -> ComputeError {
    local_error(
        ErrorCode::InvalidConfiguration,
        "spec.command: the local provider needs a command to run",
        "MissingCommand",
    )
}

/// Classifies a failed spawn. Messages name the field, never a value.
pub(super) fn spawn_error(error: &io::Error) -> ComputeError {
    if error.raw_os_error() == Some(CONTAINMENT_ERRNO as i32) {
        return ComputeError::internal(
            "putting the workload in its cgroup, under its limits or its user failed",
        )
        .with_provider(PROVIDER, Some("ContainmentFailed"));
    }
    if error.raw_os_error() == Some(Errno::ENOEXEC as i32) {
        return local_error(
            ErrorCode::InvalidConfiguration,
            "spec.command[0]: not an executable this host can run",
            "ENOEXEC",
        );
    }
    match error.kind() {
        io::ErrorKind::NotFound => local_error(
            ErrorCode::InvalidConfiguration,
            "spec.command[0]: executable not found",
            "ENOENT",
        ),
        io::ErrorKind::PermissionDenied => local_error(
            ErrorCode::InvalidConfiguration,
            "spec.command[0]: permission denied (is it an executable file?)",
            "EACCES",
        ),
        io::ErrorKind::InvalidInput => local_error(
            ErrorCode::InvalidConfiguration,
            "spec: a command argument or an environment variable contains a NUL byte",
            "InvalidInput",
        ),
        _ => ComputeError::internal("starting spec.command[0] failed")
            .with_root_cause(error)
            .with_provider(PROVIDER, Some("SpawnFailed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_failures_are_classified_by_cause() {
        let classified = |error: io::Error| {
            let e = spawn_error(&error);
            (e.code, e.provider_code)
        };
        let code = |code: &str| Some(code.to_string());
        assert_eq!(
            classified(io::Error::from(CONTAINMENT_ERRNO)),
            (ErrorCode::Internal, code("ContainmentFailed"))
        );
        assert_eq!(
            classified(io::Error::from(Errno::ENOEXEC)),
            (ErrorCode::InvalidConfiguration, code("ENOEXEC"))
        );
        assert_eq!(
            classified(io::Error::from(Errno::ENOENT)),
            (ErrorCode::InvalidConfiguration, code("ENOENT"))
        );
        assert_eq!(
            classified(io::Error::from(Errno::EACCES)),
            (ErrorCode::InvalidConfiguration, code("EACCES"))
        );
        assert_eq!(
            classified(io::Error::from(io::ErrorKind::InvalidInput)),
            (ErrorCode::InvalidConfiguration, code("InvalidInput"))
        );
        assert_eq!(
            classified(io::Error::from(Errno::EIO)),
            (ErrorCode::Internal, code("SpawnFailed"))
        );
        assert_eq!(missing_command().provider.as_deref(), Some(PROVIDER));
    }
}
