//! Cron schedules as upstream accepts them: robfig/cron v3 `ParseStandard` — the same parser
//! Kubernetes uses for CronJob schedules, into which `spec.schedule` is copied verbatim.
//!
//! Accepted: five fields (minute hour day-of-month month day-of-week), each a comma list of
//! `*`/`?`, `N`, `N-M`, with an optional `/step`; month and day-of-week names (`JAN`, `mon`);
//! the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly` and `@every <Go duration>`; an optional leading `TZ=<zone>` / `CRON_TZ=<zone>`.

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The value of names[0].
    names_base: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_base: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_base: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_base: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_base: 1,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 6,
        names: &DAYS,
        names_base: 0,
    },
];

fn value(f: &Field, s: &str) -> Result<u32, String> {
    if let Some(i) = f.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(f.names_base + i as u32);
    }
    s.parse::<u32>()
        .map_err(|_| format!("{} {s:?} is not a number", f.name))
}

fn range(f: &Field, expr: &str) -> Result<(), String> {
    let (span, step) = match expr.split_once('/') {
        Some((span, step)) => (span, Some(step)),
        None => (expr, None),
    };
    let (lo, hi) = if span == "*" || span == "?" {
        (f.min, f.max)
    } else if let Some((a, b)) = span.split_once('-') {
        (value(f, a)?, value(f, b)?)
    } else {
        let v = value(f, span)?;
        // robfig: `N/step` means N through the maximum.
        (v, if step.is_some() { f.max } else { v })
    };
    if let Some(step) = step {
        let n: u32 = step
            .parse()
            .map_err(|_| format!("{} step {step:?} is not a number", f.name))?;
        if n == 0 {
            return Err(format!("{} step must be positive", f.name));
        }
    }
    if lo < f.min || hi > f.max {
        return Err(format!(
            "{} {span:?} is out of range {}-{}",
            f.name, f.min, f.max
        ));
    }
    if lo > hi {
        return Err(format!("{} range {span:?} runs backwards", f.name));
    }
    Ok(())
}

/// `schedule` split into its time zone (a leading `TZ=<zone>` or `CRON_TZ=<zone>`) and the
/// schedule proper. The API server refuses a CronJob whose `schedule` names a zone (since
/// Kubernetes 1.27): the trigger CronJob takes the zone as `spec.timeZone` instead.
pub fn split_time_zone(schedule: &str) -> (Option<&str>, &str) {
    let s = schedule.trim();
    match s.strip_prefix("TZ=").or_else(|| s.strip_prefix("CRON_TZ=")) {
        Some(rest) => match rest.split_once(char::is_whitespace) {
            Some((zone, rest)) => (Some(zone), rest.trim_start()),
            None => (Some(rest), ""),
        },
        None => (None, s),
    }
}

/// The interval of an `@every <duration>` schedule (`None` for any other form).
pub fn every(schedule: &str) -> Option<std::time::Duration> {
    let (_, s) = split_time_zone(schedule);
    let every = s.strip_prefix("@every ")?;
    every
        .trim()
        .parse::<stash_crds::GoDuration>()
        .ok()
        .map(|d| d.as_std())
}

/// Check `schedule` the way robfig/cron v3 `ParseStandard` does; the error says what is wrong.
pub fn parse(schedule: &str) -> Result<(), String> {
    let mut s = schedule.trim();
    if s.is_empty() {
        return Err("empty schedule".into());
    }
    if let Some(rest) = s.strip_prefix("TZ=").or_else(|| s.strip_prefix("CRON_TZ=")) {
        let (zone, rest) = rest
            .split_once(char::is_whitespace)
            .ok_or("a time zone must be followed by a schedule")?;
        if zone.is_empty() {
            return Err("empty time zone".into());
        }
        s = rest.trim_start();
    }
    if let Some(d) = s.strip_prefix('@') {
        if let Some(every) = d.strip_prefix("every ") {
            let dur: stash_crds::GoDuration = every
                .trim()
                .parse()
                .map_err(|e| format!("@every: invalid duration {:?}: {e}", every.trim()))?;
            if dur.as_std().is_zero() {
                return Err("@every: the duration must be positive".into());
            }
            return Ok(());
        }
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ => Err(format!("unrecognized descriptor @{d}")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    for (f, text) in FIELDS.iter().zip(&fields) {
        for expr in text.split(',') {
            range(f, expr)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn upstream_schedules_parse() {
        for s in [
            "* * * * *",
            "*/1 * * * *",
            "*/40 * * * *",
            "0 * * * *",
            "@every 1m",
            "@every 1h30m",
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
            "0 3 * * MON-FRI",
            "15 2 1,15 jan,jul ?",
            "5/10 * * * *",
            "CRON_TZ=Europe/Berlin 0 3 * * *",
        ] {
            assert_eq!(parse(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn broken_schedules_are_explained() {
        for (s, why) in [
            ("", "empty"),
            ("* * * *", "exactly 5 fields"),
            ("* * * * * *", "exactly 5 fields"),
            ("60 * * * *", "minute \"60\" is out of range 0-59"),
            ("* 24 * * *", "hour \"24\" is out of range"),
            ("* * 0 * *", "day of month \"0\" is out of range"),
            ("* * * 13 *", "month \"13\" is out of range"),
            ("* * * * 7", "day of week \"7\" is out of range"),
            ("*/0 * * * *", "step must be positive"),
            ("10-5 * * * *", "runs backwards"),
            ("x * * * *", "minute \"x\" is not a number"),
            ("@every", "unrecognized descriptor"),
            ("@every 1 minute", "invalid duration"),
            ("@every 0s", "must be positive"),
            ("@fortnightly", "unrecognized descriptor @fortnightly"),
            ("* * * FOO *", "month \"FOO\" is not a number"),
        ] {
            let err = parse(s).expect_err(s);
            assert!(err.contains(why), "{s}: {err}");
        }
    }
}
