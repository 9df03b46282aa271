//! The crate's error: what can go wrong loading a model folder or starting its thread pool.
//!
//! Each message names the file or field at fault, and ends with the lower-level error's text as it
//! always has (so `{e}` alone, which the server's and the CLI's start-up messages print, still says
//! what the parser or the weights reader objected to); that error is also kept as the
//! [`source`](std::error::Error::source), for callers that walk the chain
//! ([`glimpse_core::error::chain`] prints each text once).

use glimpse_core::CoreError;

/// A model that cannot be loaded; see the module docs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model folder or `config.json` that cannot be used: a missing file, a field of the wrong
    /// type, an unknown model type, the other family.
    #[error("{0}")]
    Model(String),
    /// A file of the folder that cannot be read.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// Weights that candle cannot read, or that do not match `config.json`.
    #[error("{context}: {source}")]
    Weights {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    /// A `tokenizer.json` the tokenizers crate refuses.
    #[error("{context}: {source}")]
    Tokenizer {
        context: String,
        #[source]
        source: tokenizers::Error,
    },
    /// A `preprocessor_config.json` glimpse-core refuses (its message names the file).
    #[error("{context}: {source}")]
    Preprocess {
        context: String,
        #[source]
        source: CoreError,
    },
    /// The model's own thread pool could not start.
    #[error("{context}: {source}")]
    Threads {
        context: String,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

/// The trait impls of glimpse-core answer [`CoreError`]: every load error is a
/// [`CoreError::Model`] with the same message, this error kept as its cause.
impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Model(message) => CoreError::model(message),
            other => CoreError::model_caused(other.to_string(), other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_and_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = Error::Io {
            context: "m/config.json".into(),
            source: io,
        };
        assert_eq!(e.to_string(), "m/config.json: denied");
        let core = CoreError::from(e);
        assert!(matches!(core, CoreError::Model { .. }));
        assert_eq!(core.to_string(), "m/config.json: denied");
        assert_eq!(glimpse_core::error::chain(&core), "m/config.json: denied");
        let cause = std::error::Error::source(&core).and_then(std::error::Error::source);
        assert_eq!(cause.map(|c| c.to_string()).as_deref(), Some("denied"));
        let plain = CoreError::from(Error::Model("no config.json".into()));
        assert!(std::error::Error::source(&plain).is_none());
    }
}
