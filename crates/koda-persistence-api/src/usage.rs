//! Usage arithmetic every backend applies to what it read: grouping,
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
    let mut tally = UsageTally::default();
    for (agent, counters) in rows {
        tally.add(agent, counters);
    }
    tally.groups()
}

/// One agent's exact sums in a [`UsageTally`]: the five counters, then the
/// number of counted messages.
pub type ExactUsage = [i128; 6];

/// A session's usage by agent, kept exact (`i128`) so that removing a
/// message (purge, delete) subtracts exactly what adding it added; the
/// contract's saturation at `i64::MAX` happens only when read
/// ([`UsageTally::groups`]). Backends keep one per session, updated in the
/// same write as the messages, so usage costs O(agents) to read.
#[derive(Debug, Clone, Default)]
pub struct UsageTally {
    /// `(agent group, sums)`, at most one entry per group, none with a
    /// zero message count.
    groups: Vec<(String, ExactUsage)>,
}

/// Two tallies are equal when they hold the same groups with the same
/// sums, in whatever order.
impl PartialEq for UsageTally {
    fn eq(&self, other: &Self) -> bool {
        let sorted = |t: &Self| {
            let mut e = t.groups.clone();
            e.sort();
            e
        };
        sorted(self) == sorted(other)
    }
}

impl Eq for UsageTally {}

impl UsageTally {
    /// Counts one stored message (nothing when it is not an API call:
    /// neither prompt nor completion set).
    pub fn add(&mut self, agent: Option<&str>, counters: [Option<i64>; 5]) {
        self.apply(agent, counters, 1);
    }

    /// Uncounts one stored message that [`add`](Self::add) counted.
    pub fn remove(&mut self, agent: Option<&str>, counters: [Option<i64>; 5]) {
        self.apply(agent, counters, -1);
    }

    fn apply(&mut self, agent: Option<&str>, counters: [Option<i64>; 5], sign: i128) {
        if counters[0].is_none() && counters[1].is_none() {
            return;
        }
        let name = agent.unwrap_or(DEFAULT_AGENT);
        let index = match self.groups.iter().position(|(g, _)| g == name) {
            Some(i) => i,
            None => {
                self.groups.push((name.to_owned(), [0; 6]));
                self.groups.len() - 1
            }
        };
        let Some((_, sums)) = self.groups.get_mut(index) else {
            return;
        };
        // i128 holds 2^64 messages of i64::MAX each; saturating only so
        // that nothing can panic.
        for (sum, v) in sums.iter_mut().zip(counters) {
            *sum = sum.saturating_add(sign * i128::from(v.unwrap_or(0)));
        }
        sums[5] = sums[5].saturating_add(sign);
        if sums[5] == 0 {
            self.groups.swap_remove(index);
        }
    }

    /// The groups as the trait returns them: sums clamped to `i64`,
    /// ordered as [`order_usage_groups`] says.
    pub fn groups(&self) -> Vec<(String, SessionUsage)> {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        let mut out: Vec<(String, SessionUsage)> = self
            .groups
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    SessionUsage {
                        prompt_tokens: clamp(s[0]),
                        completion_tokens: clamp(s[1]),
                        cache_read_tokens: clamp(s[2]),
                        cache_creation_tokens: clamp(s[3]),
                        thinking_tokens: clamp(s[4]),
                        api_calls: clamp(s[5]),
                    },
                )
            })
            .collect();
        order_usage_groups(&mut out);
        out
    }

    /// `prompt + completion` over every group, exact: a session's total
    /// tokens (a message without usage adds nothing to it either).
    pub fn tokens(&self) -> i128 {
        self.groups.iter().fold(0i128, |t, (_, s)| t.saturating_add(s[0]).saturating_add(s[1]))
    }

    /// The exact sums per group, for a backend that stores them.
    pub fn entries(&self) -> &[(String, ExactUsage)] {
        &self.groups
    }

    /// A tally from stored [`entries`](Self::entries); groups with a zero
    /// message count are dropped, repeated groups merged.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, ExactUsage)>) -> Self {
        let mut tally = Self::default();
        for (name, sums) in entries {
            match tally.groups.iter_mut().find(|(g, _)| *g == name) {
                Some((_, have)) => {
                    for (h, s) in have.iter_mut().zip(sums) {
                        *h = h.saturating_add(s);
                    }
                }
                None => tally.groups.push((name, sums)),
            }
        }
        tally.groups.retain(|(_, s)| s[5] != 0);
        tally
    }
}

/// The order of usage by agent: `prompt + completion` descending, ties by
/// the agent name's bytes (no locale collation).
pub fn order_usage_groups(groups: &mut [(String, SessionUsage)]) {
    groups.sort_by(|a, b| b.1.total_tokens().cmp(&a.1.total_tokens()).then_with(|| a.0.as_bytes().cmp(b.0.as_bytes())));
}

/// A session's usage: the saturating sum of its agents' groups (counters
/// are never negative, so grouping first changes nothing).
pub fn usage_total(groups: &[(String, SessionUsage)]) -> SessionUsage {
    let mut t = SessionUsage::default();
    for (_, u) in groups {
        t.prompt_tokens = t.prompt_tokens.saturating_add(u.prompt_tokens);
        t.completion_tokens = t.completion_tokens.saturating_add(u.completion_tokens);
        t.cache_read_tokens = t.cache_read_tokens.saturating_add(u.cache_read_tokens);
        t.cache_creation_tokens = t.cache_creation_tokens.saturating_add(u.cache_creation_tokens);
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
        assert_eq!((main.prompt_tokens, main.completion_tokens, main.api_calls), (6, 5, 2));
        assert_eq!((main.cache_read_tokens, main.thinking_tokens), (2, 4));
        let total = usage_total(&groups);
        assert_eq!((total.prompt_tokens, total.api_calls), (17, 4));
    }

    #[test]
    fn sums_saturate() {
        let rows = [(Some("a"), c(Some(i64::MAX), Some(1))), (Some("b"), c(Some(i64::MAX), None))];
        let total = usage_total(&usage_by_agent(rows));
        assert_eq!(total.prompt_tokens, i64::MAX);
        assert_eq!(total.completion_tokens, 1);
    }

    #[test]
    fn a_tally_subtracts_exactly_what_it_added() {
        let mut t = UsageTally::default();
        let big = [Some(i64::MAX), Some(1), None, Some(3), Some(i64::MAX)];
        t.add(Some("a"), big);
        t.add(Some("a"), big);
        t.add(None, c(Some(2), None));
        t.add(Some("main"), c(None, Some(4)));
        t.add(Some("idle"), c(None, None));
        let g = t.groups();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, "a");
        assert_eq!((g[0].1.prompt_tokens, g[0].1.completion_tokens, g[0].1.api_calls), (i64::MAX, 2, 2));
        assert_eq!(g[1].1.api_calls, 2);
        assert_eq!(t.tokens(), 2 * i128::from(i64::MAX) + 2 + 2 + 4);
        // Saturated on read, exact underneath: one removal is exact again.
        t.remove(Some("a"), big);
        assert_eq!(t.groups()[0].1.prompt_tokens, i64::MAX);
        assert_eq!(t.groups()[0].1.cache_creation_tokens, 3);
        t.remove(Some("a"), big);
        assert_eq!(t.groups().len(), 1, "an emptied group disappears");
        assert_eq!(UsageTally::from_entries(t.entries().to_vec()), t);
        let mut reordered = t.entries().to_vec();
        reordered.push(("b".to_owned(), [1, 0, 1, 0, 2, 1]));
        reordered.reverse();
        let mut with_b = t.clone();
        with_b.add(Some("b"), c(Some(1), None));
        with_b.remove(Some("b"), c(None, None));
        assert_ne!(with_b, t);
        assert_eq!(UsageTally::from_entries(reordered), with_b, "order does not matter");
        assert_eq!(UsageTally::from_entries(vec![("x".to_owned(), [1, 0, 0, 0, 0, 0])]), UsageTally::default());
    }

    #[test]
    fn cutoff_saturates() {
        assert_eq!(purge_cutoff(10 * DAY_MS, 3), 7 * DAY_MS);
        assert_eq!(purge_cutoff(5, 0), 5);
        assert_eq!(purge_cutoff(i64::MIN + 1, u32::MAX), i64::MIN);
    }
}
