use thiserror::Error;

/// Any lower-layer error kept as the cause of a [`CoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the core layer. `is_client_error` tells the HTTP layer whether the caller's input was
/// at fault (400, no credit spent) or the server was (500, credit refunded).
///
/// `Display` is the message alone; the cause, where there is one, is the `source()` (print the whole
/// chain with [`chain`]).
#[derive(Debug, Error)]
pub enum CoreError {
    /// The bytes are not an image we can read (unknown format, truncated, corrupt).
    #[error("{0}")]
    InvalidImage(String),
    /// The image header declares dimensions over the configured limits.
    #[error("{0}")]
    ImageTooLarge(String),
    /// Bad labels or other request fields.
    #[error("{0}")]
    Validation(String),
    /// A model folder or configuration that cannot be used.
    #[error("{message}")]
    Model {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Anything that went wrong inside the server while running a model.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl CoreError {
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            CoreError::InvalidImage(_) | CoreError::ImageTooLarge(_) | CoreError::Validation(_)
        )
    }

    /// A model folder or configuration that cannot be used.
    pub fn model(message: impl Into<String>) -> Self {
        CoreError::Model {
            message: message.into(),
            source: None,
        }
    }

    /// [`CoreError::model`] with the error that caused it.
    pub fn model_caused(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        CoreError::Model {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A server-side failure.
    pub fn internal(message: impl Into<String>) -> Self {
        CoreError::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// [`CoreError::internal`] with the error that caused it.
    pub fn internal_caused(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        CoreError::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// An error and its causes, `outer: inner: innermost`, for logs and start-up messages.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = CoreError::model_caused("cannot read config.json", io);
        assert_eq!(e.to_string(), "cannot read config.json");
        assert_eq!(chain(&e), "cannot read config.json: no such file");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(chain(&CoreError::internal("x")), "x");
    }
}
