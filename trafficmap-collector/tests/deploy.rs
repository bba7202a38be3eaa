//! The shipped deployments start the collector the code accepts: the Kubernetes manifests'
//! `collector.toml` (with their Secrets' and TLS volumes' files in place) and the systemd unit's
//! `ExecStart` (with its credentials in place) pass the same parsing and validation `serve` runs
//! first, and the manifests' placeholder secrets are refused (nobody runs with a published token).
//! The deploy stage of `cargo xtask test` validates the manifests against Kubernetes' schemas
//! and scores the unit with `systemd-analyze`.

mod support;

use std::path::{Path, PathBuf};

use clap::Parser;
use support::{pki::Pki, root};
use trafficmap_collector::cli::Cli;

const AGENT_SECRET: &str = "0123456789abcdef0123456789abcdef";
const READ_SECRET: &str = "fedcba9876543210fedcba9876543210";

/// The value of `key: |` (a literal block) in a YAML document, de-indented.
fn literal_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = head.len() - head.trim_start().len();
    let mut out = String::new();
    for l in lines {
        let this = l.len() - l.trim_start().len();
        if !l.trim().is_empty() && this <= indent {
            break;
        }
        out.push_str(l.get(indent + 2..).unwrap_or(""));
        out.push('\n');
    }
    out
}

/// Writes the files a manifest mounts (config, secrets, TLS) under `dir` and returns the config
/// with its absolute paths moved there.
fn mounted(dir: &Path, yaml: &str, tokens: &str, read_tokens: &str) -> PathBuf {
    let pki = Pki::new("deploy test");
    let (cert, key) = pki.leaf(&["trafficmap-collector.trafficmap.svc"]);
    for (path, body) in [
        ("etc/trafficmap/secrets/tokens", tokens.to_owned()),
        ("etc/trafficmap/secrets/read-tokens", read_tokens.to_owned()),
        ("etc/trafficmap/secrets/clickhouse-password", "pw\n".into()),
        ("etc/trafficmap/tls/tls.crt", cert),
        ("etc/trafficmap/tls/tls.key", key),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let toml = literal_block(yaml, "collector.toml")
        .replace("\"/etc/", &format!("\"{}/etc/", dir.display()))
        .replace("\"/var/", &format!("\"{}/var/", dir.display()));
    let config = dir.join("etc/trafficmap/collector.toml");
    std::fs::write(&config, toml).unwrap();
    config
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("trafficmap-collector")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn kubernetes_manifests_configure_a_collector_that_starts() {
    let all = manifests();
    assert_eq!(all.len(), 2, "SQLite and ClickHouse variants: {all:?}");
    for m in all {
        let yaml = std::fs::read_to_string(&m).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = mounted(
            dir.path(),
            &yaml,
            &format!("{AGENT_SECRET} k8s-fleet *\n"),
            &format!("{READ_SECRET} viewer\n"),
        );
        let cli =
            Cli::try_parse_from(["trafficmap-collector", "--config", config.to_str().unwrap()])
                .unwrap();
        let c = cli
            .settings
            .config()
            .unwrap_or_else(|e| panic!("{}: {e}", m.display()));
        assert!(!c.listen.ip().is_loopback(), "{}", m.display());
        assert!(c.tls_paths().unwrap().is_some(), "{}: TLS", m.display());
        assert!(c.read_token_file.is_some(), "{}: reads", m.display());
        let clickhouse = m.to_string_lossy().contains("clickhouse");
        assert_eq!(
            c.storage.backend == trafficmap_collector::config::Backend::Clickhouse,
            clickhouse,
            "{}",
            m.display()
        );

        // As shipped, the Secret's placeholders are refused: one clear error, nothing started.
        let dir = tempfile::tempdir().unwrap();
        let tokens = literal_block(&yaml, "tokens");
        assert!(tokens.starts_with("REPLACE-ME "), "{tokens}");
        let config = mounted(
            dir.path(),
            &yaml,
            &tokens,
            &literal_block(&yaml, "read-tokens"),
        );
        let cli =
            Cli::try_parse_from(["trafficmap-collector", "--config", config.to_str().unwrap()])
                .unwrap();
        let err = cli.settings.config().unwrap_err();
        assert!(err.contains("at least 16"), "{}: {err}", m.display());
    }
}

#[test]
fn systemd_unit_exec_start_is_a_valid_command_line() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/trafficmap-collector.service"))
        .unwrap();
    let exec = unit
        .replace("\\\n", " ")
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=").map(str::to_owned))
        .expect("ExecStart");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let pki = Pki::new("unit test");
    let (cert, key) = pki.leaf(&["collector.example.com"]);
    std::fs::write(creds.join("tokens"), format!("{AGENT_SECRET} fleet *\n")).unwrap();
    std::fs::write(creds.join("read-tokens"), format!("{READ_SECRET} viewer\n")).unwrap();
    std::fs::write(creds.join("tls.key"), key).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    // What the unit's comments ask of /etc/trafficmap/collector.toml.
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:9978\"\ntls_cert_file = \"{}\"\n",
            dir.path().join("tls.crt").display()
        ),
    )
    .unwrap();
    let line = exec
        .replace("/etc/trafficmap/collector.toml", config.to_str().unwrap())
        .replace("%d", creds.to_str().unwrap())
        .replace("${STATE_DIRECTORY}", state.to_str().unwrap());
    let args: Vec<&str> = line.split_whitespace().collect();
    assert!(args[0].ends_with("/trafficmap-collector"), "{line}");
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(cli.command.is_none(), "serve is the default command");
    let c = cli.settings.config().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.data_dir, state);
    assert_eq!(
        c.tls_key_file.as_deref(),
        Some(creds.join("tls.key").as_path())
    );
    assert_eq!(
        c.token_file.as_deref(),
        Some(creds.join("tokens").as_path())
    );
}

/// The agent's DaemonSet can name pods (issue 11, docs/agent.md "Kubernetes"): its service
/// account holds exactly the read-only rules the agent uses, bound to it, its token is mounted,
/// and the node's name comes from the downward API. (kubernetes-validate checks the objects'
/// schemas in the deploy stage; this checks what they grant.)
#[test]
fn agent_manifest_grants_pod_names_read_only() {
    let yaml =
        std::fs::read_to_string(root().join("deploy/kubernetes/trafficmap-agent.yaml")).unwrap();
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    let doc = |kind: &str| {
        let found: Vec<&&str> = docs
            .iter()
            .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
            .collect();
        assert_eq!(found.len(), 1, "one {kind}");
        *found[0]
    };
    let role = doc("ClusterRole");
    assert!(role.contains("\n  name: trafficmap-agent\n"), "{role}");
    assert_eq!(
        role.split_once("\nrules:\n").unwrap().1.trim_end(),
        r#"  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["apps"]
    resources: ["replicasets"]
    verbs: ["get"]
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["get"]"#
    );
    let binding = doc("ClusterRoleBinding");
    assert_eq!(
        binding.split_once("\nroleRef:\n").unwrap().1.trim_end(),
        "  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: trafficmap-agent
subjects:
  - kind: ServiceAccount
    name: trafficmap-agent
    namespace: trafficmap"
    );
    let sa = doc("ServiceAccount");
    assert!(sa.contains("\n  name: trafficmap-agent\n  namespace: trafficmap\n"));
    let ds = doc("DaemonSet");
    for want in [
        "      serviceAccountName: trafficmap-agent\n",
        "      automountServiceAccountToken: true\n",
        "            - name: NODE_NAME
              valueFrom:
                fieldRef:
                  fieldPath: spec.nodeName\n",
        "            - name: HOST_IP
              valueFrom:
                fieldRef:
                  fieldPath: status.hostIP\n",
    ] {
        assert!(ds.contains(want), "DaemonSet lacks {want}");
    }
    let toml = literal_block(&yaml, "agent.toml");
    assert!(
        toml.ends_with("[kubernetes]\nsource = \"auto\"\n"),
        "{toml}"
    );
}
