//! Why a site tree is refused, one line each: `file:line: message`, the
//! file relative to the site directory.

use std::path::PathBuf;

/// One problem found in a site tree. `Display` is the line `site check`
/// prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// site.toml, plugin.toml or files.toml is not TOML, or not its shape.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The file, relative to the site directory.
        file: String,
        /// 1-based line.
        line: usize,
        /// The parser's message, on one line.
        message: String,
    },
    /// A rule of the tree is broken: an unknown group or plugin, a group
    /// cycle, a layer directory site.toml does not declare, a bad name.
    #[error("{file}:{line}: {message}")]
    Rule {
        /// The file, relative to the site directory.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A template does not compile, or does not render for a node.
    #[error("{file}:{line}: {message}")]
    Template {
        /// The template, relative to the site directory.
        file: String,
        /// 1-based line in the template.
        line: usize,
        /// What is wrong (and for which node).
        message: String,
    },
    /// A layer's rendered model is refused by the model's rules.
    #[error("{0}")]
    Model(#[from] stateless_model::LoadError),
    /// Two layers of a node's stack clash (a uid or gid given to two names).
    #[error("{file}:{line}: node {node}: {message}")]
    Clash {
        /// The model that set the later entry.
        file: String,
        /// Its line.
        line: usize,
        /// The node whose stack clashes.
        node: String,
        /// Both entries and their layers.
        message: String,
    },
    /// A plugin ships a file outside `/opt/<vendor>/<name>`, or its model
    /// sets what a plugin may not set.
    #[error("{file}:{line}: {message}")]
    Plugin {
        /// The file or model, relative to the site directory.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading the tree failed.
    #[error("{}:1: {source}", file.display())]
    Io {
        /// The path.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// A TOML parse error as a problem of `file`.
pub(crate) fn syntax(file: &str, text: &str, e: &toml::de::Error) -> Problem {
    let line = e.span().map_or(1, |s| line_of(text, s.start));
    Problem::Syntax { file: file.to_owned(), line, message: e.message().replace('\n', " ") }
}

/// Why a build could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A key could not be read or derived.
    #[error("reading or deriving the key for {layer}")]
    Key {
        /// The layer.
        layer: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Packing a layer failed.
    #[error("packing {layer}")]
    Pack {
        /// The layer.
        layer: String,
        /// The cause.
        #[source]
        source: stateless_bundle::PackError,
    },
    /// Publishing a layer failed.
    #[error("publishing {layer}")]
    Publish {
        /// The layer.
        layer: String,
        /// The cause.
        #[source]
        source: stateless_server::store::PublishError,
    },
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
