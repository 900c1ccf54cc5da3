//! Small single-purpose I/O adapters used by the reader and writer.

mod hash;
mod limit;

pub use hash::{HashReader, HashWriter};
pub use limit::{CountWriter, LimitExceeded, LimitReader};
