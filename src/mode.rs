//! What a backend is allowed to do: [`Mode`] and the set of them, [`Modes`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One permission a backend can have.
///
/// `write` implies `delete`: a backend that receives sessions must also forget
/// them on logout, so [`Modes::can_delete`] is true for every writable backend.
///
/// ```
/// use tower_sessions_multi_redis_store::Mode;
///
/// assert_eq!("read".parse::<Mode>().unwrap(), Mode::Read);
/// assert!("reed".parse::<Mode>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// `load` may ask this backend.
    Read,
    /// `create` and `save` write into this backend (implies [`Mode::Delete`]).
    Write,
    /// `delete` removes sessions from this backend.
    Delete,
}

impl Mode {
    /// The name used in configuration files: `read`, `write` or `delete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::Delete => "delete",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Mode::Read => 1,
            Mode::Write => 2,
            Mode::Delete => 4,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown mode name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}` (expected `read`, `write` or `delete`)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Mode::Read),
            "write" => Ok(Mode::Write),
            "delete" => Ok(Mode::Delete),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of [`Mode`]s.
///
/// ```
/// use tower_sessions_multi_redis_store::{Mode, Modes};
///
/// let modes = Modes::from([Mode::Read, Mode::Delete]);
/// assert!(modes.can_read() && modes.can_delete() && !modes.can_write());
/// assert_eq!(modes.to_string(), "read+delete");
/// assert!(Modes::WRITE.can_delete(), "write implies delete");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Modes(u8);

impl Modes {
    /// No mode at all (rejected when the store is built).
    pub const NONE: Modes = Modes(0);
    /// Only `read`.
    pub const READ: Modes = Modes(1);
    /// Only `write` (which implies delete).
    pub const WRITE: Modes = Modes(2);
    /// Only `delete`.
    pub const DELETE: Modes = Modes(4);
    /// `read` and `write`: the usual single-backend setting.
    pub const READ_WRITE: Modes = Modes(3);
    /// `read` and `delete`: an old backend being drained.
    pub const READ_DELETE: Modes = Modes(5);

    /// Adds a mode.
    #[must_use]
    pub const fn with(self, mode: Mode) -> Modes {
        Modes(self.0 | mode.bit())
    }

    /// Whether `mode` was given explicitly.
    pub const fn contains(self, mode: Mode) -> bool {
        self.0 & mode.bit() != 0
    }

    /// Whether no mode is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `load` asks this backend.
    pub const fn can_read(self) -> bool {
        self.contains(Mode::Read)
    }

    /// `create`/`save` write into this backend.
    pub const fn can_write(self) -> bool {
        self.contains(Mode::Write)
    }

    /// `delete` removes sessions from this backend (`delete` or `write`).
    pub const fn can_delete(self) -> bool {
        self.contains(Mode::Delete) || self.contains(Mode::Write)
    }

    /// The modes given explicitly, in `read`, `write`, `delete` order.
    pub fn iter(self) -> impl Iterator<Item = Mode> {
        [Mode::Read, Mode::Write, Mode::Delete].into_iter().filter(move |m| self.contains(*m))
    }
}

impl std::ops::BitOr for Modes {
    type Output = Modes;

    fn bitor(self, rhs: Modes) -> Modes {
        Modes(self.0 | rhs.0)
    }
}

impl<I: IntoIterator<Item = Mode>> From<I> for Modes {
    fn from(modes: I) -> Self {
        modes.into_iter().fold(Modes::NONE, Modes::with)
    }
}

impl fmt::Display for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, mode) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            f.write_str(mode.as_str())?;
        }
        Ok(())
    }
}

/// As its [`Display`](fmt::Display) form, e.g. `"read+delete"`.
impl Serialize for Modes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Debug for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modes({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_implies_delete_but_not_read() {
        assert!(Modes::WRITE.can_delete());
        assert!(!Modes::WRITE.can_read());
        assert!(!Modes::READ.can_delete());
        assert_eq!(Modes::READ | Modes::WRITE, Modes::READ_WRITE);
    }

    #[test]
    fn unknown_mode_names_itself() {
        let err = "rw".parse::<Mode>().unwrap_err();
        assert_eq!(err.to_string(), "unknown mode `rw` (expected `read`, `write` or `delete`)");
    }
}
