//! The execution store over TLS to a real Postgres: a throwaway cluster of the test's own with
//! a self-signed certificate, whose `pg_hba.conf` takes TCP connections only over TLS. The
//! store connects with `sslmode=require` and with `verify-full` against that certificate;
//! `sslmode=disable`, an unknown issuer and a name the certificate does not carry are refused.

use std::{path::PathBuf, process::Command, time::Duration};

use compute_activities::{
    contract::Operation,
    store::{self, NewExecution, StoreError},
};
use serde_json::json;

use crate::rigs::OwnPostgres;

/// A cluster listening on 127.0.0.1 and 127.0.0.2 with TLS only, stopped when dropped.
struct TlsPostgres(OwnPostgres);

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsPostgres {
    fn start() -> Self {
        let mut pg = TlsPostgres(OwnPostgres::unstarted());
        let path = pg.0.dir().to_path_buf();
        // A leaf (CA:FALSE: webpki refuses a CA certificate as a server's), self-signed, so it
        // is its own trust anchor for `sslrootcert`.
        std::fs::write(
            path.join("cert.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
             [dn]\nCN = 127.0.0.1\n\
             [ext]\nbasicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .unwrap();
        run(Command::new("/usr/bin/openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-config")
            .arg(path.join("cert.cnf"))
            .arg("-keyout")
            .arg(pg.key())
            .arg("-out")
            .arg(pg.cert()));
        run(Command::new("chmod").arg("0600").arg(pg.key()));
        pg.0.initdb();
        // TLS or nothing over TCP: no `host` line, so a plain connection finds no entry.
        std::fs::write(
            pg.0.data_dir().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.0/8 trust\n",
        )
        .unwrap();
        let options = format!(
            "-c listen_addresses=127.0.0.1,127.0.0.2 -c fsync=off -c ssl=on \
             -c ssl_cert_file={} -c ssl_key_file={}",
            pg.cert().display(),
            pg.key().display()
        );
        pg.0.set_options(options);
        pg.0.start();
        pg
    }

    fn cert(&self) -> PathBuf {
        self.0.dir().join("server.crt")
    }

    fn key(&self) -> PathBuf {
        self.0.dir().join("server.key")
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?{params}",
            self.0.port()
        )
    }

    fn log(&self) -> String {
        self.0.log()
    }
}

fn execution(tenant: &str) -> NewExecution {
    NewExecution {
        tenant_id: tenant.into(),
        operation: Operation::Delete,
        idempotency_key: None,
        spec_hash: store::spec_hash(None),
        spec: None,
        request: json!({"tenantId": tenant}),
        timeout: Duration::from_secs(5),
        provider: Some("local".into()),
    }
}

async fn refused(url: &str) -> StoreError {
    match store::connect(url).await {
        Ok(_) => panic!("{url}: connected"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn the_store_connects_to_postgres_over_tls() {
    let pg = TlsPostgres::start();

    // Encrypted, certificate not checked.
    let s = store::connect(&pg.url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap_or_else(|e| panic!("sslmode=require: {e}\n{}", pg.log()));
    let begun = s.begin_execution(execution("tls-require")).await.unwrap();
    assert!(begun.created);
    assert!(s.knows_provider("local").await.unwrap());

    // Encrypted and verified: the certificate is the trust anchor, 127.0.0.1 its address.
    let verified = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", pg.cert().display()),
    );
    let s = store::connect(&verified)
        .await
        .unwrap_or_else(|e| panic!("sslmode=verify-full: {e}\n{}", pg.log()));
    let id = begun.record.status.execution_id;
    assert!(s.get_execution(&id).await.unwrap().is_some());
    assert!(
        s.begin_execution(execution("tls-verified"))
            .await
            .unwrap()
            .created
    );

    // No TLS: the server has no entry for a plain connection.
    let e = refused(&pg.url("127.0.0.1", "sslmode=disable")).await;
    assert!(e.to_string().contains("no encryption"), "{e}");

    // verify-full without the certificate: an issuer none of the built-in roots vouches for.
    let e = refused(&pg.url("127.0.0.1", "sslmode=verify-full")).await;
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // verify-full to an address the certificate does not name.
    let other = pg.url(
        "127.0.0.2",
        &format!("sslmode=verify-full&sslrootcert={}", pg.cert().display()),
    );
    let e = refused(&other).await;
    let text = e.to_string();
    assert!(
        text.contains("not valid for name") || text.contains("NotValidForName"),
        "{e}"
    );
    // verify-ca checks the chain. (With sqlx 0.8.6 and this rustls it checks the name as well,
    // sqlx issue #3793, so it is only tried where the name matches: strict, never lax.)
    let ca = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", pg.cert().display()),
    );
    store::connect(&ca)
        .await
        .unwrap_or_else(|e| panic!("sslmode=verify-ca: {e}"));
}
