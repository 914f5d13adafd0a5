//! What a workload runs under, set in the child before exec: `spec.memory` as a cgroup v2
//! `memory.max` when `cgroupParent` names a delegated cgroup the worker may create children in
//! (see the `cgroup` module), else as `RLIMIT_DATA` (not `RLIMIT_AS`, which breaks runtimes
//! that reserve address space, such as Node and the JVM); `RLIMIT_NOFILE` and `RLIMIT_NPROC`
//! from the configuration; and, with `runAsUser`, that user's uid and primary gid,
//! supplementary groups dropped.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStringExt, fs::PermissionsExt},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::resource::{Resource, getrlimit, setrlimit},
    unistd::{Gid, Uid, User},
};
use tokio::process::Command;

use super::config::LocalConfig;
use super::errors::{PROVIDER, config_error, io_internal};
use super::provider::LocalProvider;
use crate::{
    contract::ComputeSpec,
    error::{ComputeError, Result},
};

/// What the child sets on itself between fork and exec. Prepared before the fork, since
/// nothing may allocate or take a lock there.
#[derive(Debug, Default)]
pub(super) struct Containment {
    /// Soft and hard limit alike, never above the worker's own hard limit.
    rlimits: Vec<(Resource, u64)>,
    /// `cgroup.procs` of the workload's cgroup.
    cgroup_procs: Option<CString>,
    run_as: Option<RunAs>,
}

/// The user a workload runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunAs {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
}

/// What a failure to contain the child reports instead of its own errno: one that `exec` never
/// returns, so that it cannot be mistaken for a bad command (an `INVALID_CONFIGURATION`).
pub(super) const CONTAINMENT_ERRNO: Errno = Errno::EOWNERDEAD;

/// Puts the child in a session of its own, with itself as process group leader, then in its
/// cgroup, under its limits and, last, under its user (the cgroup and limits need the worker's
/// privileges).
#[allow(unsafe_code)]
pub(super) fn contain(command: &mut Command, containment: Containment) {
    let contained = move || -> io::Result<()> {
        for &(resource, limit) in &containment.rlimits {
            setrlimit(resource, limit, limit)?;
        }
        if let Some(RunAs { uid, gid }) = containment.run_as {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes plain system calls (setsid, open, write, close, setrlimit,
    // setgroups, setgid, setuid) on values prepared before the fork; an `io::Error` made from
    // an errno (`from_raw_os_error`) neither allocates nor takes a lock. The pointers given to
    // open and write point to a `CString` the closure owns and to a static byte.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some(procs) = &containment.cgroup_procs {
                // "0" moves the writing process, so no pid needs formatting here.
                let fd =
                    nix::libc::open(procs.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::from(CONTAINMENT_ERRNO));
                }
                let written = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
                nix::libc::close(fd);
                if written != 1 {
                    return Err(io::Error::from(CONTAINMENT_ERRNO));
                }
            }
            contained().map_err(|_| io::Error::from(CONTAINMENT_ERRNO))
        });
    }
}

/// Resolves `run_as_user` (a name or a numeric uid) to its uid and primary gid.
fn resolve_user(user: &str) -> Result<RunAs> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    };
    match found {
        Ok(Some(found)) => Ok(RunAs {
            uid: found.uid,
            gid: found.gid,
        }),
        Ok(None) => Err(config_error(format!(
            "local provider: runAsUser {user:?} is not a user of this host"
        ))),
        Err(e) => Err(config_error(format!(
            "local provider: looking up runAsUser {user:?} failed: {e}"
        ))),
    }
}

/// The user `config` has workloads run as, checked against the worker's own: only root may
/// run them as another user.
pub(super) fn run_as_user(config: &LocalConfig, root: &Path) -> Result<Option<RunAs>> {
    let run_as = config
        .run_as_user
        .as_deref()
        .map(resolve_user)
        .transpose()?;
    if let Some(run_as) = run_as {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() && euid != run_as.uid {
            return Err(config_error(
                "local provider: runAsUser needs a worker running as root".into(),
            ));
        }
        // The run-as user must be able to reach its working directory, never to change
        // the worker's files.
        let mode = std::fs::metadata(root)
            .map_err(|e| io_internal("reading the state directory's mode failed", &e))?
            .permissions()
            .mode();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode & 0o7755))
            .map_err(|e| io_internal("restricting the state directory failed", &e))?;
    }
    Ok(run_as)
}

impl LocalProvider {
    /// What the child sets on itself before exec.
    pub(super) fn containment(
        &self,
        spec: &ComputeSpec,
        cgroup: Option<&(PathBuf, bool)>,
    ) -> Result<Containment> {
        let memory_in_cgroup = cgroup.is_some_and(|(_, memory_set)| *memory_set);
        let data = spec
            .memory
            .filter(|_| !memory_in_cgroup)
            .map_or(0, |mib| mib.saturating_mul(1024 * 1024));
        let mut rlimits = Vec::new();
        for (resource, wanted) in [
            (Resource::RLIMIT_DATA, data),
            (Resource::RLIMIT_NOFILE, self.config.max_open_files),
            (Resource::RLIMIT_NPROC, self.config.max_processes),
        ] {
            if wanted == 0 {
                continue;
            }
            // Raising a hard limit needs a privilege; lowering one never fails.
            let (_, hard) = getrlimit(resource).map_err(|e| {
                ComputeError::internal("reading the worker's resource limits failed")
                    .with_root_cause(e)
                    .with_provider(PROVIDER, Some("Rlimit"))
            })?;
            rlimits.push((resource, wanted.min(hard)));
        }
        let cgroup_procs = match cgroup {
            Some((dir, _)) => Some(
                CString::new(dir.join("cgroup.procs").into_os_string().into_vec()).map_err(
                    |_| {
                        ComputeError::internal("the cgroup path contains a NUL byte")
                            .with_provider(PROVIDER, Some("Cgroup"))
                    },
                )?,
            ),
            None => None,
        };
        Ok(Containment {
            rlimits,
            cgroup_procs,
            run_as: self.run_as,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tempfile::TempDir;
    use tokio::time::Instant;

    use super::*;
    use crate::contract::Operation;
    use crate::error::ErrorCode;
    use crate::provider::ComputeProvider;
    use crate::provider::local::tests::{TestEnv, config, op, spec, wait_for_content};

    #[tokio::test]
    async fn limits_are_set_before_exec() {
        let env = TestEnv::with(|c| {
            c.max_open_files = 100;
            c.max_processes = 5000;
        });
        let mut s = spec(&["sh", "-c", "ulimit -d; ulimit -n; ulimit -p"]);
        s.memory = Some(64);
        env.provider
            .provision(&op("t23", "exec-1", Operation::Provision), &s)
            .await
            .unwrap();
        let out = env.provider.tenant_dir("t23").join("exec-1.stdout.log");
        let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).unwrap();
        // `ulimit -d` counts KiB.
        wait_for_content(&out, &format!("65536\n100\n{}\n", nproc.min(5000))).await;

        // Without a memory limit and with the defaults: RLIMIT_DATA and NPROC left alone.
        let defaults = TestEnv::with(|c| {
            *c = LocalConfig {
                state_dir: c.state_dir.clone(),
                ..LocalConfig::default()
            }
        });
        let (_, data) = getrlimit(Resource::RLIMIT_DATA).unwrap();
        let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).unwrap();
        let (_, nofile) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let shown = |limit: u64, unit: u64| {
            if limit == nix::libc::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                (limit / unit).to_string()
            }
        };
        defaults
            .provider
            .provision(
                &op("t23", "exec-1", Operation::Provision),
                &spec(&["sh", "-c", "ulimit -Hd; ulimit -n; ulimit -Hp"]),
            )
            .await
            .unwrap();
        let out = defaults
            .provider
            .tenant_dir("t23")
            .join("exec-1.stdout.log");
        wait_for_content(
            &out,
            &format!(
                "{}\n{}\n{}\n",
                shown(data, 1024),
                nofile.min(4096),
                shown(nproc, 1)
            ),
        )
        .await;
    }

    #[tokio::test]
    async fn run_as_user_runs_the_workload_as_that_user() {
        let dir = TempDir::new().unwrap();
        let mut c = config(dir.path());
        c.run_as_user = Some("compute-worker-no-such-user-7c1f".into());
        assert_eq!(
            LocalProvider::new(c.clone()).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
        let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
        c.run_as_user = Some(nobody.uid.to_string());
        if !nix::unistd::geteuid().is_root() {
            // Only root may run workloads as another user; the worker says so at start.
            assert_eq!(
                LocalProvider::new(c).unwrap_err().code,
                ErrorCode::InvalidConfiguration
            );
            return;
        }
        // The temporary directory must be reachable by the run-as user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = TestEnv {
            provider: LocalProvider::new(c).unwrap(),
            dir,
        };
        let p = &env.provider;
        p.provision(
            &op("t29", "exec-1", Operation::Provision),
            &spec(&[
                "sh",
                "-c",
                "id -u; id -g; id -G; touch ok; touch ../planted; sleep 30",
            ]),
        )
        .await
        .unwrap();
        let uid = nobody.uid.as_raw();
        let gid = nobody.gid.as_raw();
        let out = p.tenant_dir("t29").join("exec-1.stdout.log");
        wait_for_content(&out, &format!("{uid}\n{gid}\n{gid}\n")).await;
        let work = std::fs::metadata(p.work_dir("t29")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&work),
                std::os::unix::fs::MetadataExt::gid(&work)
            ),
            (uid, gid)
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.work_dir("t29").join("ok").exists() {
            assert!(
                Instant::now() < deadline,
                "the workload could not write its directory"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!p.tenant_dir("t29").join("planted").exists());
    }
}
