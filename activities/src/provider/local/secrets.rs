//! Which secret references may resolve on this host, and resolving them.
//!
//! Secret references are denied by default. `env:NAME` resolves only a name the operator
//! allowed (`secretEnvAllow`: exact names or `PREFIX*`), `file:PATH` only an absolute path that,
//! symlinks and `..` resolved, is a regular file of at most 64 KiB under one of `secretDirs`.
//! [`validate`](crate::provider::ComputeProvider::validate) checks this before anything is
//! recorded, with one message whether or not the variable or file exists, so nothing can be
//! probed. Files are read without following a final symlink, without blocking on a FIFO
//! swapped in, and with a bound.

use std::{
    ffi::OsString,
    io::Read,
    os::unix::{ffi::OsStringExt, fs::OpenOptionsExt, io::AsRawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use sha2::{Digest, Sha256};

use super::config::LocalConfig;
use super::errors::{config_error, local_error, task_failed};
use super::provider::LocalProvider;
use crate::{
    contract::SecretRef,
    error::{ComputeError, ErrorCode, Result},
};

/// The largest `file:` secret: anything bigger is not a credential, and reading it would let a
/// request exhaust the worker's memory.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// The most all of a spec's secrets may hold together (the kernel refuses a much larger
/// environment at exec anyway), which also bounds what scrubbing them costs.
const MAX_SECRETS_TOTAL_BYTES: u64 = 1024 * 1024;

/// Where a secret's value comes from on this host.
enum SecretSource<'a> {
    Env(&'a str),
    File(&'a str),
}

fn secret_source(index: usize, secret: &SecretRef) -> Result<SecretSource<'_>> {
    let field = format!("spec.secrets[{index}].valueFrom");
    if secret.secret_key_ref.is_some() {
        return Err(local_error(
            ErrorCode::InvalidConfiguration,
            format!(
                "spec.secrets[{index}].secretKeyRef: the local provider cannot read Kubernetes \
                 secrets; set {field} to env:VAR or file:/path instead"
            ),
            "UnsupportedSecretSource",
        ));
    }
    let unsupported = || {
        local_error(
            ErrorCode::InvalidConfiguration,
            format!("{field}: the local provider supports only env:VAR and file:/path references"),
            "UnsupportedSecretSource",
        )
    };
    let value_from = secret.value_from.as_deref().ok_or_else(unsupported)?;
    if let Some(var) = value_from.strip_prefix("env:")
        && !var.is_empty()
        && !var.contains(['=', '\0'])
    {
        Ok(SecretSource::Env(var))
    } else if let Some(path) = value_from.strip_prefix("file:")
        && !path.is_empty()
    {
        Ok(SecretSource::File(path))
    } else {
        Err(unsupported())
    }
}

/// The one refusal of a reference outside what the operator allowed. It is the same whether
/// or not the variable or file exists, so that a caller cannot probe the worker's host, and
/// it names the field only.
fn secret_not_allowed(index: usize) -> ComputeError {
    local_error(
        ErrorCode::InvalidConfiguration,
        format!(
            "spec.secrets[{index}].valueFrom: not a secret this worker may resolve (an env: \
             variable must be one the operator allowed and set in the worker's environment; a \
             file: path must be absolute and name a regular file of at most 64 KiB in a \
             directory the operator allowed)"
        ),
        "SecretNotAllowed",
    )
}

fn secrets_too_large() -> ComputeError {
    local_error(
        ErrorCode::InvalidConfiguration,
        "spec.secrets: the referenced secrets hold more than 1 MiB together",
        "SecretsTooLarge",
    )
}

/// A reference the operator's allow-lists accept.
enum AllowedSecret<'a> {
    Env(&'a str),
    /// Canonical: symlinks and `..` resolved.
    File(PathBuf),
}

/// What secret references may resolve to (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct SecretPolicy {
    env_allow: Vec<String>,
    /// Canonical.
    dirs: Vec<PathBuf>,
}

impl SecretPolicy {
    /// The policy `config` sets; an error when an allow-list entry is not usable.
    pub(super) fn from_config(config: &LocalConfig) -> Result<Self> {
        for pattern in &config.secret_env_allow {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if name.contains(['*', '=', '\0']) || (name.is_empty() && pattern.is_empty()) {
                return Err(config_error(format!(
                    "local provider: secretEnvAllow entry {pattern:?} is neither a variable name \
                     nor a PREFIX* pattern"
                )));
            }
        }
        let dirs = config
            .secret_dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d)
                    .and_then(|c| {
                        if c.is_dir() {
                            Ok(c)
                        } else {
                            Err(std::io::Error::other("not a directory"))
                        }
                    })
                    .map_err(|e| {
                        config_error(format!(
                            "local provider: secret directory {} is not usable: {e}",
                            d.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SecretPolicy {
            env_allow: config.secret_env_allow.clone(),
            dirs,
        })
    }

    fn env_allowed(&self, name: &str) -> bool {
        self.env_allow
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
    }

    fn in_a_dir(&self, path: &Path) -> bool {
        self.dirs
            .iter()
            .any(|dir| path.starts_with(dir) && path != dir)
    }

    /// Checks a reference without reading its value (what validation does). The file checks
    /// only look (`stat`), so a FIFO or a device cannot block or feed them.
    fn check<'a>(&self, index: usize, secret: &'a SecretRef) -> Result<AllowedSecret<'a>> {
        Ok(self.check_sized(index, secret)?.0)
    }

    /// [`check`](Self::check), with the value's size as it looks now.
    fn check_sized<'a>(
        &self,
        index: usize,
        secret: &'a SecretRef,
    ) -> Result<(AllowedSecret<'a>, u64)> {
        match secret_source(index, secret)? {
            SecretSource::Env(name) if self.env_allowed(name) => match std::env::var_os(name) {
                Some(value) => Ok((AllowedSecret::Env(name), value.len() as u64)),
                None => Err(secret_not_allowed(index)),
            },
            SecretSource::Env(_) => Err(secret_not_allowed(index)),
            SecretSource::File(path) => {
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(secret_not_allowed(index));
                }
                let real = std::fs::canonicalize(path).map_err(|_| secret_not_allowed(index))?;
                let meta = std::fs::metadata(&real).map_err(|_| secret_not_allowed(index))?;
                if !self.in_a_dir(&real)
                    || !meta.file_type().is_file()
                    || meta.len() > MAX_SECRET_FILE_BYTES
                {
                    return Err(secret_not_allowed(index));
                }
                Ok((AllowedSecret::File(real), meta.len()))
            }
        }
    }

    /// Checks all of a spec's references, and that together they are not too large.
    pub(super) fn check_all(&self, secrets: &[SecretRef]) -> Result<()> {
        let mut total = 0u64;
        for (index, secret) in secrets.iter().enumerate() {
            total = total.saturating_add(self.check_sized(index, secret)?.1);
        }
        if total > MAX_SECRETS_TOTAL_BYTES {
            return Err(secrets_too_large());
        }
        Ok(())
    }

    /// Resolves all of a spec's references, through the same checks. Blocking.
    fn resolve_all(&self, secrets: &[SecretRef]) -> Result<Vec<Vec<u8>>> {
        let mut total = 0u64;
        let mut values = Vec::with_capacity(secrets.len());
        for (index, secret) in secrets.iter().enumerate() {
            let value = self.resolve(index, secret)?;
            total = total.saturating_add(value.len() as u64);
            if total > MAX_SECRETS_TOTAL_BYTES {
                return Err(secrets_too_large());
            }
            values.push(value);
        }
        Ok(values)
    }

    /// Resolves a reference to its value, through the same checks. Blocking.
    fn resolve(&self, index: usize, secret: &SecretRef) -> Result<Vec<u8>> {
        let value = match self.check(index, secret)? {
            AllowedSecret::Env(name) => std::env::var_os(name).map(OsString::into_vec),
            AllowedSecret::File(path) => self.read_file(&path),
        };
        value.ok_or_else(|| secret_not_allowed(index))
    }

    /// Reads a checked secret file again, safely: it may have been swapped since the check.
    fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        // O_NOFOLLOW: not a symlink swapped in; O_NONBLOCK: a FIFO swapped in cannot block the
        // open (the fstat below then refuses it).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        // A directory on the way could have been swapped for a symlink too: what was opened
        // must still lie in an allowed directory.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        let meta = file.metadata().ok()?;
        if !self.in_a_dir(&opened)
            || !meta.file_type().is_file()
            || meta.len() > MAX_SECRET_FILE_BYTES
        {
            return None;
        }
        let mut bytes = Vec::new();
        // One byte more than allowed tells a file that grew since the fstat.
        (&file)
            .take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return None;
        }
        // Files written by editors and `echo` end with a newline that is not part of the
        // secret.
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Some(bytes)
    }
}

/// A digest of resolved values, kept in the record to tell whether values resolved again are
/// the ones the process got. Each value is length-prefixed, so no two lists collide.
pub(super) fn secrets_digest(values: &[Vec<u8>]) -> String {
    // Streamed rather than through `digest::sha256_hex`, which would need the values copied
    // into one more buffer first.
    let mut hasher = Sha256::new();
    for value in values {
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    format!("{:x}", hasher.finalize())
}

impl LocalProvider {
    /// Resolves secret references to their values, through the allow-lists, on a blocking
    /// thread (file reads are bounded and never wait on a FIFO).
    pub(super) async fn resolve_secrets(&self, secrets: &[SecretRef]) -> Result<Vec<Vec<u8>>> {
        if secrets.is_empty() {
            return Ok(Vec::new());
        }
        let policy = Arc::clone(&self.secrets);
        let secrets = secrets.to_vec();
        tokio::task::spawn_blocking(move || policy.resolve_all(&secrets))
            .await
            .map_err(|e| task_failed("resolving the secrets failed", "SecretTask", e))?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tempfile::TempDir;

    use super::*;
    use crate::contract::Operation;
    use crate::provider::ComputeProvider;
    use crate::provider::local::tests::{TestEnv, config, op, secret, spec, with_secret};

    #[test]
    fn the_secrets_digest_is_the_sha256_of_the_length_prefixed_values() {
        // Stored records hold it: it must stay what earlier workers wrote.
        let values = [b"one".to_vec(), Vec::new(), b"three".to_vec()];
        assert_eq!(
            secrets_digest(&values),
            "c9e35c9b7a2e1f164ff13115efe5a6c6678cc3e7131190113e4c876cae2c9065"
        );
        assert_ne!(
            secrets_digest(&[b"ab".to_vec(), b"c".to_vec()]),
            secrets_digest(&[b"a".to_vec(), b"bc".to_vec()])
        );
    }

    #[tokio::test]
    async fn a_missing_secret_source_is_invalid_configuration() {
        let env = TestEnv::with(|c| {
            c.secret_env_allow = vec!["COMPUTE_WORKER_TEST_SURELY_UNSET_3F9A".into()];
        });
        let p = &env.provider;
        let mut s = spec(&["sleep", "30"]);
        s.secrets = vec![SecretRef {
            name: "TOKEN".into(),
            value_from: Some("env:COMPUTE_WORKER_TEST_SURELY_UNSET_3F9A".into()),
            secret_key_ref: None,
        }];
        // Refused already by validation, before anything is recorded, and by provision too.
        assert_eq!(p.validate("t", &s).unwrap_err(), secret_not_allowed(0));
        let error = p
            .provision(&op("t8", "exec-1", Operation::Provision), &s)
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidConfiguration);
        assert!(error.message.contains("spec.secrets[0].valueFrom"));
        assert!(!error.message.contains("COMPUTE_WORKER_TEST"));
        assert_eq!(p.live_process("t8").await, None);
    }

    #[test]
    fn env_secrets_resolve_only_allowed_names_and_unset_ones_look_forbidden() {
        let dir = TempDir::new().unwrap();
        let mut c = config(dir.path());
        c.secret_env_allow = vec![
            "HOME".into(),
            "PA*".into(),
            "COMPUTE_WORKER_TEST_UNSET_5B1C".into(),
            "COMPUTE_WORKER_TEST_UNSET_PFX_*".into(),
        ];
        let p = LocalProvider::new(c).unwrap();
        assert!(std::env::var_os("HOME").is_some() && std::env::var_os("PATH").is_some());
        p.validate("t", &with_secret("env:HOME")).unwrap();
        p.validate("t", &with_secret("env:PATH")).unwrap();
        let forbidden = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .find(|k| !p.secrets.env_allowed(k))
            .expect("the test process has a variable outside the allow-list");
        for refused in [
            format!("env:{forbidden}"),
            // A prefix of an exact entry, and an exact entry with more after it.
            "env:HOM".into(),
            "env:HOMEX".into(),
            "env:COMPUTE_WORKER_TEST_UNSET_5B1C".into(),
            "env:COMPUTE_WORKER_TEST_UNSET_PFX_9".into(),
        ] {
            let error = p.validate("t", &with_secret(&refused)).unwrap_err();
            assert_eq!(error, secret_not_allowed(0), "{refused}");
            assert_eq!(error.code, ErrorCode::InvalidConfiguration);
            assert!(error.message.starts_with("spec.secrets[0].valueFrom:"));
            assert!(!error.message.contains(&refused[4..]), "{}", error.message);
        }
        // The default allows nothing at all.
        let none = LocalProvider::new(LocalConfig {
            state_dir: dir.path().join("state2"),
            ..LocalConfig::default()
        })
        .unwrap();
        assert_eq!(
            none.validate("t", &with_secret("env:PATH")).unwrap_err(),
            secret_not_allowed(0)
        );
        assert_eq!(
            none.validate(
                "t",
                &with_secret(&format!("file:{}/x", dir.path().display()))
            )
            .unwrap_err(),
            secret_not_allowed(0)
        );
        // A pattern with a `*` elsewhere is a configuration error.
        let mut bad = config(dir.path());
        bad.secret_env_allow = vec!["A*B".into()];
        assert_eq!(
            LocalProvider::new(bad).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
    }

    #[test]
    fn file_secrets_resolve_only_small_regular_files_in_allowed_dirs() {
        let dir = TempDir::new().unwrap();
        let root = dir.path();
        let secrets = root.join("secrets");
        let p = LocalProvider::new(config(root)).unwrap();
        let file = |name: &str| format!("file:{}", secrets.join(name).display());

        std::fs::write(secrets.join("ok.txt"), "v4lue\n").unwrap();
        std::fs::write(root.join("outside.txt"), "outside").unwrap();
        std::fs::write(secrets.join("max.txt"), vec![b'a'; 64 * 1024]).unwrap();
        std::fs::write(secrets.join("big.txt"), vec![b'a'; 65 * 1024]).unwrap();
        std::fs::create_dir(secrets.join("sub")).unwrap();
        std::os::unix::fs::symlink(root.join("outside.txt"), secrets.join("escape")).unwrap();
        std::os::unix::fs::symlink(secrets.join("ok.txt"), secrets.join("inner-link")).unwrap();
        nix::unistd::mkfifo(
            &secrets.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();

        for allowed in [file("ok.txt"), file("max.txt"), file("inner-link")] {
            p.validate("t", &with_secret(&allowed)).unwrap();
        }
        assert_eq!(
            p.secrets.resolve(0, &secret(&file("ok.txt"))).unwrap(),
            b"v4lue"
        );
        let refused = [
            format!("file:{}", root.join("outside.txt").display()),
            "file:secrets/ok.txt".to_string(),
            format!("file:{}/../outside.txt", secrets.display()),
            file("escape"),
            file("fifo"),
            file("sub"),
            file("big.txt"),
            file("missing.txt"),
            format!("file:{}", secrets.display()),
            "file:/dev/zero".to_string(),
        ];
        for refused in &refused {
            let started = std::time::Instant::now();
            assert_eq!(
                p.validate("t", &with_secret(refused)).unwrap_err(),
                secret_not_allowed(0),
                "{refused}"
            );
            assert_eq!(
                p.secrets.resolve(0, &secret(refused)).unwrap_err(),
                secret_not_allowed(0),
                "{refused}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{refused} blocked"
            );
        }

        // Devices and FIFOs stay refused even in an allowed directory, and reading one that
        // was swapped in after the check neither blocks nor reads it.
        let mut dev = config(root);
        dev.secret_dirs = vec!["/dev".into()];
        let dev = LocalProvider::new(dev).unwrap();
        assert_eq!(
            dev.validate("t", &with_secret("file:/dev/zero"))
                .unwrap_err(),
            secret_not_allowed(0)
        );
        assert_eq!(dev.secrets.read_file(Path::new("/dev/zero")), None);
        let canonical_fifo = std::fs::canonicalize(secrets.join("fifo")).unwrap();
        assert_eq!(p.secrets.read_file(&canonical_fifo), None);
        // A file that grew past the bound after the check is refused too.
        let canonical_big = std::fs::canonicalize(secrets.join("big.txt")).unwrap();
        assert_eq!(p.secrets.read_file(&canonical_big), None);
        // Together, secrets may hold at most 1 MiB.
        let mut many = spec(&["true"]);
        many.secrets = (0..16).map(|_| secret(&file("max.txt"))).collect();
        p.validate("t", &many).unwrap();
        assert_eq!(p.secrets.resolve_all(&many.secrets).unwrap().len(), 16);
        many.secrets.push(secret(&file("ok.txt")));
        assert_eq!(p.validate("t", &many).unwrap_err(), secrets_too_large());
        assert_eq!(
            p.secrets.resolve_all(&many.secrets).unwrap_err(),
            secrets_too_large()
        );
        // And an allowed directory must exist when the worker starts.
        let mut missing = config(root);
        missing.secret_dirs = vec![root.join("nope")];
        assert_eq!(
            LocalProvider::new(missing).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
    }
}
