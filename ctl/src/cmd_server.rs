//! `statelessctl serve`, `publish`, `nodes`, `approve`, `reject`, `pushes`
//! and `accept-push`: their arguments (the doc comments are the help text)
//! and thin wrappers over the `stateless-server` crate.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args};
use stateless_keys::read_key_file;
use stateless_server::push_auth::{PushSigner, valid_public_hex};
use stateless_server::registry::{self, Approval};
use stateless_server::store::{self, PublishLock, by_uid};
use stateless_server::{DataDir, Server, ServerConfig, Target, push_review};

/// `statelessctl serve`
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The data directory (bundles under v1/, server state under state/).
    #[arg(long)]
    pub data: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:443 or 127.0.0.1:8080.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (bundles must then be encrypted).
    #[arg(long)]
    pub insecure_plain_http: bool,
    /// Most connections open at once; more clients wait in the listen backlog.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Most connections open at once from one address (an IPv6 /64 counts as one); 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = stateless_server::serve::DEFAULT_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// Seconds a client has for the TLS handshake and its whole request head, together.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub head_timeout: u64,
    /// Seconds in which a response or an upload must move 64 KiB (or finish).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub io_timeout: u64,
    /// Most node ids remembered in state/seen.json.
    #[arg(long, value_name = "N", default_value_t = stateless_server::registry::MAX_SEEN)]
    pub max_seen: usize,
    /// Most unapproved node ids remembered per address (an IPv6 /64 counts as one).
    #[arg(long, value_name = "N", default_value_t = stateless_server::registry::MAX_SEEN_PER_ADDRESS)]
    pub max_seen_per_address: usize,
    /// Largest pushed bundle accepted, e.g. 256M.
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::parse_size, default_value = "256M")]
    pub max_push: u64,
    /// Largest node report accepted (POST /v1/nodes/NODE/report), e.g. 64K.
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::parse_size, default_value = "64K")]
    pub max_report: u64,
    /// Reports kept per node (the oldest go first).
    #[arg(long, value_name = "N", default_value_t = stateless_server::reports::DEFAULT_KEEP)]
    pub keep_reports: usize,
    /// Bytes of reports kept per node (the newest always stays), e.g. 1M.
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::parse_size, default_value = "1M")]
    pub keep_report_bytes: u64,
    /// Refused reports one address may send per minute before it is answered 429; 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = stateless_server::reports::DEFAULT_REFUSALS_PER_MINUTE)]
    pub report_refusals_per_minute: u32,
    /// Refused or new TPM enrolments (POST /v1/nodes/NODE/enrol) one address may send per minute before it is
    /// answered 429 (a node repeating its enrolment while it waits does not count); 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub enrol_per_minute: u32,
}

/// `statelessctl publish`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["node", "group", "default", "plugin"])))]
pub struct PublishArgs {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Publish as this node's bundle.
    #[arg(long)]
    pub node: Option<String>,
    /// Publish as this group's bundle.
    #[arg(long)]
    pub group: Option<String>,
    /// Publish as the bundle for every node.
    #[arg(long)]
    pub default: bool,
    /// Publish as this plugin's layer (the bundle's scope must be plugin:NAME).
    #[arg(long)]
    pub plugin: Option<String>,
    /// How many earlier bundles to keep in the history (state/history/), for --from-history.
    #[arg(long, default_value_t = stateless_server::store::DEFAULT_HISTORY)]
    pub keep: usize,
    /// The bundle file.
    #[arg(required_unless_present = "from_history")]
    pub bundle: Option<PathBuf>,
    /// Republish this earlier generation's content (from the history) as a new, higher generation.
    #[arg(long, value_name = "GENERATION", conflicts_with = "bundle", requires = "key")]
    pub from_history: Option<u64>,
    /// With --from-history: the key file the bundle is sealed with (to open it and seal it again).
    #[arg(long, value_name = "KEYFILE", requires = "from_history")]
    pub key: Option<PathBuf>,
    /// With --from-history: sign the new bundle with this publisher signing key.
    #[arg(long, value_name = "KEYFILE", requires = "from_history")]
    pub sign: Option<PathBuf>,
    /// With --from-history: the new generation (default: one more than the highest published or kept).
    #[arg(long, value_name = "N", requires = "from_history")]
    pub generation: Option<u64>,
}

/// `statelessctl approve`
#[derive(Debug, Clone, Args)]
pub struct ApproveArgs {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// The node id.
    pub node: String,
    /// Put the node in this group (recorded for the inventory).
    #[arg(long)]
    pub group: Option<String>,
    /// Enrol the node for push: its key file, from which only the push public key is derived and stored.
    #[arg(long, value_name = "KEYFILE", conflicts_with = "push_public_key")]
    pub push_key: Option<PathBuf>,
    /// Enrol the node for push with the public key `stateless-node persist --print-public-key` printed.
    #[arg(long, value_name = "HEX")]
    pub push_public_key: Option<String>,
    /// Publish the node's pushes without review.
    #[arg(long)]
    pub auto_accept: bool,
    /// Wrap this key (the node's or its group's) for the TPM the node enrolled and publish it at
    /// v1/nodes/NODE/tpm-key: only that TPM can load it.
    #[arg(long, value_name = "KEYFILE")]
    pub tpm_key: Option<PathBuf>,
    /// With --tpm-key: PCRs (sha256) the key unseals under, with the values the node reported when it enrolled.
    #[arg(long, value_name = "LIST", default_value = "7", requires = "tpm_key")]
    pub tpm_pcrs: String,
    /// With --tpm-key: unseal under the PCR policies this policy key signs instead (policy.pub).
    #[arg(long, value_name = "FILE", requires = "tpm_key")]
    pub tpm_policy_key: Option<PathBuf>,
    /// With --tpm-key: the EK certificate the TPM holds must chain to these CA certificates (PEM).
    #[arg(long, value_name = "CA.pem", requires = "tpm_key")]
    pub ek_ca: Option<PathBuf>,
    /// With --tpm-key: refuse unless the enrolled EK has this SHA-256 (from an inventory).
    #[arg(long, value_name = "HEX", requires = "tpm_key")]
    pub ek_hash: Option<String>,
}

/// `statelessctl reject`
#[derive(Debug, Clone, Args)]
pub struct RejectArgs {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// The node id.
    pub node: String,
}

/// `statelessctl pushes`
#[derive(Debug, Clone, Args)]
pub struct PushesArgs {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `statelessctl accept-push`
#[derive(Debug, Clone, Args)]
pub struct AcceptPushArgs {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// The node id.
    pub node: String,
    /// The generation of the pushed bundle.
    pub generation: u64,
    /// How many earlier bundles to keep in the history.
    #[arg(long, default_value_t = stateless_server::store::DEFAULT_HISTORY)]
    pub keep: usize,
}

fn open_data(dir: &std::path::Path) -> anyhow::Result<DataDir> {
    DataDir::open(dir).with_context(|| format!("opening data directory {}", dir.display()))
}

pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let data = open_data(&a.data)?;
    let mut cfg = ServerConfig::new(data);
    cfg.max_connections = a.max_connections;
    cfg.max_push = a.max_push;
    cfg.max_connections_per_address = a.max_connections_per_address;
    cfg.head_timeout = std::time::Duration::from_secs(a.head_timeout.max(1));
    cfg.io_timeout = std::time::Duration::from_secs(a.io_timeout.max(1));
    cfg.max_seen = a.max_seen.max(1);
    cfg.max_seen_per_address = a.max_seen_per_address.max(1);
    cfg.enrol.per_minute = a.enrol_per_minute;
    cfg.reports = stateless_server::reports::ReportLimits {
        max_body: a.max_report,
        keep: a.keep_reports.max(1),
        keep_bytes: a.keep_report_bytes,
        refusals_per_minute: a.report_refusals_per_minute,
    };
    let scheme = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            cfg.tls = Some(stateless_server::load_tls(cert, key).context("loading TLS certificate and key")?);
            "https"
        }
        _ => {
            if !a.listen.ip().is_loopback() && !a.insecure_plain_http {
                bail!("refusing plain HTTP on {}: give --tls-cert and --tls-key, or --insecure-plain-http", a.listen);
            }
            "http"
        }
    };
    let server = Server::bind(a.listen, cfg).with_context(|| format!("listening on {}", a.listen))?;
    let addr = server.local_addr().context("reading the bound address")?;
    let _ = writeln!(std::io::stderr(), "statelessctl: serving {} on {scheme}://{addr}", a.data.display());
    server.run().context("serving")?;
    Ok(ExitCode::SUCCESS)
}

pub fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let target = match (&a.node, &a.group, &a.plugin) {
        (Some(n), _, _) => Target::node(n)?,
        (_, Some(g), _) => Target::group(g)?,
        (_, _, Some(p)) => Target::plugin(p)?,
        _ => Target::Default,
    };
    let data = open_data(&a.data)?;
    let lock = PublishLock::take(&data).context("locking the data directory")?;
    // Held until published: the repacked bundle lives in the state directory.
    let mut _repacked = None;
    let mut from = String::new();
    let bundle = match (a.from_history, &a.bundle) {
        (Some(g), _) => {
            let key = a.key.as_deref().context("--from-history needs --key")?;
            let tmp = crate::cmd_history::repack(&data, &target, g, key, a.sign.as_deref(), a.generation)?;
            from = format!(", the content of generation {g}");
            let path = tmp.path().to_owned();
            _repacked = Some(tmp);
            path
        }
        (None, Some(b)) => b.clone(),
        (None, None) => bail!("give a bundle file or --from-history"),
    };
    let p = store::publish(&data, &target, &bundle, a.keep, &lock)
        .with_context(|| format!("publishing {}", bundle.display()))?;
    let node = match &target {
        Target::Node(n) => Some(n.as_str()),
        _ => None,
    };
    let detail = format!("{target} generation {} digest {}{from}", p.info.generation, p.info.digest);
    store::audit(&data, "publish", node, detail, by_uid()).context("writing the audit log")?;
    let replaced = p.previous.map(|g| format!(", replacing generation {g}")).unwrap_or_default();
    println!(
        "published generation {} as the {target} bundle (digest {}…){from}{replaced}",
        p.info.generation,
        p.info.digest.get(..16).unwrap_or(&p.info.digest)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn approve(a: ApproveArgs) -> anyhow::Result<ExitCode> {
    stateless_server::check_name(&a.node)?;
    let data = open_data(&a.data)?;
    let (push_public_key, key_id) = match (&a.push_key, &a.push_public_key) {
        (Some(file), _) => {
            let key = read_key_file(file).context("reading the node's key file")?;
            let signer = PushSigner::new(&key, &a.node).map_err(|e| anyhow::anyhow!("deriving the push key: {e}"))?;
            (Some(signer.public_key_hex()), Some(key.id().to_string()))
        }
        (None, Some(hex)) => {
            if !valid_public_hex(hex) {
                bail!("--push-public-key must be 64 hex digits (from stateless-node persist --print-public-key)");
            }
            (Some(hex.to_ascii_lowercase()), None)
        }
        (None, None) => (None, None),
    };
    let seen = registry::list(&data).into_iter().any(|n| n.node == a.node && n.first_seen.is_some());
    // The TPM key first: when the enrolment is refused (EK hash, EK
    // certificate), the node is not approved either.
    let tpm_lines = match &a.tpm_key {
        Some(key) => crate::cmd_enrol::approve_tpm(
            &data,
            &a.node,
            &crate::cmd_enrol::TpmApproval {
                key,
                pcrs: Some(&a.tpm_pcrs),
                policy_key: a.tpm_policy_key.as_deref(),
                ek_ca: a.ek_ca.as_deref(),
                ek_hash: a.ek_hash.as_deref(),
            },
        )?,
        None => Vec::new(),
    };
    let rec = registry::approve(
        &data,
        &a.node,
        Approval { group: a.group, push_public_key, key_id, auto_accept: a.auto_accept },
        by_uid(),
    )
    .with_context(|| format!("approving {}", a.node))?;
    println!(
        "approved {}{}{}{}",
        rec.node,
        rec.group.as_deref().map(|g| format!(" in group {g}")).unwrap_or_default(),
        match (&rec.push_public_key, rec.auto_accept) {
            (Some(_), true) => ", push enrolled (auto-accept)",
            (Some(_), false) => ", push enrolled (review)",
            _ => "",
        },
        if seen { "" } else { " (not seen yet)" }
    );
    for l in tpm_lines {
        println!("{l}");
    }
    if a.tpm_key.is_none() {
        if let Some(e) = stateless_server::enrol::read(&data, &a.node) {
            println!("{} enrolled a TPM (EK SHA-256 {}); give --tpm-key KEYFILE to send it its key", a.node, e.ek_hash);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn reject(a: RejectArgs) -> anyhow::Result<ExitCode> {
    stateless_server::check_name(&a.node)?;
    let data = open_data(&a.data)?;
    let had_tpm_key = stateless_server::enrol::tpm_key_file(&data, &a.node).exists();
    registry::reject(&data, &a.node, by_uid()).with_context(|| format!("rejecting {}", a.node))?;
    println!("rejected {}{}", a.node, if had_tpm_key { " (its TPM key is withdrawn)" } else { "" });
    Ok(ExitCode::SUCCESS)
}

pub fn list_pushes(a: PushesArgs) -> anyhow::Result<ExitCode> {
    let data = open_data(&a.data)?;
    let list = push_review::list(&data, None);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:<24} {:>10} {:>10} {:<20} {:<16} DIGEST", "NODE", "GENERATION", "BYTES", "RECEIVED", "ADDRESS")?;
    for p in list {
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:<20} {:<16} {}…",
            p.node,
            p.generation,
            p.size,
            p.received,
            p.address,
            p.digest.get(..16).unwrap_or(&p.digest)
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn accept_push(a: AcceptPushArgs) -> anyhow::Result<ExitCode> {
    stateless_server::check_name(&a.node)?;
    let data = open_data(&a.data)?;
    let lock = PublishLock::take(&data).context("locking the data directory")?;
    let p = push_review::accept(&data, &a.node, a.generation, a.keep, &lock)
        .with_context(|| format!("accepting the push of {}", a.node))?;
    let detail = format!("generation {} digest {}", p.info.generation, p.info.digest);
    store::audit(&data, "accept-push", Some(&a.node), detail, by_uid()).context("writing the audit log")?;
    println!("published generation {} pushed by {}", p.info.generation, a.node);
    Ok(ExitCode::SUCCESS)
}
