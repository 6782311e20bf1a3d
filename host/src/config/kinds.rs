//! The kinds of value a setting takes: how each is written on the command
//! line, in the environment and in the config file (the same text
//! everywhere; the file also takes bare numbers and booleans where they fit).

use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A kind of setting value.
pub trait Kind {
    type Value: Clone + std::fmt::Debug + PartialEq;
    /// How the reference calls a value of this kind.
    const WRITTEN: &'static str;

    fn parse(text: &str) -> Result<Self::Value, String>;

    /// From the config file: strings as on the command line.
    fn from_toml(value: &toml::Value) -> Result<Self::Value, String> {
        match value {
            toml::Value::String(text) => Self::parse(text),
            other => Err(format!(
                "expected {} as a string, found a {}",
                Self::WRITTEN,
                other.type_str()
            )),
        }
    }
}

/// A duration: "500ms", "15s", "1h".
#[derive(Debug)]
pub struct Dur;

impl Kind for Dur {
    type Value = Duration;
    const WRITTEN: &'static str = "a duration (\"500ms\", \"15s\", \"1h\")";

    fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. \"15s\" or \"1h\""))
    }
}

/// A duration, or `forever`.
#[derive(Debug)]
pub struct DurOrForever;

impl Kind for DurOrForever {
    type Value = Option<Duration>;
    const WRITTEN: &'static str = "a duration, or \"forever\"";

    fn parse(text: &str) -> Result<Option<Duration>, String> {
        match text.trim() {
            "forever" => Ok(None),
            _ => Dur::parse(text).map(Some),
        }
    }
}

/// A size in bytes: a number, or "64MiB", "1GiB", "512KiB".
#[derive(Debug)]
pub struct Bytes;

impl Kind for Bytes {
    type Value = usize;
    const WRITTEN: &'static str = "a size (\"64MiB\", \"1GiB\", or a number of bytes)";

    fn parse(text: &str) -> Result<usize, String> {
        parse_byte_size(text).ok_or_else(|| {
            format!("`{text}` is not a size; write e.g. \"64MiB\", \"1GiB\" or a number of bytes")
        })
    }

    fn from_toml(value: &toml::Value) -> Result<usize, String> {
        match value {
            toml::Value::Integer(n) => usize::try_from(*n)
                .map_err(|_| format!("{n} is not a size: it must not be negative")),
            other => {
                let text = other.as_str().ok_or_else(|| {
                    format!("expected {}, found a {}", Self::WRITTEN, other.type_str())
                })?;
                Self::parse(text)
            }
        }
    }
}

/// A whole number, at least 1.
#[derive(Debug)]
pub struct Count;

impl Kind for Count {
    type Value = u32;
    const WRITTEN: &'static str = "a whole number, at least 1";

    fn parse(text: &str) -> Result<u32, String> {
        match text.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            Ok(_) => Err(format!("`{text}`: must be at least 1")),
            Err(e) => Err(format!("`{text}` is not a whole number ({e})")),
        }
    }

    fn from_toml(value: &toml::Value) -> Result<u32, String> {
        match value {
            toml::Value::Integer(n) => Self::parse(&n.to_string()),
            other => Err(format!(
                "expected {}, found a {}",
                Self::WRITTEN,
                other.type_str()
            )),
        }
    }
}

/// `true` or `false`.
#[derive(Debug)]
pub struct Flag;

impl Kind for Flag {
    type Value = bool;
    const WRITTEN: &'static str = "true or false";

    fn parse(text: &str) -> Result<bool, String> {
        match text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("`{text}`: write true or false")),
        }
    }

    fn from_toml(value: &toml::Value) -> Result<bool, String> {
        match value {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(format!(
                "expected true or false, found a {}",
                other.type_str()
            )),
        }
    }
}

/// One of the words of an enum (its `FromStr`).
#[derive(Debug)]
pub struct Choice<T>(PhantomData<T>);

impl<T> Kind for Choice<T>
where
    T: FromStr<Err = String> + Clone + std::fmt::Debug + PartialEq,
{
    type Value = T;
    const WRITTEN: &'static str = "one of the words listed";

    fn parse(text: &str) -> Result<T, String> {
        text.trim().parse()
    }
}

/// The compile cache's folder: a path, `auto` (the user's cache folder) or
/// `off`.
#[derive(Debug)]
pub struct CacheDir;

impl Kind for CacheDir {
    type Value = Option<PathBuf>;
    const WRITTEN: &'static str = "a folder, \"auto\" or \"off\"";

    fn parse(text: &str) -> Result<Option<PathBuf>, String> {
        match text.trim() {
            "off" => Ok(None),
            "auto" => Ok(default_compile_cache()),
            "" => Err(format!(
                "`{text}` is an empty path: write a folder, \"auto\" or \"off\""
            )),
            path => Ok(Some(PathBuf::from(path))),
        }
    }
}

/// `$XDG_CACHE_HOME/pgevents-host`, else `~/.cache/pgevents-host`.
pub fn default_compile_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("pgevents-host"))
}

/// "64MiB" → 67108864 (units B, KiB, MiB, GiB, and KB, MB, GB as powers of 1000).
pub fn parse_byte_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    usize::try_from(number.checked_mul(factor)?).ok()
}
