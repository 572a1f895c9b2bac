//! Configuration errors that point at the file, line and column at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a configuration file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column (in characters); 0 when unknown.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text` (read from `file`).
    pub fn from_offset(file: &Path, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        // Step back to a char boundary so slicing never panics on odd spans.
        let mut offset = offset;
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self { file: file.to_owned(), line, column }
    }

    /// The location of the first line of `text` that assigns `key`, if any.
    pub fn of_key(file: &Path, text: &str, key: &str) -> Option<Self> {
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return Some(Self::from_offset(file, text, offset + (line.len() - trimmed.len())));
            }
            offset += line.len();
        }
        None
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// One configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// Where it is.
    pub location: Location,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl ConfigError {
    /// An error at a known position.
    pub fn at(location: Location, message: String) -> Self {
        Self { location, message }
    }

    /// An error about a whole file.
    pub fn plain(file: &Path, message: &str) -> Self {
        Self { location: Location { file: file.to_owned(), line: 0, column: 0 }, message: message.to_owned() }
    }

    /// A file that could not be read.
    pub fn io(file: &Path, e: std::io::Error) -> Self {
        Self::plain(file, &format!("cannot read: {e}"))
    }

    /// A TOML syntax or schema error, positioned by its span.
    pub fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> Self {
        let location = match e.span() {
            Some(span) => Location::from_offset(file, text, span.start),
            None => Location { file: file.to_owned(), line: 0, column: 0 },
        };
        Self { location, message: e.message().trim().to_owned() }
    }
}

/// All errors found in one load, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A list of one.
    pub fn one(e: ConfigError) -> Self {
        Self(vec![e])
    }
    /// Adds an error.
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    /// True when nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
