//! Conditions as Kubernetes keeps them: `lastTransitionTime` changes only when a condition's
//! status (or reason) changes, so that an unchanged condition is an unchanged status and no
//! write.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition `type_` with `status`, `reason` and `message`, keeping the transition time of
/// the same condition in `current` when its status and reason are unchanged.
pub fn condition(
    current: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = current
        .iter()
        .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// `current` with `c` in place of the condition of its type.
pub fn replace(current: &[Condition], c: Condition) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|x| x.type_ != c.type_)
        .cloned()
        .collect();
    out.push(c);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_with_the_status_or_reason() {
        let mut old = condition(&[], "T", false, "R", "m".into(), Some(1));
        old.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        let same = condition(
            std::slice::from_ref(&old),
            "T",
            false,
            "R",
            "m2".into(),
            Some(2),
        );
        assert_eq!(same.last_transition_time, old.last_transition_time);
        assert_eq!(
            (same.message.as_str(), same.observed_generation),
            ("m2", Some(2))
        );
        let flipped = condition(
            std::slice::from_ref(&old),
            "T",
            true,
            "R",
            "m".into(),
            Some(2),
        );
        assert_ne!(flipped.last_transition_time, old.last_transition_time);
        let list = replace(
            &[
                old.clone(),
                condition(&[], "U", true, "S", String::new(), None),
            ],
            same,
        );
        assert_eq!(list.iter().filter(|c| c.type_ == "T").count(), 1);
        assert_eq!(list.len(), 2);
    }
}
