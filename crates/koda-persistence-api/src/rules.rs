//! Contract rules every backend applies to what it read: usage grouping,
//! ordering and sums, and the purge cutoff. Written once here so that no
//! backend carries its own copy.

use crate::types::SessionUsage;

/// The agent a message without one counts under in usage by agent.
pub const DEFAULT_AGENT: &str = "main";

const DAY_MS: i64 = 86_400_000;

/// Usage grouped by agent from each stored message's `(agent, five
/// counters)`: messages with neither prompt nor completion set do not
/// count; no agent and [`DEFAULT_AGENT`] are one group; sums saturate;
/// ordered as [`order_usage_groups`] says.
pub fn usage_by_agent<'a, I>(rows: I) -> Vec<(String, SessionUsage)>
where
    I: IntoIterator<Item = (Option<&'a str>, [Option<i64>; 5])>,
{
    let mut groups: Vec<(String, SessionUsage)> = Vec::new();
    for (agent, counters) in rows {
        if counters[0].is_none() && counters[1].is_none() {
            continue;
        }
        let name = agent.unwrap_or(DEFAULT_AGENT);
        match groups.iter_mut().find(|(g, _)| g == name) {
            Some((_, usage)) => usage.add_message_counters(counters),
            None => {
                let mut usage = SessionUsage::default();
                usage.add_message_counters(counters);
                groups.push((name.to_owned(), usage));
            }
        }
    }
    order_usage_groups(&mut groups);
    groups
}

/// The order of usage by agent: `prompt + completion` descending, ties by
/// the agent name's bytes (no locale collation).
pub fn order_usage_groups(groups: &mut [(String, SessionUsage)]) {
    groups.sort_by(|a, b| {
        b.1.total_tokens()
            .cmp(&a.1.total_tokens())
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    });
}

/// A session's usage: the saturating sum of its agents' groups (counters
/// are never negative, so grouping first changes nothing).
pub fn usage_total(groups: &[(String, SessionUsage)]) -> SessionUsage {
    let mut t = SessionUsage::default();
    for (_, u) in groups {
        t.prompt_tokens = t.prompt_tokens.saturating_add(u.prompt_tokens);
        t.completion_tokens = t.completion_tokens.saturating_add(u.completion_tokens);
        t.cache_read_tokens = t.cache_read_tokens.saturating_add(u.cache_read_tokens);
        t.cache_creation_tokens = t
            .cache_creation_tokens
            .saturating_add(u.cache_creation_tokens);
        t.thinking_tokens = t.thinking_tokens.saturating_add(u.thinking_tokens);
        t.api_calls = t.api_calls.saturating_add(u.api_calls);
    }
    t
}

/// `purge_compacted(days)` deletes compacted messages whose `compacted_at`
/// is before this instant: `now − days × 86,400,000` ms, saturating (and
/// every compacted message when `days` is 0, whatever the cutoff).
pub fn purge_cutoff(now_ms: i64, days: u32) -> i64 {
    now_ms.saturating_sub(i64::from(days).saturating_mul(DAY_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: Option<i64>, comp: Option<i64>) -> [Option<i64>; 5] {
        [p, comp, Some(1), None, Some(2)]
    }

    #[test]
    fn groups_merge_main_skip_uncounted_and_order() {
        let rows = [
            (None, c(Some(5), Some(5))),
            (Some("main"), c(Some(1), None)),
            (Some("b"), c(Some(11), None)),
            (Some("a"), c(None, Some(11))),
            (Some("z"), c(None, None)),
        ];
        let groups = usage_by_agent(rows);
        let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "main"]);
        let main = &groups[2].1;
        assert_eq!(
            (main.prompt_tokens, main.completion_tokens, main.api_calls),
            (6, 5, 2)
        );
        assert_eq!((main.cache_read_tokens, main.thinking_tokens), (2, 4));
        let total = usage_total(&groups);
        assert_eq!((total.prompt_tokens, total.api_calls), (17, 4));
    }

    #[test]
    fn sums_saturate() {
        let rows = [
            (Some("a"), c(Some(i64::MAX), Some(1))),
            (Some("b"), c(Some(i64::MAX), None)),
        ];
        let total = usage_total(&usage_by_agent(rows));
        assert_eq!(total.prompt_tokens, i64::MAX);
        assert_eq!(total.completion_tokens, 1);
    }

    #[test]
    fn cutoff_saturates() {
        assert_eq!(purge_cutoff(10 * DAY_MS, 3), 7 * DAY_MS);
        assert_eq!(purge_cutoff(5, 0), 5);
        assert_eq!(purge_cutoff(i64::MIN + 1, u32::MAX), i64::MIN);
    }
}
