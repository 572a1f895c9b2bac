//! Store errors.

use std::path::PathBuf;

use crate::credentials::CredentialError;

/// What can go wrong talking to the shared database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names an engine we do not support. Use `sqlite://PATH`
    /// or `postgres://…`.
    #[error("unsupported database URL `{url}`: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The folder for the SQLite file could not be created: check the state
    /// directory and its permissions.
    #[error("cannot create state directory {}: {source}", path.display())]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A row the command names does not exist.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// Kind of row (portal, plan, user…).
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The change conflicts with what the database holds (a taken domain, a
    /// status that does not allow it…). Nothing was written.
    #[error("{what}: {detail}")]
    Conflict {
        /// What conflicts.
        what: &'static str,
        /// In words.
        detail: String,
    },
    /// A value breaks a rule (grace over 15 days, end before start…).
    /// Nothing was written.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// The rule it breaks.
        detail: String,
    },
    /// A login or password breaks the credential rules.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The database failed or is unreachable: retry later, check the server.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The node found the database not answering (its periodic check, or a
    /// request that failed) and has not reached it since: fail closed.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// The database answers, but too slowly for this request: every
    /// connection, or the request's turn, stayed busy past the acquire
    /// timeout. Overload, not unreachability.
    #[error("database saturated: {0}")]
    Saturated(String),
    /// The embedded migrations could not be applied (a newer schema, or a
    /// modified migration).
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True when the database itself could not be reached or failed (not a
    /// refusal of the request): callers fail closed with `database-unavailable`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Unreachable(_) | StoreError::Saturated(_))
    }
}
