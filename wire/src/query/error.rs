//! The one error of the query language: what is wrong and where.

/// A query (or condition) that does not parse or is not allowed, with the byte offset of the
/// problem in the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {offset}: {reason}")]
pub struct QueryError {
    /// Byte offset in the query text.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl QueryError {
    /// An error at `offset`.
    pub fn new(offset: usize, reason: impl Into<String>) -> Self {
        Self {
            offset,
            reason: reason.into(),
        }
    }
}
