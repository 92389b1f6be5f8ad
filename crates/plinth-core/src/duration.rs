//! Durations as the strings users write (`250ms`, `30s`, `5m`, `1h 30m`),
//! in config files, query strings and JSON bodies alike.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// A [`Duration`] that parses from and prints as a human string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(seconds: u64) -> Self {
        HumanDuration(Duration::from_secs(seconds))
    }

    pub const fn from_millis(milliseconds: u64) -> Self {
        HumanDuration(Duration::from_millis(milliseconds))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Duration {
        value.0
    }
}

impl FromStr for HumanDuration {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid_argument(
                "invalid_duration",
                "duration is empty; write it like `250ms`, `30s` or `5m`",
            ));
        }
        match humantime::parse_duration(trimmed) {
            Ok(duration) => Ok(HumanDuration(duration)),
            Err(parse_error) => Err(Error::invalid_argument(
                "invalid_duration",
                format!(
                    "`{trimmed}` is not a duration ({parse_error}); write it like `250ms`, `30s` or `5m`"
                ),
            )),
        }
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|error: Error| serde::de::Error::custom(error.detail().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "abc", "10", "-5s", "5 parsecs"] {
            let error = bad.parse::<HumanDuration>().unwrap_err();
            assert_eq!(error.code(), "invalid_duration");
            assert!(error.detail().contains("30s"), "{}", error.detail());
        }
    }

    #[test]
    fn round_trips_through_display() {
        let duration = HumanDuration(Duration::from_millis(1500));
        let printed = duration.to_string();
        assert_eq!(printed.parse::<HumanDuration>().unwrap(), duration);
    }
}
