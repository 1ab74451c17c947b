//! The one error type of this crate: every variant's message names the file part at fault.

use std::path::PathBuf;

/// Why a model file could not be read (or written).
///
/// Messages name what was wrong and where: the file, the metadata key, the tensor, the byte
/// offset. They are meant to be shown to the user as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The operating system refused to open, map, read or write a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        // Not marked #[source]: the message already includes it, and error reporters that
        // walk the chain would print it twice.
        source: std::io::Error,
    },

    /// A GGUF file is malformed. The message names the field and its byte offset.
    #[error("GGUF {0}")]
    Gguf(String),

    /// A GGUF metadata value is missing or has the wrong type for what was asked of it.
    #[error("GGUF metadata key '{key}': {msg}")]
    GgufMetadata { key: String, msg: String },

    /// A safetensors file (or a sharded checkpoint's index) is malformed or inconsistent.
    #[error("safetensors {}: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },

    /// A `config.json` is malformed or describes a model this program cannot run.
    #[error("model config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    /// Dequantization was asked of a type it does not implement, or with mismatched buffers.
    #[error("dequantize {ty}: {msg}")]
    Dequantize { ty: &'static str, msg: String },

    /// An error found inside the named file (wraps the errors of readers that also work on
    /// in-memory bytes, which do not know the path).
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        // Not #[source], for the same reason as in `Io`.
        source: Box<FormatError>,
    },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn in_file(self, path: impl Into<PathBuf>) -> Self {
        FormatError::InFile {
            path: path.into(),
            source: Box::new(self),
        }
    }
}
