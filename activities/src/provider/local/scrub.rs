//! The stderr tail of a failed workload, with its secrets redacted.
//!
//! A resolved value never leaves the worker: the stderr tail of a failed workload has every
//! value of its execution's secrets, raw and in base64 (standard and URL-safe), replaced by
//! `[REDACTED]`. The observer may be another worker or a restarted one, so the references are
//! kept in `process.json` and resolved again (through the same checks); when a value cannot be
//! resolved again, has changed since the spawn or is too short to scrub (under 4 bytes), the
//! tail is withheld altogether.

use std::{io::SeekFrom, path::Path};

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::provider::LocalProvider;
use super::record::{ProcessRecord, open_for_reading};
use super::secrets::secrets_digest;

const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: u64 = 4096;
/// A resolved value shorter than this cannot be scrubbed from output without hiding common
/// words, so a tail that could hold one is withheld instead.
const MIN_SCRUBBED_SECRET_BYTES: usize = 4;
const REDACTED: &[u8] = b"[REDACTED]";
/// The stderr tail of a workload whose secrets could not be resolved again for scrubbing.
const WITHHELD_TAIL: &str = "[withheld: the workload's stderr may contain a secret]";

/// The last lines a process wrote to stderr, if it wrote any, with every form of each of
/// `secrets` (see [`scrub_forms`]) replaced by `[REDACTED]`.
async fn stderr_tail(path: &Path, secrets: &[Vec<u8>]) -> Option<String> {
    let forms = scrub_forms(secrets);
    // An occurrence cut by the start of the read would escape the search: read a margin more
    // and drop it once the search is done.
    let margin = forms.iter().map(|f| f.needle.len() + 4).max().unwrap_or(0) as u64;
    let mut file = open_for_reading(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let from = len.saturating_sub(STDERR_TAIL_BYTES + margin);
    file.seek(SeekFrom::Start(from)).await.ok()?;
    let mut bytes = Vec::new();
    // Bounded: the process (or a stray child of it) may still be writing.
    file.take(STDERR_TAIL_BYTES + margin)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    let skip = if from > 0 { margin as usize } else { 0 };
    let mut scrubbed = redact(&bytes, &forms, skip);
    let mut mid_file = from > 0;
    let max = STDERR_TAIL_BYTES as usize;
    if scrubbed.len() > max {
        scrubbed.drain(..scrubbed.len() - max);
        mid_file = true;
    }
    let text = String::from_utf8_lossy(&scrubbed);
    let mut text: &str = &text;
    if mid_file {
        // The tail starts mid-file, most likely mid-line: drop the fragment.
        if let Some(newline) = text.find('\n') {
            text = &text[newline + 1..];
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    let tail = tail.trim_end();
    (!tail.is_empty()).then(|| tail.to_string())
}

/// One byte string to hide from output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ScrubForm {
    needle: Vec<u8>,
    /// The needle is the base64 of a value's whole 3-byte groups: the group after it (up to 4
    /// characters, padding included) encodes the value's last bytes and is hidden with it.
    last_group: bool,
}

const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL_SAFE: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with padding (RFC 4648) in the given alphabet.
fn base64_encode(bytes: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                alphabet[((group >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out
}

/// What to hide of each secret value: the value itself and its base64, standard and URL-safe.
/// The base64 form is searched as the encoding of the value's whole 3-byte groups, which is
/// the same padded or not and whatever follows the value (`echo` adds a newline), plus the
/// group after it: it covers the padded and unpadded forms and the encoding of a longer
/// string starting with the value.
fn scrub_forms(values: &[Vec<u8>]) -> Vec<ScrubForm> {
    let mut forms = Vec::new();
    for value in values.iter().filter(|v| !v.is_empty()) {
        forms.push(ScrubForm {
            needle: value.clone(),
            last_group: false,
        });
        let whole = value.len() / 3 * 4;
        if whole == 0 {
            continue;
        }
        for alphabet in [BASE64_STANDARD, BASE64_URL_SAFE] {
            let mut needle = base64_encode(value, alphabet);
            needle.truncate(whole);
            forms.push(ScrubForm {
                needle,
                last_group: value.len() % 3 != 0,
            });
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

fn is_base64_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'-' | b'_' | b'=')
}

/// `bytes` from `skip` on, each run of bytes covered by an occurrence of a form replaced by
/// `[REDACTED]`. Occurrences are searched in the whole of `bytes`, so that one crossing
/// `skip` is hidden too.
fn redact(bytes: &[u8], forms: &[ScrubForm], skip: usize) -> Vec<u8> {
    let mut hidden = vec![false; bytes.len()];
    for form in forms {
        let needle = form.needle.as_slice();
        if needle.is_empty() || needle.len() > bytes.len() {
            continue;
        }
        for start in 0..=bytes.len() - needle.len() {
            if !bytes[start..].starts_with(needle) {
                continue;
            }
            let mut end = start + needle.len();
            if form.last_group {
                let limit = (end + 4).min(bytes.len());
                while end < limit && is_base64_char(bytes[end]) {
                    end += 1;
                }
            }
            hidden[start..end].fill(true);
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = skip.min(bytes.len());
    while i < bytes.len() {
        if hidden[i] {
            out.extend_from_slice(REDACTED);
            while i < bytes.len() && hidden[i] {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

impl LocalProvider {
    /// The values to scrub from a process's output; None when its output must be withheld:
    /// its secrets are unknown, cannot be resolved again, changed since it started, or one is
    /// too short to scrub.
    async fn values_to_scrub(&self, record: Option<&ProcessRecord>) -> Option<Vec<Vec<u8>>> {
        let record = record?;
        let secrets = record.secrets.as_ref()?;
        if secrets.is_empty() {
            return Some(Vec::new());
        }
        let values = self.resolve_secrets(secrets).await.ok()?;
        if record.secrets_digest.as_deref() != Some(secrets_digest(&values).as_str()) {
            return None;
        }
        // An empty value cannot leak.
        if values
            .iter()
            .any(|v| !v.is_empty() && v.len() < MIN_SCRUBBED_SECRET_BYTES)
        {
            return None;
        }
        Some(values)
    }

    /// The stderr tail of a failed process, scrubbed of its secrets, or withheld when they
    /// cannot be scrubbed.
    pub(super) async fn scrubbed_stderr_tail(
        &self,
        log: &Path,
        record: Option<&ProcessRecord>,
    ) -> Option<String> {
        match self.values_to_scrub(record).await {
            Some(values) => stderr_tail(log, &values).await,
            None => stderr_tail(log, &[]).await.map(|_| {
                tracing::warn!(
                    "withholding a workload's stderr tail: its secrets cannot be scrubbed from it"
                );
                WITHHELD_TAIL.to_string()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::contract::Operation;
    use crate::provider::local::LocalConfig;
    use crate::provider::local::naming::RECORD_FILE;
    use crate::provider::local::tests::{
        TestEnv, observe_until_final, op, secret, spec, wait_for_file,
    };
    use crate::provider::{ComputeProvider, Observation};

    #[test]
    fn base64_and_redaction() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                base64_encode(plain.as_bytes(), BASE64_STANDARD),
                encoded.as_bytes()
            );
        }
        assert_eq!(base64_encode(&[0xfb, 0xff], BASE64_STANDARD), b"+/8=");
        assert_eq!(base64_encode(&[0xfb, 0xff], BASE64_URL_SAFE), b"-_8=");

        let forms = scrub_forms(&[b"hunter22".to_vec()]);
        let text = b"a hunter22 b aHVudGVyMjI= c aHVudGVyMjIK d aHVudGVyMjI e";
        assert_eq!(
            String::from_utf8(redact(text, &forms, 0)).unwrap(),
            "a [REDACTED] b [REDACTED] c [REDACTED] d [REDACTED] e"
        );
        // An occurrence crossing `skip` is hidden whole.
        assert_eq!(redact(b"xxhunter22yy", &forms, 5), b"[REDACTED]yy");
    }

    #[tokio::test]
    async fn a_tail_cut_mid_secret_shows_no_part_of_it() {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("x.stderr.log");
        let value = b"0123456789abcdefghijklmnopqrstuvwxyz".to_vec();
        for offset in [0, 5, 18, 35] {
            // The secret straddles the first byte of the 4096-byte tail.
            let mut bytes = vec![b'.'; 10_000 - offset];
            bytes.extend_from_slice(&value);
            bytes.extend(std::iter::repeat_n(b'-', 4096 - (value.len() - offset)));
            std::fs::write(&log, &bytes).unwrap();
            let tail = stderr_tail(&log, std::slice::from_ref(&value))
                .await
                .unwrap();
            for window in value.windows(4) {
                assert!(
                    !tail.as_bytes().windows(4).any(|w| w == window),
                    "{offset}: {tail}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_secret_echoed_to_stderr_is_redacted_from_the_tail() {
        let env = TestEnv::new();
        // Chosen so that its base64 holds both `+` and `/`: the URL-safe form differs.
        let value = "s3cret>>>???xy";
        std::fs::write(env.path("secrets/token"), format!("{value}\n")).unwrap();
        let script = "printf '%s\\n' \"$TOKEN\" >&2; printf %s \"$TOKEN\" | base64 >&2; \
                      printf %s \"$TOKEN\" | base64 | tr '+/' '-_' | tr -d = >&2; \
                      echo \"$TOKEN\" | base64 >&2; echo \"key=$TOKEN;\" >&2; \
                      echo done >&2; exit 1";
        let mut s = spec(&["sh", "-c", script]);
        s.secrets = vec![secret(&format!(
            "file:{}",
            env.path("secrets/token").display()
        ))];
        let o = op("t20", "exec-1", Operation::Provision);
        let ids = env.provider.provision(&o, &s).await.unwrap();
        let raw = wait_for_file(&env.provider.tenant_dir("t20").join("exec-1.stderr.log")).await;
        let forms: Vec<String> = [BASE64_STANDARD, BASE64_URL_SAFE]
            .into_iter()
            .map(|a| String::from_utf8(base64_encode(value.as_bytes(), a)).unwrap())
            .collect();
        assert_ne!(forms[0], forms[1]);
        for observer in [&env.provider, &env.second_provider()] {
            let (outcome, _) = observe_until_final(observer, &o, &ids).await;
            let Observation::Failed(error) = outcome else {
                panic!("expected a failure, got {outcome:?}");
            };
            let tail = error.stderr_tail.clone().unwrap();
            assert!(tail.ends_with("done"), "{tail}");
            assert_eq!(tail.matches("[REDACTED]").count(), 5, "{tail}");
            assert!(!tail.contains(value), "{tail}");
            for form in &forms {
                assert!(!tail.contains(&form[..8]), "{tail}");
            }
            assert!(!format!("{error:?}").contains(value));
        }
        // The log itself is the workload's: it is not rewritten.
        assert!(raw.contains(value));
        let record =
            std::fs::read_to_string(env.provider.tenant_dir("t20").join(RECORD_FILE)).unwrap();
        assert!(!record.contains(value) && !record.contains(&forms[0]));
    }

    #[tokio::test]
    async fn a_tail_that_cannot_be_scrubbed_is_withheld() {
        let env = TestEnv::new();
        let failing = |path: &Path| {
            let mut s = spec(&["sh", "-c", "echo \"$TOKEN\" >&2; exit 1"]);
            s.secrets = vec![secret(&format!("file:{}", path.display()))];
            s
        };
        // Too short to scrub.
        let short = env.path("secrets/short");
        std::fs::write(&short, "abc").unwrap();
        let o = op("t21", "exec-1", Operation::Provision);
        let ids = env.provider.provision(&o, &failing(&short)).await.unwrap();
        let (outcome, _) = observe_until_final(&env.provider, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some(WITHHELD_TAIL));

        // Changed since the spawn: the old value cannot be known any more.
        let rotated = env.path("secrets/rotated");
        std::fs::write(&rotated, "first-value").unwrap();
        let o = op("t22", "exec-1", Operation::Provision);
        let ids = env
            .provider
            .provision(&o, &failing(&rotated))
            .await
            .unwrap();
        wait_for_file(&env.provider.tenant_dir("t22").join("exec-1.stderr.log")).await;
        std::fs::write(&rotated, "second-value").unwrap();
        let (outcome, _) = observe_until_final(&env.provider, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some(WITHHELD_TAIL));

        // Gone from the allow-list (another worker configured differently).
        let strict = LocalProvider::new(LocalConfig {
            secret_dirs: Vec::new(),
            ..env.provider.config.clone()
        })
        .unwrap();
        std::fs::write(&rotated, "first-value").unwrap();
        let (outcome, _) = observe_until_final(&strict, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some(WITHHELD_TAIL));
        // Whereas this worker, with the value back, scrubs it.
        let (outcome, _) = observe_until_final(&env.provider, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some("[REDACTED]"));
    }
}
