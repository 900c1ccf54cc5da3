//! `statelessctl serve`, `publish`, `nodes`, `approve`, `reject`, `pushes`
//! and `accept-push`: thin wrappers over the `stateless-server` crate.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use stateless_keys::read_key_file;
use stateless_server::push_auth::{PushSigner, valid_public_hex};
use stateless_server::registry::{self, Approval};
use stateless_server::store::{self, PublishLock, by_uid};
use stateless_server::{DataDir, Server, ServerConfig, Target, push_review};

use crate::cli_server::{AcceptPushArgs, ApproveArgs, NodesArgs, PublishArgs, PushesArgs, RejectArgs, ServeArgs};

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
    eprintln!("statelessctl: serving {} on {scheme}://{addr}", a.data.display());
    server.run().context("serving")?;
    Ok(ExitCode::SUCCESS)
}

pub fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let target = match (&a.node, &a.group) {
        (Some(n), _) => Target::node(n)?,
        (_, Some(g)) => Target::group(g)?,
        _ => Target::Default,
    };
    let data = open_data(&a.data)?;
    let lock = PublishLock::take(&data).context("locking the data directory")?;
    let p = store::publish(&data, &target, &a.bundle, a.keep, &lock)
        .with_context(|| format!("publishing {}", a.bundle.display()))?;
    let node = match &target {
        Target::Node(n) => Some(n.as_str()),
        _ => None,
    };
    let detail = format!("{target} generation {} digest {}", p.info.generation, p.info.digest);
    store::audit(&data, "publish", node, detail, by_uid()).context("writing the audit log")?;
    let replaced = p.previous.map(|g| format!(", replacing generation {g}")).unwrap_or_default();
    println!(
        "published generation {} as the {target} bundle (digest {}…){replaced}",
        p.info.generation,
        p.info.digest.get(..16).unwrap_or(&p.info.digest)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn nodes(a: NodesArgs) -> anyhow::Result<ExitCode> {
    let data = open_data(&a.data)?;
    let list = registry::list(&data);
    // Written with `?`, not println!: a reader that goes away (`| head`)
    // ends the command quietly (see main).
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24} {:<9} {:<12} {:<21} {:<16} {:>8}  push",
        "NODE", "STATE", "GROUP", "LAST SEEN", "ADDRESS", "REQUESTS"
    )?;
    for n in list {
        let push = match (n.push, n.auto_accept) {
            (true, true) => "auto",
            (true, false) => "review",
            _ => "-",
        };
        writeln!(
            out,
            "{:<24} {:<9} {:<12} {:<21} {:<16} {:>8}  {push}",
            n.node,
            n.state,
            n.group.as_deref().unwrap_or("-"),
            n.last_seen.as_deref().unwrap_or("never"),
            n.address.as_deref().unwrap_or("-"),
            n.requests
        )?;
    }
    out.flush()?;
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
    Ok(ExitCode::SUCCESS)
}

pub fn reject(a: RejectArgs) -> anyhow::Result<ExitCode> {
    stateless_server::check_name(&a.node)?;
    let data = open_data(&a.data)?;
    registry::reject(&data, &a.node, by_uid()).with_context(|| format!("rejecting {}", a.node))?;
    println!("rejected {}", a.node);
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
