//! What backend authors share, and koda code never needs: argument checks,
//! timestamp formatting, the URL parameter grammar, the context passes and
//! cache, and the inserted-message record. Every contract rule a backend
//! would otherwise copy lives here once.

pub use crate::clock::{format_timestamp, idle_secs};
pub use crate::context::{
    ContextCache, ContextRow, DEFAULT_CACHED_SESSIONS, Removed, SharedContextCache,
    apply_context_passes, is_blank, named_tool_call_ids,
};
pub use crate::error::{check_limit, check_usage, root_to_str};
pub use crate::import::{
    assign_ids, check_claim, check_kept, check_message_records, check_session_id,
    check_session_record, id_taken,
};
pub use crate::rules::{
    DEFAULT_AGENT, ExactUsage, UsageTally, order_usage_groups, purge_cutoff, usage_by_agent,
    usage_total,
};
pub use crate::types::NewMessage;
pub use crate::url;
