//! `observedGeneration` of Stash statuses: kmodules `IntHash` (`<generation>` or `"<generation>$<hash>"`).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::{borrow::Cow, fmt, str::FromStr};

/// A generation with an optional hash of the observed object, as kmodules `IntHash`.
///
/// On the wire it is the bare integer generation when the hash is empty, otherwise the
/// string `"<generation>$<hash>"`; both forms are accepted when reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct IntHash {
    /// The observed `metadata.generation`.
    pub generation: i64,
    /// Hash of the observed object (may be empty).
    pub hash: String,
}

/// Error parsing an [`IntHash`] from its string form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IntHash {0:?}: expected <generation> or <generation>$<hash>")]
pub struct ParseIntHashError(pub String);

impl IntHash {
    /// An IntHash with only a generation.
    pub fn new(generation: i64) -> Self {
        Self {
            generation,
            hash: String::new(),
        }
    }
}

impl FromStr for IntHash {
    type Err = ParseIntHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (g, h) = s.split_once('$').unwrap_or((s, ""));
        let generation = g
            .trim()
            .parse()
            .map_err(|_| ParseIntHashError(s.to_owned()))?;
        Ok(Self {
            generation,
            hash: h.to_owned(),
        })
    }
}

impl fmt::Display for IntHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hash.is_empty() {
            write!(f, "{}", self.generation)
        } else {
            write!(f, "{}${}", self.generation, self.hash)
        }
    }
}

impl Serialize for IntHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.hash.is_empty() {
            serializer.serialize_i64(self.generation)
        } else {
            serializer.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for IntHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IntHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer generation or a \"<generation>$<hash>\" string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntHash, E> {
                Ok(IntHash::new(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntHash, E> {
                i64::try_from(v).map(IntHash::new).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntHash, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl JsonSchema for IntHash {
    fn schema_name() -> Cow<'static, str> {
        "IntHash".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wire_forms() {
        let a: IntHash = serde_json::from_str("3").unwrap();
        assert_eq!(a, IntHash::new(3));
        assert_eq!(serde_json::to_string(&a).unwrap(), "3");
        let b: IntHash = serde_json::from_str("\"4$abc\"").unwrap();
        assert_eq!(
            b,
            IntHash {
                generation: 4,
                hash: "abc".into()
            }
        );
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"4$abc\"");
        assert!(serde_json::from_str::<IntHash>("\"x$y\"").is_err());
    }
}
