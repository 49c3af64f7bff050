//! One plain `async fn` per rule of the contract, grouped by area. Each takes a
//! fresh [`Fixture`] and returns `Err` describing the first broken rule.

use std::fmt::Debug;
use std::path::Path;

use anyhow::{Result, bail};
use koda_persistence_api::{Message, PersistenceError, Role, TokenUsage};

use crate::Fixture;

pub mod bad_input;
pub mod bodies;
pub mod cipher;
pub mod compaction;
pub mod concurrency;
pub mod context;
pub mod fork;
pub mod ledger;
pub mod messages;
pub mod metadata;
pub mod redaction;
pub mod rewrite;
pub mod search;
pub mod sessions;
pub mod settings;
pub mod transfer;
pub mod trash;
pub mod usage;

/// Calls `$mac!($factory; area: [case, …], …)` with every case of the suite.
/// Adding a case means writing its function and naming it here.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_case {
    ($mac:path, $factory:expr) => {
        $mac! { $factory;
            sessions: [
                create_returns_unique_ids,
                new_session_is_empty_untitled_and_listed,
                created_at_comes_from_clock_in_rfc3339_millis,
                new_session_was_never_accessed,
                list_filters_by_exact_root_bytes,
                empty_path_is_an_ordinary_root,
                list_orders_newest_first,
                list_ties_break_by_creation_sequence,
                list_honours_limit,
                list_counts_messages_and_tokens,
                list_total_tokens_saturate,
                list_total_tokens_exact_after_purge,
                list_shows_title_and_mode,
                delete_removes_session_messages_and_metadata,
                delete_unknown_returns_false,
                delete_leaves_other_sessions_alone,
                title_and_mode_overwrite,
                mode_of_unknown_session_is_none,
                idle_secs_count_from_last_insert,
                idle_secs_floor_and_clamp_at_zero,
                idle_secs_ignore_reads_compaction_and_other_writes,
                every_insert_kind_touches_last_accessed,
            ],
            messages: [
                ids_increase_across_sessions,
                ids_never_reused_after_delete,
                ids_never_reused_after_purge,
                insert_round_trips_every_field,
                usage_none_and_zero_stay_distinct,
                insert_message_is_with_agent_none,
                tool_message_with_full_sets_tool_fields,
                message_created_at_comes_from_clock,
                load_all_includes_compacted_and_incomplete,
                load_all_of_unknown_session_is_empty,
                mark_complete_unknown_id_is_message_not_found,
                mark_complete_works_on_any_role_and_is_idempotent,
                tool_calls_are_stored_verbatim,
                recent_user_messages_newest_first_across_sessions,
                recent_user_messages_skip_empty_include_compacted,
                recent_user_messages_follow_moved_messages,
                recent_user_messages_honour_limit,
                last_messages_follow_conversation_order,
                last_messages_skip_unset_content,
                last_messages_of_unknown_session_are_empty,
                pending_tool_calls_when_last_active_is_calling_assistant,
                no_pending_tool_calls_after_result_or_compaction,
                clear_content_sets_stub_only,
                clear_content_ignores_unknown_ids,
            ],
            context: [
                context_excludes_compacted,
                context_drops_incomplete_assistant,
                context_pairs_calls_with_results,
                context_drops_partially_answered_call_and_its_results,
                context_drops_orphan_results,
                context_pairing_is_by_id_set,
                context_only_tool_messages_answer_calls,
                context_unparseable_calls_name_nothing,
                context_drops_blank_assistant_without_calls,
                context_keeps_blank_assistant_with_calls,
                context_passes_run_in_order,
                context_of_unknown_session_is_empty,
                context_after_compaction_starts_with_summary,
                context_does_not_touch_last_accessed,
                interruption_is_detected_from_stored_history,
            ],
            usage: [
                usage_sums_counted_messages,
                usage_counts_messages_with_prompt_or_completion,
                usage_includes_compacted_until_purged,
                usage_by_agent_forgets_a_purged_agent,
                usage_of_unknown_session_is_zero,
                usage_sums_saturate,
                usage_by_agent_merges_none_and_main,
                usage_by_agent_orders_by_total_then_name_bytes,
                usage_drops_with_deleted_session,
            ],
            compaction: [
                compact_marks_all_but_keep,
                compact_places_summary_and_hint_before_tail,
                compact_with_keep_zero_appends_at_end,
                compact_with_nothing_to_mark_changes_nothing,
                compact_again_counts_only_active,
                compact_hint_is_bare_and_complete,
                compact_does_not_touch_last_accessed,
                compact_honours_huge_keep,
                compacted_stats_count_bytes_sessions_and_oldest,
                compacted_stats_of_empty_store,
                purge_deletes_only_older_than_cutoff,
                purge_zero_days_deletes_every_compacted,
                purge_never_touches_active,
                purge_with_huge_days_deletes_nothing,
                purge_lowers_message_counts,
            ],
            metadata: [
                metadata_upserts,
                metadata_missing_is_none,
                metadata_is_per_session,
                todo_is_metadata_under_todo_key,
                metadata_keys_are_exact_bytes,
            ],
            bad_input: [
                writes_to_unknown_session_fail_and_write_nothing,
                ids_no_store_can_hold_name_no_session,
                negative_limits_are_invalid,
                negative_token_counters_are_invalid,
                non_utf8_roots_are_invalid,
                strings_round_trip_byte_for_byte,
                multi_megabyte_strings_round_trip,
                none_and_empty_stay_distinct,
                roots_with_nul_and_unicode_round_trip,
                clock_extremes_format_as_rfc3339,
                huge_limits_are_honoured,
                strings_of_any_size_fit_every_field,
            ],
            concurrency: [
                concurrent_inserts_into_one_session,
                concurrent_inserts_into_separate_sessions,
                concurrent_session_creation,
                concurrent_compaction_and_inserts_lose_nothing,
                concurrent_readers_see_committed_state,
                everything_at_once_on_one_session,
                a_second_handle_sees_every_write,
                a_failing_write_among_concurrent_ones_fails_alone,
            ],
            transfer: [
                export_reads_every_stored_field,
                export_of_unknown_session_is_empty,
                export_lists_every_session_oldest_first,
                import_of_an_export_reads_back_the_same,
                claimed_ids_are_kept_and_never_handed_out,
                import_session_is_idempotent,
                rootless_sessions_list_under_every_root,
                import_refuses_bad_records,
                import_keeps_partial_counters,
                usage_counts_imported_messages_until_purged,
                health_of_a_sound_store_has_no_problems,
                session_checksum_is_the_exports,
            ],
            bodies: [
                identical_bodies_are_stored_once,
                bodies_read_back_byte_for_byte,
                every_delete_path_releases_references,
                a_failed_write_leaves_no_body,
                import_shares_the_bodies_it_finds,
            ],
            fork: [
                fork_copies_every_message_with_states_and_metadata,
                fork_at_a_message_ends_before_an_unanswered_call,
                a_fork_shares_bodies_and_outlives_its_original,
            ],
            search: [
                search_follows_the_query_grammar,
                search_ranks_and_keeps_the_newest_limit,
                search_stays_in_its_scope,
                search_follows_every_write,
                hostile_queries_find_or_return_nothing,
                search_finds_what_an_index_cannot_hold,
                searches_racing_writers_and_a_compactor_miss_nothing,
            ],
            redaction: [
                every_write_path_stores_credentials_redacted,
                imported_records_are_redacted,
                rewritten_text_is_redacted,
                a_stored_once_output_is_redacted_once,
                the_mode_is_the_stores_and_a_conflicting_one_is_refused,
                mode_off_keeps_every_byte,
            ],
            ledger: [
                every_insert_counts_on_its_day_and_nothing_lowers_it,
                an_import_adds_on_its_days_a_fork_and_a_restore_add_nothing,
                usage_narrows_by_days_root_and_agent,
            ],
            rewrite: [
                a_rewrite_replaces_the_text_and_keeps_every_other_field,
                a_shared_body_is_re_addressed_and_released_with_its_last_reference,
                a_bad_rewrite_writes_nothing,
            ],
            settings: [
                settings_read_back_what_was_set,
                settings_stand_apart_from_sessions,
                bad_setting_keys_and_values_are_invalid,
            ],
            trash: [
                a_trashed_session_answers_as_if_deleted,
                restore_brings_everything_back_byte_exact,
                restore_after_the_purge_boundary_is_not_found,
                restore_and_import_refuse_what_they_cannot_do,
                without_a_grace_period_delete_is_for_good,
                a_delete_racing_writers_loses_no_acknowledged_message,
                count_deleted_counts_what_list_deleted_lists,
            ],
            cipher: [
                nothing_of_a_secret_reaches_the_disk_and_search_still_finds_it,
                a_wrong_or_missing_key_is_refused_and_nothing_changes,
                a_plaintext_store_opened_with_a_key_is_refused,
                a_missing_public_or_empty_key_file_is_refused_with_the_mend,
                a_changed_or_moved_value_is_corrupt_never_wrong_text,
            ],
        }
    };
}

/// The project root most cases use.
pub(crate) const ROOT: &str = "/work/project";

pub(crate) fn eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        let (g, w) = (format!("{got:?}"), format!("{want:?}"));
        bail!("{what}: got {}, want {}", clip(&g), clip(&w))
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 2_000 {
        s.to_owned()
    } else {
        let mut end = 2_000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

pub(crate) fn check(what: &str, ok: bool) -> Result<()> {
    if ok { Ok(()) } else { bail!("{what}") }
}

/// Asserts `res` failed with a [`PersistenceError`] that `want` accepts.
pub(crate) fn expect_err<T: Debug>(what: &str, res: Result<T>, want: impl Fn(&PersistenceError) -> bool) -> Result<()> {
    match res {
        Ok(v) => bail!("{what}: expected an error, got Ok({})", clip(&format!("{v:?}"))),
        Err(e) => match PersistenceError::of(&e) {
            Some(pe) if want(pe) => Ok(()),
            Some(pe) => bail!("{what}: wrong PersistenceError {pe:?}"),
            None => bail!("{what}: error is not a PersistenceError: {e:#}"),
        },
    }
}

pub(crate) fn is_session_not_found(e: &PersistenceError) -> bool {
    matches!(e, PersistenceError::SessionNotFound(_))
}

pub(crate) fn is_invalid(e: &PersistenceError) -> bool {
    matches!(e, PersistenceError::InvalidInput(_))
}

pub(crate) fn ids(ms: &[Message]) -> Vec<i64> {
    ms.iter().map(|m| m.id).collect()
}

pub(crate) fn roles(ms: &[Message]) -> Vec<Role> {
    ms.iter().map(|m| m.role).collect()
}

pub(crate) fn usage(p: i64, c: i64, cr: i64, cc: i64, t: i64) -> TokenUsage {
    TokenUsage {
        prompt_tokens: p,
        completion_tokens: c,
        cache_read_tokens: cr,
        cache_creation_tokens: cc,
        thinking_tokens: t,
    }
}

pub(crate) async fn session(fx: &Fixture) -> Result<String> {
    fx.store.create_session("main", Path::new(ROOT)).await
}

pub(crate) async fn user(fx: &Fixture, sid: &str, text: &str) -> Result<i64> {
    fx.store.insert_message(sid, &Role::User, Some(text), None, None, None).await
}

/// Inserts an assistant message, marked complete when `complete`.
pub(crate) async fn assistant(
    fx: &Fixture,
    sid: &str,
    text: Option<&str>,
    tool_calls: Option<&str>,
    complete: bool,
) -> Result<i64> {
    let id = fx.store.insert_message(sid, &Role::Assistant, text, tool_calls, None, None).await?;
    if complete {
        fx.store.mark_message_complete(id).await?;
    }
    Ok(id)
}

pub(crate) async fn tool(fx: &Fixture, sid: &str, call_id: Option<&str>, text: &str) -> Result<i64> {
    fx.store.insert_message(sid, &Role::Tool, Some(text), None, call_id, None).await
}

/// `len` bytes of text that no compressor shrinks much (so a database
/// cannot fit it into an index entry by compressing it): pseudo-random
/// printable characters, some of them multi-byte, from `seed`.
pub fn incompressible(len: usize, seed: u64) -> String {
    const ALPHABET: &[char] = &[
        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v',
        'w', 'x', 'y', 'z', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R',
        'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '/', '.', '-', '_',
        ' ', 'é', 'ü', '\0', '漢', '→',
    ];
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut out = String::with_capacity(len + 4);
    while out.len() < len {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let pick = usize::try_from(state >> 33).unwrap_or(0) % ALPHABET.len();
        if let Some(c) = ALPHABET.get(pick) {
            out.push(*c);
        }
    }
    out
}

/// A `tool_calls` JSON array naming `ids`.
pub(crate) fn calls(ids: &[&str]) -> String {
    let items: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"id":"{id}","type":"function","function":{{"name":"bash","arguments":"{{}}"}}}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod listing {
    /// The area files and their text.
    const AREAS: [(&str, &str); 12] = [
        ("sessions", include_str!("sessions.rs")),
        ("messages", include_str!("messages.rs")),
        ("context", include_str!("context.rs")),
        ("usage", include_str!("usage.rs")),
        ("compaction", include_str!("compaction.rs")),
        ("metadata", include_str!("metadata.rs")),
        ("bad_input", include_str!("bad_input.rs")),
        ("concurrency", include_str!("concurrency.rs")),
        ("transfer", include_str!("transfer.rs")),
        ("bodies", include_str!("bodies.rs")),
        ("fork", include_str!("fork.rs")),
        ("search", include_str!("search.rs")),
    ];

    /// Every `pub async fn` in an area file is a case the suite's list
    /// names in that area (a listed name that does not exist fails to
    /// compile, so the list and the files agree both ways).
    #[test]
    fn every_case_function_is_listed() {
        let list = include_str!("mod.rs");
        for (area, text) in AREAS {
            let section = list
                .split(&format!("{area}: ["))
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .unwrap_or_else(|| panic!("no list for area {area}"));
            let listed: Vec<&str> = section.split(',').map(str::trim).collect();
            let cases: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("pub async fn "))
                .filter_map(|rest| rest.split('(').next())
                .collect();
            assert!(!cases.is_empty(), "{area} has no cases");
            for case in cases {
                assert!(listed.contains(&case), "{area}::{case} is not in the list");
            }
        }
    }
}
