//! Go `time.Duration` text (`3.861369766s`, `884.431745ms`, `1m30s`) as a typed value.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

/// A non-negative duration that reads and writes Go's `time.Duration.String()` format,
/// as Stash writes `sessionDuration` and per-host `duration`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

/// Error parsing a [`GoDuration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Go duration {input:?}: {reason}")]
pub struct ParseDurationError {
    /// The rejected text.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

impl GoDuration {
    /// The wrapped [`std::time::Duration`].
    pub fn as_std(&self) -> Duration {
        self.0
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

/// A `timeOut` as a manifest writes it (`2h`, `30m`): a string to the CRD and the types, so an
/// object with a bad one stays readable (a typed field would make every watch of its kind fail
/// on it); admission refuses one that does not parse, and one that got in anyway counts as
/// absent. `Ok(None)`: not set.
pub fn time_out(written: Option<&str>) -> Result<Option<Duration>, ParseDurationError> {
    match written {
        None => Ok(None),
        Some(s) => s.parse::<GoDuration>().map(|d| Some(d.0)),
    }
}

impl FromStr for GoDuration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A duration is never negative here, and kube's parser panics on some negative
        // components ("cannot convert float seconds to Duration", found by `fuzz`): any '-'
        // is refused before it is asked.
        if s.contains('-') {
            return Err(ParseDurationError {
                input: s.to_owned(),
                reason: "negative duration".into(),
            });
        }
        let d: kube::core::Duration =
            s.parse()
                .map_err(|e: kube::core::duration::ParseError| ParseDurationError {
                    input: s.to_owned(),
                    reason: e.to_string(),
                })?;
        if d.is_negative() {
            return Err(ParseDurationError {
                input: s.to_owned(),
                reason: "negative duration".into(),
            });
        }
        Ok(Self(d.into()))
    }
}

/// Writes `int` followed by `frac` (of `digits` width) with trailing zeros removed.
fn write_fraction(f: &mut fmt::Formatter<'_>, int: u128, frac: u128, digits: usize) -> fmt::Result {
    write!(f, "{int}")?;
    if frac != 0 {
        let s = format!("{frac:0digits$}");
        write!(f, ".{}", s.trim_end_matches('0'))?;
    }
    Ok(())
}

impl fmt::Display for GoDuration {
    /// Formats exactly like Go's `time.Duration.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 1_000_000_000 {
            let (div, digits, unit) = if ns < 1_000 {
                (1, 0, "ns")
            } else if ns < 1_000_000 {
                (1_000, 3, "\u{b5}s")
            } else {
                (1_000_000, 6, "ms")
            };
            write_fraction(f, ns / div, ns % div, digits)?;
            return f.write_str(unit);
        }
        let hours = ns / 3_600_000_000_000;
        let rem = ns % 3_600_000_000_000;
        let minutes = rem / 60_000_000_000;
        let rem = rem % 60_000_000_000;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write_fraction(f, rem / 1_000_000_000, rem % 1_000_000_000, 9)?;
        f.write_str("s")
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> GoDuration {
        s.parse().unwrap()
    }

    #[test]
    fn go_format_round_trips() {
        for s in [
            "0s",
            "3.861369766s",
            "884.431745ms",
            "1.5µs",
            "12ns",
            "1m30s",
            "2m0s",
            "1h0m0s",
            "1h2m3.5s",
        ] {
            assert_eq!(d(s).to_string(), s, "{s}");
        }
        assert_eq!(d("90s").to_string(), "1m30s");
        assert_eq!(d("1.5h").to_string(), "1h30m0s");
        assert!("-1s".parse::<GoDuration>().is_err());
        assert!("abc".parse::<GoDuration>().is_err());
    }

    #[test]
    fn serde_is_a_string() {
        let v: GoDuration = serde_json::from_str("\"3.861369766s\"").unwrap();
        assert_eq!(v.0, Duration::new(3, 861_369_766));
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"3.861369766s\"");
    }
}
