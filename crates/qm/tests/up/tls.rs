//! `qm server --tls-cert --tls-key`: HTTPS that the CLI and the agents verify against a
//! private CA, with real processes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, Proc, QM};

/// A private CA and a certificate it signed for 127.0.0.1 and localhost: (CA, cert, key) PEM.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Quartermaster test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), server.pem(), key.serialize_pem())
}

fn qm(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(QM)
        .args(args)
        .env("QM_DATA_DIR", dir.join("none"))
        .env_remove("QM_SERVER")
        .env_remove("QM_TOKEN")
        .env_remove("QM_CA")
        .output()
        .unwrap()
}

/// The CLI and an agent reach an HTTPS server through its private CA; without the CA, or in
/// plain HTTP, nothing gets through; a job runs end to end over TLS.
#[test]
fn the_api_is_served_over_tls_and_verified_by_the_cli_and_the_agents() {
    let dir = std::env::temp_dir().join(format!("qm-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates();
    for (name, pem) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let port = free_port();
    let mut server = Proc(
        Command::new(QM)
            .arg("server")
            .arg("--db")
            .arg(format!("sqlite:{}", dir.join("qm.db").display()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.join("key.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let mut admin = String::new();
    loop {
        let line = lines.next().expect("the server starts").unwrap();
        if let Some(t) = line.strip_prefix("admin token (shown once): ") {
            admin = t.trim().to_string();
        }
        if line.contains("API at") {
            assert!(line.contains("https://"), "{line}");
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let url = format!("https://127.0.0.1:{port}");
    let ca_file = dir.join("ca.pem");
    let ca_arg = ca_file.to_str().unwrap();
    let with_ca = |args: &[&str]| {
        // Client flags go with the command (they are not the `qm` binary's own).
        let mut all = vec![args[0], "--server", &url, "--token", &admin, "--ca", ca_arg];
        all.extend_from_slice(&args[1..]);
        qm(&dir, &all)
    };
    let ok = |args: &[&str]| {
        let out = with_ca(args);
        assert!(
            out.status.success(),
            "qm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(ok(&["nodes", "--json"]).trim(), "[]");
    // Without the private CA the certificate is not trusted; plain HTTP gets nowhere.
    let out = qm(&dir, &["nodes", "--server", &url, "--token", &admin]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the server"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let plain = format!("http://127.0.0.1:{port}");
    let out = qm(&dir, &["nodes", "--server", &plain, "--token", &admin]);
    assert!(!out.status.success(), "plain HTTP was answered");
    // An agent over TLS; a job through it.
    ok(&["admin", "team", "create", "t", "--guaranteed", "2"]);
    let join = ok(&[
        "admin", "token", "create", "--name", "agents", "--role", "join",
    ]);
    qm_agent::write_private(&dir.join("join-token"), join.trim()).unwrap();
    let _agent = Proc(
        Command::new(QM)
            .args(["agent", "--server", &url, "--server-ca", ca_arg])
            .args(["--gpus", "2", "--name", "tls-node", "--allow-root-tasks"])
            .arg("--join-token-file")
            .arg(dir.join("join-token"))
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while ok(&["nodes", "--json"]).trim() == "[]" {
        assert!(
            Instant::now() < until,
            "the agent never registered over TLS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ok(&["submit", "--json", "--team", "t", "--", "echo", "over tls"]);
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["job"]
        .as_u64()
        .unwrap()
        .to_string();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let job: serde_json::Value = serde_json::from_str(&ok(&["show", &id, "--json"])).unwrap();
        if job["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < until, "the job never ran: {job:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(&["logs", &id]).trim(), "over tls");
    let _ = std::fs::remove_dir_all(&dir);
}
