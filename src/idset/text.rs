//! The text form of an [`IdSet`] (libvirt's cpulist syntax), read and
//! printed, and its serde form, the same text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{IdSet, MAX_ID};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdSetError {
    #[error("empty element in list {0:?}")]
    EmptyElement(String),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("id {0} is above the maximum of {MAX_ID}")]
    TooLarge(u64),
    #[error("range {0}-{1} runs backwards")]
    Backwards(u32, u32),
}

fn parse_id(text: &str) -> Result<u32, IdSetError> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdSetError::NotANumber(text.to_string()));
    }
    let value: u64 = t.parse().map_err(|_| IdSetError::TooLarge(u64::MAX))?;
    if value > MAX_ID as u64 {
        return Err(IdSetError::TooLarge(value));
    }
    Ok(value as u32)
}

/// Parses `N` or `N-M` into an inclusive range.
fn parse_range(item: &str) -> Result<(u32, u32), IdSetError> {
    match item.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_id(a)?, parse_id(b)?);
            if b < a {
                return Err(IdSetError::Backwards(a, b));
            }
            Ok((a, b))
        }
        None => {
            let a = parse_id(item)?;
            Ok((a, a))
        }
    }
}

impl FromStr for IdSet {
    type Err = IdSetError;

    /// Accepts libvirt syntax: comma-separated ids and ranges, where `^N` (or
    /// `^N-M`) removes ids added earlier in the list, as libvirt does.
    /// Surrounding whitespace and a trailing newline (sysfs) are ignored; an
    /// empty or all-blank string is the empty set (an empty sysfs cpulist).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = IdSet::new();
        let text = text.trim();
        if text.is_empty() {
            return Ok(set);
        }
        for raw in text.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                return Err(IdSetError::EmptyElement(text.to_string()));
            }
            if let Some(excluded) = item.strip_prefix('^') {
                let (a, b) = parse_range(excluded)?;
                for id in a..=b {
                    set.remove(id);
                }
            } else {
                let (a, b) = parse_range(item)?;
                set.insert_range(a, b + 1);
            }
        }
        Ok(set)
    }
}

impl fmt::Display for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.runs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdSet({self})")
    }
}

impl Serialize for IdSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IdSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
