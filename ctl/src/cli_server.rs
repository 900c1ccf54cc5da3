//! Command-line definitions of the server commands (serve, publish, nodes,
//! approve, reject, pushes, accept-push). The doc comments are the help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args};

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
}

/// `statelessctl publish`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["node", "group", "default"])))]
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
    /// How many earlier bundles to keep in the history.
    #[arg(long, default_value_t = stateless_server::store::DEFAULT_HISTORY)]
    pub keep: usize,
    /// The bundle file.
    pub bundle: PathBuf,
}

/// `statelessctl nodes`
#[derive(Debug, Clone, Args)]
pub struct NodesArgs {
    /// The data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
