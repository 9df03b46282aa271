use thiserror::Error;

/// Errors of the core layer. `is_client_error` tells the HTTP layer whether the caller's input was
/// at fault (400, no credit spent) or the server was (500, credit refunded).
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
    #[error("{0}")]
    Model(String),
    /// Anything that went wrong inside the server while running a model.
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            CoreError::InvalidImage(_) | CoreError::ImageTooLarge(_) | CoreError::Validation(_)
        )
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
